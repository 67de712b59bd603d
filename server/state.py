"""What every request shares: the engine snapshot and its lifecycle (loading in the background, picking up newer
commits), the encoder micro-batchers, the thread pools, the API keys, the limits and the counters."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
from fastapi import Request

from lsr.engine import Engine
from lsr.server.auth import ApiKeys
from lsr.server.batching import MicroBatcher
from lsr.server.limits import RequestLimits
from lsr.server.schemas import Limits, Stats

log = logging.getLogger("lsr.server")
REFRESH_INTERVAL_S = 1.0  # searches pick up commits of other writers (e.g. `lsr add`) at most this late


class ServerState:
    """The served index and everything around it; ``engine`` is the snapshot new requests use."""

    def __init__(self, index_dir: str | os.PathLike, *, keys: ApiKeys, limits: RequestLimits, max_batch: int = 32,
                 search_threads: int | None = None, encode_threads: int = 1, warmup: bool = True,
                 refresh_interval_s: Optional[float] = REFRESH_INTERVAL_S) -> None:
        self.index_dir = Path(index_dir)
        self.keys = keys
        self.limits = limits
        self.max_batch = max_batch
        self.warmup = warmup
        self.refresh_interval_s = refresh_interval_s
        self._last_refresh = time.monotonic()
        self._swap_lock = threading.Lock()   # one engine swap at a time
        self.write_lock = threading.Lock()   # one write at a time in this server (lsr.live locks across processes)
        self.writes = 0
        self.engine: Engine | None = None
        self.ready = False
        self.error: str | None = None
        self.started = time.time()
        self.queries = 0
        self.errors = 0
        self.latencies: deque[float] = deque(maxlen=20_000)
        self._lock = threading.Lock()
        # One encoder thread; torch's intra-op threads are per thread, so set them there. One is the default: query
        # batches are small, and intra-op threads that wait on each other collapse when the cores are shared.
        self.encode_threads = encode_threads
        self.encode_pool = ThreadPoolExecutor(1, thread_name_prefix="lsr-encode", initializer=_torch_threads,
                                              initargs=(encode_threads,))
        self.search_pool = ThreadPoolExecutor(search_threads or max(2, os.cpu_count() or 2),
                                              thread_name_prefix="lsr-search")
        self.sparse_batcher = MicroBatcher(self.encode_sparse, self.encode_pool, max_batch, "sparse")
        self.dense_batcher = MicroBatcher(self.encode_dense, self.encode_pool, max_batch, "dense")

    # ------------------------------------------------------------------ keys and limits
    @property
    def read_only(self) -> bool:
        return self.keys.read_only

    @property
    def read_key_required(self) -> bool:
        return self.keys.read_key_required

    def key_allows(self, presented: Optional[str], *, write: bool) -> bool:
        return self.keys.allows(presented, write=write)

    def describe_limits(self) -> Limits:
        return self.limits.describe(read_only=self.read_only, read_key_required=self.read_key_required)

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        """Open the index, load its encoders and warm the kernels up; sets ``ready`` (or ``error``)."""
        try:
            started = time.time()
            _single_threaded_blas()
            engine = Engine.open_any(self.index_dir)
            engine.warm_up(search=self.warmup)
            self.engine = engine
            self.ready = True
            log.info("index %s ready in %.1fs", self.index_dir, time.time() - started)
        except Exception as err:  # noqa: BLE001 - reported by /healthz and 503s
            log.exception("loading %s failed", self.index_dir)
            self.error = f"{type(err).__name__}: {err}"

    def load_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name="lsr-load", daemon=True)
        thread.start()
        return thread

    async def close(self) -> None:
        await self.sparse_batcher.close()
        await self.dense_batcher.close()
        self.encode_pool.shutdown(wait=False, cancel_futures=True)
        self.search_pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ newer commits
    async def maybe_refresh(self) -> None:
        """Swap in the newest commit (another process may have written) at most every ``refresh_interval_s``."""
        if self.refresh_interval_s is None or self.engine is None:
            return
        now = time.monotonic()
        if now - self._last_refresh < self.refresh_interval_s:
            return
        self._last_refresh = now  # set before awaiting: concurrent requests do not refresh again
        await asyncio.get_running_loop().run_in_executor(self.search_pool, self.refresh)

    def refresh(self) -> None:
        """``engine.refresh()`` (a stat of the commit file when nothing changed); the old engine keeps serving
        the requests already holding it. A failure is logged and the current snapshot stays."""
        with self._swap_lock:
            engine = self.engine
            try:
                newer = engine.refresh()
            except Exception:  # noqa: BLE001 - keep serving the snapshot we have
                log.exception("refreshing %s failed; still serving the previous commit", self.index_dir)
                return
            if newer is not engine:
                self.engine = newer
                log.info("index %s: now serving generation %s", self.index_dir, newer.generation)

    # ------------------------------------------------------------------ encoding (runs on the encoder thread)
    def encode_sparse(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        return self.engine.query_vectors(texts)

    def encode_dense(self, texts: list[str]) -> np.ndarray:
        return self.engine.dense_query_vectors(texts)

    # ------------------------------------------------------------------ counters
    def record(self, seconds: float, queries: int = 1) -> None:
        with self._lock:
            self.queries += queries
            self.latencies.append(seconds * 1000.0)

    def count_error(self) -> None:
        with self._lock:
            self.errors += 1

    def stats(self) -> Stats:
        status = self.engine.status()
        with self._lock:
            lat = np.array(self.latencies) if self.latencies else None
            queries, errors = self.queries, self.errors
        return Stats(
            documents=status["documents"], index_size_bytes=status["size_bytes"], index=str(self.index_dir.resolve()),
            model=status["model"], dense_model=status["dense_model"], dense_search=status["dense_search"],
            modes=status["modes"], queries=queries, errors=errors, query_encoders=status["query_encoders"],
            latency_ms={
                "p50": None if lat is None else round(float(np.percentile(lat, 50)), 3),
                "p99": None if lat is None else round(float(np.percentile(lat, 99)), 3),
                "mean": None if lat is None else round(float(lat.mean()), 3),
            },
            batching={"sparse": self.sparse_batcher.stats(), "dense": self.dense_batcher.stats()},
            uptime_s=round(time.time() - self.started, 1),
            read_only=self.read_only, writes=self.writes, limits=self.describe_limits().model_dump(),
        )


def get_state(request: Request) -> ServerState:
    """The app's shared state (a FastAPI dependency)."""
    return request.app.state.lsr


def _torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _single_threaded_blas() -> None:
    """Requests are parallel over the search pool; BLAS threads inside each one only fight over the cores."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return
    threadpool_limits(1, user_api="blas")
