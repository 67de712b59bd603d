"""Document reordering: renumber documents so that similar ones get nearby ids (and share BMP blocks).

Methods
-------
``bp``
    Recursive graph bisection (Dhulipala et al., KDD 2016, "Compressing Graphs and Indexes with
    Recursive Graph Bisection"; the reordering used by the BMP paper). The documents are split in
    two halves, then for a few iterations the documents whose swap most reduces the estimated
    log-gap cost of the posting lists are exchanged, and both halves are split again, down to
    partitions of about ``leaf_size`` documents. Move gains follow the usual cost
    ``d1 * (log2 n1 - log2(d1 + 1)) + d2 * (log2 n2 - log2(d2 + 1))`` per term with ``d1``/``d2``
    documents in the halves of sizes ``n1``/``n2``.
``terms``
    Cheap: sort documents by a signature of their highest-impact terms (first the top term, then
    the second, ...), so documents dominated by the same term become neighbours.

:func:`reorder_index` rewrites the base arrays of an index directory in the new order and records
``doc_original`` (new id -> id in the order the documents were added). Pruning structures built
before are dropped (their doc ids are stale): add them again afterwards.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

from .docids import PART_BITS
from .parallel import numba_threads
from .params import check_int
from .storage import open_array, read_manifest, write_array, write_manifest

METHODS = ("bp", "terms")
BP_DEFAULTS = {"iterations": 8, "leaf_size": 32}
TERMS_DEFAULTS = {"signature": 3}
_BASE = ("postings_offsets", "postings_docs", "postings_impacts", "forward_offsets", "forward_terms", "forward_impacts")
_SERIAL_BELOW = 4096  # partitions smaller than this: no intra-partition parallelism


# ----------------------------------------------------------------------------------- BP kernels
@njit(cache=True, nogil=True, inline="always")
def _expb(logn1, logn2, d1, d2, log_tab):
    return d1 * (logn1 - log_tab[d1 + 1]) + d2 * (logn2 - log_tab[d2 + 1])


@njit(cache=True, nogil=True)
def _degrees(order, lo, mid, hi, f_off, f_terms, deg1, deg2):
    for i in range(lo, hi):
        d = order[i]
        target = deg1 if i < mid else deg2
        for p in range(f_off[d], f_off[d + 1]):
            target[f_terms[p]] += 1


@njit(cache=True, nogil=True)
def _clear(order, lo, hi, f_off, f_terms, deg1, deg2):
    for i in range(lo, hi):
        d = order[i]
        for p in range(f_off[d], f_off[d + 1]):
            deg1[f_terms[p]] = 0
            deg2[f_terms[p]] = 0


@njit(cache=True, nogil=True, inline="always")
def _gain(d, left, logn1, logn2, f_off, f_terms, deg1, deg2, log_tab):
    g = 0.0
    for p in range(f_off[d], f_off[d + 1]):
        t = f_terms[p]
        a, b = deg1[t], deg2[t]
        if left:
            g += _expb(logn1, logn2, a, b, log_tab) - _expb(logn1, logn2, a - 1, b + 1, log_tab)
        else:
            g += _expb(logn1, logn2, a, b, log_tab) - _expb(logn1, logn2, a + 1, b - 1, log_tab)
    return g


@njit(cache=True, nogil=True)
def _gains_serial(order, lo, mid, hi, f_off, f_terms, deg1, deg2, log_tab, gains):
    logn1, logn2 = log_tab[mid - lo], log_tab[hi - mid]
    for i in range(lo, hi):
        gains[i] = _gain(order[i], i < mid, logn1, logn2, f_off, f_terms, deg1, deg2, log_tab)


@njit(cache=True, nogil=True, parallel=True)
def _gains_parallel(order, lo, mid, hi, f_off, f_terms, deg1, deg2, log_tab, gains):
    logn1, logn2 = log_tab[mid - lo], log_tab[hi - mid]
    for i in prange(lo, hi):
        gains[i] = _gain(order[i], i < mid, logn1, logn2, f_off, f_terms, deg1, deg2, log_tab)


@njit(cache=True, nogil=True)
def _swap(order, lo, mid, hi, gains):
    """Sort both halves by gain (desc) and swap pairs while the summed gain is positive; return #swaps."""
    left = np.argsort(-gains[lo:mid], kind="mergesort")
    right = np.argsort(-gains[mid:hi], kind="mergesort")
    lorder = order[lo:mid][left].copy()
    rorder = order[mid:hi][right].copy()
    lg = gains[lo:mid][left].copy()
    rg = gains[mid:hi][right].copy()
    swaps = 0
    for i in range(min(lorder.shape[0], rorder.shape[0])):
        if lg[i] + rg[i] <= 0:
            break
        lorder[i], rorder[i] = rorder[i], lorder[i]
        swaps += 1
    order[lo:mid] = lorder
    order[mid:hi] = rorder
    return swaps


