"""Block-Max Pruning (Mallia, Suel, Tonellotto, SIGIR 2024: "Faster Learned Sparse Retrieval with Block-Max Pruning").

Documents are cut into consecutive blocks of ``block_size`` ids. For every term we store the
blocks it occurs in with the largest impact it has there (CSR over terms: ``bmp_term_parts``,
``bmp_term_blocks``, ``bmp_term_maxes``). A query then

1. sums ``qweight * block max`` over its terms into one upper bound per block (int32: the query
   quantization guarantees ``sum(q) * max_impact`` fits);
2. keeps the blocks whose bound reaches a lower bound on the final k-th score (the largest
   ``qweight * kth-largest impact`` of a single query term, stored per term for k = 10/100/1000);
3. visits blocks in decreasing bound order (a binary max-heap: a partial sort), scores every
   document of a visited block exactly, and stops when the next bound cannot beat the k-th score.

Ties: a document whose score equals the current k-th score still enters the top-k if its id is
lower, so a block whose bound *equals* the k-th score is skipped only when its first doc id is
above the k-th doc id, and the search stops only on a strictly smaller bound. Safe ``bmp`` thus
returns exactly the exact mode's ranking (ids, integer scores, order).

``bmp-approx`` adds the paper's knobs: ``alpha`` in (0, 1] (stop once ``alpha * bound`` falls below
the k-th score, threshold over-estimation) and ``beta`` in (0, 1] (query-term pruning: the upper
bounds use only the ``ceil(beta * n)`` highest-weighted query terms). Unlike the authors' code,
documents are always scored with *all* query terms, so the scores returned by every mode are the
exact integers (the :mod:`index.structures` contract).

Block scoring layouts (build parameter ``layout``):

``forward`` (default)
    no extra arrays: a block's documents are consecutive in the index's forward arrays (doc-major
    term ids and impacts), so a block is scored by walking its documents' vectors against a dense
    per-query weight table (one int32 per vocabulary term, per search thread). Every term of the
    block's documents is read, but sequentially; at 200k MS MARCO-shaped documents this costs about
    the latency of ``bitmap`` for a fifth of its size.
``bitmap``
    a block-major copy of the postings, as in the authors' ``BlockForwardIndex``: per block and
    term, the (doc offset in block, impact) pairs packed into one uint16 (uint32 for 16-bit
    impacts or blocks over 256 docs). A query term's entry in a block is found in O(1) through a
    per-block term bitmap with rank counts (``bmp_block_bitmap`` [blocks, ceil(V / 64), 2] uint64:
    16 bytes per 64 vocabulary terms per block, so about 2 * V / block_size bytes per doc), and
    only the query terms' postings are read.
``postings``
    no extra postings: each query term's posting list is binary-searched for the block's first doc.
    Compact but slower (several dependent cache misses per (block, term)).

Arrays (all prefixed ``bmp_``): ``term_blocks`` uint16 (the low 16 bits of the block ids) and ``term_maxes``
(impact dtype) [term-block pairs]; ``term_parts`` int64 [V, H + 1] with H = ceil(blocks / 65536): term t's pairs
whose block ids have high part h are ``term_parts[t, h]:term_parts[t, h + 1]`` (so 2 bytes per pair, not 4);
``term_kth`` [V, 3]; the bitmap layout also
``block_offsets`` int64 [blocks + 1] (first entry of each block), ``entry_offsets`` [entries + 1],
``block_postings`` [num_postings] and ``block_bitmap``. Format version 1 stored ``term_offsets`` int64 [V + 1]
and uint32 ``term_blocks`` instead of ``term_parts``: such structures still load.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .batch import QueryRunner
from .bsearch import lower_bound
from .docids import PART_BITS
from .params import check_int, check_number
from .storage import IndexFormatError, open_array, read_manifest, write_array
from .topk import heap_offer, heap_replace_top, heap_sort, heapify

NAME = "bmp"
MODES = ("bmp", "bmp-approx")
LAYOUTS = ("forward", "bitmap", "postings")
# Measured on a 100k-doc SPLADE-derived index reordered by BP (single thread, k=10): safe BMP mean latency
# 1.2 / 2.2 / 3.5 / 5.6 / 8.0 ms at block sizes 4 / 8 / 16 / 32 / 64 (exact: 1.3 ms). The bitmap costs
# num_blocks * ceil(V / 64) * 16 bytes (~950 bytes per doc at 8 docs per block and V = 30522).
DEFAULT_BLOCK_SIZE = 8
DEFAULT_LAYOUT = "forward"
# Per-term k-th largest impact kept for these k (threshold estimation before any block is scored).
KTH = (10, 100, 1000)
# bmp-approx defaults: beta < 1 matters most on long queries with many light common terms (MS MARCO-shaped
# synthetic, 44 terms: alpha 0.9 beta 1 kept Recall@10 0.9998 but visited nearly as many blocks as safe BMP;
# alpha 0.95 beta 0.7 kept 0.997-0.998 at 50k/200k docs; eval/results/scale-200k-notes.md).
APPROX_DEFAULTS = {"alpha": 0.95, "beta": 0.7}
_MAX_BLOCK_SIZE = 65536
_LAYOUT_CODE = {"bitmap": 0, "postings": 1, "forward": 2}


# ----------------------------------------------------------------------------------- build kernels
@njit(cache=True, nogil=True, parallel=True)
def _term_block_counts(offsets, run_offsets, run_high, run_ends, docs, block_size, counts):
    """counts[t + 1] = number of distinct blocks in term t's posting list (ids read run by run: index.docids)."""
    for t in prange(offsets.shape[0] - 1):
        c = 0
        last = -1
        p = offsets[t]
        for r in range(run_offsets[t], run_offsets[t + 1]):
            base = np.int64(run_high[r]) << PART_BITS
            end = offsets[t] + np.int64(run_ends[r])
            while p < end:
                b = (base + np.int64(docs[p])) // block_size
                if b != last:
                    c += 1
                    last = b
                p += 1
        counts[t + 1] = c


