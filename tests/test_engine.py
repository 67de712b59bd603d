"""End-to-end: real model, real on-disk index, the Engine facade."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from lsr import Engine
from lsr.corpus import CorpusError
from lsr.engine import ModelMismatchError
from tests.conftest import write_jsonl


def test_relevant_documents_come_first(engine):
    assert engine.search("parse command line arguments", k=3)[0].id.split("#")[0] in {"module:argparse", "module:getopt", "module:optparse"}
    assert engine.search("send email over smtp", k=3)[0].id.startswith("module:smtplib")
    assert {h.id.split("#")[0] for h in engine.search("json encoder and decoder", k=2)} == {"module:json"}
    assert any(h.id.startswith("module:re#") for h in engine.search("regular expression matching", k=3))


def test_search_equals_brute_force_over_the_stored_vectors(engine):
    index = engine.index
    n, vocab = index.num_docs, index.vocab_size
    offsets = np.asarray(index.array("forward_offsets"))
    matrix = sp.csr_matrix(
        (np.asarray(index.array("forward_impacts"), np.int64), np.asarray(index.array("forward_terms")), offsets),
        shape=(n, vocab),
    )
    for text in ["parse command line arguments", "threads and locks", "hash functions"]:
        terms, weights = engine.query_vector(text)
        hits = engine.search(text, k=20, retriever="sparse")
        query = np.zeros(vocab)
        query[terms] = weights
        brute = matrix @ query * index.scale
        expected = np.lexsort((np.arange(n), -brute))[:20]
        assert [h.docno for h in hits] == list(expected)
        np.testing.assert_allclose([h.score for h in hits], brute[expected], rtol=1e-4)


def test_query_forms_agree(engine):
    text_hits = engine.search("sqlite database", k=5, retriever="sparse")
    terms, weights = engine.query_vector("sqlite database")
    vector_hits = engine.search((terms, weights), k=5)
    token_hits = engine.search(engine.encoder.decode(terms, weights), k=5)
    assert [h.id for h in text_hits] == [h.id for h in vector_hits] == [h.id for h in token_hits]


def test_batch_equals_single(engine):
    queries = ["parse command line arguments", "compress files with gzip", "random numbers", ""]
    batch = engine.search_batch(queries, k=7)
    assert [[h.id for h in hits] for hits in batch] == [[h.id for h in engine.search(q, k=7)] for q in queries]
    assert batch[-1] == []


def test_documents_and_empty_document(engine, module_docs):
    doc = engine.document("empty-doc")
    assert doc.text == "" and doc.title == ""
    first = module_docs[0]
    assert engine.document(first["_id"]).text == first["text"]
    with pytest.raises(KeyError):
        engine.document("no-such-id")
    vector = engine.document_vector("module:json#1", top=5)
    assert len(vector) == 5 and "##son" in vector and list(vector.values()) == sorted(vector.values(), reverse=True)


def test_info_and_manifest(engine, module_docs):
    info = engine.info()
    assert info["documents"] == len(module_docs) + 1
    assert info["postings"] > 0 and info["size_bytes"] > 0
    assert info["model"]["name"] == "splade-tiny" and len(info["model"]["sha256"]) == 64


def test_vectors_round_trip(engine, encoder, tmp_path):
    exported = tmp_path / "vectors.jsonl"
    assert engine.export_vectors(exported) == engine.index.num_docs
    rebuilt = Engine.build(exported, tmp_path / "from-vectors", encoder=encoder, progress=False)
    for text in ["parse command line arguments", "email messages"]:
        assert [(h.id, round(h.score, 3)) for h in rebuilt.search(text, k=10, retriever="sparse")] == \
               [(h.id, round(h.score, 3)) for h in engine.search(text, k=10, retriever="sparse")]


def test_bad_vectors_name_file_line_field(encoder, tmp_path):
    path = write_jsonl(tmp_path / "v.jsonl", [
        {"id": "a", "vector": {"hello": 1.0}},
        {"id": "b", "vector": {"hello": -2}},
    ])
    with pytest.raises(CorpusError, match=r"v\.jsonl:2: field 'vector\.hello'"):
        Engine.build(path, tmp_path / "idx", encoder=encoder, progress=False)
    path = write_jsonl(tmp_path / "w.jsonl", [{"id": "a", "vector": {"hello": 1.0}}, {"id": "b", "vector": {"zzqxj_notatoken": 1.0}}])
    with pytest.raises(CorpusError, match=r"w\.jsonl:2: field 'vector\.zzqxj_notatoken'"):
        Engine.build(path, tmp_path / "idx", encoder=encoder, progress=False)


def test_failed_build_keeps_previous_index(encoder, tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"id": "a", "text": "the cat sat on the mat"}, {"id": "b", "text": "dogs bark"}])
    index_dir = tmp_path / "idx"
    Engine.build(good, index_dir, encoder=encoder, progress=False)
    files = lambda: {str(p.relative_to(index_dir)): p.read_bytes() for p in index_dir.rglob("*") if p.is_file()}
    before = files()
    assert "bm25/manifest.json" in before
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "text": "fine"}\n{"id": "y", "text": "also fine"}\n{"id": "z", "text": \n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad\.jsonl:3"):
        Engine.build(bad, index_dir, encoder=encoder, progress=False)
    assert files() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".idx")] == []
    assert Engine.open(index_dir).search("cat on a mat", k=1)[0].id == "a"


def test_duplicate_ids(encoder, tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "text": "one"}, {"id": "b", "text": "two"}, {"id": "a", "text": "three"}])
    with pytest.raises(CorpusError, match=r"dup\.jsonl:3: field 'id': duplicate id 'a'"):
        Engine.build(path, tmp_path / "idx", encoder=encoder, progress=False)
    engine = Engine.build(path, tmp_path / "idx", encoder=encoder, skip_bad=True, progress=False)
    assert engine.index.num_docs == 2 and engine.manifest["skipped_records"] == 1
    assert engine.document("a").text == "one"


def test_model_mismatch_is_refused(engine, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(engine.index_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelMismatchError, match="sha256"):
        Engine.open(copy).search("anything")


def test_bad_arguments(engine):
    with pytest.raises(ValueError, match="k must be"):
        engine.search("x", k=0)
    with pytest.raises(ValueError, match="unknown mode"):
        engine.search("x", mode="fast")
    with pytest.raises(FileNotFoundError, match="no index"):
        Engine.open(Path("/nonexistent/index"))
