"""Load test of the HTTP server: requests/s and latency percentiles per retriever and concurrency level.

    python -m lsr.eval.loadtest --index /path/to/index --queries /path/to/queries.jsonl \
        [--retrievers sparse,inference-free,dense,hybrid] [--concurrency 1,8,32] [--duration 15] \
        [--max-requests 3000] [--query-runtime torch,auto] [--workers 1,2] [--compare-batching] \
        [--mode seismic] [--preload] [--out eval/results/loadtest.json]

It starts ``lsr serve`` itself on 127.0.0.1 (a free port; ``--url`` targets an already running server, which
must also be on 127.0.0.1 — this tool never sends load anywhere else), waits until the index is loaded, and then
for every (retriever, concurrency) runs ``concurrency`` clients in closed loop, each sending the next query of the
file (``GET /search?q=...&k=10&retriever=...``) as soon as its previous answer arrived. A level stops after
``--duration`` seconds or ``--max-requests`` requests, whichever comes first; a few warm-up requests precede it.
Latency is measured by the client (what a user sees). Any non-200 answer or transport error counts as an error.
The client is aiohttp: on this two-core test machine it shares the cores with the server, and it spends ~0.2 ms of
CPU per request where httpx spent ~1 ms (inference-free at concurrency 8 with 2 workers: 829 vs 527 req/s).

``inference-free`` in ``--retrievers`` is the sparse retriever with ``query_encoder=inference-free`` (tokenizer and
the index's IDF table instead of the model). ``--query-runtime`` and ``--workers`` take lists: one server setup per
(runtime, workers) pair, run in that order, so a before/after comparison (``torch`` with 1 worker vs ``auto`` with
2) comes from one run on one machine. ``--compare-batching`` also starts a server with micro-batching off
(``--max-batch 1``) for each setup and repeats the levels above 1, to show what batching the encoder calls buys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(url: str, timeout: float = 600, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url``/healthz until it answers 200 (the index is loaded); fail if ``proc`` exits or time runs out."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"server at {url} did not become ready within {timeout:.0f} s")


class LocalServer:
    """``lsr serve`` in a subprocess on 127.0.0.1."""

    def __init__(self, index: Path, max_batch: int, search_threads: int | None, log: Path | None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "lsr.cli", "serve", "--index", str(index), "--host", "127.0.0.1",
               "--port", str(self.port), "--max-batch", str(max_batch), *extra_args]
        if search_threads:
            cmd += ["--search-threads", str(search_threads)]
        self.log = open(log, "w") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=Path(__file__).resolve().parents[1])

    def wait_ready(self, timeout: float = 600) -> None:
        wait_until_ready(self.url, timeout, self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.log is not subprocess.DEVNULL:
            self.log.close()


def search_params(retriever: str, k: int, mode: str | None = None) -> dict:
    """Query parameters of ``GET /search`` for a load-test retriever name (``inference-free``: sparse, no model);
    ``mode``: the sparse search mode (default: the server's)."""
    params = {"k": k, "retriever": retriever}
    if retriever == "inference-free":
        params.update(retriever="sparse", query_encoder="inference-free")
    if mode is not None:
        params["mode"] = mode
    return params


async def run_level(url: str, queries: list[str], retriever: str, concurrency: int, duration: float,
                    max_requests: int, k: int, offset: int, mode: str | None = None) -> dict:
    """Closed-loop load at one concurrency level; returns throughput and latency percentiles."""
    import aiohttp

    params = search_params(retriever, k, mode)
    latencies: list[float] = []
    errors: list[str] = []
    counter = offset
    sent = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        async def one(q: str) -> None:
            t0 = time.perf_counter()
            try:
                async with client.get("/search", params={"q": q, **params}) as r:
                    body = await r.read()
                ok = r.status == 200
                if not ok:
                    errors.append(f"{r.status}: {body[:200].decode(errors='replace')}")
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                ok = False
                errors.append(f"{type(err).__name__}: {err}")
            if ok:
                latencies.append(time.perf_counter() - t0)

        async def stats() -> dict:
            async with client.get("/stats") as r:
                return (await r.json())["batching"]

        for q in queries[:max(2, concurrency // 4)]:  # warm-up
            await one(q)
        latencies.clear()
        errors.clear()
        before = await stats()
        stop_at = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal counter, sent
            while time.perf_counter() < stop_at and sent < max_requests:
                sent += 1
                q = queries[counter % len(queries)]
                counter += 1
                await one(q)

        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        elapsed = time.perf_counter() - started
        after = await stats()
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "retriever": retriever, "concurrency": concurrency, "requests": len(latencies) + len(errors),
        "errors": len(errors), "error_samples": errors[:3], "seconds": round(elapsed, 2),
        "rps": round(len(latencies) / elapsed, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1), "mean_ms": round(float(lat.mean()), 1),
        "encoder_batches": {
            side: {"batches": after[side]["batches"] - before[side]["batches"],
                   "queries": after[side]["queries"] - before[side]["queries"],
                   "mean_batch": _ratio(after[side]["queries"] - before[side]["queries"],
                                        after[side]["batches"] - before[side]["batches"])}
            for side in ("sparse", "dense")},
    }


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 2) if b else None


def load_queries(path: Path, limit: int | None) -> list[str]:
    from lsr.corpus import read_queries

    texts = [text for _, text in read_queries(path)]
    return texts[:limit] if limit else texts


def table(rows: list[dict], label: str) -> str:
    lines = [f"| {label} | retriever | concurrency | requests | errors | req/s | p50 ms | p99 ms | mean encoder batch |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = r["encoder_batches"]
        mean_batch = None if b is None else b["dense" if r["retriever"] == "dense" else "sparse"]["mean_batch"]
        lines.append(f"| {r['server']} | {r['retriever']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
                     f"{r['rps']} | {r['p50_ms']} | {r['p99_ms']} | {mean_batch} |")
    return "\n".join(lines)


def main() -> None:
    from lsr.evaluation.results import portable_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, help="Index to serve (started here on 127.0.0.1).")
    parser.add_argument("--url", help="An already running server on 127.0.0.1 instead of --index.")
    parser.add_argument("--queries", type=Path, required=True, help="BEIR queries.jsonl or id<TAB>text.")
    parser.add_argument("--query-limit", type=int, default=None, help="Use only the first N queries.")
    parser.add_argument("--retrievers", default="sparse,dense,hybrid",
                        help="Comma-separated: sparse, inference-free, dense, hybrid (or any /search retriever).")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--duration", type=float, default=15.0, help="Seconds per level (upper bound).")
    parser.add_argument("--max-requests", type=int, default=3000, help="Requests per level (upper bound).")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--mode", default=None, help="Sparse search mode of every request (exact, bmp, bmp-approx, "
                                                     "seismic; default: the server's).")
    parser.add_argument("--preload", action="store_true", help="Start the server with --preload.")
    parser.add_argument("--max-batch", type=int, default=32, help="Server micro-batch size.")
    parser.add_argument("--search-threads", type=int, default=None)
    parser.add_argument("--query-runtime", default="auto",
                        help="Comma-separated query runtimes, one server setup each (auto, torch, onnx, onnx-int8).")
    parser.add_argument("--workers", default="1", help="Comma-separated server process counts, one setup each.")
    parser.add_argument("--compare-batching", action="store_true",
                        help="Also run a server with micro-batching off (--max-batch 1) at concurrency > 1.")
    parser.add_argument("--out", type=Path, help="Write the results as JSON.")
    parser.add_argument("--server-log", type=Path, default=None)
    args = parser.parse_args()
    if (args.index is None) == (args.url is None):
        parser.error("give either --index (a server is started here) or --url")
    if args.url and ("," in args.query_runtime or "," in args.workers):
        parser.error("--query-runtime and --workers lists start servers; with --url give neither")
    if args.url and urlparse(args.url).hostname not in LOCAL_HOSTS:
        parser.error("--url must point to 127.0.0.1: this tool only loads local servers")

    queries = load_queries(args.queries, args.query_limit)
    retrievers = [r.strip() for r in args.retrievers.split(",") if r.strip()]
    levels = [int(c) for c in args.concurrency.split(",")]
    setups = []
    for runtime in [r.strip() for r in args.query_runtime.split(",") if r.strip()]:
        for workers in [int(w) for w in args.workers.split(",")]:
            extra = ("--query-runtime", runtime, "--workers", str(workers)) + (("--preload",) if args.preload else ())
            label = f"{runtime}, {workers} worker{'s' if workers > 1 else ''}"
            setups.append((label, args.max_batch, levels, extra, workers))
            if args.compare_batching and args.index:
                setups.append((f"{label}, unbatched", 1, [c for c in levels if c > 1], extra, workers))

    rows = []
    offset = 0
    for label, max_batch, setup_levels, extra, workers in setups:
        server = None
        url = args.url
        if args.index:
            server = LocalServer(args.index, max_batch, args.search_threads, args.server_log, extra)
            print(f"starting server ({label}, max batch {max_batch}) on {server.url} …", file=sys.stderr, flush=True)
            server.wait_ready()
            url = server.url
        try:
            for retriever in retrievers:
                for concurrency in setup_levels:
                    row = asyncio.run(run_level(url, queries, retriever, concurrency, args.duration,
                                                args.max_requests, args.k, offset, args.mode))
                    offset += row["requests"]
                    row["server"] = f"{label} (max batch {max_batch})"
                    if workers > 1:  # /stats answers from one process: its batching counters are not the server's
                        row["encoder_batches"] = None
                    rows.append(row)
                    print(f"{label:28} {retriever:14} c={concurrency:<3} {row['rps']:7.1f} req/s  "
                          f"p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}",
                          file=sys.stderr, flush=True)
        finally:
            if server:
                server.stop()

    summary = {
        "index": portable_path(args.index) if args.index else args.url, "queries": portable_path(args.queries),
        "k": args.k, "mode": args.mode, "preload": args.preload,
        "duration_s": args.duration, "max_requests": args.max_requests, "cpus": os.cpu_count(), "rows": rows,
        "total_errors": sum(r["errors"] for r in rows),
    }
    print(table(rows, "server"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table(rows, "server") + "\n")
    if summary["total_errors"]:
        print(f"{summary['total_errors']} request(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
