"""What every request shares: the engine snapshot and its lifecycle (loading in the background, picking up newer
commits), the encoder micro-batchers, the thread pools, the API keys, the limits and the counters."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np
from fastapi import Request

from lsr.engine import Engine, check_query_runtime
from lsr.server.auth import ApiKeys
from lsr.server.batching import MicroBatcher
from lsr.server.limits import RequestLimits
from lsr.server.schemas import Health, Limits, Stats
from lsr.server.workers import Cancellation, WorkerPool

log = logging.getLogger("lsr.server")
REFRESH_INTERVAL_S = 1.0  # searches pick up commits of other writers (e.g. `lsr add`) at most this late
ENCODE_CHUNK = 32  # a batch request's queries are encoded this many at a time, its cancellation checked in between


class ServerState:
    """The served index and everything around it; ``engine`` is the snapshot new requests use.

    Four kinds of worker threads, so that none waits for another: one encoder thread (query micro-batches), the
    search pool (ranking, rendering, document fetches; a timed-out job gives its place to a new thread), one
    writer thread (POST/DELETE /documents, however long) and one thread opening newer commits.
    """

    def __init__(self, index_dir: str | os.PathLike, *, keys: ApiKeys, limits: RequestLimits, max_batch: int = 32,
                 search_threads: int | None = None, encode_threads: int = 1, warmup: bool = True,
                 refresh_interval_s: Optional[float] = REFRESH_INTERVAL_S, query_runtime: Optional[str] = None,
                 preload: bool = False) -> None:
        self.index_dir = Path(index_dir)
        # what runs the models on queries (None: lsr.onnx_encoders' default)
        self.query_runtime = check_query_runtime(query_runtime) if query_runtime else None
        self.preload = preload
        self.keys = keys
        self.limits = limits
        self.max_batch = max_batch
        self.warmup = warmup
        self.refresh_interval_s = refresh_interval_s
        self._last_refresh = time.monotonic()
        self._swap_lock = threading.Lock()   # one engine swap at a time
        self._write_lock = threading.Lock()  # one write at a time in this process (see serialized_writes)
        self.writes = 0
        self.engine: Engine | None = None
        self.ready = False
        self.error: str | None = None
        self._failed_commit: tuple | None = None  # the newest commit, if it could not be opened (not retried)
        self.commit_error: str | None = None
        self.started = time.time()
        self.queries = 0
        self.errors = 0
        self.latencies: deque[float] = deque(maxlen=20_000)
        self._lock = threading.Lock()
        # Named points in the worker jobs ("search", "document", "write") where a test holds a job to make a race
        # deterministic: reached(point) calls the function registered here for it (nothing outside tests).
        self.hooks: dict[str, Callable[[], None]] = {}
        # Torch's intra-op threads are set per thread, so in the threads that encode. One is the default: query
        # batches are small, and intra-op threads that wait on each other collapse when the cores are shared.
        self.encode_threads = encode_threads
        self.encode_pool = WorkerPool(1, "lsr-encode", initializer=_torch_threads, initargs=(encode_threads,))
        self.search_pool = WorkerPool(search_threads or max(2, os.cpu_count() or 2), "lsr-search",
                                      replace_abandoned=True)
        self.write_pool = WorkerPool(1, "lsr-write", initializer=_torch_threads, initargs=(encode_threads,))
        self.reload_pool = WorkerPool(1, "lsr-reload")
        self.sparse_batcher = MicroBatcher(self.encode_sparse, self.encode_pool, max_batch, "sparse")
        self.dense_batcher = MicroBatcher(self.encode_dense, self.encode_pool, max_batch, "dense")

    def reached(self, point: str) -> None:
        """Call the hook registered for ``point`` (see ``hooks``), if any."""
        hook = self.hooks.get(point)
        if hook is not None:
            hook()

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
            # a long-running server hashes every file once (then only the files of new commits)
            engine = Engine.open(self.index_dir, query_runtime=self.query_runtime, checksums=True, preload=self.preload)
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
        for pool in (self.encode_pool, self.search_pool, self.write_pool, self.reload_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    def health(self) -> tuple[Health, int]:
        """GET /healthz: 200 while searchable (``degraded`` when a newer commit cannot be opened and the last good
        one is served), 503 while loading or if loading failed."""
        if self.ready and self.commit_error:
            return Health(status="degraded", detail=f"serving generation {self.engine.generation}; the index's newest "
                                                    f"commit cannot be opened: {self.commit_error}"), 200
        if self.ready:
            return Health(status="ok"), 200
        return (Health(status="error", detail=self.error) if self.error else Health(status="loading")), 503

    # ------------------------------------------------------------------ newer commits
    async def maybe_refresh(self) -> None:
        """Serve the newest commit (another process may have written), checked at most every
        ``refresh_interval_s``: two ``stat`` calls here, and the commit is opened on the reload thread."""
        if self.refresh_interval_s is None or self.engine is None:
            return
        now = time.monotonic()
        if now - self._last_refresh < self.refresh_interval_s:
            return
        self._last_refresh = now  # set before awaiting: concurrent requests do not refresh again
        if self._unopened_commit() is not None:
            await asyncio.get_running_loop().run_in_executor(self.reload_pool, self.reload)

    def _unopened_commit(self) -> tuple | None:
        """The index's newest commit if it is not the one served and not one already found unopenable."""
        engine = self.engine
        newest = engine.newest_commit()
        if newest is None or newest == engine.opened_commit or newest == self._failed_commit:
            return None
        return newest

    def reload(self) -> None:
        """Open the newest commit and serve it; requests already running keep their snapshot. A commit that cannot
        be opened is remembered and not tried again until another commit replaces it: logged once, reported by
        /healthz and /stats, and the last good snapshot keeps serving."""
        with self._swap_lock:
            newest = self._unopened_commit()
            if newest is None:
                return
            engine = self.engine
            try:
                newer = engine.reopen()
            except Exception as err:  # noqa: BLE001 - any reason: keep serving the snapshot we have
                self._failed_commit = newest
                self.commit_error = f"{type(err).__name__}: {err}"
                log.error("index %s: its newest commit cannot be opened (%s); still serving generation %d until "
                          "another commit replaces it", self.index_dir, self.commit_error, engine.generation)
                return
            self.engine = newer
            self._failed_commit = self.commit_error = None
            log.info("index %s: now serving generation %s", self.index_dir, newer.generation)

    # ------------------------------------------------------------------ writes
    @contextmanager
    def serialized_writes(self) -> Iterator[None]:
        """One write at a time in this server: its threads (a lock) and its worker processes (``lsr serve
        --workers``: a blocking ``flock`` on ``.DIR.serve.lock`` beside the index). Another program writing the
        index (``lsr add``) is refused by the library's own writer lock instead (423)."""
        lock_file = self.index_dir.parent / f".{self.index_dir.name}.serve.lock"
        with self._write_lock, open(lock_file, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
            yield

    # ------------------------------------------------------------------ encoding (runs on the encoder thread)
    def encode_sparse(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        return self.engine.query_vectors(texts)

    def encode_dense(self, texts: list[str]) -> np.ndarray:
        return self.engine.dense_query_vectors(texts)

    def encode_sparse_chunked(self, cancellation: Cancellation, texts: list[str]
                              ) -> list[tuple[np.ndarray, np.ndarray]]:
        """A batch request's sparse vectors, :data:`ENCODE_CHUNK` queries at a time (stops once abandoned)."""
        vectors = []
        for start in range(0, len(texts), ENCODE_CHUNK):
            cancellation.check()
            vectors += self.encode_sparse(texts[start:start + ENCODE_CHUNK])
        return vectors

    def encode_dense_chunked(self, cancellation: Cancellation, texts: list[str]) -> np.ndarray:
        """A batch request's dense vectors, :data:`ENCODE_CHUNK` queries at a time (stops once abandoned)."""
        parts = []
        for start in range(0, len(texts), ENCODE_CHUNK):
            cancellation.check()
            parts.append(self.encode_dense(texts[start:start + ENCODE_CHUNK]))
        return np.concatenate(parts)

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
            bm25=status["bm25"],
            modes=status["modes"], retrievers=status["retrievers"], default_retriever=status["default_retriever"],
            queries=queries, errors=errors, query_encoders=status["query_encoders"],
            latency_ms={
                "p50": None if lat is None else round(float(np.percentile(lat, 50)), 3),
                "p99": None if lat is None else round(float(np.percentile(lat, 99)), 3),
                "mean": None if lat is None else round(float(lat.mean()), 3),
            },
            batching={"sparse": self.sparse_batcher.stats(), "dense": self.dense_batcher.stats()},
            uptime_s=round(time.time() - self.started, 1),
            read_only=self.read_only, writes=self.writes, limits=self.describe_limits().model_dump(),
            generation=status["generation"], commit_error=self.commit_error,
            threads={"encode": self.encode_pool.stats(), "search": self.search_pool.stats(),
                     "write": self.write_pool.stats()},
        )


async def get_state(request: Request) -> ServerState:
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
