"""The search scaffold every query algorithm shares: one query, or many in parallel on a thread pool.

A *query kernel* is a Numba function compiled with ``nogil=True`` and called as ::

    kernel(*data, qterms, qweights, k, *knobs, *scratch, top_scores, top_docs) -> n

``data`` are the arrays and constants of the index or structure; ``qterms`` (uint32, ascending, unique)
and ``qweights`` (int32, > 0) a quantized query (:func:`index.search.quantize_query`); ``knobs`` the
search parameters of the call; ``scratch`` work arrays, all zero on entry and left zero. The kernel
writes its top ``n <= k`` documents, best first (:mod:`index.topk`: score desc, then doc id asc), to
``top_docs[:n]`` / ``top_scores[:n]`` (uint32 / int32). Data come first: LLVM compiles the exact and
BMP kernels ~8% faster with this argument order than with the query first.

A batch deals its queries round-robin to ``threads`` workers of a process-wide thread pool; the
kernels release the GIL, so the workers run in parallel.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

Result = tuple[np.ndarray, np.ndarray]

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _workers() -> ThreadPoolExecutor:
    """The process-wide pool of search workers (one per Numba thread), created on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=numba.config.NUMBA_NUM_THREADS, thread_name_prefix="lsr-search")
        return _pool


def _forget_pool() -> None:
    """A forked child does not inherit the pool's threads: it makes its own."""
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool)


def empty_result() -> Result:
    """No documents: (doc ids uint32, int32 scores) of length 0."""
    return np.empty(0, np.uint32), np.empty(0, np.int32)


def check_threads(threads: int | None) -> None:
    """ValueError unless ``threads`` is None (Numba's thread count) or at least 1."""
    if threads is not None and threads < 1:
        raise ValueError("threads must be >= 1")


class QueryRunner:
    """A query kernel bound to its data and scratch: top-k of one quantized query or of a batch.

    ``scratch`` lists the (length, dtype) of each scratch array; every calling thread gets its own.
    """

    def __init__(self, kernel: Callable, data: Sequence, scratch: Sequence[tuple[int, type]], num_docs: int):
        self._kernel = kernel
        # plain ndarray views of memory maps: numba types np.memmap (a subclass) on a slow path, ~1 us per argument
        self._data = tuple(np.asarray(a) if isinstance(a, np.ndarray) else a for a in data)
        self._scratch = tuple((int(length), np.dtype(dtype)) for length, dtype in scratch)
        self._local = threading.local()
        self.num_docs = int(num_docs)

    def _new_scratch(self) -> tuple[np.ndarray, ...]:
        return tuple(np.zeros(length, dtype) for length, dtype in self._scratch)

    def _thread_scratch(self) -> tuple[np.ndarray, ...]:
        """This thread's scratch, kept between calls (the kernels leave it zeroed)."""
        local = self._local
        if not hasattr(local, "scratch"):
            local.scratch = self._new_scratch()
        return local.scratch

    def search(self, qterms: np.ndarray, qweights: np.ndarray, k: int, knobs: tuple = ()) -> Result:
        """Top-k of one quantized query: (doc ids uint32, int32 scores), best first; k is capped at num_docs."""
        k = min(int(k), self.num_docs)
        if not len(qterms) or k < 1:
            return empty_result()
        top_scores, top_docs = np.empty(k, np.int32), np.empty(k, np.uint32)
        n = self._kernel(*self._data, np.ascontiguousarray(qterms, np.uint32), np.ascontiguousarray(qweights, np.int32),
                         k, *knobs, *self._thread_scratch(), top_scores, top_docs)
        return top_docs[:n], top_scores[:n]

    def search_batch(self, queries: Sequence[tuple], k: int, threads: int | None = None,
                     knobs: tuple = ()) -> list[Result]:
        """:meth:`search` for many quantized queries (``(qterms, qweights, ...)`` tuples) over ``threads`` workers
        (default: Numba's thread count)."""
        check_threads(threads)
        k = min(int(k), self.num_docs)
        todo = [i for i, query in enumerate(queries) if len(query[0])] if k >= 1 else []
        top_scores = np.empty((len(queries), max(k, 0)), np.int32)
        top_docs = np.empty((len(queries), max(k, 0)), np.uint32)
        counts = np.zeros(len(queries), np.int64)
        workers = min(threads or numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS, len(todo))

        def work(first: int) -> None:
            scratch = self._thread_scratch() if workers == 1 else self._new_scratch()
            for i in todo[first::workers]:
                qterms, qweights = queries[i][0], queries[i][1]
                counts[i] = self._kernel(*self._data, np.ascontiguousarray(qterms, np.uint32),
                                         np.ascontiguousarray(qweights, np.int32), k,
                                         *knobs, *scratch, top_scores[i], top_docs[i])

        if workers == 1:
            work(0)
        elif workers > 1:
            list(_workers().map(work, range(workers)))
        return [(top_docs[i, :n].copy(), top_scores[i, :n].copy()) for i, n in enumerate(counts)]
