"""Soak run of the HTTP server: mixed searches and writes for a bounded time, only to 127.0.0.1.

    python -m lsr.eval.soak --index DIR [--corpus docs.jsonl] [--queries queries.jsonl] [--minutes 10] \
        [--searchers 4] [--compact-every 180] [--out eval/results/soak.json]

The index is copied to a scratch directory (the original is never written). ``lsr serve`` starts on a free
127.0.0.1 port with a random API key; ``--searchers`` clients search in closed loop (sparse, and dense / hybrid
when the index has dense vectors) while one writer adds documents from ``--corpus`` in small batches
(``POST /documents``), deletes some of the ones it added (``DELETE /documents/{id}``) and updates others
(``"update": true``). Every ``--compact-every`` seconds ``lsr compact`` runs as a separate process against the
serving index (writes meanwhile get 423 and are retried: counted as ``retried``, not errors). At the end the
server's document count must equal the initial count plus what the writer added minus what it deleted, every
deleted id must answer 404 and every kept one 200, and ``lsr verify`` must pass. Reports requests served, errors
(any other non-2xx or transport error), latency p50/p99 per request type, and the server's memory at start and
end (VmRSS).
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from lsr.eval.loadtest import LocalServer, load_queries
from lsr.evaluation.results import portable_path


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def load_documents(path: Path | None) -> list[dict]:
    """Documents to add: a JSONL corpus (``_id``/``id``, ``title``, ``text``) or the bundled sample corpus."""
    if path is None:
        from lsr.sample import sample_documents

        return [{"id": d["_id"], "title": d.get("title", ""), "text": d["text"]} for d in sample_documents()]
    docs = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            docs.append({"id": str(r.get("_id", r.get("id"))), "title": r.get("title", ""), "text": r["text"]})
    return docs


class Recorder:
    """Thread-safe latency and outcome tally per request type."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.samples: list[str] = []
        self.retried = 0

    def ok(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.latency[kind].append(seconds * 1000)

    def error(self, kind: str, what: str) -> None:
        with self.lock:
            self.errors[kind] += 1
            if len(self.samples) < 10:
                self.samples.append(f"{kind}: {what[:300]}")

    def summary(self) -> dict:
        out = {}
        for kind in sorted(set(self.latency) | set(self.errors)):
            lat = np.array(self.latency[kind] or [np.nan])
            out[kind] = {"requests": len(self.latency[kind]) + self.errors[kind], "errors": self.errors[kind],
                         "p50_ms": round(float(np.percentile(lat, 50)), 1),
                         "p99_ms": round(float(np.percentile(lat, 99)), 1)}
        return out


def searcher(url: str, queries: list[str], retrievers: list[str], stop: threading.Event, rec: Recorder,
             seed: int) -> None:
    import httpx

    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            retriever = rng.choice(retrievers)
            t0 = time.perf_counter()
            try:
                r = client.get("/search", params={"q": rng.choice(queries), "k": 10, "retriever": retriever})
            except httpx.HTTPError as err:
                rec.error(f"search-{retriever}", f"{type(err).__name__}: {err}")
                continue
            if r.status_code == 200:
                rec.ok(f"search-{retriever}", time.perf_counter() - t0)
            else:
                rec.error(f"search-{retriever}", f"{r.status_code} {r.text}")


class Writer:
    """Adds, deletes and updates documents through the HTTP API, remembering what should be live."""

    def __init__(self, url: str, key: str, docs: list[dict], batch: int, rec: Recorder, seed: int) -> None:
        self.url, self.key, self.docs, self.batch, self.rec = url, key, docs, batch, rec
        self.rng = random.Random(seed)
        self.added: list[str] = []  # live ids the writer added
        self.deleted: list[str] = []
        self.next = 0
        self.lock = threading.Lock()  # held while a write is in flight (the final check waits for it)

    def _send(self, client, kind: str, method: str, path: str, body: dict | None = None):
        """One write; 423 (another process, e.g. compaction, holds the writer lock) is retried."""
        while True:
            t0 = time.perf_counter()
            try:
                r = client.request(method, path, json=body, headers={"Authorization": f"Bearer {self.key}"})
            except Exception as err:  # httpx transport errors
                self.rec.error(kind, f"{type(err).__name__}: {err}")
                return None
            if r.status_code == 423:
                self.rec.retried += 1
                time.sleep(0.5)
                continue
            if 200 <= r.status_code < 300:
                self.rec.ok(kind, time.perf_counter() - t0)
                return r
            self.rec.error(kind, f"{r.status_code} {r.text}")
            return None

    def step(self, client) -> None:
        with self.lock:
            action = self.rng.random()
            if action < 0.6 or len(self.added) < 10:
                docs = []
                for _ in range(self.batch):
                    src = self.docs[self.next % len(self.docs)]
                    docs.append({"id": f"soak-{self.next}", "title": src["title"], "text": src["text"]})
                    self.next += 1
                if self._send(client, "add", "POST", "/documents", {"documents": docs}) is not None:
                    self.added += [d["id"] for d in docs]
            elif action < 0.85:
                doc_id = self.added.pop(self.rng.randrange(len(self.added)))
                if self._send(client, "delete", "DELETE", f"/documents/{doc_id}") is not None:
                    self.deleted.append(doc_id)
                else:
                    self.added.append(doc_id)
            else:
                doc_id = self.rng.choice(self.added)
                src = self.rng.choice(self.docs)
                body = {"documents": [{"id": doc_id, "title": src["title"], "text": src["text"]}], "update": True}
                self._send(client, "update", "POST", "/documents", body)

    def run(self, stop: threading.Event, pause: float) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=300) as client:
            while not stop.is_set():
                self.step(client)
                stop.wait(pause)


