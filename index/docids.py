"""Posting-list document ids in 16 bits: the low half of each id, and the runs of ids that share a high half.

A list's ids are increasing, so its postings whose ids share a high half ``h = id >> 16`` form one run. The index
stores ``postings_docs`` as uint16 (``id & 0xFFFF``) and, per term, its runs: ``postings_run_offsets`` int64 [V + 1]
(the term's range of runs), ``postings_run_high`` uint16 (each run's high half) and ``postings_run_ends`` uint32
(where each run ends, relative to the list's start). A kernel reads an id as ``(h << 16) + low`` while it walks the
runs, with no decoding step. That halves the largest array of the exact mode (4 -> 2 bytes per posting); the runs
cost 6 bytes each, and a term has at most one per 65,536 documents (a rare term one in all), so a large vocabulary
(BM25 words) costs no more than its postings.

Indexes of format version 2 and older store uint32 ids and no runs; :func:`plain_runs` gives them one run per list,
so the same kernels read both.
"""

from __future__ import annotations

import numpy as np
from numba import njit

PART_BITS = 16
RUN_ARRAYS = ("postings_run_offsets", "postings_run_high", "postings_run_ends")


def plain_runs(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of an index storing full uint32 ids: each list is one run with high half 0."""
    lengths = np.diff(np.asarray(offsets, np.int64))
    vocab = lengths.shape[0]
    return np.arange(vocab + 1, dtype=np.int64), np.zeros(vocab, np.uint16), lengths.astype(np.uint32)


@njit(cache=True, nogil=True)
def _join(offsets, low, run_offsets, high, ends, out):
    for t in range(offsets.shape[0] - 1):
        start = offsets[t]
        p = start
        for r in range(run_offsets[t], run_offsets[t + 1]):
            base = np.uint32(np.int64(high[r]) << PART_BITS)
            end = start + ends[r]
            while p < end:
                out[p] = base + np.uint32(low[p])
                p += 1


def join_doc_ids(offsets: np.ndarray, low: np.ndarray, runs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Full uint32 ids of every posting ."""
    out = np.empty(low.shape[0], np.uint32)
    _join(np.ascontiguousarray(offsets, np.int64), low, *runs, out)
    return out


@njit(cache=True, nogil=True)
def log_runs(docs, terms, cursor, start, last_high, run_term, run_high, run_start):
    """Runs that start in a batch of postings appended in id order (``cursor`` before the batch, ``start`` each
    list's start, ``last_high`` each term's current high half): written to ``run_*``; return how many."""
    n = 0
    for i in range(docs.shape[0]):
        t = terms[i]
        h = np.int64(docs[i] >> PART_BITS)
        if h != last_high[t]:
            last_high[t] = h
            run_term[n] = t
            run_high[n] = h
            run_start[n] = cursor[t] - start[t]
            n += 1
        cursor[t] += 1
    return n


def runs_from_log(run_term: np.ndarray, run_high: np.ndarray, run_start: np.ndarray,
                  lengths: np.ndarray) -> dict[str, np.ndarray]:
    """The run arrays from runs logged in id order (:func:`log_runs`) and the lists' lengths."""
    order = np.argsort(run_term, kind="stable")
    terms, high, starts = run_term[order], run_high[order], run_start[order].astype(np.int64)
    run_offsets = np.zeros(lengths.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(terms, minlength=lengths.shape[0]), out=run_offsets[1:])
    ends = np.empty(terms.shape[0], np.int64)
    ends[:-1] = starts[1:]
    last = run_offsets[1:][run_offsets[1:] > run_offsets[:-1]] - 1  # each list's last run ends at its length
    ends[last] = np.asarray(lengths, np.int64)[terms[last]]
    return {"postings_run_offsets": run_offsets, "postings_run_high": high.astype(np.uint16),
            "postings_run_ends": ends.astype(np.uint32)}


@njit(cache=True, nogil=True)
def list_doc_ids(t, offsets, low, run_offsets, high, ends, out):
    """Write term ``t``'s full doc ids into ``out[:length of its list]``."""
    start = offsets[t]
    p = 0
    for r in range(run_offsets[t], run_offsets[t + 1]):
        base = np.uint32(np.int64(high[r]) << PART_BITS)
        end = np.int64(ends[r])
        while p < end:
            out[p] = base + np.uint32(low[start + p])
            p += 1
