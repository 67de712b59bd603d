"""Sharded indexes on Ray (lsr.sharded): a local runtime with 2 CPUs and 2 shards, shared by the module.

Exactness is tested on indexes built from the same precomputed vectors (a single index and 2 shards), so
the document vectors are identical bit for bit; the text path (encoder actors, through the CLI) is compared
with the session's single index by ranking, since a model's floats depend slightly on how documents are batched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

pytest.importorskip("ray")

from lsr import Engine  # noqa: E402
from lsr.cli import app  # noqa: E402
from lsr.corpus import CorpusError, Document  # noqa: E402
from lsr.protocols import DenseSide, DocumentSource, IndexParts, SparseSide  # noqa: E402
from lsr.sharded.build import build_sharded  # noqa: E402
from lsr.sharded.ray_runtime import init_ray  # noqa: E402
from lsr.sharded.search import ShardSet  # noqa: E402
from lsr.sharded.layout import (ReadOnlyIndexError, index_size_bytes, is_sharded, read_sharded_manifest,  # noqa: E402
                                shard_of)
from tests.conftest import write_jsonl  # noqa: E402

QUERIES = ["parse command line arguments", "compress files with gzip", "regular expression matching",
           "send email over smtp", "threads and locks", "hash functions", "json encoder and decoder",
           "random numbers", "sqlite database", "tie breaking twin document"]
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def ray_runtime():
    ray = init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def vectors_file(tmp_path_factory, engine, encoder):
    """The session index's documents as precomputed vectors, plus six identical 'twins' (tied scores) whose ids
    hash to both shards."""
    path = tmp_path_factory.mktemp("vectors") / "vectors.jsonl"
    records = []
    for docno in range(engine.index.num_docs):
        doc = engine.docs.get(docno)
        vector = encoder.decode(*engine.index.doc_vector(docno))
        records.append({"id": doc.id, "title": doc.title, "contents": doc.text, "vector": vector})
    twin = encoder.decode(*encoder.encode_documents(["tie breaking twin document about twins"]).row(0))
    for i in range(6):
        records.insert(10 * i + 3, {"id": f"twin-{i}", "contents": "tie breaking twin document", "vector": twin})
    assert {shard_of(f"twin-{i}", 2) for i in range(6)} == {0, 1}
    return write_jsonl(path, records)


@pytest.fixture(scope="module")
def single(tmp_path_factory, vectors_file, encoder):
    return Engine.build(vectors_file, tmp_path_factory.mktemp("single") / "index", encoder=encoder,
                        structures=["bmp", "seismic"], dense=True, bm25=True, progress=False)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, vectors_file, encoder):
    out = tmp_path_factory.mktemp("sharded") / "index"
    build_sharded(vectors_file, out, 2, structures=["bmp", "seismic"], dense=True, bm25=True, progress=False,
                  encoder=encoder)
    engine = Engine.open(out, encoder=encoder)
    yield engine
    engine.close()


TEXT_MODULES = {"re", "statistics", "argparse", "getopt", "optparse", "json", "random", "secrets", "smtplib",
                "sqlite3"}


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory, module_docs):
    root = tmp_path_factory.mktemp("text-corpus")
    write_jsonl(root / "corpus.jsonl", [d for d in module_docs if d["metadata"]["module"] in TEXT_MODULES])
    return root


@pytest.fixture(scope="module")
def text_sharded(tmp_path_factory, text_corpus):
    """A small text corpus through `lsr index --shards 2`: two encoder actors."""
    out = tmp_path_factory.mktemp("text-sharded") / "index"
    result = runner.invoke(app, ["index", str(text_corpus), "--index", str(out), "--shards", "2", "--workers", "2",
                                 "--no-dense"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "into 2 shard(s)" in result.output and "2 encoder worker(s)" in result.output
    return out


def _ranked(hits):
    return [(h.id, h.score) for h in hits]


# ---------------------------------------------------------------------- routing and layout
def test_routing_is_stable_across_processes():
    ids = ["a", "b", "doc-1", "module:json#1", "é"]
    assert [shard_of(x, 2) for x in ids] == [0, 0, 0, 1, 1]  # fixed forever: indexes on disk depend on it
    assert [shard_of(x, 7) for x in ids] == [4, 0, 4, 1, 5]
    code = "from lsr.sharded.layout import shard_of; print([shard_of(x, 7) for x in %r])" % ids
    for seed in ("1", "2"):  # Python's own hash() would differ between these
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        assert out.strip() == "[4, 0, 4, 1, 5]"


def test_layout_and_shared_scale(sharded, single):
    root = sharded.index_dir
    manifest = read_sharded_manifest(root)
    assert is_sharded(root) and manifest["num_shards"] == 2 and len(manifest["shards"]) == 2
    assert manifest["num_docs"] == single.index.num_docs and manifest["num_postings"] == single.index.num_postings
    scales = {Engine.open(root / s["dir"]).manifest["quantization"]["scale"] for s in manifest["shards"]}
    assert scales == {single.manifest["quantization"]["scale"]} == {manifest["quantization"]["scale"]}
    for s in manifest["shards"]:  # every shard is a normal index holding only its own ids
        shard = Engine.open(root / s["dir"])
        assert {shard_of(i, 2) for i in shard.docs.ids()} == {int(s["dir"][-3:])}
    assert not [p for p in root.parent.iterdir() if ".building-" in p.name]


# ---------------------------------------------------------------------- sharded == single
@pytest.mark.parametrize("mode", ["exact", "bmp"])
@pytest.mark.parametrize("k", [1, 10, 60])
def test_sharded_equals_single_index(sharded, single, mode, k):
    for q in QUERIES:
        expected = single.search(q, k=k, mode=mode, retriever="sparse")
        got = sharded.search(q, k=k, mode=mode, retriever="sparse")
        assert _ranked(got) == _ranked(expected), (q, mode, k)  # same ids, same float scores, same order
    batch = sharded.search_batch(QUERIES, k=k, mode=mode, retriever="sparse")  # encoded together: compare a batch
    assert [_ranked(h) for h in batch] == [_ranked(h) for h in single.search_batch(QUERIES, k=k, mode=mode,
                                                                                   retriever="sparse")]


def test_ties_break_like_a_single_index(sharded, single):
    hits = sharded.search("tie breaking twin document", k=6, retriever="sparse")
    assert [h.id for h in hits] == [f"twin-{i}" for i in range(6)]  # corpus order across both shards
    assert len({h.score for h in hits}) == 1
    assert [h.docno for h in hits] == sorted(h.docno for h in hits)
    assert {h.docno % 2 for h in hits} == {0, 1}  # the global number names the shard


def test_inference_free_queries_use_collection_idf(sharded, single):
    for q in QUERIES:
        assert _ranked(sharded.search(q, k=10, retriever="sparse", query_encoder="inference-free")) == \
               _ranked(single.search(q, k=10, retriever="sparse", query_encoder="inference-free"))


def _seismic_recalls(sharded, single, queries, retriever: str) -> list[float]:
    """Recall@10 of the sharded index's seismic mode against the single index's exact top-10, per query."""
    recalls = []
    for q in queries:
        truth = {h.id for h in single.search(q, k=10, retriever=retriever)}
        recalls.append(len(truth & {h.id for h in sharded.search(q, k=10, mode="seismic", retriever=retriever)})
                       / len(truth))
    return recalls


def test_seismic_recall_against_exact(sharded, single):
    recalls = _seismic_recalls(sharded, single, QUERIES, "sparse")
    assert np.mean(recalls) >= 0.9, recalls


def test_documents_vectors_and_errors(sharded, single):
    doc_id = "module:json#1"
    assert sharded.document(doc_id).text == single.document(doc_id).text
    assert sharded.document_vector(doc_id, top=8) == single.document_vector(doc_id, top=8)
    terms, weights = sharded.query_vector("sqlite database")
    assert _ranked(sharded.search((terms, weights), k=5)) == _ranked(single.search((terms, weights), k=5))
    with pytest.raises(KeyError):
        sharded.document("no-such-id")
    with pytest.raises(ValueError, match="takes no parameters"):
        sharded.search("x", mode="exact", beta=0.5)
    with pytest.raises(ValueError, match="unknown mode"):
        sharded.search("x", mode="fast")
    info = sharded.info()
    assert info["documents"] == single.info()["documents"] and info["num_shards"] == 2
    assert info["terms"] == single.info()["terms"]
    assert sharded.docs.ids() == single.docs.ids()  # global numbers order documents like a single index
    assert isinstance(sharded.parts, IndexParts) and isinstance(sharded.index, SparseSide)
    assert isinstance(sharded.docs, DocumentSource) and isinstance(sharded.dense, DenseSide)


def test_sharded_index_refuses_changes(sharded):
    changes = {"add documents": lambda: sharded.add_documents([Document("new", "text")]),
               "delete documents": lambda: sharded.delete_documents(["module:json#1"]),
               "add structures": lambda: sharded.add_structures(["bmp"]),
               "add dense vectors": lambda: sharded.add_dense(progress=False)}
    for what, change in changes.items():
        with pytest.raises(ReadOnlyIndexError, match=f"is a sharded index, which cannot {what}: it is rebuilt"):
            change()
    assert sharded.refresh() is sharded


def test_failed_build_keeps_previous_index(tmp_path, encoder):
    bad = write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "vector": {"cat": 1.0}},
                                               {"id": "é", "vector": {"dog": 1.0}},  # the other shard
                                               {"id": "a", "vector": {"mat": 1.0}}])
    out = tmp_path / "idx"
    build_sharded(bad, out, 2, skip_bad=True, progress=False, encoder=encoder)  # 'a' twice: skipped, counted
    before = (out / "shards.json").read_text()
    assert json.loads(before)["skipped_records"] == 1 and json.loads(before)["num_docs"] == 2
    with pytest.raises(CorpusError, match=r"dup\.jsonl:3: field 'id': duplicate id 'a'"):
        build_sharded(bad, out, 2, progress=False, encoder=encoder)
    assert (out / "shards.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".idx")] == []


@pytest.mark.parametrize("retriever", ["dense", "hybrid"])
def test_dense_and_hybrid_through_shards(sharded, single, retriever):
    for q in QUERIES[:6]:
        got, expected = sharded.search(q, k=5, retriever=retriever), single.search(q, k=5, retriever=retriever)
        assert [h.id for h in got] == [h.id for h in expected], (q, retriever)
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], rel=1e-4, abs=1e-5)
        if retriever == "hybrid":
            assert [h.sparse_score for h in got] == pytest.approx([h.sparse_score for h in expected], rel=1e-4)


# ---------------------------------------------------------------------- the BM25 field through the shards
BM25_QUERIES = QUERIES + ["the module's functions", "command-line options parser", "twin twins twin"]


def test_bm25_collection_statistics(sharded, single):
    """Every shard's field has the collection's avgdl and vocabulary; document frequencies add up to a single
    index's, so idf agrees word by word."""
    manifest = read_sharded_manifest(sharded.index_dir)
    entry = manifest["bm25"]
    field, expected = sharded.parts.bm25, single.parts.bm25
    for shard in manifest["shards"]:  # a shard's recorded size counts its BM25 field too
        assert shard["size_bytes"] == index_size_bytes(sharded.index_dir / shard["dir"])
    assert entry["avgdl"] == field.avgdl == expected.avgdl and entry["num_docs"] == single.index.num_docs
    assert entry["num_postings"] == expected.index.num_postings
    assert sorted(field.vocab) == sorted(expected.vocab) and len(field.vocab) == entry["vocab_size"]
    ids = {word: i for i, word in enumerate(expected.vocab)}
    assert field.idf.tolist() == [expected.idf[ids[word]] for word in field.vocab]
    assert isinstance(field.index, SparseSide) and field.describe() == expected.describe()
    docno = single.docs.docno("module:json#1")
    terms, weights = field.index.doc_vector(sharded.docs.docno("module:json#1"))
    single_terms, single_weights = expected.index.doc_vector(docno)
    assert dict(zip([field.vocab[t] for t in terms], weights.tolist())) == \
           dict(zip([expected.vocab[t] for t in single_terms], single_weights.tolist()))


