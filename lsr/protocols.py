"""The parts an engine is assembled from, as small protocols.

A single index, a live (segmented) index and a sharded index each provide the same three sides (a sparse
index, a document source, optionally a dense side and a BM25 field) bundled as :class:`IndexParts`; the search layer
(:class:`lsr.searcher.Searcher`) and :class:`lsr.engine.Engine` only use what is declared here. Document numbers
are whatever the parts agree on (local, global over segments, or ``ordinal * shards + shard``); a lower number
wins a tie everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lsr.corpus import Document

Vector = tuple[np.ndarray, np.ndarray]  # (term ids, weights) of a sparse query or document
Ranking = tuple[np.ndarray, np.ndarray]  # (document numbers, scores), best first


@runtime_checkable
class SparseSide(Protocol):
    """Learned-sparse top-k and exact scoring (``lsr.index.InvertedIndex``, ``SegmentedIndex``, ``ShardedIndex``)."""

    num_docs: int

    def search(self, term_ids: np.ndarray, weights: np.ndarray, k: int = 10, mode: str = "exact",
               **params: Any) -> Ranking: ...

    def search_batch(self, queries: list[Vector], k: int = 10, threads: int | None = None, mode: str = "exact",
                     **params: Any) -> list[Ranking]: ...

    def score_docs(self, vector: Vector, docnos: Sequence[int]) -> np.ndarray: ...

    def doc_vector(self, doc_id: int) -> Vector: ...


@runtime_checkable
class DocumentSource(Protocol):
    """Stored documents by number and by external id (``DocStore``, ``SegmentedDocStore``, ``ShardedDocs``)."""

    def get(self, docno: int) -> Document: ...

    def get_many(self, docnos: list[int]) -> dict[int, Document]: ...

    def headers(self, docnos: list[int]) -> dict[int, tuple[str, str]]: ...

    def docno(self, doc_id: str) -> int: ...

    def ids(self) -> list[str]: ...

    def __len__(self) -> int: ...


@runtime_checkable
class DenseSide(Protocol):
    """Dense document vectors: top-k by inner product and exact scores (``DenseIndex``, ``SegmentedDense``,
    ``ShardedDense``)."""

    info: dict
    dim: int
    num_docs: int

    @property
    def model(self) -> dict: ...

    @property
    def uses_hnsw(self) -> bool: ...

    def search(self, query: np.ndarray, k: int = 10) -> Ranking: ...

    def search_batch(self, queries: np.ndarray, k: int = 10, exact: bool | None = None,
                     ef_search: int | None = None) -> list[Ranking]: ...

    def score(self, query: np.ndarray, docnos: Sequence[int]) -> np.ndarray: ...


@runtime_checkable
class Bm25Field(Protocol):
    """The BM25 field (``lsr.bm25_field.Bm25Side``): text queries as (term ids, idf x count) vectors over ``index``,
    a sparse side like the learned one."""

    index: SparseSide

    def query_vector(self, text: str) -> Vector: ...

    def describe(self) -> dict: ...


@runtime_checkable
class IndexParts(Protocol):
    """An opened index: its manifest and sides, plus how to describe, refresh and release it
    (:class:`lsr.snapshot.LocalIndex` for a single or live index, :class:`lsr.sharded.search.ShardSet`)."""

    index_dir: Path
    manifest: dict
    index: SparseSide
    docs: DocumentSource

    @property
    def dense(self) -> DenseSide | None: ...

    @property
    def bm25(self) -> "Bm25Field | None": ...

    def is_current(self) -> bool:
        """False once a newer commit of the index exists on disk."""

    def info(self) -> dict:
        """Counts, sizes, model and build details."""

    def start(self) -> None:
        """Acquire what searching needs now rather than on first use."""

    def close(self) -> None:
        """Release what :meth:`start` (or a search) acquired."""