@njit(cache=True, nogil=True, parallel=True)
def _term_block_fill(offsets, run_offsets, run_high, run_ends, docs, impacts, block_size, t_off, t_blocks, t_max):
    """Per term: its blocks (ascending) and its max impact in each."""
    for t in prange(offsets.shape[0] - 1):
        e = t_off[t] - 1
        last = -1
        p = offsets[t]
        for r in range(run_offsets[t], run_offsets[t + 1]):
            base = np.int64(run_high[r]) << PART_BITS
            end = offsets[t] + np.int64(run_ends[r])
            while p < end:
                b = (base + np.int64(docs[p])) // block_size
                if b != last:
                    e += 1
                    t_blocks[e] = b
                    t_max[e] = impacts[p]
                    last = b
                elif impacts[p] > t_max[e]:
                    t_max[e] = impacts[p]
                p += 1


@njit(cache=True, nogil=True, parallel=True)
def _term_parts(t_off, t_blocks, parts):
    """parts[t, h] = first pair of term t whose block id is >= h << 16 (parts[t, H] = its end)."""
    n_parts = parts.shape[1] - 1
    for t in prange(t_off.shape[0] - 1):
        e = t_off[t]
        for h in range(n_parts):
            parts[t, h] = e
            while e < t_off[t + 1] and (np.int64(t_blocks[e]) >> 16) == h:
                e += 1
        parts[t, n_parts] = t_off[t + 1]


@njit(cache=True, nogil=True, parallel=True)
def _term_kth(offsets, impacts, kths, out):
    """out[t, j] = kths[j]-th largest impact of term t (0 if its list is shorter)."""
    for t in prange(offsets.shape[0] - 1):
        n = offsets[t + 1] - offsets[t]
        if n < kths[0]:
            continue
        vals = np.sort(impacts[offsets[t]:offsets[t + 1]])
        for j in range(kths.shape[0]):
            if n >= kths[j]:
                out[t, j] = vals[n - kths[j]]


@njit(cache=True, nogil=True, parallel=True)
def _block_term_counts(fwd_off, fwd_terms, num_docs, block_size, counts):
    """counts[b + 1] = number of distinct terms in block b."""
    for b in prange(counts.shape[0] - 1):
        lo = fwd_off[b * block_size]
        hi = fwd_off[min((b + 1) * block_size, num_docs)]
        s = np.sort(fwd_terms[lo:hi])
        c = 0
        for i in range(s.shape[0]):
            if i == 0 or s[i] != s[i - 1]:
                c += 1
        counts[b + 1] = c


