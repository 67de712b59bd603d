"""The HTTP server over a real index (built from the fixture corpus): endpoints, errors, micro-batching."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi.testclient import TestClient

from lsr.server.app import create_app
from lsr.server.schemas import MAX_QUERY_CHARS


@pytest.fixture(scope="module")
def client(hybrid_engine):
    app = create_app(hybrid_engine.index_dir, load="now", max_batch=32)
    with TestClient(app) as c:
        yield c


def test_health_page_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and 'id="q"' in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/search/batch", "/documents/{doc_id}", "/healthz", "/stats"} <= set(paths)


def test_get_search_sparse(client, hybrid_engine):
    r = client.get("/search", params={"q": "parse command line arguments", "k": 5, "retriever": "sparse"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["retriever"] == "sparse" and body["mode"] == "exact" and body["k"] == 5 and body["took_ms"] > 0
    assert "fusion" not in body
    hits = body["hits"]
    expected = hybrid_engine.search("parse command line arguments", k=5, retriever="sparse")
    assert [h["id"] for h in hits] == [h.id for h in expected]
    assert [h["score"] for h in hits] == pytest.approx([h.score for h in expected], rel=1e-6)
    first = hits[0]
    assert first["id"].split("#")[0] in ("module:argparse", "module:getopt", "module:optparse")
    assert first["title"] and first["snippet"] and first["highlights"]
    for span in first["highlights"]:
        word = first["snippet"][span["start"]:span["end"]].lower()
        assert word.startswith(span["term"])


def test_default_retriever_is_the_best_combination_the_index_holds(client, hybrid_engine):
    body = client.get("/search", params={"q": "random numbers", "k": 5}).json()
    names = hybrid_engine.resolve_retriever()
    assert body["retriever"] == "+".join(names) and len(names) >= 2  # the fixture index has dense vectors
    assert [h["id"] for h in body["hits"]] == [h.id for h in hybrid_engine.search("random numbers", k=5)]
    assert body["fusion"]["weights"] == pytest.approx({n: 1 / len(names) for n in names})
    assert all(h.get(f"{n}_score") is not None for h in body["hits"] for n in ("sparse", "dense"))
    stats = client.get("/stats").json()
    assert stats["retrievers"] == list(hybrid_engine.available_retrievers())
    assert stats["default_retriever"] == body["retriever"]
    assert (stats["bm25"] is not None) == ("bm25" in stats["retrievers"])
    if stats["bm25"]:
        assert stats["bm25"]["analyzer"] == "word" and stats["bm25"]["avgdl"] > 0
    weighted = client.post("/search", json={"q": "random numbers", "k": 5, "retriever": "dense+sparse",
                                            "weights": {"sparse": 1, "dense": 3}}).json()
    assert weighted["retriever"] == "sparse+dense" and weighted["fusion"]["weights"] == {"sparse": 0.25, "dense": 0.75}
    expected = hybrid_engine.search("random numbers", k=5, retriever="sparse+dense", alpha=0.25)
    assert [h["id"] for h in weighted["hits"]] == [h.id for h in expected]


@pytest.mark.parametrize("retriever", ["dense", "hybrid"])
def test_dense_and_hybrid(client, hybrid_engine, retriever):
    r = client.get("/search", params={"q": "random numbers", "k": 5, "retriever": retriever})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = hybrid_engine.search("random numbers", k=5, retriever=retriever)
    assert [h["id"] for h in body["hits"]] == [h.id for h in expected]
    if retriever == "hybrid":
        assert body["fusion"]["method"] in ("convex", "rrf")
        assert all("sparse_score" in h and "dense_score" in h for h in body["hits"])
    rrf = client.get("/search", params={"q": "random numbers", "retriever": "hybrid", "fusion": "rrf"}).json()
    assert rrf["fusion"]["method"] == "rrf" and rrf["fusion"]["rrf_k"] == 60


def test_post_explain_fields_filter(client):
    body = {"q": "random numbers", "k": 3, "retriever": "sparse+dense", "alpha": 0.7, "explain": True,
            "fields": ["title", "metadata"], "filter": {"module": "random"}}
    r = client.post("/search", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["fusion"]["alpha"] == 0.7
    for hit in data["hits"]:
        assert hit["metadata"]["module"] == "random"
        assert set(hit) == {"id", "title", "metadata", "explain"}  # only what was asked for
        terms = hit["explain"]
        assert terms and all(t["contribution"] == pytest.approx(t["query_weight"] * t["doc_weight"], rel=1e-5)
                             for t in terms)
        assert any(t["term"] == "random" and not t["expansion"] for t in terms)
    marked = [t for h in data["hits"] for t in h["explain"] if t["expansion"]]
    assert marked, "SPLADE expansion terms are marked"


def test_batch(client, hybrid_engine):
    queries = ["parse command line arguments", "random numbers", "send email"]
    r = client.post("/search/batch", json={"queries": queries, "k": 3, "retriever": "hybrid"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["query"] for res in results] == queries
    for q, res in zip(queries, results):
        assert [h["id"] for h in res["hits"]] == [h.id for h in hybrid_engine.search(q, k=3, retriever="hybrid")]


def test_documents(client, hybrid_engine):
    doc_id = "module:argparse#1"
    r = client.get(f"/documents/{doc_id.replace('#', '%23')}", params={"terms": 5})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == doc_id and doc["text"].startswith("Command-line parsing") and len(doc["terms"]) == 5
    assert doc["metadata"] == {"source": "stdlib-docstring", "module": "argparse"}
    missing = client.get("/documents/no-such-doc")
    assert missing.status_code == 404 and "no-such-doc" in missing.json()["detail"]


@pytest.mark.parametrize("params,status", [
    ({"q": "x", "k": 0}, 422), ({"q": "x", "k": 1001}, 422), ({"q": "x", "k": "ten"}, 422),
    ({"q": "x", "mode": "bogus"}, 422), ({"q": "x", "retriever": "colbert"}, 422),
    ({"q": "x", "fusion": "max"}, 422), ({"q": "x", "alpha": 1.5}, 422), ({"q": "x", "fields": "id,nope"}, 422),
    ({"q": "x", "normalization": "l2"}, 422), ({"q": "x", "depth": 0}, 422),
    ({"q": "x", "retriever": "sparse+colbert"}, 422), ({"q": "x", "retriever": "dense+dense"}, 422),
    ({"q": "x", "retriever": "sparse+dense+bm25", "alpha": 0.5}, 422),
    ({"q": ""}, 400), ({"q": "   "}, 400), ({}, 400), ({"q": "x" * (MAX_QUERY_CHARS + 1)}, 400),
])
def test_get_errors(client, params, status):
    r = client.get("/search", params=params)
    assert r.status_code == status, r.text
    assert "detail" in r.json()


def test_post_errors(client):
    r = client.post("/search", json={"q": "x", "retriever": "sparse+dense", "weights": {"sparse": 1}})
    assert r.status_code == 422 and "no weight for dense" in r.json()["detail"]
    r = client.post("/search", json={"q": "x", "retriever": "sparse++dense"})
    assert r.status_code == 422 and "unknown retriever" in str(r.json()["detail"])
    assert client.post("/search", json={"q": "x", "k": 5000}).status_code == 422
    assert client.post("/search", json={"q": "x", "bogus": 1}).status_code == 422
    assert client.post("/search", json={"q": "x", "filter": {"a": {"nested": 1}}}).status_code == 422
    assert client.post("/search", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    assert client.post("/search", json={"q": ""}).status_code == 400
    assert client.post("/search/batch", json={"queries": []}).status_code == 422
    assert client.post("/search/batch", json={"queries": ["ok", " "]}).status_code == 400
    # a mode whose structure the index lacks, and knobs a mode does not take: 422, not 500
    r = client.post("/search", json={"q": "x", "mode": "seismic"})
    assert r.status_code == 422, r.text
    r = client.post("/search", json={"q": "x", "params": {"beta": 0.5}})
    assert r.status_code == 422 and "takes no parameters" in r.json()["detail"]


def test_stats_count_queries(client):
    before = client.get("/stats").json()
    client.get("/search", params={"q": "regular expression"})
    after = client.get("/stats").json()
    assert after["queries"] == before["queries"] + 1
    assert after["documents"] > 100 and after["index_size_bytes"] > 0
    assert after["model"]["name"] == "splade-tiny" and after["dense_model"]["name"] == "all-MiniLM-L6-v2"
    assert after["dense_search"] == "exact" and "exact" in after["modes"]
    assert after["latency_ms"]["p50"] > 0 and after["latency_ms"]["p99"] >= after["latency_ms"]["p50"]


def test_loading_is_503_then_ready(hybrid_engine):
    app = create_app(hybrid_engine.index_dir, load="never")
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 503
        assert c.get("/healthz").json()["status"] == "loading"
        r = c.get("/search", params={"q": "x"})
        assert r.status_code == 503 and "loading" in r.json()["detail"]
        assert c.get("/stats").status_code == 503
        assert c.get("/").status_code == 200  # the page itself is served and waits for the index
        app.state.lsr.load()
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/search", params={"q": "x"}).status_code == 200


def test_dense_on_sparse_only_index_is_422(engine):
    with TestClient(create_app(engine.index_dir, load="now", warmup=False)) as c:
        r = c.get("/search", params={"q": "random", "retriever": "sparse+dense"})
        assert r.status_code == 422 and "dense" in r.json()["detail"]
        assert c.get("/stats").json()["dense_model"] is None


def test_concurrent_queries_are_micro_batched(hybrid_engine):
    """Concurrent requests share encoder calls (batches > 1) and get the same answers as one at a time."""
    app = create_app(hybrid_engine.index_dir, load="now", max_batch=64)
    queries = [f"{w} numbers and files" for w in ("random", "compress", "parse", "send", "read", "write",
                                                   "sort", "format", "open", "close", "copy", "match")]

    async def run() -> list[dict]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            responses = await asyncio.gather(*[
                http.get("/search", params={"q": q, "k": 5, "retriever": "hybrid"}) for q in queries])
        assert all(r.status_code == 200 for r in responses)
        return [r.json() for r in responses]

    results = asyncio.run(run())
    stats = app.state.lsr.stats().batching
    assert stats["sparse"]["queries"] >= len(queries) and stats["sparse"]["largest_batch"] > 1
    assert stats["dense"]["largest_batch"] > 1
    assert stats["sparse"]["batches"] < stats["sparse"]["queries"]
    for q, res in zip(queries, results):
        assert [h["id"] for h in res["hits"]] == [h.id for h in hybrid_engine.search(q, k=5, retriever="hybrid")]
