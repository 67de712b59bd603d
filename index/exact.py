"""Exact top-k: exhaustive term-at-a-time scoring of every posting of the query's terms into an int32 accumulator.

Serves mode ``exact`` with the same contract as a pruning structure (:mod:`index.structures`):
``search`` / ``search_batch`` on quantized queries, returning (doc ids uint32, int32 scores).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .batch import QueryRunner, Result
from .docids import PART_BITS
from .topk import heap_offer, heap_sort

MODES = ("exact",)
# Collect touched docs instead of scanning the whole accumulator when the query's posting lists
# hold fewer than num_docs / _TOUCHED_FRACTION postings (measured crossover: ~1/40).
_TOUCHED_FRACTION = 32


@njit(cache=True, nogil=True)
def exact_top_k(offsets, run_offsets, run_high, run_ends, docs, impacts, qterms, qweights, k, acc, touched,
                top_scores, top_docs):
    """Exact top-k of one quantized query into ``top_*[:n]`` (sorted); return n (an :mod:`index.batch` kernel).

    A list's doc ids are read run by run: ``(high << 16) + docs[p]`` (:mod:`index.docids`).
    Scratch: ``acc`` (int32 per doc, zero on entry, left zero) and ``touched`` (uint32 per doc)."""
    work = 0
    for i in range(qterms.shape[0]):
        work += offsets[qterms[i] + 1] - offsets[qterms[i]]
    size = 0
    if work * _TOUCHED_FRACTION < acc.shape[0]:
        n_touched = 0
        for i in range(qterms.shape[0]):
            w = qweights[i]
            t = qterms[i]
            p = offsets[t]
            for r in range(run_offsets[t], run_offsets[t + 1]):
                base = np.int64(run_high[r]) << PART_BITS
                end = offsets[t] + np.int64(run_ends[r])
                while p < end:
                    d = base + np.int64(docs[p])
                    if acc[d] == 0:
                        touched[n_touched] = d
                        n_touched += 1
                    acc[d] += w * np.int32(impacts[p])
                    p += 1
        for j in range(n_touched):
            d = touched[j]
            size = heap_offer(top_scores, top_docs, size, k, acc[d], d)
            acc[d] = 0
    else:
        for i in range(qterms.shape[0]):
            w = qweights[i]
            t = qterms[i]
            start = offsets[t]
            for r in range(run_offsets[t], run_offsets[t + 1]):
                base = np.int64(run_high[r]) << PART_BITS
                lo = start if r == run_offsets[t] else offsets[t] + np.int64(run_ends[r - 1])
                for p in range(lo, offsets[t] + np.int64(run_ends[r])):
                    acc[base + np.int64(docs[p])] += w * np.int32(impacts[p])
        # Docs arrive in id order, so once the heap is full only a strictly higher score than
        # the root can enter (an equal score loses the tie to the root's lower doc id).
        threshold = 0
        for d in range(acc.shape[0]):
            s = acc[d]
            if s > threshold:
                size = heap_offer(top_scores, top_docs, size, k, s, d)
                if size == k:
                    threshold = top_scores[0]
        acc[:] = 0
    heap_sort(top_scores, top_docs, size)
    return size


class ExactSearch:
    """Mode ``exact`` over an :class:`index.search.InvertedIndex`'s posting lists."""

    MODES = MODES

    def __init__(self, index):
        num_docs = int(index.num_docs)
        self._runner = QueryRunner(
            exact_top_k,
            (index.array("postings_offsets"), *index.postings_runs(), index.array("postings_docs"),
             index.array("postings_impacts")),
            ((num_docs, np.int32), (num_docs, np.uint32)), num_docs)

    @staticmethod
    def _check_params(mode: str, params: dict) -> None:
        if mode not in MODES:
            raise ValueError(f"exact search serves mode 'exact', not {mode!r}")
        if params:
            raise ValueError(f"mode {mode!r} takes no parameters, got {', '.join(params)}")

    def search(self, qterms: np.ndarray, qweights: np.ndarray, k: int, mode: str = "exact", **params) -> Result:
        """Top-k of one quantized query: (doc ids uint32, int32 scores) by (score desc, id asc)."""
        self._check_params(mode, params)
        return self._runner.search(qterms, qweights, k)

    def search_batch(self, quantized: list, k: int, mode: str = "exact", threads: int | None = None,
                     **params) -> list[Result]:
        """:meth:`search` for many quantized queries ``(qterms, qweights, qscale)`` over ``threads`` workers."""
        self._check_params(mode, params)
        return self._runner.search_batch(quantized, k, threads)