@njit(cache=True, nogil=True)
def _bisect_serial(order, lo, hi, iterations, f_off, f_terms, deg1, deg2, log_tab, gains):
    mid = lo + (hi - lo) // 2
    for _ in range(iterations):
        _degrees(order, lo, mid, hi, f_off, f_terms, deg1, deg2)
        _gains_serial(order, lo, mid, hi, f_off, f_terms, deg1, deg2, log_tab, gains)
        _clear(order, lo, hi, f_off, f_terms, deg1, deg2)
        if _swap(order, lo, mid, hi, gains) == 0:
            break


@njit(cache=True, nogil=True, parallel=True)
def _bisect_level(order, starts, ends, iterations, f_off, f_terms, deg1s, deg2s, log_tab, gains):
    """Bisect every partition [starts[p], ends[p]) of a level; worker g takes p = g, g + G, ..."""
    groups = deg1s.shape[0]
    for g in prange(groups):
        for p in range(g, starts.shape[0], groups):
            _bisect_serial(order, starts[p], ends[p], iterations, f_off, f_terms, deg1s[g], deg2s[g], log_tab, gains)


def bp_work(num_docs: int, leaf_size: int) -> int:
    """Documents :func:`bp_order` bisects, summed over its levels (the total of its progress reports)."""
    sizes, total = {num_docs: 1}, 0
    while sizes:
        total += sum(size * count for size, count in sizes.items())
        children: dict[int, int] = {}
        for size, count in sizes.items():
            for half in (size // 2, size - size // 2):
                if half > leaf_size:
                    children[half] = children.get(half, 0) + count
        sizes = children
    return total


def bp_order(f_off: np.ndarray, f_terms: np.ndarray, vocab_size: int, iterations: int = 8,
             leaf_size: int = 32, threads: int | None = None,
             on_progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Recursive graph bisection of the documents of a forward index; return perm (new id -> old id).
    ``on_progress(docs)`` is called after each level with the documents it bisected (:func:`bp_work` in all)."""
    num_docs = f_off.shape[0] - 1
    order = np.arange(num_docs, dtype=np.int64)
    if num_docs < 2:
        return order
    f_off = np.ascontiguousarray(f_off, np.int64)
    f_terms = np.ascontiguousarray(f_terms)
    groups = max(1, min(threads or numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    log_tab = np.zeros(num_docs + 2, np.float32)  # log_tab[x] = log2(x); x = 0 never weighs (0 * log)
    log_tab[1:] = np.log2(np.arange(1, num_docs + 2, dtype=np.float64))
    deg1s = np.zeros((groups, vocab_size), np.int32)
    deg2s = np.zeros((groups, vocab_size), np.int32)
    gains = np.empty(num_docs, np.float32)
    parts = [(0, num_docs)]
    with numba_threads(groups):
        while parts:
            big = [(lo, hi) for lo, hi in parts if hi - lo >= _SERIAL_BELOW] if len(parts) < groups else []
            for lo, hi in big:  # few large partitions: parallelize inside each
                mid = lo + (hi - lo) // 2
                for _ in range(iterations):
                    _degrees(order, lo, mid, hi, f_off, f_terms, deg1s[0], deg2s[0])
                    _gains_parallel(order, lo, mid, hi, f_off, f_terms, deg1s[0], deg2s[0], log_tab, gains)
                    _clear(order, lo, hi, f_off, f_terms, deg1s[0], deg2s[0])
                    if _swap(order, lo, mid, hi, gains) == 0:
                        break
            rest = [p for p in parts if p not in set(big)]
            if rest:
                starts = np.array([lo for lo, _ in rest], np.int64)
                ends = np.array([hi for _, hi in rest], np.int64)
                _bisect_level(order, starts, ends, iterations, f_off, f_terms, deg1s, deg2s, log_tab, gains)
            children = []
            for lo, hi in parts:
                mid = lo + (hi - lo) // 2
                children += [(a, b) for a, b in ((lo, mid), (mid, hi)) if b - a > leaf_size]
            if on_progress is not None:
                on_progress(sum(hi - lo for lo, hi in parts))
            parts = children
    return order


# ----------------------------------------------------------------------------------- cheap method
@njit(cache=True, nogil=True)
def _signatures(f_off, f_terms, f_imps, width, sentinel, out):
    """out[d, j] = j-th highest-impact term of doc d (ties: lower term id), sentinel when absent."""
    for d in range(f_off.shape[0] - 1):
        lo, hi = f_off[d], f_off[d + 1]
        out[d, :] = sentinel
        if hi == lo:
            continue
        imps = f_imps[lo:hi].astype(np.int64)
        order = np.argsort(-imps, kind="mergesort")  # terms ascend in a doc, so ties keep lower id first
        for j in range(min(width, hi - lo)):
            out[d, j] = f_terms[lo + order[j]]


def terms_order(f_off: np.ndarray, f_terms: np.ndarray, f_imps: np.ndarray, vocab_size: int,
                signature: int = 3) -> np.ndarray:
    """Sort documents by their top-``signature`` terms; return perm (new id -> old id)."""
    num_docs = f_off.shape[0] - 1
    sig = np.empty((num_docs, signature), np.int64)
    _signatures(np.ascontiguousarray(f_off, np.int64), f_terms, f_imps, signature, vocab_size, sig)
    keys = [np.arange(num_docs)] + [sig[:, j] for j in range(signature - 1, -1, -1)]
    return np.lexsort(keys).astype(np.int64)


# ----------------------------------------------------------------------------------- rewrite
@njit(cache=True, nogil=True)
def _permute_forward(perm, f_off, f_terms, f_imps, new_off, new_terms, new_imps):
    pos = 0
    new_off[0] = 0
    for i in range(perm.shape[0]):
        d = perm[i]
        for p in range(f_off[d], f_off[d + 1]):
            new_terms[pos] = f_terms[p]
            new_imps[pos] = f_imps[p]
            pos += 1
        new_off[i + 1] = pos


@njit(cache=True, nogil=True)
def _forward_runs(f_off, f_terms, vocab):
    """counts[t + 1]: runs of equal high halves (:mod:`index.docids`) in term t's list inverted from ``f_*``."""
    counts = np.zeros(vocab + 1, np.int64)
    last = np.full(vocab, -1, np.int64)
    for d in range(f_off.shape[0] - 1):
        h = d >> PART_BITS
        for p in range(f_off[d], f_off[d + 1]):
            t = f_terms[p]
            if last[t] != h:
                last[t] = h
                counts[t + 1] += 1
    return counts


@njit(cache=True, nogil=True)
def _invert_forward(f_off, f_terms, f_imps, p_off, run_offsets, p_docs, p_imps, run_high, run_ends):
    """Postings (16-bit ids and their runs) from a forward index: docs visited in id order, so every list comes
    out sorted."""
    cursor = p_off[:-1].copy()
    run = run_offsets[:-1] - 1
    last = np.full(p_off.shape[0] - 1, -1, np.int64)
    for d in range(f_off.shape[0] - 1):
        h = d >> PART_BITS
        for p in range(f_off[d], f_off[d + 1]):
            t = f_terms[p]
            c = cursor[t]
            if last[t] != h:
                last[t] = h
                run[t] += 1
                run_high[run[t]] = h
            p_docs[c] = d & 0xFFFF
            p_imps[c] = f_imps[p]
            cursor[t] = c + 1
            run_ends[run[t]] = c + 1 - p_off[t]


def reorder_index(index_dir: Path, method: str = "bp", on_progress: Callable[[int, int], None] | None = None,
                  **params) -> np.ndarray:
    """Renumber the documents of an index directory; return perm (perm[new_id] = old_id, int64).

    ``old_id`` is the id before this call. The base arrays are rewritten (postings re-sorted by
    new id, forward index permuted), ``doc_original`` (uint32, new id -> id at build time, composed
    with any earlier reordering) is added and ``manifest["reorder"]`` records the method and
    parameters. Structures built earlier are removed from the manifest and their files deleted.

    Parameters: ``bp``: ``iterations`` (8), ``leaf_size`` (32), ``threads``; ``terms``: ``signature`` (3).
    ``on_progress(done, total)`` reports the ordering's progress (for ``bp``: documents bisected, level by level).
    """
    index_dir = Path(index_dir)
    if method not in METHODS:
        raise ValueError(f"unknown reorder method {method!r}; available: {', '.join(METHODS)}")
    defaults = BP_DEFAULTS if method == "bp" else TERMS_DEFAULTS
    allowed = set(defaults) | ({"threads"} if method == "bp" else set())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"unknown parameters for reorder method {method!r}: {', '.join(unknown)}")
    threads = params.pop("threads", None)
    if threads is not None:
        check_int("threads", threads, 1)
    settings = {**defaults, **params}
    for name, value in settings.items():
        settings[name] = check_int(name, value, 1)

    manifest = read_manifest(index_dir)
    arrays = {name: open_array(index_dir, manifest, name) for name in _BASE}
    num_docs, vocab = int(manifest["num_docs"]), int(manifest["vocab_size"])
    f_off = np.ascontiguousarray(arrays["forward_offsets"])
    f_terms, f_imps = np.asarray(arrays["forward_terms"]), np.asarray(arrays["forward_impacts"])
    if method == "bp":
        total, done = bp_work(num_docs, settings["leaf_size"]), 0

        def level_done(docs: int) -> None:
            nonlocal done
            done += docs
            if on_progress is not None:
                on_progress(done, total)

        perm = bp_order(f_off, f_terms, vocab, threads=threads, on_progress=level_done, **settings)
    else:
        perm = terms_order(f_off, f_terms, f_imps, vocab, **settings)
        if on_progress is not None:
            on_progress(num_docs, num_docs)

    new = {
        "forward_offsets": np.empty(num_docs + 1, np.int64),
        "forward_terms": np.empty_like(f_terms),
        "forward_impacts": np.empty_like(f_imps),
    }
    _permute_forward(perm, f_off, f_terms, f_imps, new["forward_offsets"], new["forward_terms"], new["forward_impacts"])
    p_off = np.ascontiguousarray(arrays["postings_offsets"])
    run_offsets = np.cumsum(_forward_runs(new["forward_offsets"], new["forward_terms"], vocab))
    runs = int(run_offsets[-1])
    new.update({  # 16-bit doc ids, whatever the index stored before
        "postings_docs": np.empty(arrays["postings_docs"].shape, np.uint16),
        "postings_impacts": np.empty(arrays["postings_impacts"].shape, arrays["postings_impacts"].dtype),
        "postings_run_offsets": run_offsets, "postings_run_high": np.empty(runs, np.uint16),
        "postings_run_ends": np.empty(runs, np.uint32)})
    _invert_forward(new["forward_offsets"], new["forward_terms"], new["forward_impacts"], p_off, run_offsets,
                    new["postings_docs"], new["postings_impacts"], new["postings_run_high"], new["postings_run_ends"])
    if "doc_original" in manifest["arrays"]:
        original = np.asarray(open_array(index_dir, manifest, "doc_original"))[perm]
    else:
        original = perm
    new["doc_original"] = original.astype(np.uint32)
    del arrays, f_terms, f_imps

    staging = index_dir / "_reorder_tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    entries = {name: write_array(staging, name, arr) for name, arr in new.items()}
    del new
    for name, entry in entries.items():
        os.replace(staging / entry["file"], index_dir / entry["file"])
    shutil.rmtree(staging, ignore_errors=True)

    structures = manifest.pop("structures", {}) or {}
    dropped = sorted(structures)
    for info in structures.values():  # their doc ids are stale
        for name in info.get("arrays", []):
            entry = manifest["arrays"].pop(name, None)
            if entry is not None:
                (index_dir / entry["file"]).unlink(missing_ok=True)
    manifest["arrays"].update(entries)
    manifest["arrays"] = dict(sorted(manifest["arrays"].items()))
    history = manifest.get("reorder", {}).get("history", [])
    record = {"method": method, **settings}
    if method == "bp" and threads is not None:
        record["threads"] = threads
    manifest["reorder"] = {**record, "history": history + [record], "dropped_structures": dropped}
    write_manifest(index_dir, manifest)
    return perm
