"""Seismic's block summaries: per block, the per-term maximum impact over its documents, pruned and quantized.

A block's summary keeps the heaviest terms holding ``summary_energy`` of its L1 mass, quantized to uint8 codes
with an integer step per block, rounding up (``code * step >= impact``; step 1, i.e. exact, for 8-bit indexes).
Each list's summaries are stored term-major, like a small inverted index, so one query's dot products with all
the summaries of a list cost a binary search per query term plus the matches.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit


def summarize(list_blocks: np.ndarray, block_offsets: np.ndarray, docs: np.ndarray, keep: np.ndarray,
              forward: tuple[np.ndarray, np.ndarray, np.ndarray], energy: float, vocab: int) -> dict[str, np.ndarray]:
    """Summaries of every block of the lists (``list_blocks``, ``block_offsets``, ``docs`` from
    :func:`.build.block_lists`; ``keep``: postings kept per list; ``forward``: the forward index's offsets, terms,
    impacts), as the ``seismic_*`` arrays ``block_step``, ``list_comps``, ``comp_terms``, ``comp_offsets``,
    ``sum_blocks`` and ``sum_values``.

    Contiguous term ranges of similar work are summarized on a pool of threads (the kernels release the GIL)."""
    f_off, f_terms, f_imp = forward
    max_blocks = int(np.diff(list_blocks).max()) if vocab else 0
    block_dtype = np.uint16 if max_blocks <= 65536 else np.uint32
    block_step = np.ones(int(list_blocks[-1]), np.int32)
    work = np.cumsum(keep)
    n_chunks = 8 * numba.get_num_threads()
    bounds = np.unique(np.concatenate([[0], np.searchsorted(work, np.linspace(0, work[-1] if vocab else 0,
                                                                                 n_chunks + 1)[1:-1]), [vocab]]))

    def run(t0: int, t1: int):
        return _summarize_range(t0, t1, list_blocks, block_offsets, docs, f_off, f_terms, f_imp, energy,
                                block_step, np.empty(4096, block_dtype), np.empty(4096, np.uint8))

    with ThreadPoolExecutor(max_workers=numba.get_num_threads()) as pool:
        parts = list(pool.map(run, bounds[:-1], bounds[1:]))
    list_comps = np.zeros(vocab + 1, np.int64)
    if parts:
        np.cumsum(np.concatenate([part[0] for part in parts]), out=list_comps[1:])
    # one (list, component term) pair per summary row: narrow types, as these rows outnumber the postings
    comp_terms = np.concatenate([np.empty(0, np.uint32)] + [part[1] for part in parts])
    if vocab <= 65536:
        comp_terms = comp_terms.astype(np.uint16)
    comp_sizes = np.concatenate([np.empty(0, np.int64)] + [part[2] for part in parts])
    offset_dtype = np.uint32 if comp_sizes.sum() < 2**32 else np.int64
    comp_offsets = np.zeros(comp_terms.shape[0] + 1, offset_dtype)
    np.cumsum(comp_sizes, out=comp_offsets[1:])
    return {
        "seismic_block_step": block_step, "seismic_list_comps": list_comps, "seismic_comp_terms": comp_terms,
        "seismic_comp_offsets": comp_offsets,
        "seismic_sum_blocks": np.concatenate([np.empty(0, block_dtype)] + [part[3] for part in parts]),
        "seismic_sum_values": np.concatenate([np.empty(0, np.uint8)] + [part[4] for part in parts]),
    }


@njit(cache=True, nogil=True)
def _summarize_block(docs, f_off, f_terms, f_imp, energy, maxv, union, hist, ties, out_terms, out_codes):
    """Summary of a block: per-term max impact, the heaviest terms holding ``energy`` of its L1 mass
    (ties: first met), quantized up to uint8 codes. Write terms/codes to ``out_*[:m]``; return (m, step).

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
        # levels 1..255: find the level where the running mass (heaviest first) crosses the threshold,
        # keep everything above it and, in the order met, as many of that level as needed
        acc = 0
        cut = 0
        for level in range(top, 0, -1):
            mass = hist[level] * level
            if acc + mass >= threshold:
                cut = level
                break
            acc += mass
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
        while acc < threshold and i < n_ties:
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
            if acc >= threshold:
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
def _grow(buf, need):
    """``buf`` (same dtype, contents kept) with room for at least ``need`` items, by doubling."""
    while buf.shape[0] < need:
        buf = np.concatenate((buf, buf))
    return buf


