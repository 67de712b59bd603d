"""Seismic's query: visit the heaviest query terms' lists, skip blocks whose summary cannot reach the top-k.

The query's ``query_cut`` heaviest terms are visited heaviest first. For each, the dot products of the whole
query with the list's block summaries are computed and a block is skipped when the top-k heap is full and
``summary_dot < heap_factor * kth_score`` (the authors' convention: a smaller ``heap_factor`` skips fewer
blocks). Other blocks have their documents scored exactly from the forward index with the full query (the same
int32 scores as exact search) unless already scored for this query (a bitmap over the documents), prefetching
the next document's vector meanwhile. The blocks of the first list are visited by decreasing summary dot
product, so its scan stops at the first skipped block.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..topk import heap_offer, heap_sort

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


@njit(cache=True, nogil=True)
def seismic_top_k(list_blocks, block_offsets, sdocs, block_step, sum_offsets, sum_terms, sum_values, f_off, f_terms, f_imp,
                  qterms, qweights, k, query_cut, heap_factor, nibbles, qdense, visited, acc, top_scores, top_docs):
    """Seismic top-k of one quantized query (terms ascending) into ``top_*[:n]`` (sorted); return n (an
    :mod:`index.batch` kernel). ``nibbles``: the summary codes are 4-bit, two per byte (:mod:`.summaries`).

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
        # dot products of the whole query with the list's (block-major) summaries; unsigned loop indices
        # spare numba's negative-index wraparound code
        for j in range(nb):
            b = b0 + j
            dot = np.int64(0)
            if nibbles:
                for e in range(np.uint64(sum_offsets[b]), np.uint64(sum_offsets[b + 1])):
                    code = (sum_values[e >> np.uint64(1)] >> ((e & np.uint64(1)) << np.uint64(2))) & np.uint64(15)
                    dot += np.int64(qdense[sum_terms[e]]) * np.int64(code)
            else:
                for e in range(np.uint64(sum_offsets[b]), np.uint64(sum_offsets[b + 1])):
                    dot += np.int64(qdense[sum_terms[e]]) * np.int64(sum_values[e])
            acc[j] = dot * np.int64(block_step[b])
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