def test_bm25_on_reordered_shards(tmp_path, vectors_file, single, encoder):
    """Reordered shards analyze their field in the final document order: scores stay exact (ties at the k-th
    place may be cut differently, as for the learned field)."""
    out = tmp_path / "index"
    build_sharded(vectors_file, out, 2, structures=["bmp"], reorder="bp", bm25=True, progress=False, encoder=encoder)
    engine = Engine.open(out, encoder=encoder)
    try:
        assert runner.invoke(app, ["verify", "--index", str(out)]).exit_code == 0
        for q in BM25_QUERIES:
            for mode in ("exact", "bmp"):
                got, expected = engine.search(q, k=10, mode=mode, retriever="bm25"), single.search(q, k=10,
                                                                                                   retriever="bm25")
                assert [h.score for h in got] == [h.score for h in expected], (q, mode)
                cut = expected[-1].score if len(expected) == 10 else -1.0
                assert {h.id for h in got if h.score > cut} == {h.id for h in expected if h.score > cut}
    finally:
        engine.close()


@pytest.mark.parametrize("mode", ["exact", "bmp"])
@pytest.mark.parametrize("k", [1, 10, 60])
def test_bm25_sharded_equals_single_index(sharded, single, mode, k):
    for q in BM25_QUERIES:  # same quantized impacts, same quantized query: same ids, float scores and order
        got = sharded.search(q, k=k, mode=mode, retriever="bm25")
        assert _ranked(got) == _ranked(single.search(q, k=k, mode=mode, retriever="bm25")), (q, mode, k)
        assert got and got[0].bm25_score == got[0].score
    batch = sharded.search_batch(BM25_QUERIES, k=k, mode=mode, retriever="bm25")
    assert [_ranked(h) for h in batch] == [_ranked(h) for h in single.search_batch(BM25_QUERIES, k=k, mode=mode,
                                                                                   retriever="bm25")]
    def candidates(engine):  # document numbers differ (global ones on shards): compare ids
        return [[(engine.docs.get(d).id, s) for d, s in hits] for hits in engine.bm25_candidates(BM25_QUERIES, k=k,
                                                                                                  mode=mode)]
    assert candidates(sharded) == candidates(single)