@njit(cache=True, nogil=True, inline="always")
def _popcount(x):
    """Set bits of a uint64 (LLVM turns this idiom into popcnt)."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@njit(cache=True, nogil=True, parallel=True)
def _block_fill(fwd_off, fwd_terms, fwd_imp, num_docs, block_size, shift, b_off, e_off, packed, bitmap):
    """Block-major postings. Block b's postings fill the same range as its docs in the forward index,
    regrouped by term (stable: doc offsets ascend within a term), each packed as
    ``doc offset in block << shift | impact``; entry e (a (block, term) pair, blocks in order, terms
    ascending) spans ``packed[e_off[e]:e_off[e + 1]]``. ``bitmap[b, w, 0]`` holds bit ``t & 63`` for
    each term ``t`` of block b with ``t >> 6 == w``; ``bitmap[b, w, 1]`` counts the set bits of the
    earlier words, so a term's entry is ``b_off[b] + rank + popcount(lower bits)``."""
    for b in prange(b_off.shape[0] - 1):
        d0 = b * block_size
        d1 = min(d0 + block_size, num_docs)
        lo = fwd_off[d0]
        n = fwd_off[d1] - lo
        local = np.empty(n, np.int64)
        for d in range(d0, d1):
            for p in range(fwd_off[d], fwd_off[d + 1]):
                local[p - lo] = d - d0
        order = np.argsort(fwd_terms[lo:lo + n], kind="mergesort")
        e = b_off[b]
        prev = -1
        for i in range(n):
            src = lo + order[i]
            t = np.int64(fwd_terms[src])
            if t != prev:
                bitmap[b, t >> 6, 0] |= np.uint64(1) << np.uint64(t & 63)
                e_off[e] = lo + i
                e += 1
                prev = t
            packed[lo + i] = (local[order[i]] << shift) | np.int64(fwd_imp[src])
        r = 0
        for w in range(bitmap.shape[1]):
            bitmap[b, w, 1] = r
            r += np.int64(_popcount(bitmap[b, w, 0]))


# ----------------------------------------------------------------------------------- query kernels
@njit(cache=True, nogil=True)
def _score_block_bitmap(b, b_off, e_off, packed, shift, bitmap, qterms, qweights, starts, ends, firsts, ws, bacc):
    """Accumulate block b's scores into bacc via the term bitmap (bitmap layout)."""
    base = b_off[b]
    n = 0
    for i in range(qterms.shape[0]):
        t = np.int64(qterms[i])
        wi = t >> 6
        word = bitmap[b, wi, 0]
        sh = np.uint64(t & 63)
        if (word >> sh) & np.uint64(1):
            starts[n] = base + np.int64(bitmap[b, wi, 1]) + np.int64(_popcount(word & ((np.uint64(1) << sh) - np.uint64(1))))
            ws[n] = qweights[i]
            n += 1
    # Independent loads first (entry bounds, then the first posting of each entry) so that the
    # cache misses overlap instead of stalling one by one inside the scoring loop.
    for j in range(n):
        e = starts[j]
        starts[j] = np.int64(e_off[e])
        ends[j] = np.int64(e_off[e + 1])
    for j in range(n):
        firsts[j] = packed[starts[j]]
    mask = (1 << shift) - 1
    for j in range(n):
        w = ws[j]
        v = firsts[j]
        bacc[v >> shift] += w * np.int32(v & mask)
        for p in range(starts[j] + 1, ends[j]):
            v = np.int64(packed[p])
            bacc[v >> shift] += w * np.int32(v & mask)


@njit(cache=True, nogil=True)
def _score_block_postings(d0, d1, p_off, p_docs, p_imps, qterms, qweights, bacc):
    """Accumulate block [d0, d1)'s scores into bacc by binary search in the posting lists (postings layout)."""
    for i in range(qterms.shape[0]):
        t = qterms[i]
        end = p_off[t + 1]
        lo = lower_bound(p_docs, p_off[t], end, d0)
        w = qweights[i]
        while lo < end and p_docs[lo] < d1:
            bacc[p_docs[lo] - d0] += w * np.int32(p_imps[lo])
            lo += 1


@njit(cache=True, nogil=True)
def _score_block_forward(d0, d1, f_off, f_terms, f_imps, qdense, bacc):
    """Accumulate block [d0, d1)'s scores into bacc from the forward index (forward layout); ``qdense`` holds
    the query weight of every vocabulary term (0 for the others)."""
    for d in range(d0, d1):
        s = np.int32(0)
        for p in range(f_off[d], f_off[d + 1]):
            s += qdense[f_terms[p]] * np.int32(f_imps[p])
        bacc[d - d0] = s


