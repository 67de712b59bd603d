"""Seismic's blocked posting lists: static pruning, then a shallow k-means that cuts each list into blocks.

Independently for every term's posting list:

1. **Static pruning** keeps the list's top postings by impact (ties: lower doc id). ``pruning="fixed"``
   (default) keeps the top ``n_postings`` of every list (the paper's λ; default ``22 * N^(1/3)``, clipped to
   [512, 6000], :func:`~.config.auto_n_postings`); ``pruning="global"`` (the authors' library's scheme) keeps
   the postings whose impact reaches the level where ``n_postings * #non-empty lists`` postings are kept, at most
   ``max_fraction * n_postings`` per list.
2. **Blocking** by a shallow k-means: ``max(1, centroid_fraction * len)`` random documents of the list are
   centroids; each document joins the centroid with the largest dot product between the document's
   ``doc_cut`` heaviest terms (bar the list's own term, which every centroid holds; alone it decides only
   for documents sharing no other head term) and the centroid's full vector. Clusters of at most ``min_cluster_size``
   documents are dissolved and their documents reassigned to the surviving centroids. Blocks are stored
   in order of their largest impact on the list's term; the doc ids inside a block ascend.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ..docids import list_doc_ids
from .config import BuildConfig


def prune(p_off: np.ndarray, p_imp: np.ndarray, config: BuildConfig) -> tuple[np.ndarray, int | None]:
    """How many postings each list keeps (int64 per term), and the global impact threshold (global pruning)."""
    lengths = np.diff(p_off)
    if config.pruning == "fixed":
        return np.minimum(lengths, config.n_postings).astype(np.int64), None
    target = config.n_postings * int(np.count_nonzero(lengths))
    levels = np.bincount(np.asarray(p_imp), minlength=int(np.iinfo(p_imp.dtype).max) + 1)
    at_least = np.cumsum(levels[::-1])[::-1]  # at_least[v] = #postings with impact >= v
    ok = np.flatnonzero(at_least >= target)
    threshold = int(ok[-1]) if ok.size else 0
    above = np.zeros(p_imp.shape[0] + 1, np.int64)
    np.cumsum(np.asarray(p_imp) >= threshold, out=above[1:])
    keep = np.minimum(above[p_off[1:]] - above[p_off[:-1]], int(config.max_fraction * config.n_postings))
    return keep.astype(np.int64), threshold


def block_lists(index, keep: np.ndarray, config: BuildConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block the pruned lists: (list_blocks int64[V+1] block range of each term, block_offsets int64[B+1] range
    of each block in docs, docs uint32: the kept postings' documents, block by block)."""
    p_off = np.ascontiguousarray(index.array("postings_offsets"))
    p_docs, p_runs, p_imp = index.array("postings_docs"), index.postings_runs(), index.array("postings_impacts")
    f_off, f_terms, f_imp = (index.array(n) for n in ("forward_offsets", "forward_terms", "forward_impacts"))
    num_docs, vocab = int(index.num_docs), int(index.vocab_size)
    doc_start = np.zeros(vocab + 1, np.int64)
    np.cumsum(keep, out=doc_start[1:])
    n_cent = np.where(keep > 0, np.maximum(1, (config.centroid_fraction * keep).astype(np.int64)), 0)
    cent_start = np.zeros(vocab + 1, np.int64)
    np.cumsum(n_cent, out=cent_start[1:])

    head_terms = np.zeros((num_docs, config.doc_cut), np.uint32)
    head_vals = np.zeros((num_docs, config.doc_cut), np.int64)
    head_len = np.zeros(num_docs, np.int64)
    if num_docs:
        _doc_heads(f_off, f_terms, f_imp, config.doc_cut, head_terms, head_vals, head_len)
    order, n_groups = _groups(keep)
    docs = np.empty(int(doc_start[-1]), np.uint32)
    ends = np.zeros(int(cent_start[-1]), np.int64)
    nblocks = np.zeros(vocab, np.int64)
    if order.size:
        _cluster_all(p_off, p_docs, *p_runs, p_imp, f_off, f_terms, f_imp, head_terms, head_vals, head_len,
                     keep, doc_start, n_cent, cent_start, order, n_groups, config.seed, config.min_cluster_size,
                     docs, ends, nblocks)
    del head_terms, head_vals, head_len
    list_blocks = np.zeros(vocab + 1, np.int64)
    np.cumsum(nblocks, out=list_blocks[1:])
    rel = np.arange(ends.shape[0]) - np.repeat(cent_start[:-1], n_cent)
    valid = rel < np.repeat(nblocks, n_cent)
    block_offsets = np.zeros(int(list_blocks[-1]) + 1, np.int64)
    block_offsets[1:] = (ends + np.repeat(doc_start[:-1], n_cent))[valid]
    return list_blocks, block_offsets, docs


def _groups(sizes: np.ndarray) -> tuple[np.ndarray, int]:
    """Non-empty lists by decreasing size (dealt round-robin to workers), and the number of workers."""
    order = np.argsort(-sizes, kind="stable")
    order = order[: np.count_nonzero(sizes)].astype(np.int64)
    return order, max(1, min(numba.get_num_threads(), order.shape[0]))


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
def _cluster_all(p_off, p_docs, run_offsets, run_high, run_ends, p_imp, f_off, f_terms, f_imp, head_terms,
                 head_vals, head_len, keep, doc_start, n_cent, cent_start, order, n_groups, seed, min_cluster_size,
                 out_docs, out_ends, out_nblocks):
    """Prune and block every list; worker g handles lists order[g::n_groups] (order: by decreasing size). A list's
    doc ids are decoded from their 16-bit halves (:mod:`index.docids`) one list at a time."""
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
            ids = np.empty(b - a, np.uint32)
            list_doc_ids(t, p_off, p_docs, run_offsets, run_high, run_ends, ids)
            if k < b - a:
                neg = np.empty(b - a, np.int64)
                for j in range(b - a):
                    neg[j] = -np.int64(p_imp[a + j])
                top = np.sort(np.argsort(neg, kind="mergesort")[:k])  # list positions, so docs ascend
                for j in range(k):
                    docs[j] = ids[top[j]]
                    imps[j] = p_imp[a + top[j]]
            else:
                for j in range(k):
                    docs[j] = ids[j]
                    imps[j] = p_imp[a + j]
            state = np.int64(seed) * 1000003 + np.int64(t) * 7919 + 12345
            out_nblocks[t] = _cluster_list(
                docs, imps, t, n_cent[t], min_cluster_size, state, f_off, f_terms, f_imp,
                head_terms, head_vals, head_len, t_start, t_cnt, scores, touched,
                out_docs[doc_start[t]:doc_start[t] + k], out_ends[cent_start[t]:cent_start[t] + n_cent[t]])

