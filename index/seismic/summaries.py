"""Seismic's block summaries: per block, the per-term maximum impact over its documents, pruned and quantized.

A block's summary keeps the heaviest terms holding ``summary_energy`` of its L1 mass, at most ``summary_cap`` of
them, quantized to codes of ``summary_bits`` bits with an integer step per block (its scale), rounding up
(``code * step >= impact``; with 8 bits the step of an 8-bit index is 1, i.e. exact). Summaries are stored
block-major: block b's terms are ``sum_terms[sum_offsets[b]:sum_offsets[b + 1]]`` (uint16 term ids when the
vocabulary fits) and its codes the same entries of ``sum_values``: one uint8 per entry, or with 4 bits two per byte
(entry e in the low nibble of byte e // 2 when e is even, the high one when odd). An entry costs 3 bytes (2.5 with
4 bits) and a block 4 more. They are built in fixed-size runs of blocks on a pool of threads and appended to their
files as the runs complete: the build holds a few runs' summaries, never all of them.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np
from numba import njit

from ..storage import ArrayAppender, term_dtype, write_array

RUN_BLOCKS = 16384  # blocks summarized per task: bounds the summaries held in memory at once


def summarize(index_dir: Path, block_offsets: np.ndarray, docs: np.ndarray,
              forward: tuple[np.ndarray, np.ndarray, np.ndarray], energy: float, cap: int,
              vocab: int, bits: int = 8) -> tuple[dict[str, dict], int]:
    """Write the summaries of every block (``block_offsets`` and ``docs`` from :func:`.build.block_lists`;
    ``forward``: the forward index's offsets, terms, impacts) as the ``seismic_*`` arrays ``sum_offsets``,
    ``sum_terms``, ``sum_values`` and ``block_step`` into ``index_dir``; return their manifest entries and the
    number of summary entries."""
    f_off, f_terms, f_imp = forward
    n_blocks = block_offsets.shape[0] - 1
    block_step = np.ones(n_blocks, np.uint16)  # 16-bit impacts need steps up to 257
    sizes = np.zeros(n_blocks + 1, np.int64)
    terms_out = ArrayAppender(index_dir, "seismic_sum_terms", term_dtype(vocab))
    values_out = ArrayAppender(index_dir, "seismic_sum_values", np.uint8)
    threads = numba.get_num_threads()

    def run(b0: int) -> tuple[np.ndarray, np.ndarray]:
        return _summarize_blocks(b0, min(b0 + RUN_BLOCKS, n_blocks), block_offsets, docs, f_off, f_terms, f_imp,
                                 energy, min(cap, vocab), vocab, (1 << bits) - 1, block_step, sizes[1:])

    odd = np.empty(0, np.uint8)  # with 4 bits: a run's last code when its count is odd, packed with the next run's

    def write(part: tuple[np.ndarray, np.ndarray]) -> None:
        nonlocal odd
        terms_out.append(part[0])
        codes = part[1]
        if bits == 4:
            codes = np.concatenate((odd, codes))
            even = codes.shape[0] - codes.shape[0] % 2
            odd = codes[even:]
            codes = codes[0:even:2] | (codes[1:even:2] << 4)
        values_out.append(codes)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque()
        for b0 in range(0, n_blocks, RUN_BLOCKS):
            pending.append(pool.submit(run, b0))
            if len(pending) > 2 * threads:
                write(pending.popleft().result())
        while pending:
            write(pending.popleft().result())
    if odd.shape[0]:
        values_out.append(odd)
    np.cumsum(sizes, out=sizes)
    entries = int(sizes[-1])
    offsets = sizes.astype(np.uint32) if entries < 2**32 else sizes
    return {"seismic_sum_terms": terms_out.close(), "seismic_sum_values": values_out.close(),
            "seismic_sum_offsets": write_array(index_dir, "seismic_sum_offsets", offsets),
            "seismic_block_step": write_array(index_dir, "seismic_block_step", block_step)}, entries


@njit(cache=True, nogil=True)
def _summarize_block(docs, f_off, f_terms, f_imp, energy, cap, maxv, union, hist, ties, out_terms, out_codes):
    """Summary of a block: per-term max impact, the heaviest terms holding ``energy`` of its L1 mass
    (ties: first met), at most ``cap`` of them, quantized up to uint8 codes. Write terms/codes to ``out_*[:m]``;
    return (m, step).

    ``maxv`` (int32[V]) and ``hist`` (int64[256]) must be zero and are left zero; ``union`` and ``ties``
    hold V + 1 entries.
    """
    u = 0
    total = 0
    top = 0
    for i in range(docs.shape[0]):
        d = docs[i]
        for p in range(np.uint64(f_off[d]), np.uint64(f_off[d + np.uint32(1)])):
            t = f_terms[p]
            old = np.int64(maxv[t])
            new = max(old, np.int64(f_imp[p]))
            union[u] = t  # branch-free: kept only if the term is new to the block
            u += np.int64(old == 0)
            maxv[t] = new
            total += new - old
            top = max(top, new)
            if new <= 255:  # histogram of the block's values (level 0 collects nothing useful)
                hist[old] -= 1
                hist[new] += 1
    threshold = energy * total
    step = 1 if top <= 255 else (top + 254) // 255
    m = 0
    if top <= 255:
        # levels 1..255: find the level where the running mass (heaviest first) crosses the threshold, or
        # where the count reaches the cap; keep everything above it and, in the order met, as many of that
        # level as needed
        acc = 0
        count = 0
        cut = 0
        for level in range(top, 0, -1):
            mass = hist[level] * level
            if acc + mass >= threshold or count + hist[level] >= cap:
                cut = level
                break
            acc += mass
            count += hist[level]
        hist[: top + 1] = 0
        n_ties = 0
        for i in range(u):  # one branch-free pass: select, collect ties, clear
            t = union[i]
            v = np.int64(maxv[t])
            maxv[t] = 0
            out_terms[m] = t
            out_codes[m] = v
            m += np.int64(v > cut)
            ties[n_ties] = t
            n_ties += np.int64(v == cut)
        i = 0
        while acc < threshold and m < cap and i < n_ties:
            out_terms[m] = ties[i]
            out_codes[m] = cut
            m += 1
            acc += cut
            i += 1
    else:
        hist[:] = 0
        neg = np.empty(u, np.int64)
        for i in range(u):
            neg[i] = -np.int64(maxv[union[i]])
        order = np.argsort(neg, kind="mergesort")
        acc = 0
        for i in range(u):
            if acc >= threshold or m == cap:
                break
            t = union[order[i]]
            v = np.int64(maxv[t])
            out_terms[m] = t
            out_codes[m] = (v + step - 1) // step
            m += 1
            acc += v
        for i in range(u):
            maxv[union[i]] = 0
    return m, step


@njit(cache=True, nogil=True)
def _summarize_blocks(b0, b1, block_offsets, docs, f_off, f_terms, f_imp, energy, cap, vocab, levels, block_step,
                      sizes):
    """Summaries of blocks b0 <= b < b1 with codes up to ``levels`` (255 or 15): write ``block_step[b]`` and
    ``sizes[b]`` (entries of block b); return their terms (int32) and codes (uint8), block after block."""
    maxv = np.zeros(vocab, np.int32)
    union = np.empty(vocab + 1, np.int32)  # +1: the branch-free passes write one past their end
    ties = np.empty(vocab + 1, np.int32)
    out_terms = np.empty(vocab + 1, np.int32)
    out_codes = np.empty(vocab + 1, np.int32)
    hist = np.zeros(256, np.int64)
    terms = np.empty((b1 - b0) * cap, np.int32)
    codes = np.empty((b1 - b0) * cap, np.uint8)
    n = 0
    for b in range(b0, b1):
        m, step = _summarize_block(docs[block_offsets[b]:block_offsets[b + 1]], f_off, f_terms, f_imp,
                                   energy, cap, maxv, union, hist, ties, out_terms, out_codes)
        if levels < 255 and m > 0:  # requantize: the largest code * step bounds the block's top impact
            coarse = max(1, (np.int64(np.max(out_codes[:m])) * step + levels - 1) // levels)
            for i in range(m):
                out_codes[i] = (np.int64(out_codes[i]) * step + coarse - 1) // coarse
            step = coarse
        block_step[b] = step
        sizes[b] = m
        for i in range(m):
            terms[n + i] = out_terms[i]
            codes[n + i] = out_codes[i]
        n += m
    return terms[:n].copy(), codes[:n].copy()
