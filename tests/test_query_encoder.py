"""Inference-free queries: the IDF table in the index, tokenizer-only encoding, and every surface that takes it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from lsr.index.storage import IndexFormatError, read_manifest, write_manifest
from lsr import Engine
from lsr import evaluation as ev
from lsr.cli import app
from lsr.query_encoders import IDF_ARRAY, TOKENIZER_FILE, bm25_idf
from lsr.server.app import create_app
from tests.test_eval import make_dataset

runner = CliRunner()
FREE = "inference-free"


def _strip_table(index_dir: Path) -> None:
    """Make an index look like one built before the inference-free table existed."""
    manifest = read_manifest(index_dir)
    manifest["arrays"].pop(IDF_ARRAY)
    manifest.pop("inference_free")
    write_manifest(index_dir, manifest)
    (index_dir / f"{IDF_ARRAY}.npy").unlink()
    (index_dir / TOKENIZER_FILE).unlink()


@pytest.fixture(scope="module")
def old_index(engine, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("old") / "index"
    shutil.copytree(engine.index_dir, target)
    _strip_table(target)
    return target


def test_build_stores_the_idf_table(engine):
    m = engine.manifest
    info = m["inference_free"]
    assert m["arrays"][IDF_ARRAY]["dtype"] == "float32" and m["arrays"][IDF_ARRAY]["shape"] == [m["vocab_size"]]
    assert len(m["arrays"][IDF_ARRAY]["sha256"]) == 64 and len(info["tokenizer"]["sha256"]) == 64
    idf = np.load(engine.index_dir / f"{IDF_ARRAY}.npy")
    df = np.diff(np.asarray(engine.index.array("postings_offsets")))
    expected = bm25_idf(df, m["num_docs"])
    special = engine.encoder.tokenizer.all_special_ids
    expected[special] = 0
    np.testing.assert_allclose(idf, expected, rtol=1e-6)
    assert idf[df == 0].max() == 0 and (idf[df > 0] > 0).mean() > 0.99
    assert runner.invoke(app, ["verify", "--index", str(engine.index_dir)]).exit_code == 0


def test_query_vector_is_idf_of_unique_tokens(engine):
    text = "Parse parse the command-line arguments"
    terms, weights = engine.query_vector(text, query_encoder=FREE)
    ids = engine.encoder.tokenizer(text, add_special_tokens=False)["input_ids"]
    idf = np.load(engine.index_dir / f"{IDF_ARRAY}.npy")
    want = sorted(i for i in set(ids) if idf[i] > 0)
    assert list(terms) == want and terms.dtype == np.uint32
    np.testing.assert_allclose(weights, idf[want])
    assert engine.query_vector("", query_encoder=FREE)[0].size == 0


def test_inference_free_search_is_sensible_and_needs_no_model(engine):
    fresh = Engine.open(engine.index_dir)
    for query, module in (("parse command line arguments", "module:argparse"), ("send email over smtp", "module:smtplib"),
                          ("json encoder decoder", "module:json")):
        hits = fresh.search(query, k=10, query_encoder=FREE, retriever="sparse")
        terms, weights = fresh.query_vector(query, query_encoder=FREE)
        assert [(h.id, h.score) for h in hits] == [(h.id, h.score) for h in fresh.search((terms, weights), k=10, retriever="sparse")]
        assert any(h.id.startswith(module) for h in hits)  # the module's own passages are among the top 10
    assert fresh._encoder is None  # the SPLADE model was never loaded
    queries = ["parse command line arguments", "compress files with gzip", "random numbers", ""]
    batch = fresh.search_batch(queries, k=5, query_encoder=FREE)
    assert [[h.id for h in hits] for hits in batch] == \
        [[h.id for h in fresh.search(q, k=5, query_encoder=FREE)] for q in queries]
    assert batch[-1] == [] and fresh._encoder is None
    with pytest.raises(ValueError, match="unknown query encoder 'nope'"):
        fresh.search("x", query_encoder="nope")


def test_query_path_never_imports_torch(engine):
    code = (
        "import json, sys\n"
        "from lsr import Engine\n"
        f"e = Engine.open({str(engine.index_dir)!r})\n"
        "hits = e.search('send email over smtp', k=3, query_encoder='inference-free')\n"
        "terms, weights = e.inference_free.encode_query('regular expression matching')\n"
        "print(json.dumps({'hits': [[h.id, h.score] for h in hits], 'terms': terms.tolist(),"
        " 'weights': weights.tolist(), 'torch': 'torch' in sys.modules}))\n"
    )
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    timeout=120).stdout)
    assert out["torch"] is False
    assert out["hits"] == [[h.id, h.score] for h in engine.search("send email over smtp", k=3, query_encoder=FREE)]
    terms, weights = engine.query_vector("regular expression matching", query_encoder=FREE)
    assert out["terms"] == terms.tolist() and out["weights"] == weights.tolist()
    cli = subprocess.run([sys.executable, "-c",
                          "import sys; from lsr.cli import app\n"
                          "try: app(['search', 'sqlite database', '--index', sys.argv[1], '--json', '--threads', '1',"
                          " '--query-encoder', 'inference-free'])\n"
                          "except SystemExit: pass\n"
                          "print('torch' in sys.modules, file=sys.stderr)", str(engine.index_dir)],
                         capture_output=True, text=True, check=True, timeout=120)
    library = engine.search("sqlite database", k=10, query_encoder=FREE)
    assert [h["id"] for h in json.loads(cli.stdout)["hits"]] == [h.id for h in library]
    assert cli.stderr.strip() == "False"


def test_old_index_gets_a_clear_error_then_the_table(engine, old_index):
    with pytest.raises(IndexFormatError, match=r"lsr index --add-inference-free --index"):
        Engine.open(old_index).search("gzip", query_encoder=FREE)
    result = runner.invoke(app, ["search", "gzip", "--index", str(old_index), "--query-encoder", FREE])
    assert result.exit_code == 2 and "--add-inference-free" in result.output
    assert "no (add with --add-inference-free)" in runner.invoke(app, ["info", "--index", str(old_index)]).output
    result = runner.invoke(app, ["index", "--add-inference-free", "--index", str(old_index)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["verify", "--index", str(old_index)]).exit_code == 0
    added = Engine.open(old_index)
    for q in ("parse command line arguments", "threads and locks"):
        assert [(h.id, h.score) for h in added.search(q, k=10, query_encoder=FREE)] == \
            [(h.id, h.score) for h in engine.search(q, k=10, query_encoder=FREE)]
    _strip_table(old_index)  # leave it as the other tests expect


def test_cli_search_and_unknown_encoder(engine):
    result = runner.invoke(app, ["search", "send email over smtp", "--index", str(engine.index_dir), "--json",
                                 "--query-encoder", FREE])
    assert result.exit_code == 0, result.output
    library = engine.search("send email over smtp", k=10, query_encoder=FREE)
    assert [(h["id"], h["score"]) for h in json.loads(result.stdout)["hits"]] == \
        [(h.id, h.score) for h in library]
    bad = runner.invoke(app, ["search", "x", "--index", str(engine.index_dir), "--query-encoder", "bm25"])
    assert bad.exit_code == 2 and "unknown query encoder 'bm25'" in bad.output


def test_hybrid_with_inference_free_sparse_side(hybrid_engine):
    hits = hybrid_engine.search("random numbers", k=5, retriever="hybrid", query_encoder=FREE)
    assert len(hits) == 5 and any(h.id.startswith("module:random") for h in hits)
    batch = hybrid_engine.search_batch(["random numbers"], k=5, retriever="hybrid", query_encoder=FREE)
    assert [h.id for h in batch[0]] == [h.id for h in hits]


def test_eval_records_the_query_encoder(tmp_path, corpus_dir, old_index, engine):
    dataset = make_dataset(tmp_path / "tiny", corpus_dir)
    cache = tmp_path / "cache"
    model = ev.run_eval(dataset, cache_dir=cache, adopt=old_index, progress=False)
    free = ev.run_eval(dataset, cache_dir=cache, query_encoder=FREE, progress=False)  # adds the table to the cache
    assert model["query_encoder"] == "model" and free["query_encoder"] == FREE
    assert ev.result_key(model) == "sparse-exact" and ev.result_key(free) == "sparse-exact-inference-free"
    assert free["ndcg@10"] > 0.5 and free["details"]["query_encoder"] == FREE
    assert free["nnz"]["doc"] == model["nnz"]["doc"] > 0 and 0 < free["nnz"]["query"] < model["nnz"]["query"]
    queries = ev.load_dataset(dataset).queries.values()
    assert free["nnz"]["query"] == round(float(np.mean([len(engine.query_vector(q, query_encoder=FREE)[0])
                                                          for q in queries])), 2)
    result = runner.invoke(app, ["eval", str(dataset), "--cache-dir", str(cache), "--query-encoder", FREE, "--json",
                                 "--no-progress", "--results-dir", str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "results" / "tiny__sparse-exact-inference-free.json").is_file()
    with pytest.raises(ev.EvalError, match="applies to retrievers with a sparse side"):
        ev.run_eval(dataset, retriever="bm25", query_encoder=FREE, cache_dir=cache, progress=False)
    with pytest.raises(ev.EvalError, match="unknown query encoder"):
        ev.run_eval(dataset, query_encoder="nope", cache_dir=cache, progress=False)


@pytest.fixture(scope="module")
def client(hybrid_engine):
    with TestClient(create_app(hybrid_engine.index_dir, load="now", warmup=False)) as c:
        yield c


def test_server_query_encoder_field(client, hybrid_engine):
    r = client.get("/search", params={"q": "parse command line arguments", "k": 5, "query_encoder": FREE})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query_encoder"] == FREE
    expected = hybrid_engine.search("parse command line arguments", k=5, query_encoder=FREE)
    assert [h["id"] for h in body["hits"]] == [h.id for h in expected]
    assert body["hits"][0]["highlights"]
    assert client.get("/search", params={"q": "x"}).json()["query_encoder"] == "model"
    post = client.post("/search", json={"q": "random numbers", "k": 3, "retriever": "hybrid", "query_encoder": FREE,
                                        "explain": True})
    assert post.status_code == 200, post.text
    assert all(not t["expansion"] for h in post.json()["hits"] for t in h["explain"])  # only the query's own tokens
    batch = client.post("/search/batch", json={"queries": ["random numbers", "send email"], "k": 3,
                                               "query_encoder": FREE})
    assert batch.status_code == 200 and [r["query_encoder"] for r in batch.json()["results"]] == [FREE, FREE]
    assert client.get("/search", params={"q": "x", "query_encoder": "bert"}).status_code == 422
    assert client.post("/search", json={"q": "x", "query_encoder": None}).status_code == 422
    assert FREE in client.get("/stats").json()["query_encoders"]


def test_server_index_without_table_is_422(old_index):
    with TestClient(create_app(old_index, load="now", warmup=False)) as c:
        r = c.get("/search", params={"q": "gzip", "query_encoder": FREE})
        assert r.status_code == 422 and "--add-inference-free" in r.json()["detail"]
        assert c.get("/search", params={"q": "gzip"}).status_code == 200
