"""The top-k queue every query algorithm shares: a Numba binary heap of (score, doc) pairs.

The heap keeps the k best entries with the *worst* one at the root. Ordering is total and
deterministic: a higher score is better; on equal scores the lower doc id is better.
Callers own the arrays ``scores``/``docs`` (capacity k) and track the current ``size``.

With negated keys the same heap pops the *largest* entries first: BMP keeps its candidate blocks
as ``(-bound, last block - block)`` so that the root is the largest bound, lowest block id.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True, inline="always")
def worse(s1, d1, s2, d2) -> bool:
    """True if (s1, d1) ranks below (s2, d2)."""
    return s1 < s2 or (s1 == s2 and d1 > d2)


@njit(cache=True, nogil=True)
def _sift_down(scores, docs, size, pos):
    s, d = scores[pos], docs[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        right = child + 1
        if right < size and worse(scores[right], docs[right], scores[child], docs[child]):
            child = right
        if not worse(scores[child], docs[child], s, d):
            break
        scores[pos], docs[pos] = scores[child], docs[child]
        pos = child
    scores[pos], docs[pos] = s, d


@njit(cache=True, nogil=True)
def heap_push(scores, docs, size, s, d):
    """Insert (s, d) into a heap of ``size`` entries (capacity permitting); return the new size."""
    pos = size
    while pos > 0:
        parent = (pos - 1) >> 1
        if not worse(s, d, scores[parent], docs[parent]):
            break
        scores[pos], docs[pos] = scores[parent], docs[parent]
        pos = parent
    scores[pos], docs[pos] = s, d
    return size + 1


@njit(cache=True, nogil=True)
def heap_replace_top(scores, docs, size, s, d):
    """Replace the root (worst entry) by (s, d) and restore the heap."""
    scores[0], docs[0] = s, d
    _sift_down(scores, docs, size, 0)


@njit(cache=True, nogil=True)
def heapify(scores, docs, size):
    """Arrange ``[:size]`` of unordered entries into a heap (worst at the root)."""
    for pos in range(size // 2 - 1, -1, -1):
        _sift_down(scores, docs, size, pos)


@njit(cache=True, nogil=True)
def heap_offer(scores, docs, size, k, s, d):
    """Keep (s, d) if it belongs to the best ``k``; return the new size."""
    if size < k:
        return heap_push(scores, docs, size, s, d)
    if worse(scores[0], docs[0], s, d):
        heap_replace_top(scores, docs, size, s, d)
    return size


@njit(cache=True, nogil=True)
def heap_sort(scores, docs, size):
    """Sort the heap in place, best first (score desc, doc asc); entries ``[:size]`` are the result."""
    for end in range(size - 1, 0, -1):
        scores[0], scores[end] = scores[end], scores[0]
        docs[0], docs[end] = docs[end], docs[0]
        _sift_down(scores, docs, end, 0)
