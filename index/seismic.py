"""Seismic: approximate top-k over blocked, summarized posting lists (Bruch, Nardini, Rulli, Venturini, SIGIR 2024).

Build, independently for every term's posting list:

1. **Static pruning** keeps the list's top postings by impact (ties: lower doc id). ``pruning="fixed"``
   (default) keeps the top ``n_postings`` of every list (the paper's λ; default 1/128 of the collection,
   clipped to [512, 6000]); ``pruning="global"`` (the authors' library's scheme) keeps the postings whose
   impact reaches the level where ``n_postings * #non-empty lists`` postings are kept, at most
   ``max_fraction * n_postings`` per list.
2. **Blocking** by a shallow k-means: ``max(1, centroid_fraction * len)`` random documents of the list are
   centroids; each document joins the centroid with the largest dot product between the document's
   ``doc_cut`` heaviest terms (bar the list's own term, which every centroid holds; alone it decides only
   for documents sharing no other head term) and the centroid's full vector. Clusters of at most ``min_cluster_size``
   documents are dissolved and their documents reassigned to the surviving centroids. Blocks are stored
   in order of their largest impact on the list's term; the doc ids inside a block ascend.
3. **Summaries**: a block's summary is the per-term maximum impact over its documents, pruned to the
   heaviest terms holding ``summary_energy`` of its L1 mass and quantized to uint8 codes with an integer
   step per block, rounding up (``code * step >= impact``; step 1, i.e. exact, for 8-bit indexes).
   Each list's summaries are stored term-major, like a small inverted index, so one query's dot
   products with all the summaries of a list cost a binary search per query term plus the matches.

Query (``query_cut``, ``heap_factor``): the query's ``query_cut`` heaviest terms are visited heaviest
first. For each, the dot products of the whole query with the list's block summaries are computed
and a block is skipped when the top-k heap is full and ``summary_dot < heap_factor * kth_score``
(the authors' convention: a smaller ``heap_factor`` skips fewer blocks). Other blocks have their
documents scored exactly from the forward index with the full query (the same int32 scores as exact
search) unless already scored for this query (a bitmap over the documents), prefetching the next
document's vector meanwhile. The blocks of the first list are visited by decreasing summary dot
product, so its scan stops at the first skipped block. Defaults: ``query_cut=8``, ``heap_factor=0.8``;
``query_cut=None`` visits every query term.

With ``summary_energy=1`` a summary dot product bounds every document score in the block; then
``heap_factor <= 1``, no static pruning (``n_postings`` at least the longest list, fixed pruning) and
``query_cut`` at least the number of query terms make the search exact (``heap_factor=0`` does so
whatever the summaries).

Arrays (flat CSR, beside the index's own): ``seismic_list_blocks`` int64[V+1] (block range of a
term), ``seismic_block_offsets`` int64[B+1] (range in ``seismic_docs`` uint32), ``seismic_block_step``
int32[B], ``seismic_list_comps`` int64[V+1] (range of a term's summary components),
``seismic_comp_terms`` uint16/uint32[C] (ascending within a list), ``seismic_comp_offsets`` uint32/int64[C+1] (range
in ``seismic_sum_blocks`` uint16/uint32 = block number inside the list, and ``seismic_sum_values``
uint8 codes); when the vocabulary fits 16 bits, ``seismic_forward_terms16`` uint16[P], a copy of the
forward term ids that the query scores documents from (less memory traffic than uint32).
Summaries are large: with ``summary_energy=0.4`` and SPLADE vectors expect 10-30 entries (3 bytes
each) per kept posting.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .parallel import numba_threads
from .storage import open_array, read_manifest, write_array
from .topk import heap_offer, heap_sort

BUILD_DEFAULTS = {
    "n_postings": None,  # None: chosen from the collection size, see _auto_n_postings
    "pruning": "fixed",
    "max_fraction": 1.5,
    "centroid_fraction": 0.1,
    "min_cluster_size": 2,
    "summary_energy": 0.4,
    "doc_cut": 15,
    "seed": 0,
}
SEARCH_DEFAULTS = {"query_cut": 8, "heap_factor": 0.8}

_ARRAYS = ("seismic_list_blocks", "seismic_block_offsets", "seismic_docs", "seismic_block_step",
           "seismic_list_comps", "seismic_comp_terms", "seismic_comp_offsets",
           "seismic_sum_blocks", "seismic_sum_values")


def _auto_n_postings(num_docs: int) -> int:
    """Default λ: 1/128 of the collection, clipped to [512, 6000] (6000: the paper's MS MARCO setting).

    Recall@10 vs exact at the default query_cut=8, heap_factor=0.8: 0.99 on SciFact (5k docs, λ=512),
    ~0.96 on 33k WordNet/GCIDE passages (λ=512), 0.958 on 94k of them (λ=736; λ=N/256 gave 0.936).
    Summary memory grows with λ: about a dozen 3-byte summary entries per kept posting."""
    return int(min(6000, max(512, num_docs // 128)))


# ------------------------------------------------------------------------------------------ prefetch
_I8P = ir.IntType(8).as_pointer()
_PREFETCH = "llvm.prefetch.p0" if str(_I8P) == "ptr" else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Hint the CPU to bring ``arr[idx]``'s cache line in (``llvm.prefetch``: read, high locality)."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [_I8P, i32, i32, i32]),
                                            _PREFETCH)
        builder.call(fn, [builder.bitcast(ptr, _I8P), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def _prefetch_doc(f_off, f_terms, f_imp, d):
    """Prefetch document d's forward vector (every cache line of its terms and impacts)."""
    a, b = np.uint64(f_off[d]), np.uint64(f_off[d + np.uint32(1)])
    step_terms = np.uint64(64 // f_terms.itemsize)
    step_imps = np.uint64(64 // f_imp.itemsize)
    for q in range(a, b, step_terms):
        _prefetch(f_terms, q)
    for q in range(a, b, step_imps):
        _prefetch(f_imp, q)


# --------------------------------------------------------------------------------------------- build
@njit(cache=True, nogil=True, inline="always")
def _rand(state):
    """One step of a 64-bit LCG; return (new state, 31 random bits)."""
    state = state * 6364136223846793005 + 1442695040888963407
    return state, (state >> 33) & 0x7FFFFFFF


@njit(cache=True, nogil=True, parallel=True)
def _doc_heads(f_off, f_terms, f_imp, doc_cut, head_terms, head_vals, head_len):
    """Every document's ``doc_cut`` heaviest terms (ties: lower term id), for clustering; insertion top-k."""
    for d in prange(f_off.shape[0] - 1):
        m = 0
        for p in range(f_off[d], f_off[d + 1]):
            v = np.int64(f_imp[p])
            if m == doc_cut and v <= head_vals[d, m - 1]:
                continue
            j = m if m < doc_cut else doc_cut - 1
            while j > 0 and head_vals[d, j - 1] < v:
                head_vals[d, j] = head_vals[d, j - 1]
                head_terms[d, j] = head_terms[d, j - 1]
                j -= 1
            head_vals[d, j] = v
            head_terms[d, j] = f_terms[p]
            if m < doc_cut:
                m += 1
        head_len[d] = m


@njit(cache=True, nogil=True)
def _assign(docs, n, alive, t_start, t_cnt, e_cent, e_val, head_terms, head_vals, head_len, list_term,
            fallback, scores, touched, assign, only):
    """Assign docs[i] (i < n, or only where assign[i] < 0 if ``only``) to the alive centroid with the largest
    dot product over the doc's head terms. The list's own term is skipped: every centroid holds it, so it
    would cost a walk over all centroids per doc; alone it ranks centroids by their impact on it, which is
    the ``fallback`` for docs sharing no other head term with a centroid."""
    for i in range(n):
        if only and assign[i] >= 0:
            continue
        d = docs[i]
        nt = np.uint64(0)  # unsigned indices below spare numba's negative-index wraparound code
        for j in range(head_len[d]):
            h = head_terms[d, j]
            if h == list_term:
                continue
            v = np.int64(head_vals[d, j])
            a = np.uint64(t_start[h])
            for e in range(a, a + np.uint64(t_cnt[h])):  # centroids holding h (t_start is stale if t_cnt is 0)
                cj = e_cent[e]
                touched[nt] = cj  # branch-free: kept only if cj is new for this doc
                nt += np.uint64(scores[cj] == 0)
                scores[cj] += v * e_val[e]
        best = -1
        best_score = np.int64(0)
        for j in range(nt):
            cj = touched[j]
            s = scores[cj]
            if alive[cj] and (s > best_score or (s == best_score and cj < best)):
                best, best_score = cj, s
            scores[cj] = 0
        assign[i] = best if best >= 0 else fallback


@njit(cache=True, nogil=True)
def _cluster_list(docs, imps, list_term, c, min_cluster_size, state, f_off, f_terms, f_imp,
                  head_terms, head_vals, head_len, t_start, t_cnt, scores, touched, out_docs, out_ends):
    """Shallow random k-means of one (pruned) list; write its docs grouped by block and return #blocks.

    ``docs`` ascend; ``imps`` are their impacts on the list's term. ``out_ends[j]`` is block j's end.
    """
    n = docs.shape[0]
    if c <= 1 or n <= 1:
        out_docs[:n] = docs
        out_ends[0] = n
        return 1
    # c random distinct positions (partial Fisher-Yates)
    perm = np.arange(n)
    for j in range(c):
        state, r = _rand(state)
        p = j + r % (n - j)
        perm[j], perm[p] = perm[p], perm[j]
    centroids = perm[:c]
    # inverted index of the centroids' vectors, CSR by term (counting sort; centroids ascend in a term)
    n_entries = 0
    for j in range(c):
        d = docs[centroids[j]]
        n_entries += f_off[d + 1] - f_off[d]
    terms = np.empty(n_entries + 1, np.int32)
    n_terms = 0
    for j in range(c):
        d = docs[centroids[j]]
        for p in range(f_off[d], f_off[d + 1]):
            t = f_terms[p]
            terms[n_terms] = t
            n_terms += np.int64(t_cnt[t] == 0)
            t_cnt[t] += 1
    running = 0
    for i in range(n_terms):
        t = terms[i]
        t_start[t] = running
        running += t_cnt[t]
    e_cent = np.empty(n_entries, np.uint32)
    e_val = np.empty(n_entries, np.int32)
    for j in range(c):
        d = docs[centroids[j]]
        for p in range(f_off[d], f_off[d + 1]):
            t = f_terms[p]
            e = t_start[t]
            e_cent[e] = j
            e_val[e] = f_imp[p]
            t_start[t] = e + 1
    for i in range(n_terms):
        t = terms[i]
        t_start[t] -= t_cnt[t]
    # fallback for docs sharing no head term with any centroid: the centroid heaviest on the list's term
    alive = np.ones(c, np.bool_)
    fallback = 0
    for j in range(1, c):
        if imps[centroids[j]] > imps[centroids[fallback]]:
            fallback = j
    assign = np.full(n, -1, np.int64)
    _assign(docs, n, alive, t_start, t_cnt, e_cent, e_val, head_terms, head_vals, head_len, list_term,
            fallback, scores, touched, assign, False)
    # dissolve small clusters and reassign their docs to the surviving centroids
    sizes = np.zeros(c, np.int64)
    for i in range(n):
        sizes[assign[i]] += 1
    n_alive = 0
    for j in range(c):
        if sizes[j] <= min_cluster_size:
            alive[j] = False
        else:
            n_alive += 1
    if n_alive == 0:
        for i in range(n):
            assign[i] = 0
    elif n_alive < c:
        if not alive[fallback]:
            fallback = -1
            for j in range(c):
                if alive[j] and (fallback < 0 or imps[centroids[j]] > imps[centroids[fallback]]):
                    fallback = j
        for i in range(n):
            if not alive[assign[i]]:
                assign[i] = -1
        _assign(docs, n, alive, t_start, t_cnt, e_cent, e_val, head_terms, head_vals, head_len, list_term,
                fallback, scores, touched, assign, True)
    for i in range(n_terms):  # reset the shared term counts
        t_cnt[terms[i]] = 0
    # blocks ordered by their largest impact on the list's term (desc), then centroid number
    sizes[:] = 0
    block_max = np.zeros(c, np.int64)
    for i in range(n):
        a = assign[i]
        sizes[a] += 1
        if imps[i] > block_max[a]:
            block_max[a] = imps[i]
    key = np.empty(c, np.int64)
    for j in range(c):
        key[j] = -block_max[j] * c + j
    order = np.argsort(key)
    start = np.empty(c, np.int64)
    nb = 0
    pos = 0
    for r in range(c):
        j = order[r]
        start[j] = pos
        if sizes[j] > 0:
            pos += sizes[j]
            out_ends[nb] = pos
            nb += 1
    for i in range(n):  # docs ascend, so each block's docs ascend too
        a = assign[i]
        out_docs[start[a]] = docs[i]
        start[a] += 1
    return nb


@njit(cache=True, nogil=True, parallel=True)
def _cluster_all(p_off, p_docs, p_imp, f_off, f_terms, f_imp, head_terms, head_vals, head_len,
                 keep, doc_start, n_cent, cent_start, order, n_groups, seed, min_cluster_size,
                 out_docs, out_ends, out_nblocks):
    """Prune and block every list; worker g handles lists order[g::n_groups] (order: by decreasing size)."""
    vocab = p_off.shape[0] - 1
    max_c = 1
    for t in range(vocab):
        max_c = max(max_c, n_cent[t])
    for g in prange(n_groups):
        t_start = np.zeros(vocab, np.int64)
        t_cnt = np.zeros(vocab, np.int64)
        scores = np.zeros(max_c, np.int64)
        touched = np.empty(max_c + 1, np.int64)  # +1: the branch-free append writes one past its end
        for idx in range(g, order.shape[0], n_groups):
            t = order[idx]
            k = keep[t]
            if k == 0:
                continue
            a, b = p_off[t], p_off[t + 1]
            docs = np.empty(k, np.uint32)
            imps = np.empty(k, np.int64)
            if k < b - a:
                neg = np.empty(b - a, np.int64)
                for j in range(b - a):
                    neg[j] = -np.int64(p_imp[a + j])
                top = np.sort(np.argsort(neg, kind="mergesort")[:k])  # list positions, so docs ascend
                for j in range(k):
                    docs[j] = p_docs[a + top[j]]
                    imps[j] = p_imp[a + top[j]]
            else:
                for j in range(k):
                    docs[j] = p_docs[a + j]
                    imps[j] = p_imp[a + j]
            state = np.int64(seed) * 1000003 + np.int64(t) * 7919 + 12345
            out_nblocks[t] = _cluster_list(
                docs, imps, t, n_cent[t], min_cluster_size, state, f_off, f_terms, f_imp,
                head_terms, head_vals, head_len, t_start, t_cnt, scores, touched,
                out_docs[doc_start[t]:doc_start[t] + k], out_ends[cent_start[t]:cent_start[t] + n_cent[t]])


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


# -------------------------------------------------------------------------------------------- search
@njit(cache=True, nogil=True)
def _search_one(qterms, qweights, k, query_cut, heap_factor,
                list_blocks, block_offsets, sdocs, block_step,
                list_comps, comp_terms, comp_offsets, sum_blocks, sum_values,
                f_off, f_terms, f_imp, qdense, visited, acc, top_scores, top_docs):
    """Seismic top-k of one quantized query (terms ascending) into ``top_*[:n]`` (sorted); return n.

    ``qdense`` (int32[V]) and ``visited`` (uint64 bitmap over docs) must be zero and are left zero;
    ``acc`` (int64) holds at least the largest number of blocks of a list.
    """
    nq = qterms.shape[0]
    for i in range(nq):
        qdense[qterms[i]] = qweights[i]
    neg = np.empty(nq, np.int64)
    for i in range(nq):
        neg[i] = -np.int64(qweights[i])
    by_weight = np.argsort(neg, kind="mergesort")  # heaviest first, ties by lower term id
    size = 0
    first = True  # the first list with blocks is visited by decreasing summary dot product
    block_order = np.empty(0, np.int64)
    for r in range(min(query_cut, nq)):
        t = qterms[by_weight[r]]
        b0, b1 = list_blocks[t], list_blocks[t + 1]
        nb = b1 - b0
        if nb == 0:
            continue
        # dot products of the whole query with the list's summaries
        acc[:nb] = 0
        lo, hi = list_comps[t], list_comps[t + 1]
        for i in range(nq):
            term = qterms[i]
            a, b = lo, hi
            while a < b:
                mid = (a + b) >> 1
                if comp_terms[mid] < term:
                    a = mid + 1
                else:
                    b = mid
            lo = a
            if lo == hi:
                break
            if comp_terms[lo] == term:
                w = np.int64(qweights[i])
                # unsigned loop indices spare numba's negative-index wraparound code
                for e in range(np.uint64(comp_offsets[lo]), np.uint64(comp_offsets[lo + 1])):
                    acc[sum_blocks[e]] += w * sum_values[e]
                lo += 1
        for j in range(nb):
            acc[j] *= block_step[b0 + j]
        if first:
            neg_acc = np.empty(nb, np.int64)
            for j in range(nb):
                neg_acc[j] = -acc[j]
            block_order = np.argsort(neg_acc, kind="mergesort")
        for j in range(nb):
            blk = block_order[j] if first else j
            if size == k and acc[blk] < heap_factor * top_scores[0]:
                if first:
                    break  # later blocks have smaller summary dot products
                continue
            end = np.uint64(block_offsets[b0 + blk + 1])
            for p in range(np.uint64(block_offsets[b0 + blk]), end):
                d = sdocs[p]
                word = d >> np.uint32(6)
                bit = np.uint64(1) << np.uint64(d & np.uint32(63))
                if visited[word] & bit:
                    continue
                visited[word] |= bit
                # fetch the next doc's vector, and the offsets of the one after, while scoring this one
                if p + np.uint64(1) < end:
                    _prefetch_doc(f_off, f_terms, f_imp, sdocs[p + np.uint64(1)])
                if p + np.uint64(2) < end:
                    _prefetch(f_off, sdocs[p + np.uint64(2)])
                s = np.int64(0)
                for q in range(np.uint64(f_off[d]), np.uint64(f_off[d + np.uint32(1)])):
                    s += qdense[f_terms[q]] * np.int64(f_imp[q])
                size = heap_offer(top_scores, top_docs, size, k, s, d)
        first = False
    for i in range(nq):
        qdense[qterms[i]] = 0
    visited[:] = 0
    heap_sort(top_scores, top_docs, size)
    return size


@njit(cache=True, nogil=True, parallel=True)
def _search_many(qptr, qterms, qweights, k, query_cut, heap_factor,
                 list_blocks, block_offsets, sdocs, block_step,
                 list_comps, comp_terms, comp_offsets, sum_blocks, sum_values,
                 f_off, f_terms, f_imp, qdense, visited, acc, top_scores, top_docs, counts):
    """Query i = g, g + G, ... on worker g with its own scratch rows (G = qdense.shape[0])."""
    groups = qdense.shape[0]
    for g in prange(groups):
        for q in range(g, qptr.shape[0] - 1, groups):
            a, b = qptr[q], qptr[q + 1]
            counts[q] = _search_one(qterms[a:b], qweights[a:b], k, query_cut, heap_factor,
                                    list_blocks, block_offsets, sdocs, block_step,
                                    list_comps, comp_terms, comp_offsets, sum_blocks, sum_values,
                                    f_off, f_terms, f_imp, qdense[g], visited[g], acc[g],
                                    top_scores[q], top_docs[q])


# ----------------------------------------------------------------------------------------- the class
def _check_params(given: dict, defaults: dict, what: str) -> dict:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown seismic {what} parameter(s): {', '.join(unknown)}; "
                         f"known: {', '.join(defaults)}")
    return {**defaults, **given}


def _int_param(params: dict, name: str, low: int) -> int:
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"seismic {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _float_param(params: dict, name: str, low: float, high: float, low_open: bool = True) -> float:
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"seismic {name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise ValueError(f"seismic {name} must lie in {bound}, got {value!r}")
    return value


def _groups(sizes: np.ndarray) -> tuple[np.ndarray, int]:
    """Non-empty lists by decreasing size (dealt round-robin to workers), and the number of workers."""
    order = np.argsort(-sizes, kind="stable")
    order = order[: np.count_nonzero(sizes)].astype(np.int64)
    return order, max(1, min(numba.get_num_threads(), order.shape[0]))


class SeismicIndex:
    """The ``seismic`` structure: blocked, summarized posting lists searched with ``mode="seismic"``."""

    NAME = "seismic"
    MODES = ("seismic",)

    def __init__(self, index, params: dict, arrays: dict[str, np.ndarray]):
        self.index = index
        self.params = params
        # plain ndarray views of the memory maps: numba's dispatcher types np.memmap (a subclass) on a
        # slow path, ~1 us per argument per call
        self._a = arrays = {name: np.asarray(arr) for name, arr in arrays.items()}
        self._num_docs = int(index.num_docs)
        self._vocab = int(index.vocab_size)
        lb = arrays["seismic_list_blocks"]
        self._max_blocks = int(np.max(np.diff(lb))) if lb.shape[0] > 1 else 0
        terms = arrays.get("seismic_forward_terms16")
        self._fwd = (np.asarray(index.array("forward_offsets")),
                     np.asarray(index.array("forward_terms")) if terms is None else terms,
                     np.asarray(index.array("forward_impacts")))
        self._local = threading.local()

    # ------------------------------------------------------------------ build
    @classmethod
    def rebuild_params(cls, params: dict, num_docs: int) -> dict:
        """The build arguments that rebuild this structure (recorded ``params``, built over ``num_docs``
        documents) for another set of documents: an automatic λ is chosen again for the new size."""
        out = {key: params[key] for key in BUILD_DEFAULTS if key in params}
        if out.get("n_postings") == _auto_n_postings(num_docs):
            out["n_postings"] = None
        return out

    @classmethod
    def build(cls, index, **params) -> dict:
        """Build the structure into ``index.index_dir``; return {"params", "arrays"} for the manifest."""
        p = _check_params(params, BUILD_DEFAULTS, "build")
        if p["n_postings"] is None:
            p["n_postings"] = _auto_n_postings(index.num_docs)
        n_postings = _int_param(p, "n_postings", 1)
        if p["pruning"] not in ("fixed", "global"):
            raise ValueError(f"seismic pruning must be 'fixed' or 'global', got {p['pruning']!r}")
        max_fraction = _float_param(p, "max_fraction", 0.0, math.inf)
        centroid_fraction = _float_param(p, "centroid_fraction", 0.0, 1.0)
        min_cluster_size = _int_param(p, "min_cluster_size", 0)
        energy = _float_param(p, "summary_energy", 0.0, 1.0)
        doc_cut = _int_param(p, "doc_cut", 1)
        seed = _int_param(p, "seed", 0)
        p.update(n_postings=n_postings, max_fraction=max_fraction, centroid_fraction=centroid_fraction,
                 min_cluster_size=min_cluster_size, summary_energy=energy, doc_cut=doc_cut, seed=seed)

        p_off = np.ascontiguousarray(index.array("postings_offsets"))
        p_docs = index.array("postings_docs")
        p_imp = index.array("postings_impacts")
        f_off, f_terms, f_imp = (index.array(n) for n in ("forward_offsets", "forward_terms", "forward_impacts"))
        num_docs, vocab = int(index.num_docs), int(index.vocab_size)
        lengths = np.diff(p_off)

        # 1. static pruning: how many postings each list keeps
        if p["pruning"] == "fixed":
            keep = np.minimum(lengths, n_postings)
        else:
            target = n_postings * int(np.count_nonzero(lengths))
            levels = np.bincount(np.asarray(p_imp), minlength=int(np.iinfo(p_imp.dtype).max) + 1)
            at_least = np.cumsum(levels[::-1])[::-1]  # at_least[v] = #postings with impact >= v
            ok = np.flatnonzero(at_least >= target)
            threshold = int(ok[-1]) if ok.size else 0
            above = np.zeros(p_imp.shape[0] + 1, np.int64)
            np.cumsum(np.asarray(p_imp) >= threshold, out=above[1:])
            keep = np.minimum(above[p_off[1:]] - above[p_off[:-1]], int(max_fraction * n_postings))
            p["global_threshold"] = threshold
        keep = keep.astype(np.int64)
        doc_start = np.zeros(vocab + 1, np.int64)
        np.cumsum(keep, out=doc_start[1:])
        n_cent = np.where(keep > 0, np.maximum(1, (centroid_fraction * keep).astype(np.int64)), 0)
        cent_start = np.zeros(vocab + 1, np.int64)
        np.cumsum(n_cent, out=cent_start[1:])

        # 2. blocking
        head_terms = np.zeros((num_docs, doc_cut), np.uint32)
        head_vals = np.zeros((num_docs, doc_cut), np.int64)
        head_len = np.zeros(num_docs, np.int64)
        if num_docs:
            _doc_heads(f_off, f_terms, f_imp, doc_cut, head_terms, head_vals, head_len)
        order, n_groups = _groups(keep)
        docs = np.empty(int(doc_start[-1]), np.uint32)
        ends = np.zeros(int(cent_start[-1]), np.int64)
        nblocks = np.zeros(vocab, np.int64)
        if order.size:
            _cluster_all(p_off, p_docs, p_imp, f_off, f_terms, f_imp, head_terms, head_vals, head_len,
                         keep, doc_start, n_cent, cent_start, order, n_groups, seed, min_cluster_size,
                         docs, ends, nblocks)
        del head_terms, head_vals, head_len
        list_blocks = np.zeros(vocab + 1, np.int64)
        np.cumsum(nblocks, out=list_blocks[1:])
        rel = np.arange(ends.shape[0]) - np.repeat(cent_start[:-1], n_cent)
        valid = rel < np.repeat(nblocks, n_cent)
        block_offsets = np.zeros(int(list_blocks[-1]) + 1, np.int64)
        block_offsets[1:] = (ends + np.repeat(doc_start[:-1], n_cent))[valid]
        del rel, valid, ends

        # 3. summaries: contiguous term ranges of similar work, summarized on a pool of numba-free threads
        max_blocks = int(nblocks.max()) if vocab else 0
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
        del comp_sizes
        sum_blocks = np.concatenate([np.empty(0, block_dtype)] + [part[3] for part in parts])
        sum_values = np.concatenate([np.empty(0, np.uint8)] + [part[4] for part in parts])
        del parts
        n_b = int(list_blocks[-1])

        out = {}
        if vocab <= 65536:  # 16-bit copy of the forward term ids: less memory traffic when scoring
            out["seismic_forward_terms16"] = np.asarray(f_terms).astype(np.uint16)
        out.update({
            "seismic_list_blocks": list_blocks, "seismic_block_offsets": block_offsets, "seismic_docs": docs,
            "seismic_block_step": block_step, "seismic_list_comps": list_comps, "seismic_comp_terms": comp_terms,
            "seismic_comp_offsets": comp_offsets, "seismic_sum_blocks": sum_blocks, "seismic_sum_values": sum_values,
        })
        p["stats"] = {"postings": int(docs.shape[0]), "blocks": n_b, "summary_entries": int(sum_values.shape[0])}
        return {"params": p, "arrays": {name: write_array(index.index_dir, name, arr) for name, arr in out.items()}}

    @classmethod
    def load(cls, index, info: dict) -> "SeismicIndex":
        """Open the structure's (memory-mapped) arrays."""
        arrays, manifest = {}, None
        for name in info.get("arrays", _ARRAYS):
            try:
                arrays[name] = index.array(name)
            except KeyError:  # built after this index object was opened
                manifest = manifest or read_manifest(index.index_dir)
                arrays[name] = open_array(index.index_dir, manifest, name)
        return cls(index, dict(info.get("params", {})), arrays)

    # ----------------------------------------------------------------- search
    def _search_params(self, mode: str, params: dict) -> tuple[int, float]:
        if mode not in self.MODES:
            raise ValueError(f"the seismic structure serves modes {self.MODES}, not {mode!r}")
        p = _check_params(params, SEARCH_DEFAULTS, "search")
        if p["query_cut"] is None:
            p["query_cut"] = 2**31 - 1
        return _int_param(p, "query_cut", 1), _float_param(p, "heap_factor", 0.0, math.inf, low_open=False)

    def _args(self):
        a = self._a
        return (a["seismic_list_blocks"], a["seismic_block_offsets"], a["seismic_docs"], a["seismic_block_step"],
                a["seismic_list_comps"], a["seismic_comp_terms"], a["seismic_comp_offsets"],
                a["seismic_sum_blocks"], a["seismic_sum_values"], *self._fwd)

    def _scratch(self):
        local = self._local
        if not hasattr(local, "qdense"):
            local.qdense = np.zeros(self._vocab, np.int32)
            local.visited = np.zeros((self._num_docs + 63) // 64, np.uint64)
            local.acc = np.zeros(max(1, self._max_blocks), np.int64)
        return local.qdense, local.visited, local.acc

    def search(self, qterms: np.ndarray, qweights: np.ndarray, k: int, mode: str = "seismic",
               **params) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of a quantized query (terms ascending, weights > 0): (doc ids uint32, int32 scores)."""
        query_cut, heap_factor = self._search_params(mode, params)
        k = min(int(k), self._num_docs)
        if not qterms.size or k < 1:
            return np.empty(0, np.uint32), np.empty(0, np.int32)
        top_scores, top_docs = np.empty(k, np.int32), np.empty(k, np.uint32)
        n = _search_one(np.ascontiguousarray(qterms, np.uint32), np.ascontiguousarray(qweights, np.int32), k,
                        query_cut, heap_factor, *self._args(), *self._scratch(), top_scores, top_docs)
        return top_docs[:n], top_scores[:n]

    def search_batch(self, quantized: list, k: int, mode: str = "seismic", threads: int | None = None,
                     **params) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`search` for many quantized queries [(terms, weights, qscale)] in parallel over ``threads``."""
        query_cut, heap_factor = self._search_params(mode, params)
        if threads is not None and threads < 1:
            raise ValueError("threads must be >= 1")
        k = min(int(k), self._num_docs)
        if not quantized or k < 1:
            return [(np.empty(0, np.uint32), np.empty(0, np.int32)) for _ in quantized]
        qptr = np.zeros(len(quantized) + 1, np.int64)
        np.cumsum([q[0].size for q in quantized], out=qptr[1:])
        qterms = np.concatenate([np.asarray(q[0], np.uint32) for q in quantized])
        qweights = np.concatenate([np.asarray(q[1], np.int32) for q in quantized])
        groups = min(threads or numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS, len(quantized))
        qdense = np.zeros((groups, self._vocab), np.int32)
        visited = np.zeros((groups, (self._num_docs + 63) // 64), np.uint64)
        acc = np.zeros((groups, max(1, self._max_blocks)), np.int64)
        top_scores = np.empty((len(quantized), k), np.int32)
        top_docs = np.empty((len(quantized), k), np.uint32)
        counts = np.empty(len(quantized), np.int64)
        with numba_threads(groups):
            _search_many(qptr, qterms, qweights, k, query_cut, heap_factor, *self._args(),
                         qdense, visited, acc, top_scores, top_docs, counts)
        return [(top_docs[i, :n].copy(), top_scores[i, :n].copy()) for i, n in enumerate(counts)]
