"""ONNX Runtime query encoders: export and cache, agreement with torch, and the query-runtime setting everywhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from lsr import Engine
from lsr import evaluation as ev
from lsr.cli import app
from lsr.models import DEFAULT_SPLADE, embedded_model_path, model_hash
from lsr.onnx_encoders import CACHE_ENV, OnnxDenseEncoder, OnnxSpladeEncoder, onnx_cache_dir
from lsr.server.app import create_app
from tests.test_eval import make_dataset

runner = CliRunner()

QUERIES = ["parse command line arguments", "compress files with gzip", "regular expression matching",
           "send email over smtp", "random numbers", "how do I read a csv file", "json", "",
           "sqlite database cursor execute", "thread pool executor futures", "date and time zones",
           "serialize python objects to bytes with pickle", "temporary files and directories", "   "]


@pytest.fixture(scope="module", autouse=True)
def onnx_cache(tmp_path_factory) -> Path:
    """Exports of this module go to a fresh cache directory (``$LSR_ONNX_CACHE``, also read by servers/CLI)."""
    cache = tmp_path_factory.mktemp("onnx-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(cache))
        yield cache


@pytest.fixture(scope="module")
def splade_int8(onnx_cache) -> OnnxSpladeEncoder:
    return OnnxSpladeEncoder(int8=True)


@pytest.fixture(scope="module")
def splade_fp32(onnx_cache) -> OnnxSpladeEncoder:
    return OnnxSpladeEncoder(int8=False)


def test_export_is_recorded_and_reused(onnx_cache, splade_int8):
    assert onnx_cache_dir() == onnx_cache
    model_sha = model_hash(embedded_model_path(DEFAULT_SPLADE))
    directory = onnx_cache / model_sha[:16]
    record = json.loads((directory / "splade.json").read_text())
    assert splade_int8.directory == directory and record["source"]["sha256"] == model_sha == splade_int8.hash
    import hashlib

    for entry in record["files"].values():
        assert hashlib.sha256((directory / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    stamps = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    again = OnnxSpladeEncoder(int8=False)  # the same export, fp32 variant: nothing is written
    assert again.directory == directory
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == stamps


def test_changed_model_or_corrupt_file_is_exported_again(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(embedded_model_path(DEFAULT_SPLADE), model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "note": "changed"}))  # same weights, new hash
    cache = tmp_path / "cache"
    first = OnnxSpladeEncoder(str(model), cache_dir=cache)
    assert first.hash == model_hash(model) != model_hash(embedded_model_path(DEFAULT_SPLADE))
    assert first.directory == cache / first.hash[:16]
    (model / "config.json").write_text(json.dumps({**config, "note": "changed again"}))
    second = OnnxSpladeEncoder(str(model), cache_dir=cache)
    assert second.directory != first.directory
    assert json.loads((second.directory / "splade.json").read_text())["source"]["sha256"] == model_hash(model)
    int8_file = second.directory / "splade-int8.onnx"
    int8_file.write_bytes(b"corrupt")
    third = OnnxSpladeEncoder(str(model), cache_dir=cache)  # sha256 mismatch: made again, and it works
    assert int8_file.stat().st_size > 1000
    assert third.encode_query("gzip")[0].size > 0


def test_cached_export_needs_no_torch(engine, splade_int8):
    code = ("import sys\n"
            "from lsr import Engine\n"
            f"e = Engine.open({str(engine.index_dir)!r}, query_runtime='onnx-int8')\n"
            "hits = e.search('send email over smtp', k=3)\n"
            "print(hits[0].id, e.query_encoder().runtime, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300,
                         env=os.environ)  # the module's cache, where splade_int8 exported the model
    doc, runtime, torch_loaded = out.stdout.split()
    assert doc.startswith("module:smtplib") and runtime == "onnx-int8" and torch_loaded == "False"


def test_fp32_and_int8_vectors_match_torch(encoder, splade_fp32, splade_int8):
    reference = encoder.encode_queries(QUERIES)
    for onnx in (splade_fp32, splade_int8):
        batch = onnx.encode_queries(QUERIES, batch_size=4)  # padded, length-sorted batches
        for i, text in enumerate(QUERIES):
            terms, weights = reference.row(i)
            for got_terms, got_weights in (batch.row(i), onnx.encode_query(text)):
                np.testing.assert_array_equal(got_terms, terms, err_msg=f"{onnx.runtime}: {text!r}")
                np.testing.assert_allclose(got_weights, weights, rtol=1e-4, atol=1e-4)
    assert splade_int8.encode_queries([]).indptr.tolist() == [0]


def test_int8_search_agrees_with_torch(engine):
    torch_engine = Engine.open(engine.index_dir, query_runtime="torch")
    int8_engine = Engine.open(engine.index_dir, query_runtime="onnx-int8")
    texts = [q for q in QUERIES if q.strip()]
    recall = [len({h.id for h in a} & {h.id for h in b}) / len(a)
              for a, b in zip(torch_engine.search_batch(texts, k=10), int8_engine.search_batch(texts, k=10))]
    assert min(len(r) for r in int8_engine.search_batch(texts, k=10)) == 10 and np.mean(recall) >= 0.95


def test_dense_onnx_matches_torch(onnx_cache):
    from lsr.dense import DenseEncoder

    reference = DenseEncoder().encode_queries(QUERIES)
    fp32, int8 = OnnxDenseEncoder(int8=False), OnnxDenseEncoder(int8=True)
    assert fp32.directory == int8.directory and (fp32.directory / "dense.json").is_file()
    np.testing.assert_allclose(fp32.encode_queries(QUERIES, batch_size=4), reference, atol=1e-4)
    cosine = (int8.encode_queries(QUERIES) * reference).sum(axis=1)
    assert cosine.min() > 0.95 and cosine.mean() > 0.98


def test_engine_honours_the_runtime(engine, hybrid_engine):
    opened = Engine.open(engine.index_dir, query_runtime="onnx")
    assert opened.query_runtime == "onnx" and opened.query_encoder().runtime == "onnx"
    assert opened.query_encoder(runtime="torch").runtime == "torch"
    default = Engine.open(hybrid_engine.index_dir)
    assert default.query_runtime == "auto"  # per model: SPLADE int8, dense fp32
    assert default.query_encoder().runtime == "onnx-int8" and default.dense_query_encoder().runtime == "onnx"
    assert opened.query_encoder("inference-free").name == "inference-free"  # no model, no runtime
    query = "parse command line arguments"
    by_torch = [(h.id, round(h.score, 3)) for h in opened.search(query, k=5, query_runtime="torch")]
    assert [(h.id, round(h.score, 3)) for h in opened.search(query, k=5)] == by_torch
    with pytest.raises(ValueError, match="unknown query runtime 'tensorflow'"):
        opened.search(query, query_runtime="tensorflow")
    with pytest.raises(ValueError, match="unknown query runtime"):
        Engine.open(engine.index_dir, query_runtime="gpu")
    hybrid = Engine.open(hybrid_engine.index_dir, query_runtime="torch")
    assert hybrid.dense_query_encoder().runtime == "torch"
    assert hybrid.dense_query_encoder("onnx-int8").runtime == "onnx-int8"
    torch_hits = hybrid.search("random numbers", k=5, retriever="hybrid")
    onnx_hits = hybrid.search("random numbers", k=5, retriever="hybrid", query_runtime="onnx")
    assert [h.id for h in onnx_hits] == [h.id for h in torch_hits]
    batch = hybrid.search_batch(["random numbers"], k=5, retriever="dense", query_runtime="onnx")
    assert [h.id for h in batch[0]] == [h.id for h in hybrid.search("random numbers", k=5, retriever="dense")]


def test_cli_search_takes_the_runtime(engine):
    outputs = {}
    for runtime in ("torch", "onnx", "onnx-int8"):
        result = runner.invoke(app, ["search", "compress files with gzip", "--index", str(engine.index_dir), "--json",
                                     "--query-runtime", runtime])
        assert result.exit_code == 0, result.output
        outputs[runtime] = [h["id"] for h in json.loads(result.stdout)["hits"]]
    assert outputs["onnx"] == outputs["torch"] == outputs["onnx-int8"]
    bad = runner.invoke(app, ["search", "x", "--index", str(engine.index_dir), "--query-runtime", "cuda"])
    assert bad.exit_code != 0 and "unknown query runtime 'cuda'" in bad.output


def test_server_uses_the_runtime(hybrid_engine):
    with TestClient(create_app(hybrid_engine.index_dir, load="now", warmup=False, query_runtime="onnx")) as client:
        engine = client.app.state.lsr.engine
        assert engine.query_runtime == "onnx" and engine.query_encoder().runtime == "onnx"
        assert engine.dense_query_encoder().runtime == "onnx"
        r = client.get("/search", params={"q": "parse command line arguments", "k": 5, "retriever": "hybrid"})
        assert r.status_code == 200, r.text
        expected = hybrid_engine.search("parse command line arguments", k=5, retriever="hybrid",
                                        query_runtime="torch")
        assert [h["id"] for h in r.json()["hits"]] == [h.id for h in expected]
    with pytest.raises(ValueError, match="unknown query runtime"):
        create_app(hybrid_engine.index_dir, load="never", query_runtime="int4")


def test_eval_records_the_runtime(tmp_path, corpus_dir, engine):
    dataset = make_dataset(tmp_path / "tiny", corpus_dir)
    cache = tmp_path / "cache"
    by_torch = ev.run_eval(dataset, cache_dir=cache, adopt=engine.index_dir, progress=False, query_runtime="torch")
    result = runner.invoke(app, ["eval", str(dataset), "--cache-dir", str(cache), "--json", "--no-progress",
                                 "--query-runtime", "onnx-int8"])
    assert result.exit_code == 0, result.output
    by_int8 = json.loads(result.stdout)
    assert by_torch["query_runtime"] == "torch" and by_int8["query_runtime"] == "onnx-int8"
    assert abs(by_int8["ndcg@10"] - by_torch["ndcg@10"]) <= 0.005
    with pytest.raises(ValueError, match="unknown query runtime"):
        ev.run_eval(dataset, cache_dir=cache, progress=False, query_runtime="nope")
