"""Several immutable index directories ("segments") searched as one index, with deleted documents skipped.

Segment ``s`` holds the global document numbers ``bases[s] .. bases[s] + num_docs_s - 1``; deletions are
global numbers (tombstones). Every segment is quantized with the same scale, so integer scores compare across
segments: each segment answers its top k live documents in the requested mode (asking for more results while
deleted ones take places, see :meth:`SegmentedIndex.live_top_k`) and the lists are merged by (score desc, global
number asc). For exact and safe modes the result is
exactly what one index of the live documents (same scale, same document order) returns.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from .search import InvertedIndex, check_k
from .storage import IndexFormatError


def merge_top_k(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge (global ids, scores) lists into the top ``k`` by (score desc, id asc)."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.empty(0, np.uint32), np.empty(0, np.float32)
    ids = np.concatenate([p[0] for p in parts]).astype(np.uint32)
    scores = np.concatenate([p[1] for p in parts])
    order = np.lexsort((ids, -scores.astype(np.float64)))[:k]
    return ids[order], scores[order]


class SegmentedIndex:
    """Segments (:class:`InvertedIndex`) at global number offsets ``bases``, minus ``deleted`` global numbers.

    Quacks like :class:`InvertedIndex` for search: ``search``, ``search_batch``, ``score_docs``, ``doc_vector``,
    ``num_docs`` (live documents), ``vocab_size``, ``scale`` and ``manifest`` (the first segment's).
    """

    def __init__(self, segments: Sequence[InvertedIndex], bases: Sequence[int], deleted: np.ndarray | None = None):
        if not segments or len(segments) != len(bases):
            raise ValueError("need one base per segment and at least one segment")
        first = segments[0]
        for prev, seg in zip(segments, segments[1:]):
            if seg.scale != first.scale or seg.vocab_size < prev.vocab_size \
                    or seg.array("postings_impacts").dtype != first.array("postings_impacts").dtype:
                raise IndexFormatError(f"{seg.index_dir}: quantization or vocabulary differs from {first.index_dir}; "
                                       "segments of one index share them (a later one may extend the vocabulary)")
        if any(b2 < b1 + s.num_docs for b1, b2, s in zip(bases, bases[1:], segments)):
            raise IndexFormatError(f"{first.index_dir}: segment document ranges overlap or are out of order")
        self.segments = list(segments)
        self.bases = [int(b) for b in bases]
        self.manifest = first.manifest
        self.index_dir = first.index_dir
        self.vocab_size = segments[-1].vocab_size
        self.scale = first.scale
        deleted = np.unique(np.asarray(deleted if deleted is not None else [], np.int64))
        self.deleted = deleted
        self.dead_masks: list[np.ndarray] = []  # per segment: bool mask over local numbers
        for seg, base in zip(self.segments, self.bases):
            mask = np.zeros(seg.num_docs, np.bool_)
            local = deleted[(deleted >= base) & (deleted < base + seg.num_docs)] - base
            mask[local] = True
            self.dead_masks.append(mask)
        self.deleted_per_segment = [int(m.sum()) for m in self.dead_masks]
        self.num_docs = sum(s.num_docs for s in self.segments) - sum(self.deleted_per_segment)
        self.num_postings = sum(s.num_postings for s in self.segments)
        self.docno_limit = self.bases[-1] + self.segments[-1].num_docs

    def locate(self, docno: int) -> tuple[int, int]:
        """(segment number, local number) of a global document number; IndexError if it is in no segment."""
        s = bisect.bisect_right(self.bases, int(docno)) - 1
        if s < 0 or int(docno) - self.bases[s] >= self.segments[s].num_docs:
            raise IndexError(f"no document with global number {docno}")
        return s, int(docno) - self.bases[s]

    def is_live(self, docno: int) -> bool:
        """True if the global number names a document that is not deleted."""
        try:
            s, local = self.locate(docno)
        except IndexError:
            return False
        return not self.dead_masks[s][local]

    def drop_deleted(self, s: int, local_ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Segment ``s``'s results without its deleted documents, as (global ids, scores)."""
        keep = ~self.dead_masks[s][local_ids] if self.deleted_per_segment[s] else slice(None)
        return local_ids[keep].astype(np.int64) + self.bases[s], scores[keep]

    def first_fetch(self, s: int, k: int) -> int:
        """How many results to ask segment ``s`` for first: k, or 2k when it has deleted documents (a deleted
        document is rarely among the best, and :meth:`live_top_k` asks again in the rare case it was not enough)."""
        return min(k + min(self.deleted_per_segment[s], k), self.segments[s].num_docs)

    def live_top_k(self, s: int, k: int, fetch, first: tuple[np.ndarray, np.ndarray] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` live documents of segment ``s`` (global ids, scores). ``fetch(kk)`` returns the segment's
        top ``kk`` (local ids, scores; ``first`` = ``fetch(first_fetch(s, k))`` if already known). Exact: the live
        documents among a segment's top kk come first in its full ranking, so once k of them are found (or the
        segment has no more results, or kk covers every deleted document) they are its top k live ones."""
        limit = min(k + self.deleted_per_segment[s], self.segments[s].num_docs)
        kk = self.first_fetch(s, k)
        ids, scores = first if first is not None else fetch(kk)
        while True:
            live_ids, live_scores = self.drop_deleted(s, ids, scores)
            if len(live_ids) >= k or len(ids) < kk or kk >= limit:
                return live_ids[:k], live_scores[:k]
            kk = min(4 * kk, limit)
            ids, scores = fetch(kk)

    def search(self, term_ids: np.ndarray, weights: np.ndarray, k: int = 10, mode: str = "exact",
               **params) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over the live documents of every segment; (global ids uint32, float32 scores)."""
        k = check_k(k, max(self.num_docs, 1))
        parts = []
        for s, seg in enumerate(self.segments):
            if seg.num_docs:
                parts.append(self.live_top_k(
                    s, k, lambda kk, seg=seg: seg.search(term_ids, weights, kk, mode=mode, **params)))
        return merge_top_k(parts, k)

    def search_batch(self, queries: list[tuple[np.ndarray, np.ndarray]], k: int = 10, threads: int | None = None,
                     mode: str = "exact", **params) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`search` for many queries (each segment answers the batch in parallel over queries)."""
        k = check_k(k, max(self.num_docs, 1))
        per_query: list[list] = [[] for _ in queries]
        for s, seg in enumerate(self.segments):
            if not seg.num_docs:
                continue
            first = seg.search_batch(queries, self.first_fetch(s, k), threads=threads, mode=mode, **params)
            for q, (terms, weights) in enumerate(queries):
                per_query[q].append(self.live_top_k(
                    s, k, lambda kk, seg=seg, t=terms, w=weights: seg.search(t, w, kk, mode=mode, **params),
                    first[q]))
        return [merge_top_k(parts, k) for parts in per_query]

    def score_docs(self, vector: tuple[np.ndarray, np.ndarray], docnos) -> np.ndarray:
        """Exact sparse scores of given global document numbers (as :meth:`InvertedIndex.score_docs`)."""
        docnos = np.asarray(docnos, np.int64)
        out = np.zeros(len(docnos), np.float64)
        seg_of = np.searchsorted(np.asarray(self.bases), docnos, side="right") - 1
        for s in np.unique(seg_of):
            rows = np.flatnonzero(seg_of == s)
            out[rows] = self.segments[s].score_docs(vector, docnos[rows] - self.bases[s])
        return out

    def doc_vector(self, doc_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Stored (term ids, dequantized weights) of one document by global number."""
        s, local = self.locate(doc_id)
        return self.segments[s].doc_vector(local)