def compactor(index: Path, every: float, stop: threading.Event, log: list[dict]) -> None:
    started = time.time()
    while not stop.wait(every):
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "lsr.cli", "compact", "--index", str(index), "--no-progress"],
                              capture_output=True, text=True)
        output = (proc.stdout + proc.stderr).strip().replace(str(index.parent), portable_path(index.parent))
        log.append({"at_s": round(t0 - started, 1), "seconds": round(time.time() - t0, 1), "exit": proc.returncode,
                    "output": output[-300:]})


def main() -> None:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, type=Path, help="Index to copy and serve (never modified).")
    parser.add_argument("--corpus", type=Path, help="JSONL of documents to add (default: the bundled sample).")
    parser.add_argument("--queries", type=Path, help="Queries JSONL (default: titles of the documents to add).")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--searchers", type=int, default=4)
    parser.add_argument("--write-batch", type=int, default=5, help="Documents per POST /documents.")
    parser.add_argument("--write-pause", type=float, default=0.5, help="Seconds between writes.")
    parser.add_argument("--compact-every", type=float, default=180.0, help="Seconds between `lsr compact` runs "
                                                                           "(0: never).")
    parser.add_argument("--workdir", type=Path, help="Scratch directory (default: a temp dir, removed after).")
    parser.add_argument("--out", type=Path, default=Path("eval/results/soak.json"))
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="lsr-soak-", dir=args.workdir))
    index = scratch / "index"
    shutil.copytree(args.index, index)
    docs = load_documents(args.corpus)
    queries = load_queries(args.queries, None) if args.queries else [d["title"] or d["text"][:80] for d in docs]
    key = secrets.token_urlsafe(24)
    server = LocalServer(index, 32, None, scratch / "server.log", extra_args=("--api-key", key))
    rec, stop, compactions = Recorder(), threading.Event(), []
    try:
        server.wait_ready()
        stats = httpx.get(f"{server.url}/stats", timeout=30).json()
        retrievers = ["sparse"] + (["dense", "hybrid"] if stats.get("dense_model") else [])
        start_docs, start_rss = stats["documents"], rss_mb(server.proc.pid)
        writer = Writer(server.url, key, docs, args.write_batch, rec, seed=1)
        threads = [threading.Thread(target=searcher, args=(server.url, queries, retrievers, stop, rec, i))
                   for i in range(args.searchers)]
        threads.append(threading.Thread(target=writer.run, args=(stop, args.write_pause)))
        if args.compact_every > 0:
            threads.append(threading.Thread(target=compactor, args=(index, args.compact_every, stop, compactions)))
        started = time.time()
        for t in threads:
            t.start()
        deadline = started + args.minutes * 60
        while time.time() < deadline:
            time.sleep(min(10.0, max(0.0, deadline - time.time())))
            done = sum(len(v) for v in rec.latency.values())
            print(f"[{time.time() - started:6.0f} s] requests {done}, errors {sum(rec.errors.values())}, "
                  f"live added {len(writer.added)}, deleted {len(writer.deleted)}, rss {rss_mb(server.proc.pid):.0f} MB",
                  flush=True)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.time() - started
        end_rss = rss_mb(server.proc.pid)
        time.sleep(1.1)  # the server refreshes its snapshot at most once a second
        final = httpx.get(f"{server.url}/stats", timeout=30).json()
        expected_docs = start_docs + len(writer.added)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            wrong_deleted = [d for d in writer.deleted if client.get(f"/documents/{d}").status_code != 404]
            wrong_live = [d for d in writer.added if client.get(f"/documents/{d}").status_code != 200]
    finally:
        stop.set()
        server.stop()
    verify = subprocess.run([sys.executable, "-m", "lsr.cli", "verify", "--index", str(index)],
                            capture_output=True, text=True)
    summary = rec.summary()
    verified = verify.stdout.strip().replace(str(scratch), portable_path(scratch))
    report = {
        "index": portable_path(args.index), "minutes": round(elapsed / 60, 2), "searchers": args.searchers,
        "requests": sum(v["requests"] for v in summary.values()),
        "errors": sum(v["errors"] for v in summary.values()), "error_samples": rec.samples,
        "retried_while_locked": rec.retried, "by_type": summary,
        "rps": round(sum(len(v) for v in rec.latency.values()) / elapsed, 1),
        "memory_mb": {"start": round(start_rss, 1), "end": round(end_rss, 1)},
        "documents": {"start": start_docs, "added": writer.next, "live_added": len(writer.added),
                      "deleted": len(writer.deleted), "expected": expected_docs, "server": final["documents"],
                      "match": final["documents"] == expected_docs},
        "deleted_ids_still_found": len(wrong_deleted), "added_ids_missing": len(wrong_live),
        "compactions": compactions, "verify": {"exit": verify.returncode, "output": verified[-200:]},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("minutes", "requests", "errors", "retried_while_locked", "rps",
                                             "memory_mb", "documents", "verify")}, indent=1))
    shutil.rmtree(scratch, ignore_errors=True)
    ok = report["errors"] == 0 and report["documents"]["match"] and not wrong_deleted and not wrong_live \
        and verify.returncode == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