@njit(cache=True, nogil=True)
def _bound_terms(qterms, qweights, beta):
    """The ceil(beta * n) highest-weighted query terms (ties: lower term id), for the block upper bounds."""
    n = qterms.shape[0]
    if beta >= 1.0 or n == 0:
        return qterms, qweights
    keep = max(1, math.ceil(n * beta))
    key = np.empty(n, np.int64)
    for i in range(n):  # weight desc, then term id asc
        key[i] = -np.int64(qweights[i]) * 2**32 + np.int64(qterms[i])
    order = np.argsort(key, kind="mergesort")[:keep]
    return qterms[order], qweights[order]


@njit(cache=True, nogil=True)
def bmp_top_k(layout, t_parts, t_blocks, t_max, kth,
              b_off, e_off, packed, shift, bitmap,
              p_off, p_docs, p_imps, f_off, f_terms, f_imps, num_docs, block_size,
              qterms, qweights, k, col, alpha, beta,
              ub, cand_key, cand_blk, bacc, qdense, top_scores, top_docs):
    """Top-k of one quantized query by block-max pruning into ``top_*[:n]`` (sorted); return n (an
    :mod:`index.batch` kernel).

    ``col``: column of ``kth`` bounding the k-th score (-1: none); ``alpha``, ``beta``: the approximation knobs (1
    and 1: safe). ``layout`` 0: bitmap, 1: postings, 2: forward. The block upper bounds use the
    :func:`_bound_terms`; documents are scored with all query terms. Scratch ``ub``, ``bacc`` and ``qdense``
    (vocabulary-sized for the forward layout) must be zero on entry and are left zeroed.
    """
    nb = ub.shape[0]
    nq = qterms.shape[0]
    # Lower bound on the final k-th score: k docs hold a term's kth[:, col] impact or more.
    est = np.int32(1)
    if col >= 0:
        for i in range(nq):
            v = qweights[i] * np.int32(kth[qterms[i], col])
            if v > est:
                est = v
    bterms, bweights = _bound_terms(qterms, qweights, beta)
    for i in range(bterms.shape[0]):
        t = bterms[i]
        w = bweights[i]
        for h in range(t_parts.shape[1] - 1):
            high = np.int64(h) << 16
            for e in range(t_parts[t, h], t_parts[t, h + 1]):
                ub[high | np.int64(t_blocks[e])] += w * np.int32(t_max[e])
    # Candidate blocks in the top-k heap keyed (-bound, last - block): they come out by decreasing
    # bound, then increasing block id.
    last = nb - 1
    nc = 0
    for b in range(nb):
        u = ub[b]
        if u >= est:
            cand_key[nc] = -u
            cand_blk[nc] = last - b
            nc += 1
        ub[b] = 0
    heapify(cand_key, cand_blk, nc)
    if layout == 2:
        for i in range(nq):
            qdense[qterms[i]] = qweights[i]
    starts = np.empty(nq, np.int64)
    ends = np.empty(nq, np.int64)
    firsts = np.empty(nq, np.int64)
    ws = np.empty(nq, np.int32)
    size = 0
    while nc > 0:
        u = -cand_key[0]
        b = last - np.int64(cand_blk[0])
        nc -= 1
        heap_replace_top(cand_key, cand_blk, nc, cand_key[nc], cand_blk[nc])
        d0 = b * block_size
        if size == k:
            bound = alpha * np.float64(u)
            threshold = np.float64(top_scores[0])
            if bound < threshold:
                break
            if bound == threshold and d0 > top_docs[0]:
                continue  # its docs can at best tie the k-th score, and lose on id
        d1 = min(d0 + block_size, num_docs)
        if layout == 0:
            _score_block_bitmap(b, b_off, e_off, packed, shift, bitmap, qterms, qweights,
                                starts, ends, firsts, ws, bacc)
        elif layout == 1:
            _score_block_postings(d0, d1, p_off, p_docs, p_imps, qterms, qweights, bacc)
        else:
            _score_block_forward(d0, d1, f_off, f_terms, f_imps, qdense, bacc)
        for j in range(d1 - d0):
            s = bacc[j]
            if s > 0:
                bacc[j] = 0
                size = heap_offer(top_scores, top_docs, size, k, s, np.uint32(d0 + j))
    if layout == 2:
        for i in range(nq):
            qdense[qterms[i]] = 0
    heap_sort(top_scores, top_docs, size)
    return size


