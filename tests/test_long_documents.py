"""Long documents read as overlapping windows pooled into one vector (``--doc-windows``), with the real small model:
the tail of a long document reaches the index, one window is the first-``doc_max_length``-tokens encoding, every
build path (CLI, live add, eval cache) reads documents as the index's manifest records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lsr import Engine, SpladeEncoder
from lsr import evaluation as ev
from lsr.cli import app
from lsr.encoder import SparseBatch, pool_windows
from tests.conftest import write_jsonl

TAIL = "A penguin played the saxophone beside the volcano."
TAIL_TOKENS = ("saxophone", "volcano")


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def long_text(module_docs) -> str:
    """About 700 tokens of stdlib docs, then a sentence about none of them."""
    filler = " ".join(d["text"] for d in module_docs[:40]).split()[:520]
    return " ".join(filler) + " " + TAIL


@pytest.fixture(scope="module")
def short_texts(module_docs, encoder) -> list[str]:
    """Documents that fit one window of the model."""
    texts = [d["text"] for d in module_docs]
    lengths = [len(ids) for ids in encoder.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return [t for t, n in zip(texts, lengths) if 0 < n < encoder.doc_max_length - 2]


def _windowed(encoder: SpladeEncoder, **settings) -> SpladeEncoder:
    """The loaded model reading documents with other window settings."""
    return encoder.for_documents({"doc_max_length": encoder.doc_max_length, **settings})


def _terms(encoder: SpladeEncoder, batch: SparseBatch, row: int) -> set[str]:
    return set(encoder.decode(*batch.row(row)))


def test_tail_of_a_long_document_is_indexed_only_with_windows(encoder, long_text):
    first = encoder.encode_documents([long_text])
    assert first.truncated == 1 and not set(TAIL_TOKENS) & _terms(encoder, first, 0)
    for pooling in ("max", "mean", "decay", "first"):
        windowed = _windowed(encoder, doc_windows="all", window_pooling=pooling).encode_documents([long_text])
        assert windowed.truncated == 0
        assert set(TAIL_TOKENS) <= _terms(encoder, windowed, 0), pooling
    two = _windowed(encoder, doc_windows=2, window_stride=64).encode_documents([long_text])  # 2 windows: not the tail
    assert two.truncated == 1 and not set(TAIL_TOKENS) & _terms(encoder, two, 0)


def test_documents_of_one_window_encode_byte_identically(encoder, short_texts):
    """The window path (tokens split and pooled) gives exactly the single-window vectors on documents that fit."""
    assert len(short_texts) > 20
    texts = short_texts + ["", "   "]
    want = encoder.encode_documents(texts)
    for pooling in ("max", "mean", "decay", "first"):
        got = _windowed(encoder, doc_windows="all", window_pooling=pooling).encode_documents(texts)
        for name in ("indptr", "indices", "values"):
            assert np.array_equal(getattr(got, name), getattr(want, name)), (pooling, name)


def test_one_window_is_the_first_max_length_tokens(encoder, long_text, short_texts):
    """``doc_windows=1`` (the default) is today's encoding: exactly the first window of the window path, and the
    plain masked-LM reading of the truncated text."""
    import torch

    texts = [long_text] + short_texts[:5]
    one = encoder.encode_documents(texts)
    windows, owner, position, truncated = encoder.encode_windows(texts, 1)
    assert truncated == 1 and owner.tolist() == list(range(len(texts))) and not position.any()
    pooled = pool_windows(windows, owner, position, len(texts), "max")
    for name in ("indptr", "indices", "values"):
        assert np.array_equal(getattr(pooled, name), getattr(one, name))
    ids = encoder.tokenizer(long_text, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        logits = encoder.model(**ids).logits[0]
    reference = torch.log1p(torch.relu(logits.amax(dim=0))).numpy()
    terms, weights = one.row(0)
    assert np.array_equal(terms, np.flatnonzero(reference > 0))
    assert np.allclose(weights, reference[terms], atol=1e-5)


def test_pooling_rules():
    """max, mean (absent = 0), decay (weight x decay^position) and first (max of the first, decay x the rest)."""
    windows = SparseBatch(np.array([0, 2, 4, 5, 6]), np.array([1, 5, 1, 7, 3, 3], np.uint32),
                          np.array([1.0, 2.0, 3.0, 1.0, 4.0, 2.0], np.float32))
    owner, position = np.array([0, 0, 0, 2]), np.array([0, 1, 2, 0])  # doc 1 has no window

    def rows(pooling):
        out = pool_windows(windows, owner, position, 3, pooling, decay=0.5)
        return [dict(zip(out.row(i)[0].tolist(), out.row(i)[1].tolist())) for i in range(3)]

    assert rows("max") == [{1: 3.0, 5: 2.0, 7: 1.0, 3: 4.0}, {}, {3: 2.0}]
    assert rows("mean") == [pytest.approx({1: 4 / 3, 5: 2 / 3, 7: 1 / 3, 3: 4 / 3}), {}, {3: 2.0}]
    assert rows("decay") == [{1: 1.5, 5: 2.0, 7: 0.5, 3: 1.0}, {}, {3: 2.0}]
    assert rows("first") == [{1: 1.5, 5: 2.0, 7: 0.5, 3: 2.0}, {}, {3: 2.0}]


def test_bad_window_settings_are_refused():
    from lsr.pipeline import BuildSettings

    for bad in ({"doc_windows": 0}, {"doc_windows": "some"}, {"window_pooling": "sum"}, {"window_decay": 0},
                {"window_stride": 0}):
        with pytest.raises(ValueError):
            BuildSettings(**bad)
    assert BuildSettings(doc_windows="ALL").doc_windows == "all" and BuildSettings(doc_windows="3").doc_windows == 3


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory, module_docs, long_text) -> Path:
    root = tmp_path_factory.mktemp("long")
    write_jsonl(root / "corpus.jsonl", module_docs[40:70] + [{"_id": "long", "title": "", "text": long_text}])
    return root / "corpus.jsonl"


def test_cli_build_records_windows_and_live_adds_follow_them(tmp_path, long_corpus, long_text, encoder):
    index = tmp_path / "index"
    result = _cli("index", long_corpus, "--index", index, "--doc-windows", "all", "--window-pooling", "first",
                  "--window-decay", "0.7", "--window-stride", "200", "--no-dense", "--no-bm25")
    assert result.exit_code == 0, result.output
    manifest = json.loads((index / "manifest.json").read_text())
    model = manifest["model"]
    assert (model["doc_windows"], model["window_stride"], model["window_pooling"], model["window_decay"]) == \
        ("all", 200, "first", 0.7)
    assert manifest["truncated_documents"] == 0
    info = _cli("info", "--index", index)
    assert info.exit_code == 0 and "all windows of 256 tokens every 200 tokens, first (decay 0.7) pooling" in info.output
    engine = Engine.open(index)
    hits = engine.search(TAIL, k=3, retriever="sparse")
    assert hits[0].id == "long"
    # a live add through an engine holding a one-window encoder still reads documents like the index's build
    engine = Engine.open(index, encoder=encoder)
    engine.add_documents([_doc("long-2", long_text)])
    engine = Engine.open(index)
    terms = set(engine.encoder.decode(*engine.index.doc_vector(engine.docs.docno("long-2"))))
    assert set(TAIL_TOKENS) <= terms
    want = _windowed(encoder, doc_windows="all", window_stride=200, window_pooling="first", window_decay=0.7)
    encoded = want.decode(*want.encode_documents([long_text]).row(0))
    scale = engine.manifest["quantization"]["scale"]  # lighter weights quantize to nothing
    assert terms <= set(encoded) and {t for t, w in encoded.items() if w > scale} <= terms


def _doc(doc_id: str, text: str):
    from lsr.corpus import Document

    return Document(doc_id, text)


def test_default_build_reads_one_window(tmp_path, long_corpus, encoder):
    engine = Engine.build(long_corpus, tmp_path / "index", encoder=encoder, progress=False, bm25=False)
    model = engine.manifest["model"]
    assert model["doc_windows"] == 1 and engine.manifest["truncated_documents"] > 0
    assert "first window only" in _cli("info", "--index", tmp_path / "index").output


def test_eval_cache_key_follows_index_window_params(tmp_path, long_corpus, engine):
    root = tmp_path / "data"
    root.mkdir()
    (root / "corpus.jsonl").write_text(long_corpus.read_text())
    write_jsonl(root / "queries.jsonl", [{"_id": "q1", "text": TAIL}])
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tlong\t1\n")
    cache = tmp_path / "cache"
    with pytest.raises(ev.EvalError, match="doc_windows is 1, expected 2"):
        ev.run_eval(root, cache_dir=cache, params={"index.doc_windows": 2}, adopt=_copy_of(engine, tmp_path, root),
                    progress=False)
    one = ev.run_eval(root, cache_dir=cache, progress=False)
    windows = ev.run_eval(root, cache_dir=cache, params={"index.doc_windows": "all", "index.window_pooling": "mean"},
                          progress=False)
    built = sorted(p.name for p in (cache / "indexes").iterdir() if (p / "manifest.json").is_file())
    assert len(built) == 2
    manifests = [json.loads((cache / "indexes" / name / "manifest.json").read_text())["model"] for name in built]
    assert sorted(str(m["doc_windows"]) for m in manifests) == ["1", "all"]
    assert windows["ndcg@10"] == 1.0 and one["ndcg@10"] < 1.0  # only the windows reach the tail
    with pytest.raises(ev.EvalError, match="unknown index setting"):
        ev.run_eval(root, cache_dir=cache, params={"index.doc_window": 2}, progress=False)


def _copy_of(engine, tmp_path: Path, root: Path) -> Path:
    """A one-window index of the dataset at ``root`` to adopt."""
    return Engine.build(root, tmp_path / "adopt", encoder=engine.encoder, progress=False, bm25=False).index_dir


def test_sharded_build_reads_windows(tmp_path, long_corpus):
    pytest.importorskip("ray")
    from lsr.sharded.ray_runtime import init_ray

    ray = init_ray(num_cpus=2)
    try:
        out = tmp_path / "sharded"
        result = _cli("index", long_corpus, "--index", out, "--shards", "2", "--workers", "1", "--no-dense",
                      "--doc-windows", "all", "--window-pooling", "max")
        assert result.exit_code == 0, result.output
        info = _cli("info", "--index", out).output
        assert "all windows of 256 tokens every 192 tokens, max pooling" in info
        engine = Engine.open(out)
        try:
            assert engine.search(TAIL, k=3, retriever="sparse")[0].id == "long"
        finally:
            engine.close()
    finally:
        ray.shutdown()
