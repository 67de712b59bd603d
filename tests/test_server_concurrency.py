"""The server's worker threads over a real index: a long write does not hold up searches, a timed-out search frees
its worker, a commit that cannot be opened is remembered (the last good one keeps serving), and `lsr serve
--workers 2` serves from two processes. Races are made deterministic by holding a job at a named point
(``ServerState.hooks``) instead of timing it."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient

from lsr.eval.loadtest import free_port, wait_until_ready
from lsr.server.app import create_app

KEY = "concurrency-test-key"
AUTH = {"X-API-Key": KEY}
HANG_GUARD_S = 120  # a request timeout that only ends a test that would otherwise hang on a regression


@pytest.fixture()
def index_copy(tmp_path, engine):
    """A private copy of the fixture index: these tests write to it."""
    target = tmp_path / "index"
    shutil.copytree(engine.index_dir, target)
    return target


def hold_first(point_reached: threading.Event, release: threading.Event):
    """A hook that holds the first job reaching its point until ``release`` (later jobs pass)."""
    def hook() -> None:
        if not point_reached.is_set():
            point_reached.set()
            release.wait()
    return hook


def test_long_write_does_not_delay_searches(index_copy):
    app = create_app(index_copy, load="now", warmup=False, api_key=KEY, timeout_s=HANG_GUARD_S)
    state = app.state.lsr
    writing, release = threading.Event(), threading.Event()
    state.hooks["write"] = hold_first(writing, release)
    docs = [{"id": f"bulk-{i}", "text": f"Note {i} about lighthouse keepers and their lamps."} for i in range(999)]
    docs.append({"id": "bulk-zebra", "text": "Zebra stripes confuse biting flies on the savanna."})

    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            write = asyncio.create_task(http.post("/documents", json={"documents": docs}, headers=AUTH))
            held = asyncio.create_task(asyncio.to_thread(writing.wait))
            await asyncio.wait([write, held], return_when=asyncio.FIRST_COMPLETED)
            try:
                assert writing.is_set(), (await write).text  # the write is under way, held on the writer thread
                searches = await asyncio.gather(
                    http.get("/search", params={"q": "parse command line arguments", "k": 5}),  # the model encoder
                    http.get("/search", params={"q": "gzip", "query_encoder": "inference-free"}),
                    http.post("/search/batch", json={"queries": ["random numbers", "send email"], "k": 3}),
                    http.get("/documents/module:argparse%231"))
                assert [r.status_code for r in searches] == [200, 200, 200, 200], [r.text for r in searches]
                assert not write.done() and state.stats().threads["write"]["busy"] == 1  # still writing
            finally:
                writing.set()  # ends the waiting thread if the write never came
                release.set()
            added = await write
            assert added.status_code == 201 and added.json()["added"] == 1000, added.text
            hits = (await http.get("/search", params={"q": "zebra stripes flies", "k": 1})).json()["hits"]
            assert hits[0]["id"] == "bulk-zebra"  # searchable when the write returned

    asyncio.run(run())


def test_timed_out_search_frees_its_worker(engine):
    app = create_app(engine.index_dir, load="now", warmup=False, search_threads=1, timeout_s=2)
    state = app.state.lsr
    searching, release = threading.Event(), threading.Event()
    state.hooks["search"] = hold_first(searching, release)
    try:
        with TestClient(app) as client:
            # inference-free: no encoder thread in the way, the job reaches the only search thread at once
            r = client.get("/search", params={"q": "random numbers", "query_encoder": "inference-free"})
            assert r.status_code == 504 and r.json() == {"detail": "search timed out after 2 s"}
            assert searching.is_set() and state.search_pool.stats()["abandoned"] == 1  # held there, given up
            state.limits = dataclasses.replace(state.limits, timeout_s=HANG_GUARD_S)
            r = client.get("/search", params={"q": "parse command line arguments", "k": 3})  # a new search thread
            assert r.status_code == 200, r.text
            assert r.json()["hits"][0]["id"].split("#")[0] in ("module:argparse", "module:getopt", "module:optparse")
            assert client.get("/documents/module:argparse%231").status_code == 200
            assert not release.is_set()  # all while the timed-out job was still held
            assert client.get("/stats").json()["threads"]["search"]["abandoned"] == 1
    finally:
        release.set()


def test_unopenable_commit_is_remembered(index_copy, engine, caplog):
    """A commit whose files are corrupt is tried once, logged once and reported; the last good commit is served
    until a newer commit replaces it."""
    from lsr.corpus import Document
    from lsr.live import add_documents, delete_documents

    app = create_app(index_copy, load="now", warmup=False, refresh_interval_s=0)
    with TestClient(app) as client:
        generation = client.get("/stats").json()["generation"]
        added = add_documents(index_copy, [Document(id="walrus", text="Walruses haul out on Arctic ice floes.")],
                              encoder=engine.encoder)  # another process's commit
        damaged = index_copy / added["segment"] / "postings_docs.npy"
        original = damaged.read_bytes()
        damaged.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
        with caplog.at_level("ERROR", logger="lsr.server"):
            for _ in range(3):
                r = client.get("/search", params={"q": "argparse command line", "k": 3})
                assert r.status_code == 200 and r.json()["hits"], r.text
        failures = [rec for rec in caplog.records if "cannot be opened" in rec.getMessage()]
        assert len(failures) == 1 and "postings_docs.npy" in failures[0].getMessage()  # tried once, logged once
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert "postings_docs.npy" in health.json()["detail"]
        stats = client.get("/stats").json()
        assert stats["generation"] == generation and "sha256 mismatch" in stats["commit_error"]

        damaged.write_bytes(original)  # repaired, then a newer commit replaces the one that failed
        delete_documents(index_copy, ["module:argparse#1"])
        ids = [h["id"] for h in client.get("/search", params={"q": "walrus arctic ice", "k": 3}).json()["hits"]]
        assert ids[0] == "walrus"
        assert client.get("/healthz").json() == {"status": "ok"}
        stats = client.get("/stats").json()
        assert stats["generation"] == generation + 2 and stats["commit_error"] is None
        assert client.get("/documents/module:argparse%231").status_code == 404


def test_serve_with_two_worker_processes(index_copy):
    """`lsr serve --workers 2`: both processes serve the index; a write through either is searchable on both."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lsr.cli", "serve", "--index", str(index_copy), "--port", str(port),
                             "--workers", "2", "--api-key", KEY, "--search-threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, 600, proc)
        workers = [p for p in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 2
        for _ in range(2000):  # the process that accepts the connection may still be loading
            with httpx.Client(timeout=120) as http:
                r = http.post(f"{url}/documents", json={"documents": [
                    {"id": "okapi", "text": "The okapi is a forest giraffe of the Congo."}]}, headers=AUTH)
            if r.status_code != 503:
                break
            time.sleep(0.3)
        assert r.status_code == 201, r.text
        answers = []
        for _ in range(2000):  # new connections: the two processes take turns at accepting them
            with httpx.Client(timeout=120) as http:
                r = http.get(f"{url}/search", params={"q": "okapi forest giraffe", "k": 1})
            if r.status_code == 503:  # the other process is still loading
                time.sleep(0.3)
                continue
            answers.append(r)
            if len(answers) == 12:
                break
        assert len(answers) == 12 and all(r.status_code == 200 and r.json()["hits"][0]["id"] == "okapi"
                                          for r in answers), [r.text[:200] for r in answers]
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
