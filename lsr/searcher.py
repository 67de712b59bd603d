"""The search layer: sparse, dense and hybrid retrieval over an index's parts (:mod:`lsr.protocols`).

:class:`Searcher` encodes queries (SPLADE, inference-free, dense), asks the sparse and dense sides for their
top-k' candidates, fills in the side a fused candidate is missing from with that side's exact scores, ranks with
:mod:`lsr.fusion`, applies metadata filters and builds hits. It knows nothing of how the parts were opened: a
single index, a live (segmented) index and a sharded one search alike. :class:`lsr.engine.Engine` is a
Searcher; the HTTP server and ``lsr eval`` call :meth:`Searcher.retrieve` with query vectors they encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from lsr.corpus import Document
from lsr.encoder import SparseBatch, SpladeEncoder
from lsr.fusion import FusionConfig, fuse
from lsr.index.structures import MODES
from lsr.protocols import DenseSide, IndexParts, Vector
from lsr.onnx_encoders import DEFAULT_QUERY_RUNTIME, check_query_runtime, runtime_for
from lsr.query_encoders import DEFAULT_QUERY_ENCODER, check_query_encoder

Query = Union[str, dict[str, float], tuple[Sequence[int], Sequence[float]]]
RETRIEVERS = ("sparse", "dense", "hybrid")


class ModelMismatchError(RuntimeError):
    """The query encoder is not the model the index was built with."""


@dataclass
class Hit:
    """One search result."""

    id: str
    score: float
    title: str
    docno: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HybridHit(Hit):
    """A search result with the per-retriever scores behind its score (None: that retriever did not score it)."""

    sparse_score: float | None = None
    dense_score: float | None = None


def check_search_args(k: int, mode: str) -> None:
    if not 1 <= k <= 10_000:
        raise ValueError(f"k must be between 1 and 10000, got {k}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; available: {', '.join(MODES)}")


def check_retriever(retriever: str) -> None:
    if retriever not in RETRIEVERS:
        raise ValueError(f"unknown retriever {retriever!r}; available: {', '.join(RETRIEVERS)}")


def matches_filter(metadata: dict, conditions: dict[str, Any]) -> bool:
    """Metadata equality: every ``field: value`` must be present and equal (a list value means any of)."""
    for key, want in conditions.items():
        have = metadata.get(key, _MISSING)
        if isinstance(want, list) and not isinstance(have, list):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


_MISSING = object()


class Searcher:
    """Search over the parts of an opened index (:class:`lsr.protocols.IndexParts`) with its query encoders."""

    def __init__(self, parts: IndexParts, encoder: SpladeEncoder | None = None, query_runtime: str | None = None):
        self.parts = parts
        self.index_dir = Path(parts.index_dir)
        self.manifest = parts.manifest
        self.index = parts.index
        self.docs = parts.docs
        self._encoder: SpladeEncoder | None = None
        self._dense_encoder = None
        self._inference_free = None
        # what runs text queries through a model: torch, onnx, onnx-int8 (lsr.onnx_encoders)
        self.query_runtime = check_query_runtime(query_runtime or DEFAULT_QUERY_RUNTIME)
        self._onnx_encoders: dict[tuple[str, str], object] = {}  # (sparse|dense, runtime) -> ONNX query encoder
        if encoder is not None:
            self._check_encoder(encoder)
            self._encoder = encoder

    # ------------------------------------------------------------------ dense side
    @property
    def dense(self) -> DenseSide | None:
        """The index's dense vectors, or None if it has none."""
        return self.parts.dense

    def require_dense(self) -> DenseSide:
        """The dense vectors, or a ValueError saying how to add them."""
        if self.dense is None:
            raise ValueError(f"index {self.index_dir} has no dense vectors; add them with `lsr index --dense` "
                             "or Engine.add_dense()")
        return self.dense

    @property
    def dense_encoder(self):
        """The dense model the index's vectors were made with (loaded lazily, checked against its hash)."""
        if self._dense_encoder is None:
            from lsr.dense import DenseEncoder, check_dense_encoder

            info = self.require_dense().info
            model = info["model"]
            encoder = DenseEncoder(model["name"], max_length=model["max_length"],
                                   query_max_length=model["query_max_length"])
            check_dense_encoder(encoder, info, self.index_dir)
            self._dense_encoder = encoder
        return self._dense_encoder

    def dense_query_encoder(self, runtime: str | None = None):
        """The dense query encoder in ``runtime`` (default: the engine's ``query_runtime``)."""
        return self._runtime_encoder("dense", runtime)

    def dense_query_vectors(self, queries: Sequence[str], query_runtime: str | None = None) -> np.ndarray:
        """Dense embeddings [n, dim] of text queries."""
        if not all(isinstance(q, str) for q in queries):
            raise ValueError("dense and hybrid retrieval need text queries")
        return self.dense_query_encoder(query_runtime).encode_queries(list(queries))

    # ------------------------------------------------------------------ sparse query encoders
    @property
    def encoder(self) -> SpladeEncoder:
        """The model the index was built with (loaded lazily and checked against the recorded hash)."""
        if self._encoder is None:
            info = self.manifest["model"]
            encoder = SpladeEncoder(info["name"], doc_max_length=info["doc_max_length"],
                                    query_max_length=info["query_max_length"], doc_top_k=info["doc_top_k"])
            self._check_encoder(encoder)
            self._encoder = encoder
        return self._encoder

    @property
    def inference_free(self):
        """The tokenizer-only query encoder (:class:`lsr.query_encoders.InferenceFreeEncoder`) stored in the index."""
        if self._inference_free is None:
            from lsr.query_encoders import InferenceFreeEncoder

            self._inference_free = InferenceFreeEncoder.open(self.index_dir, self.manifest)
        return self._inference_free

    def query_encoder(self, name: str = DEFAULT_QUERY_ENCODER, runtime: str | None = None):
        """The query encoder called ``name``: ``model`` (the SPLADE model, run by ``runtime``, default the engine's
        ``query_runtime``) or ``inference-free`` (tokenizer + IDF)."""
        return self._runtime_encoder("sparse", runtime) if check_query_encoder(name) == "model" else self.inference_free

    def _runtime_encoder(self, kind: str, runtime: str | None):
        """The ``sparse`` or ``dense`` model's query encoder in a query runtime (ONNX ones loaded once, hash-checked)."""
        runtime = runtime_for(kind, runtime or self.query_runtime)
        if runtime == "torch":
            return self.encoder if kind == "sparse" else self.dense_encoder
        if (kind, runtime) not in self._onnx_encoders:
            from lsr.dense import check_dense_encoder
            from lsr.onnx_encoders import open_onnx_encoder

            info = self.manifest["model"] if kind == "sparse" else self.require_dense().info["model"]
            encoder = open_onnx_encoder(kind, info, runtime)
            if kind == "sparse":
                self._check_encoder(encoder)
            else:
                check_dense_encoder(encoder, self.require_dense().info, self.index_dir)
            self._onnx_encoders[kind, runtime] = encoder
        return self._onnx_encoders[kind, runtime]

    def _check_encoder(self, encoder: SpladeEncoder) -> None:
        recorded = self.manifest["model"]
        if encoder.hash != recorded["sha256"]:
            raise ModelMismatchError(
                f"index {self.index_dir} was built with model {recorded['name']!r} (sha256 {recorded['sha256'][:12]}…) "
                f"but {encoder.name!r} has sha256 {encoder.hash[:12]}…; queries must be encoded by the indexing model"
            )

    def query_vector(self, query: Query, query_encoder: str = DEFAULT_QUERY_ENCODER,
                     query_runtime: str | None = None) -> Vector:
        """Term ids and weights of a query given as text, ``{token: weight}`` or ``(term_ids, weights)``.

        Text is encoded by ``query_encoder``: ``model`` (SPLADE, run by ``query_runtime``) or ``inference-free``
        (tokenizer and IDF table)."""
        if isinstance(query, str):
            return self.query_encoder(query_encoder, query_runtime).encode_query(query)
        if isinstance(query, dict):
            ids = self.encoder.token_ids(query.keys())
            pairs = [(i, w) for i, w in zip(ids, query.values()) if i is not None]
            return (np.array([p[0] for p in pairs], np.uint32), np.array([p[1] for p in pairs], np.float32))
        term_ids, weights = query
        return np.asarray(term_ids, np.uint32), np.asarray(weights, np.float32)

    def query_vectors(self, queries: Sequence[Query], query_encoder: str = DEFAULT_QUERY_ENCODER,
                      query_runtime: str | None = None) -> list[Vector]:
        """Vectors of many queries; text queries are encoded together in batches."""
        texts = [q for q in queries if isinstance(q, str)]
        encoder = self.query_encoder(query_encoder, query_runtime) if texts else None
        batch = encoder.encode_queries(texts, batch_size=64) if texts else SparseBatch.concat([])
        vectors, t = [], 0
        for q in queries:
            if isinstance(q, str):
                vectors.append(batch.row(t))
                t += 1
            else:
                vectors.append(self.query_vector(q))
        return vectors

    # ------------------------------------------------------------------ search
    def search(self, query: Query, k: int = 10, mode: str = "exact", *, retriever: str = "sparse",
               fusion=None, alpha: float | None = None, filter: dict | None = None,
               query_encoder: str = DEFAULT_QUERY_ENCODER, query_runtime: str | None = None, **params) -> list[Hit]:
        """Top-k documents for one query; ``params`` are the mode's knobs (e.g. BMP's alpha/beta).

        ``retriever="dense"|"hybrid"`` uses the dense vectors (hybrid: fused with :mod:`lsr.fusion`; ``fusion``
        is ``"convex"``, ``"rrf"`` or a :class:`lsr.fusion.FusionConfig`, ``alpha`` the sparse weight);
        ``filter`` keeps documents whose metadata equals every ``{field: value}``. ``query_encoder`` encodes text
        for the sparse side: ``model`` (SPLADE) or ``inference-free`` (tokenizer + the index's IDF table, no model).
        ``query_runtime`` (``torch``, ``onnx``, ``onnx-int8``; default: the engine's) runs the models on text queries.
        """
        check_query_encoder(query_encoder)
        if retriever != "sparse" or fusion is not None or alpha is not None or filter:
            sparse = dense = None
            if (query_encoder != DEFAULT_QUERY_ENCODER or query_runtime) and retriever != "dense":
                sparse = [self.query_vector(query, query_encoder, query_runtime)]
            if query_runtime and retriever != "sparse" and isinstance(query, str):
                dense = self.dense_query_vectors([query], query_runtime)
            return self.retrieve([query], k, mode=mode, retriever=retriever, fusion=fusion, alpha=alpha,
                                 filter=filter, params=params, sparse_vectors=sparse, dense_vectors=dense)[0]
        check_search_args(k, mode)
        ids, scores = self.index.search(*self.query_vector(query, query_encoder, query_runtime), k=k, mode=mode,
                                        **params)
        return self._hits(ids, scores)

    def search_batch(
        self, queries: Sequence[Query], k: int = 10, mode: str = "exact", threads: int | None = None, *,
        retriever: str = "sparse", fusion=None, alpha: float | None = None, filter: dict | None = None,
        query_encoder: str = DEFAULT_QUERY_ENCODER, query_runtime: str | None = None, **params
    ) -> list[list[Hit]]:
        """Top-k documents for many queries (text queries encoded in batches, search parallel over queries)."""
        check_query_encoder(query_encoder)
        if retriever != "sparse" or fusion is not None or alpha is not None or filter:
            sparse = dense = None
            if (query_encoder != DEFAULT_QUERY_ENCODER or query_runtime) and retriever != "dense":
                sparse = self.query_vectors(queries, query_encoder, query_runtime)
            if query_runtime and retriever != "sparse":
                dense = self.dense_query_vectors(queries, query_runtime)
            return self.retrieve(queries, k, mode=mode, retriever=retriever, fusion=fusion, alpha=alpha,
                                 filter=filter, threads=threads, params=params, sparse_vectors=sparse,
                                 dense_vectors=dense)
        check_search_args(k, mode)
        vectors = self.query_vectors(queries, query_encoder, query_runtime)
        results = self.index.search_batch(vectors, k=k, threads=threads, mode=mode, **params)
        return [self._hits(ids, scores) for ids, scores in results]

    def retrieve(
        self, queries: Sequence[Query], k: int = 10, *, mode: str = "exact", retriever: str = "sparse",
        fusion: FusionConfig | str | None = None, alpha: float | None = None, normalization: str | None = None,
        depth: int | None = None, rrf_k: int | None = None, filter: dict[str, Any] | None = None,
        sparse_vectors: Sequence[Vector] | None = None, dense_vectors: np.ndarray | None = None,
        threads: int | None = None, params: dict[str, Any] | None = None,
    ) -> list[list[HybridHit]]:
        """Top-k of each query with the sparse, dense or hybrid retriever, hits with per-retriever scores.

        ``filter`` keeps only documents whose metadata equals every given ``{field: value}`` (the ranking is
        deepened until k documents pass or the collection is exhausted). ``sparse_vectors`` / ``dense_vectors`` are
        precomputed query vectors (e.g. encoded in a micro-batch by the server); otherwise text queries are encoded
        here. ``params`` are the sparse mode's knobs.
        """
        check_retriever(retriever)
        check_search_args(k, mode)
        params = params or {}
        config = FusionConfig.make(fusion, alpha=alpha, normalization=normalization, depth=depth, rrf_k=rrf_k)
        if not len(queries):
            return []
        if retriever in ("sparse", "hybrid") and sparse_vectors is None:
            sparse_vectors = self.query_vectors(queries)
        if retriever in ("dense", "hybrid"):
            self.require_dense()
            if dense_vectors is None:
                dense_vectors = self.dense_query_vectors(queries)
            dense_vectors = np.asarray(dense_vectors, np.float32)

        def rank(kk: int, rows: list[int]) -> list[list[HybridHit]]:
            return self._rank(kk, mode, retriever, config, params, threads,
                              None if sparse_vectors is None else [sparse_vectors[i] for i in rows],
                              None if dense_vectors is None else dense_vectors[rows])

        rows = list(range(len(queries)))
        if not filter:
            return rank(k, rows)
        num_docs = self.index.num_docs
        results: list[list[HybridHit]] = [[] for _ in rows]
        fetch, pending = min(num_docs, max(4 * k, 100)), rows
        while pending:
            ranked = rank(fetch, pending)
            again = []
            for row, hits in zip(pending, ranked):
                passed = [h for h in hits if matches_filter(self.docs.get(h.docno).metadata, filter)]
                if len(passed) >= k or len(hits) < fetch or fetch >= num_docs:
                    results[row] = passed[:k]
                else:
                    again.append(row)
            pending, fetch = again, min(num_docs, fetch * 4)
        return results

    def _rank(self, k: int, mode: str, retriever: str, config: FusionConfig, params: dict, threads: int | None,
              sparse_vectors: list[Vector] | None, dense_vectors: np.ndarray | None) -> list[list[HybridHit]]:
        """Each side's top-k' (k' = the fusion depth for hybrid), fused with exact scores for missing sides."""
        n = len(sparse_vectors if sparse_vectors is not None else dense_vectors)
        depth_k = max(k, config.depth) if retriever == "hybrid" else k
        sparse_results = dense_results = None
        if retriever in ("sparse", "hybrid"):
            if n == 1:  # the single-query kernel: no parallel region, so concurrent callers scale over threads
                sparse_results = [self.index.search(*sparse_vectors[0], k=depth_k, mode=mode, **params)]
            else:
                sparse_results = self.index.search_batch(list(sparse_vectors), k=depth_k, threads=threads, mode=mode,
                                                         **params)
        if retriever in ("dense", "hybrid"):
            dense_results = self.dense.search_batch(dense_vectors, k=depth_k)
        out = []
        for i in range(n):
            if retriever == "sparse":
                ids, scores = sparse_results[i]
                out.append(self._hybrid_hits(ids, scores, scores, None))
            elif retriever == "dense":
                ids, scores = dense_results[i]
                out.append(self._hybrid_hits(ids, scores, None, scores))
            else:
                vector, qvec = sparse_vectors[i], dense_vectors[i]
                fused = fuse(sparse_results[i], dense_results[i], config, k,
                             score_sparse=lambda docs, v=vector: self.index.score_docs(v, docs),
                             score_dense=lambda docs, q=qvec: self.dense.score(q, docs).astype(np.float64))
                out.append(self._hybrid_hits(fused.docs, fused.scores, fused.sparse, fused.dense))
        return out

    def _hits(self, ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
        headers = self.docs.headers([int(i) for i in ids])
        return [Hit(headers[int(i)][0], float(s), headers[int(i)][1], int(i)) for i, s in zip(ids, scores)]

    def _hybrid_hits(self, ids, scores, sparse, dense) -> list[HybridHit]:
        ids = [int(i) for i in ids]
        headers = self.docs.headers(ids)
        hits = []
        for j, docno in enumerate(ids):
            hits.append(HybridHit(
                headers[docno][0], float(scores[j]), headers[docno][1], docno,
                sparse_score=None if sparse is None or np.isnan(sparse[j]) else float(sparse[j]),
                dense_score=None if dense is None or np.isnan(dense[j]) else float(dense[j]),
            ))
        return hits

    # ------------------------------------------------------------------ documents
    def document(self, doc_id: str) -> Document:
        """A stored document by external id (KeyError if unknown)."""
        return self.docs.get(self.docs.docno(doc_id))

    def document_vector(self, doc_id: str, top: int | None = None) -> dict[str, float]:
        """A document's indexed (quantized) term weights, decoded to tokens."""
        terms, weights = self.index.doc_vector(self.docs.docno(doc_id))
        return self.encoder.decode(terms, weights, top)