def test_bm25_ties_and_seismic_through_shards(sharded, single):
    hits = sharded.search("tie breaking twin document", k=6, retriever="bm25")
    assert [h.id for h in hits] == [f"twin-{i}" for i in range(6)]  # tied across both shards: corpus order
    assert {h.docno % 2 for h in hits} == {0, 1} and len({h.score for h in hits}) == 1
    recalls = _seismic_recalls(sharded, single, BM25_QUERIES, "bm25")
    assert np.mean(recalls) >= 0.9, recalls


@pytest.mark.parametrize("retriever", ["auto", "sparse+bm25"])
def test_fusion_with_bm25_through_shards(sharded, single, retriever):
    assert sharded.resolve_retriever(retriever) == single.resolve_retriever(retriever)
    assert "bm25" in sharded.resolve_retriever(retriever)
    for q in QUERIES[:6]:
        got, expected = sharded.search(q, k=5, retriever=retriever), single.search(q, k=5, retriever=retriever)
        assert [h.id for h in got] == [h.id for h in expected], (q, retriever)
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], rel=1e-4, abs=1e-5)
        assert [h.bm25_score for h in got] == [h.bm25_score for h in expected]  # missing ones scored by the shards


def test_bm25_field_is_verified(sharded, tmp_path):
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(sharded.index_dir, copy)
    assert runner.invoke(app, ["verify", "--index", str(copy)]).exit_code == 0
    vocab = copy / "shard-001" / "bm25" / "vocab.txt"
    vocab.write_text(vocab.read_text(encoding="utf-8") + "extra\n", encoding="utf-8")
    result = runner.invoke(app, ["verify", "--index", str(copy)])
    assert result.exit_code == 1 and "vocab.txt: missing, or sha256 mismatch" in result.output