# ----------------------------------------------------------------------------------- the structure
def _check_params(mode: str, params: dict) -> tuple[float, float]:
    """(alpha, beta) of a search call; ValueError for unknown or misplaced parameters."""
    if mode not in MODES:
        raise ValueError(f"the bmp structure serves modes {MODES}, not {mode!r}")
    if mode == "bmp":
        if params:
            knobs = sorted(set(params) & set(APPROX_DEFAULTS))
            hint = f" ({', '.join(knobs)} belong to mode 'bmp-approx')" if knobs else ""
            raise ValueError(f"mode 'bmp' is safe and takes no parameters, got {', '.join(sorted(params))}{hint}")
        return 1.0, 1.0
    unknown = sorted(set(params) - set(APPROX_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown parameters for mode 'bmp-approx': {', '.join(unknown)} (known: alpha, beta)")
    values = {**APPROX_DEFAULTS, **params}
    return check_number("alpha", values["alpha"], 0.0, 1.0), check_number("beta", values["beta"], 0.0, 1.0)


class BmpIndex:
    """Block-max pruning structure over an :class:`index.InvertedIndex` (see the module docstring)."""

    NAME = NAME
    MODES = MODES

    def __init__(self, index, params: dict, arrays: dict[str, np.ndarray]):
        self.index = index
        self.params = params
        self.block_size = int(params["block_size"])
        self.layout = params["layout"]
        self.num_blocks = int(params["num_blocks"])
        self.num_docs = int(index.num_docs)
        # Unused layout arrays are empty read-only stand-ins typed like the memory-mapped ones, so
        # both layouts share one compiled kernel signature.
        empty_i64, empty_imp = _readonly(np.empty(0, np.int64)), _readonly(np.empty(0, arrays["bmp_term_maxes"].dtype))
        code = _LAYOUT_CODE[self.layout]
        if code == 0:
            packed = arrays["bmp_block_postings"]
            shift = 8 if packed.dtype == np.uint16 else 16
            block = (arrays["bmp_block_offsets"], arrays["bmp_entry_offsets"], packed, shift, arrays["bmp_block_bitmap"])
            postings = (empty_i64, _readonly(np.empty(0, np.uint32)), empty_imp)
        else:
            packed_dtype = np.uint16 if arrays["bmp_term_maxes"].dtype == np.uint8 else np.uint32
            block = (empty_i64, _readonly(np.empty(0, np.uint32)), _readonly(np.empty(0, packed_dtype)), 8,
                     _readonly(np.empty((0, 0, 2), np.uint64)))
            postings = (empty_i64, _readonly(np.empty(0, np.uint32)), empty_imp)
            if code == 1:
                # this layout binary-searches full doc ids: 16-bit ones are decoded into memory here
                postings = (index.array("postings_offsets"), _readonly(index.postings_docs()),
                            index.array("postings_impacts"))
        forward = tuple(index.array(n) for n in ("forward_offsets", "forward_terms", "forward_impacts"))
        if "bmp_term_parts" in arrays:
            parts = arrays["bmp_term_parts"]
        else:  # format version 1: full uint32 block ids in one part per term
            t_off = np.asarray(arrays["bmp_term_offsets"])
            parts = _readonly(np.ascontiguousarray(np.stack([t_off[:-1], t_off[1:]], axis=1)))
        data = (code, parts, arrays["bmp_term_blocks"], arrays["bmp_term_maxes"],
                arrays["bmp_term_kth"], *block, *postings, *forward, self.num_docs, self.block_size)
        scratch = ((self.num_blocks, np.int32), (self.num_blocks, np.int32), (self.num_blocks, np.uint32),
                   (self.block_size, np.int32),  # ub, cand_key, cand_blk, bacc
                   (index.vocab_size if code == 2 else 0, np.int32))  # qdense
        self._runner = QueryRunner(bmp_top_k, data, scratch, self.num_docs)

    # -------------------------------------------------------------- build / load
    @classmethod
    def rebuild_params(cls, params: dict, num_docs: int) -> dict:
        """The build arguments that rebuild this structure (recorded ``params``) for another set of documents."""
        return {key: params[key] for key in ("block_size", "layout") if key in params}

    @classmethod
    def build(cls, index, block_size: int = DEFAULT_BLOCK_SIZE, layout: str = DEFAULT_LAYOUT) -> dict:
        """Compute the block maxima (and the layout's block postings) and write them into the index directory."""
        block_size = check_int("block_size", block_size, 1, _MAX_BLOCK_SIZE)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        num_docs, vocab = index.num_docs, index.vocab_size
        num_blocks = max(1, -(-num_docs // block_size))
        offsets = np.ascontiguousarray(index.array("postings_offsets"))
        docs, runs = index.array("postings_docs"), index.postings_runs()
        impacts = index.array("postings_impacts")
        imp_dtype = impacts.dtype

        counts = np.zeros(vocab + 1, np.int64)
        _term_block_counts(offsets, *runs, docs, block_size, counts)
        t_off = np.cumsum(counts)
        entries = int(t_off[-1])
        t_blocks = np.empty(entries, np.uint32)
        t_max = np.empty(entries, imp_dtype)
        _term_block_fill(offsets, *runs, docs, impacts, block_size, t_off, t_blocks, t_max)
        kth = np.zeros((vocab, len(KTH)), imp_dtype)
        _term_kth(offsets, impacts, np.array(KTH, np.int64), kth)
        parts = np.empty((vocab, -(-num_blocks // 65536) + 1), np.int64)
        _term_parts(t_off, t_blocks, parts)
        out = {"bmp_term_parts": parts, "bmp_term_blocks": t_blocks.astype(np.uint16), "bmp_term_maxes": t_max,
               "bmp_term_kth": kth}

        if layout == "bitmap":
            f_off = np.ascontiguousarray(index.array("forward_offsets"))
            f_terms = index.array("forward_terms")
            counts = np.zeros(num_blocks + 1, np.int64)
            if num_docs:
                _block_term_counts(f_off, f_terms, num_docs, block_size, counts)
            b_off = np.cumsum(counts)
            n_entries = int(b_off[-1])
            num_postings = index.num_postings
            e_off = np.empty(n_entries + 1, np.uint32 if num_postings < 2**32 else np.int64)
            e_off[n_entries] = num_postings
            small = imp_dtype == np.uint8 and block_size <= 256
            packed = np.empty(num_postings, np.uint16 if small else np.uint32)
            bitmap = np.zeros((num_blocks, -(-vocab // 64), 2), np.uint64)
            if num_docs:
                _block_fill(f_off, f_terms, index.array("forward_impacts"), num_docs, block_size, 8 if small else 16,
                            b_off, e_off, packed, bitmap)
            out.update({"bmp_block_offsets": b_off, "bmp_entry_offsets": e_off, "bmp_block_postings": packed,
                        "bmp_block_bitmap": bitmap})

        arrays = {name: write_array(index.index_dir, name, arr) for name, arr in out.items()}
        params = {"block_size": block_size, "layout": layout, "num_blocks": num_blocks, "kth": list(KTH),
                  "num_docs": num_docs, "term_block_entries": entries}
        return {"params": params, "arrays": arrays}

    @classmethod
    def load(cls, index, info: dict) -> "BmpIndex":
        """Open the structure's arrays (memory-mapped) for an open index."""
        params = info["params"]
        if int(params.get("num_docs", -1)) != index.num_docs:
            raise IndexFormatError(f"bmp structure was built for {params.get('num_docs')} docs, index has "
                             f"{index.num_docs}; rebuild it")
        manifest = None
        arrays = {}
        for name in info["arrays"]:
            try:
                arrays[name] = index.array(name)
            except KeyError:  # added after the index was opened
                manifest = manifest or read_manifest(index.index_dir)
                arrays[name] = open_array(index.index_dir, manifest, name)
        parts = arrays.get("bmp_term_parts", arrays.get("bmp_term_offsets"))
        if parts is None or parts.shape[0] != index.vocab_size + ("bmp_term_parts" not in arrays) or \
                arrays["bmp_term_kth"].shape != (index.vocab_size, len(KTH)):
            raise IndexFormatError("bmp structure arrays do not match the index vocabulary; rebuild it")
        return cls(index, params, arrays)

    # -------------------------------------------------------------- search
    def _knobs(self, k: int, mode: str, params: dict) -> tuple[int, float, float]:
        alpha, beta = _check_params(mode, params)
        return _kth_column(min(int(k), self.num_docs)), alpha, beta

    def search(self, qterms: np.ndarray, qweights: np.ndarray, k: int, mode: str = "bmp",
               **params) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of one quantized query: (doc ids uint32, int32 scores) by (score desc, id asc)."""
        return self._runner.search(qterms, qweights, k, self._knobs(k, mode, params))

    def search_batch(self, quantized: list, k: int, mode: str = "bmp", threads: int | None = None,
                     **params) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`search` for many quantized queries ``(qterms, qweights, qscale)`` over ``threads`` workers."""
        return self._runner.search_batch(quantized, k, threads, self._knobs(k, mode, params))


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


def _kth_column(k: int) -> int:
    """Column of ``bmp_term_kth`` giving a lower bound for the k-th score (-1: none stored)."""
    return next((j for j, kk in enumerate(KTH) if k <= kk), -1)