@njit(cache=True, nogil=True)
def _summarize_range(t0, t1, list_blocks, block_offsets, docs, f_off, f_terms, f_imp, energy,
                     block_step, blocks_buf, values_buf):
    """Summaries of the lists of terms t0 <= t < t1, term-major per list (terms ascending, then block).

    Writes ``block_step`` of their blocks; returns (#summary terms of each list, those terms, #entries of
    each summary term, entries' block numbers inside the list, entries' codes). ``blocks_buf`` and
    ``values_buf`` are initial output buffers of the wanted dtypes (grown as needed).
    """
    vocab = list_blocks.shape[0] - 1
    maxv = np.zeros(vocab, np.int32)
    union = np.empty(vocab + 1, np.int32)  # +1: the branch-free passes write one past their end
    ties = np.empty(vocab + 1, np.int32)
    out_terms = np.empty(vocab, np.int32)
    out_codes = np.empty(vocab, np.int32)
    hist = np.zeros(256, np.int64)
    pos = np.zeros(vocab, np.uint32)  # per term of the current list: count, then write cursor (list-relative)
    n_comps = np.zeros(t1 - t0, np.int64)
    comp_terms = np.empty(1024, np.uint32)
    comp_sizes = np.empty(1024, np.int64)
    e_term = np.empty(1024, np.uint32)
    e_block = np.empty(1024, np.int32)
    e_code = np.empty(1024, np.uint8)
    n_c = 0
    n_e = 0
    for t in range(t0, t1):
        b0, b1 = list_blocks[t], list_blocks[t + 1]
        n = 0
        for b in range(b0, b1):
            m, step = _summarize_block(docs[block_offsets[b]:block_offsets[b + 1]], f_off, f_terms, f_imp,
                                       energy, maxv, union, hist, ties, out_terms, out_codes)
            block_step[b] = step
            if n + m > e_term.shape[0]:
                e_term = _grow(e_term, n + m)
                e_block = _grow(e_block, n + m)
                e_code = _grow(e_code, n + m)
            for i in range(m):
                e_term[n] = out_terms[i]
                e_block[n] = b - b0
                e_code[n] = out_codes[i]
                n += 1
        if n == 0:
            continue
        # counting scatter by term; entries were made block by block, so blocks ascend within a term.
        # Unsigned loop indices spare numba's negative-index wraparound code.
        comp_terms = _grow(comp_terms, n_c + n + 1)
        c0 = n_c
        for i in range(np.uint64(n)):
            term = e_term[i]
            comp_terms[n_c] = term  # branch-free: kept only if the term is new to the list
            n_c += np.int64(pos[term] == 0)
            pos[term] += np.uint32(1)
        nc = n_c - c0
        n_comps[t - t0] = nc
        if nc * 16 < vocab:
            comp_terms[c0:n_c].sort()
        else:  # many distinct terms: a scan of the counts yields them in order faster than sorting
            c = c0
            for term in range(np.uint64(vocab)):
                comp_terms[c] = term
                c += np.int64(pos[term] != 0)
        comp_sizes = _grow(comp_sizes, n_c)
        blocks_buf = _grow(blocks_buf, n_e + n)
        values_buf = _grow(values_buf, n_e + n)
        running = np.uint32(0)
        for c in range(np.uint64(c0), np.uint64(n_c)):
            term = comp_terms[c]
            count = pos[term]
            comp_sizes[c] = count
            pos[term] = running
            running += count
        base = np.uint64(n_e)
        for i in range(np.uint64(n)):
            term = e_term[i]
            j = pos[term]
            blocks_buf[base + np.uint64(j)] = e_block[i]
            values_buf[base + np.uint64(j)] = e_code[i]
            pos[term] = j + np.uint32(1)
        for c in range(np.uint64(c0), np.uint64(n_c)):
            pos[comp_terms[c]] = 0
        n_e += n
    return n_comps, comp_terms[:n_c].copy(), comp_sizes[:n_c].copy(), blocks_buf[:n_e].copy(), values_buf[:n_e].copy()

