"""Server security and limits over a real index: API keys for writes (and optionally reads), body size, query
length, k, batch size, timeout, JSON error bodies; and the write endpoints (POST / DELETE /documents)."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from lsr.server.app import READ_ONLY_DETAIL, create_app
from lsr.server.schemas import MAX_BATCH_QUERIES

KEY = "write-key-for-tests"
READ_KEY = "read-key-for-tests"


def assert_json_error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert "detail" in body
    return body


@pytest.fixture(scope="module")
def live_dir(tmp_path_factory, engine):
    """A private copy of the fixture index: these tests write to it."""
    target = tmp_path_factory.mktemp("live") / "index"
    shutil.copytree(engine.index_dir, target)
    return target


@pytest.fixture(scope="module")
def writer(live_dir, engine):
    app = create_app(live_dir, load="now", warmup=False, api_key=KEY, read_api_key=None)
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def read_only(engine):
    with TestClient(create_app(engine.index_dir, load="now", warmup=False, api_key=None, read_api_key=None)) as c:
        yield c


# ---------------------------------------------------------------------- keys
def test_read_only_server_refuses_writes(read_only):
    for r in (read_only.post("/documents", json={"documents": [{"id": "x", "text": "y"}]}),
              read_only.post("/documents", json={"documents": [{"id": "x", "text": "y"}]},
                             headers={"X-API-Key": KEY}),
              read_only.delete("/documents/module:argparse%231")):
        assert assert_json_error(r, 403) == {"detail": READ_ONLY_DETAIL}
    assert read_only.get("/search", params={"q": "random numbers"}).status_code == 200
    limits = read_only.get("/limits").json()
    assert limits["read_only"] is True and limits["read_key_required"] is False
    assert read_only.get("/stats").json()["read_only"] is True


def test_read_only_is_logged(engine, caplog):
    with caplog.at_level("WARNING", logger="lsr.server"):
        create_app(engine.index_dir, load="never", api_key=None)
    assert any("read-only" in rec.getMessage() for rec in caplog.records)


@pytest.mark.parametrize("headers,detail", [
    ({}, "missing API key"),
    ({"X-API-Key": "wrong"}, "invalid API key"),
    ({"Authorization": "Bearer wrong"}, "invalid API key"),
    ({"Authorization": f"Basic {KEY}"}, "invalid Authorization"),  # not a bearer token
    ({"Authorization": "Bearer wrong", "X-API-Key": KEY}, "invalid API key"),  # every credential sent must hold
    ({"Authorization": "Bearer", "X-API-Key": KEY}, "invalid Authorization"),
    ({"X-API-Key": KEY[:-1]}, "invalid API key"),                # a prefix of the key
    ({"X-API-Key": "clé-ünïcode".encode()}, "invalid API key"),  # non-ASCII header bytes: 401, not a crash
    ({"X-API-Key": READ_KEY}, "invalid API key"),               # no read key configured here
])
def test_write_needs_the_key(writer, headers, detail):
    for r in (writer.post("/documents", json={"documents": [{"id": "new", "text": "t"}]}, headers=headers),
              writer.delete("/documents/module:argparse%231", headers=headers)):
        body = assert_json_error(r, 401)
        assert body["detail"].startswith(detail) and r.headers["www-authenticate"].startswith("Bearer")
    assert writer.get("/documents/new").status_code == 404  # nothing was written
    assert writer.get("/documents/module:argparse%231").status_code == 200


@pytest.mark.parametrize("headers", [{"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"},
                                     {"Authorization": f"bearer {KEY}"}])
def test_right_key_passes_auth(writer, headers):
    # an invalid body with the right key: past authentication, stopped by validation
    r = writer.post("/documents", json={"documents": []}, headers=headers)
    assert_json_error(r, 422)


def test_reads_with_a_read_key(engine):
    app = create_app(engine.index_dir, load="now", warmup=False, api_key=KEY, read_api_key=READ_KEY)
    with TestClient(app) as c:
        for path in ("/search?q=random", "/stats", "/documents/module:argparse%231"):
            assert_json_error(c.get(path), 401)
            assert_json_error(c.get(path, headers={"X-API-Key": "nope"}), 401)
            assert c.get(path, headers={"X-API-Key": READ_KEY}).status_code == 200
            assert c.get(path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200  # the write key reads
        assert c.post("/search", json={"q": "random"}, headers={"X-API-Key": READ_KEY}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/limits").json()["read_key_required"] is True
        assert c.get("/").status_code == 200 and c.get("/openapi.json").status_code == 200
        # the read key does not write
        r = c.post("/documents", json={"documents": [{"id": "n", "text": "t"}]}, headers={"X-API-Key": READ_KEY})
        assert_json_error(r, 401)
        spec = c.get("/openapi.json").json()
    assert spec["paths"]["/search"]["get"]["security"]  # documented where enforced


def test_keys_from_the_environment(engine, monkeypatch):
    monkeypatch.setenv("LSR_API_KEY", "from-env")
    monkeypatch.setenv("LSR_READ_API_KEY", "")
    state = create_app(engine.index_dir, load="never").state.lsr
    assert not state.read_only and not state.read_key_required
    assert state.key_allows("from-env", write=True) and not state.key_allows("from-env2", write=True)
    monkeypatch.delenv("LSR_API_KEY")
    assert create_app(engine.index_dir, load="never").state.lsr.read_only


def test_openapi_declares_security_and_takes_no_paths(writer):
    spec = writer.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "description": schemes["bearer"]["description"]}
    assert schemes["apiKey"]["in"] == "header" and schemes["apiKey"]["name"] == "X-API-Key"
    assert spec["paths"]["/documents"]["post"]["security"] == [{"bearer": []}, {"apiKey": []}]
    assert spec["paths"]["/documents/{doc_id}"]["delete"]["security"]
    assert "security" not in spec["paths"]["/search"]["get"]  # reads are open on this server
    # no endpoint takes a file path: no parameter or body field names a file, path or directory
    names = [p["name"] for ops in spec["paths"].values() for op in ops.values() for p in op.get("parameters", [])]
    bodies = [op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
              for ops in spec["paths"].values() for op in ops.values() if "requestBody" in op]
    assert set(bodies) == {"SearchRequest", "BatchSearchRequest", "AddDocumentsRequest"}
    names += [f for name in bodies + ["DocumentIn"] for f in spec["components"]["schemas"][name]["properties"]]
    assert not [n for n in names if any(w in n.lower() for w in ("path", "file", "dir", "index"))], names


def test_no_file_access_through_urls(writer):
    for url in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/%2e%2e%2fschemas.py"):
        r = writer.get(url)
        assert r.status_code == 404 and "FastAPI" not in r.text and "import" not in r.text
    assert_json_error(writer.get("/documents/..%2F..%2Fetc%2Fpasswd"), 404)
    assert_json_error(writer.get("/documents//etc/passwd"), 404)


# ---------------------------------------------------------------------- limits
def test_body_size_limit(engine):
    app = create_app(engine.index_dir, load="now", warmup=False, api_key=KEY, max_body_bytes=1000)
    with TestClient(app) as c:
        big = {"q": "random", "filter": {"x": "y" * 2000}}
        assert "at most 1000 bytes" in assert_json_error(c.post("/search", json=big), 413)["detail"]
        r = c.post("/documents", json={"documents": [{"id": "a", "text": "z" * 5000}]}, headers={"X-API-Key": KEY})
        assert_json_error(r, 413)

        def chunks():  # streamed without a Content-Length: counted as it arrives
            yield b'{"q": "random", "filter": {"x": "'
            for _ in range(20):
                yield b"y" * 100
            yield b'"}}'

        r = c.post("/search", content=chunks(), headers={"content-type": "application/json"})
        assert_json_error(r, 413)
        assert c.post("/search", json={"q": "random numbers"}).status_code == 200  # under the limit
        assert c.get("/limits").json()["max_body_bytes"] == 1000


def test_query_length_k_and_batch_limits(engine):
    app = create_app(engine.index_dir, load="now", warmup=False, max_query_chars=20, max_batch_queries=3)
    with TestClient(app) as c:
        assert "at most 20" in assert_json_error(c.get("/search", params={"q": "x" * 21}), 400)["detail"]
        assert c.get("/search", params={"q": "x" * 20}).status_code == 200
        assert_json_error(c.post("/search", json={"q": "y" * 21}), 400)
        assert_json_error(c.get("/search", params={"q": "x", "k": 1001}), 422)
        assert_json_error(c.post("/search", json={"q": "x", "k": 1001}), 422)
        assert c.get("/search", params={"q": "x", "k": 1000}).status_code == 200
        r = c.post("/search/batch", json={"queries": ["a", "b", "c", "d"]})
        assert "too many queries: 4, at most 3" in assert_json_error(r, 422)["detail"]
        r = c.post("/search/batch", json={"queries": ["q"] * (MAX_BATCH_QUERIES + 1)})
        assert_json_error(r, 422)
        assert c.post("/search/batch", json={"queries": ["a", "b", "c"]}).status_code == 200
        assert_json_error(c.post("/search/batch", json={"queries": ["a", "x" * 21]}), 400)
        spec = c.get("/openapi.json").json()  # the configured limits are in the schema
        batch = spec["components"]["schemas"]["BatchSearchRequest"]["properties"]["queries"]
        assert batch["maxItems"] == 3 and batch["items"]["maxLength"] == 20
        limits = c.get("/limits").json()
        assert limits["max_query_chars"] == 20 and limits["max_batch_queries"] == 3 and limits["max_k"] == 1000
    with pytest.raises(ValueError, match="max_batch_queries"):
        create_app(engine.index_dir, load="never", max_batch_queries=MAX_BATCH_QUERIES + 1)


def test_timeout_is_504(engine):
    app = create_app(engine.index_dir, load="now", warmup=False, timeout_s=1e-6)
    with TestClient(app) as c:
        for r in (c.get("/search", params={"q": "random numbers"}), c.post("/search", json={"q": "random"}),
                  c.post("/search/batch", json={"queries": ["random", "gzip"]})):
            assert assert_json_error(r, 504) == {"detail": "search timed out after 1e-06 s"}
        assert c.get("/limits").json()["timeout_s"] == 1e-6
        assert c.get("/stats").json()["errors"] >= 3


def test_unknown_routes_and_methods_are_json(writer):
    assert_json_error(writer.get("/nope"), 404)
    r = writer.put("/search")
    assert_json_error(r, 405)
    assert set(r.headers["allow"].split(", ")) >= {"GET", "POST"}  # every method of the path
    assert set(writer.options("/documents/x").headers["allow"].split(", ")) >= {"GET", "DELETE"}
    assert_json_error(writer.post("/documents", content=b"{oops", headers={"content-type": "application/json",
                                                                            "X-API-Key": KEY}), 422)


# ---------------------------------------------------------------------- writes
def ids_of(client, q: str, k: int = 10) -> list[str]:
    r = client.get("/search", params={"q": q, "k": k})
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["hits"]]


def test_add_search_update_delete(writer):
    auth = {"X-API-Key": KEY}
    text = "Zanzibar marmalade recipes: boil oranges with sugar until the marmalade sets."
    doc = {"id": "recipe:marmalade", "title": "Marmalade", "text": text, "metadata": {"kind": "recipe", "n": 1}}
    before = writer.get("/stats").json()["documents"]
    r = writer.post("/documents", json={"documents": [doc]}, headers=auth)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["added"] == 1 and body["replaced"] == 0 and body["generation"] >= 1 and body["segment"]
    assert ids_of(writer, "marmalade oranges sugar")[0] == "recipe:marmalade"  # searchable at once
    got = writer.get("/documents/recipe:marmalade").json()
    assert got["text"] == text and got["metadata"] == {"kind": "recipe", "n": 1}
    assert writer.get("/stats").json()["documents"] == before + 1

    dup = writer.post("/documents", json={"documents": [doc]}, headers=auth)
    assert "already in the index" in assert_json_error(dup, 409)["detail"]
    twice = writer.post("/documents", json={"documents": [dict(doc, id="x"), dict(doc, id="x")]}, headers=auth)
    assert "duplicate id(s) in the request: 'x'" in assert_json_error(twice, 409)["detail"]

    changed = dict(doc, title="Lighthouses", text="Lighthouse keepers trim the lamp wick every evening.")
    r = writer.post("/documents", json={"documents": [changed], "update": True}, headers=auth)
    assert r.status_code == 201 and r.json()["replaced"] == 1, r.text
    assert "recipe:marmalade" not in ids_of(writer, "marmalade oranges sugar")
    assert ids_of(writer, "lighthouse lamp wick")[0] == "recipe:marmalade"
    assert writer.get("/stats").json()["documents"] == before + 1

    r = writer.delete("/documents/recipe:marmalade", headers=auth)
    assert r.status_code == 200 and r.json()["deleted"] == 1, r.text
    assert "recipe:marmalade" not in ids_of(writer, "lighthouse lamp wick")
    assert_json_error(writer.get("/documents/recipe:marmalade"), 404)
    assert_json_error(writer.delete("/documents/recipe:marmalade", headers=auth), 404)
    assert writer.get("/stats").json()["documents"] == before


def test_delete_a_built_document(writer):
    auth = {"Authorization": f"Bearer {KEY}"}
    top = ids_of(writer, "heap queue priority")[0]
    assert top.startswith("module:heapq")
    r = writer.delete(f"/documents/{top.replace('#', '%23')}", headers=auth)
    assert r.status_code == 200 and r.json()["deleted"] == 1, r.text
    assert top not in ids_of(writer, "heap queue priority", k=200)


@pytest.mark.parametrize("body,what", [
    ({"documents": [{"id": "", "text": "t"}]}, "at least 1 character"),
    ({"documents": [{"id": "   ", "text": "t"}]}, "blank"),
    ({"documents": [{"id": "x" * 513, "text": "t"}]}, "at most 512"),
    ({"documents": [{"id": "a"}]}, "Field required"),
    ({"documents": [{"id": "a", "text": 5}]}, "valid string"),
    ({"documents": [{"id": "a", "text": "t", "path": "/etc/passwd"}]}, "Extra inputs"),
    ({"documents": [{"id": "a", "text": "t", "metadata": {"deep": [[[[[[[[[[1]]]]]]]]]]}}]}, "nested"),
    ({"documents": [{"id": "a", "text": "t" * 100_001}]}, "at most 100000"),
    ({"documents": [{"id": f"d{i}", "text": "t"} for i in range(1001)]}, "at most 1000"),
])
def test_add_validation(writer, body, what):
    r = writer.post("/documents", json=body, headers={"X-API-Key": KEY})
    assert what in str(assert_json_error(r, 422)["detail"])


def test_writer_lock_held_elsewhere_is_423(writer, live_dir):
    import fcntl
    import os

    from lsr.index.storage import lock_path

    path = lock_path(live_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # another open file description: flock conflicts
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(fd, b"pid 12345 (lsr add, test)", 0)
        r = writer.post("/documents", json={"documents": [{"id": "locked", "text": "t"}]}, headers={"X-API-Key": KEY})
        assert "locked" in assert_json_error(r, 423)["detail"]
        assert_json_error(writer.delete("/documents/module:argparse%231", headers={"X-API-Key": KEY}), 423)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert writer.get("/documents/locked").status_code == 404


def test_commits_of_other_processes_are_picked_up(writer, live_dir, engine):
    """A write through the library (as `lsr add` would do) shows up in searches within the refresh interval."""
    import time

    from lsr.corpus import Document
    from lsr.live import add_documents

    add_documents(live_dir, [Document(id="cli:walrus", text="Walruses haul out on Arctic sea ice floes.")],
                  encoder=engine.encoder)
    deadline = time.monotonic() + 5
    while "cli:walrus" not in ids_of(writer, "walrus arctic ice") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ids_of(writer, "walrus arctic ice")[0] == "cli:walrus"


def test_serve_command_options():
    from typer.testing import CliRunner

    from lsr.cli import app

    out = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--api-key", "LSR_API_KEY", "--read-api-key", "LSR_READ_API_KEY", "--timeout", "--max-body-bytes",
                   "--max-query-chars", "--max-batch-queries", "--max-documents", "--workers"):
        assert option in out, option