def test_no_bm25_flag_and_text_default(text_sharded, tmp_path, encoder):
    assert read_sharded_manifest(text_sharded)["bm25"]["analyzer"] == "word"  # on by default for text corpora
    docs = [{"id": i, "contents": f"document {i} about parsing"} for i in ("a", "b", "doc-1", "é")]
    corpus = write_jsonl(tmp_path / "tiny.jsonl", docs)
    out = tmp_path / "idx"
    result = runner.invoke(app, ["index", str(corpus), "--index", str(out), "--shards", "2", "--workers", "1",
                                 "--no-dense", "--no-bm25", "--structures", "none"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "bm25" not in read_sharded_manifest(out)
    assert not any((out / d / "bm25").exists() for d in ("shard-000", "shard-001"))
    engine = Engine.open(out, encoder=encoder)
    try:
        assert not engine.has_bm25 and engine.resolve_retriever("auto") == ("sparse",)
        with pytest.raises(ValueError, match="has no BM25 field"):
            engine.search("parsing", retriever="bm25")
    finally:
        engine.close()


# ---------------------------------------------------------------------- text path: CLI, filters, server
def test_cli_index_search_info_verify_and_filter(text_sharded, text_corpus, encoder, tmp_path):
    result = runner.invoke(app, ["search", "parse command line arguments", "--index", str(text_sharded), "-k", "5",
                                 "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    hits = answer["hits"]
    single = Engine.build(text_corpus, tmp_path / "single", encoder=encoder, progress=False)  # BM25 on, no dense
    expected = single.search("parse command line arguments", k=5)  # the default, auto: sparse+bm25 on both
    assert [h["id"] for h in hits][:3] == [h.id for h in expected][:3]  # encoded in other batches: floats differ
    assert [h["score"] for h in hits] == pytest.approx([h.score for h in expected], rel=1e-2)
    bm25 = {h.id: h.bm25_score for h in expected}  # BM25 does not depend on the model's floats: equal
    assert all(h["bm25_score"] is not None and h["sparse_score"] is not None for h in hits)
    assert [h["bm25_score"] for h in hits if h["id"] in bm25] == [bm25[h["id"]] for h in hits if h["id"] in bm25]
    assert hits[0]["id"].split("#")[0] in {"module:argparse", "module:getopt", "module:optparse"}
    info = runner.invoke(app, ["info", "--index", str(text_sharded)], catch_exceptions=False).output
    assert "shards" in info and "blake2b" in info and "word analyzer, k1 0.9, b 0.4" in info
    assert runner.invoke(app, ["verify", "--index", str(text_sharded)]).exit_code == 0
    sharded = Engine.open(text_sharded, encoder=encoder)  # metadata filters: ranked, then filtered
    try:
        everything = sharded.search("regular expression matching", k=50)
        filtered = sharded.search("regular expression matching", k=3, filter={"module": "re"})
        assert [h.id for h in filtered] == [h.id for h in everything if h.id.startswith("module:re#")][:3]
        assert all(sharded.document(h.id).metadata["module"] == "re" for h in filtered)
    finally:
        sharded.close()


def test_server_searches_through_the_coordinator(sharded, single):
    from lsr.server.app import create_app

    with TestClient(create_app(sharded.index_dir, load="now")) as client:
        r = client.get("/search", params={"q": "parse command line arguments", "k": 5, "retriever": "sparse"})
        assert r.status_code == 200, r.text
        assert isinstance(client.app.state.lsr.engine.parts, ShardSet)
        expected = single.search("parse command line arguments", k=5, retriever="sparse")
        hits = r.json()["hits"]
        assert [h["id"] for h in hits] == [h.id for h in expected]  # the server encodes on its own torch thread
        assert [h["score"] for h in hits] == pytest.approx([h.score for h in expected], rel=1e-5)
        assert hits[0]["snippet"] and hits[0]["highlights"]
        for retriever in ("bm25", "auto"):  # the BM25 field through the coordinator, alone and fused
            r = client.get("/search", params={"q": "parse command line arguments", "k": 5, "retriever": retriever})
            assert r.status_code == 200, r.text
            expected = single.search("parse command line arguments", k=5, retriever=retriever)
            assert r.json()["retriever"] == ("bm25" if retriever == "bm25" else "sparse+dense+bm25")
            assert [h["id"] for h in r.json()["hits"]] == [h.id for h in expected]
            assert [h["bm25_score"] for h in r.json()["hits"]] == pytest.approx([h.bm25_score for h in expected],
                                                                                rel=1e-6)
        r = client.post("/search", json={"q": "random numbers", "k": 3, "retriever": "hybrid", "explain": True,
                                         "fields": ["title", "sparse_score", "dense_score"]})
        assert r.status_code == 200, r.text
        assert [h["id"] for h in r.json()["hits"]] == [h.id for h in single.search("random numbers", k=3,
                                                                                   retriever="hybrid")]
        assert all(h["explain"] and h["dense_score"] is not None for h in r.json()["hits"])
        r = client.post("/search/batch", json={"queries": ["send email", "random numbers"], "k": 3})
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        doc = client.get("/documents/module:argparse%231", params={"terms": 5}).json()
        assert doc["text"].startswith("Command-line parsing") and len(doc["terms"]) == 5
        assert client.get("/documents/no-such-doc").status_code == 404
        r = client.get("/search", params={"q": "x", "mode": "seismic", "k": 3})
        assert r.status_code == 200 and r.json()["mode"] == "seismic"
        assert client.post("/search", json={"q": "x", "params": {"beta": 0.5}}).status_code == 422
        stats = client.get("/stats").json()
        assert stats["documents"] == single.index.num_docs and stats["index_size_bytes"] > 0
        assert set(stats["modes"]) == {"exact", "bmp", "bmp-approx", "seismic"}
