"""The search layer: sparse, dense and hybrid retrieval over an index's parts (:mod:`lsr.protocols`).

:class:`Searcher` encodes queries (SPLADE, inference-free, dense), asks the sparse and dense sides for their
top-k' candidates, fills in the side a fused candidate is missing from with that side's exact scores, ranks with
:mod:`lsr.fusion`, applies metadata filters and builds hits. It knows nothing of how the parts were opened: a
single index, a live (segmented) index and a sharded one search alike. :class:`lsr.engine.Engine` is a
Searcher; the HTTP server and ``lsr eval`` call :meth:`Searcher.retrieve` with query vectors they encoded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from lsr.corpus import Document
from lsr.encoder import SparseBatch, SpladeEncoder, document_settings
from lsr.fusion import (DEFAULT_PSEUDO_QUERIES, Candidates, FusionConfig, Scorer, agreement_weights, fuse,
                        pseudo_query_weights, sample_pseudo_queries)
from lsr.index.structures import MODES
from lsr.protocols import DenseSide, IndexParts, Vector
from lsr.onnx_encoders import DEFAULT_QUERY_RUNTIME, check_query_runtime, runtime_for
from lsr.query_encoders import DEFAULT_QUERY_ENCODER, check_query_encoder

Query = Union[str, dict[str, float], tuple[Sequence[int], Sequence[float]]]
SINGLE_RETRIEVERS = ("sparse", "dense", "bm25")  # each produces its own candidate lists
# The combinations, best first as measured on the shared collections (eval/results/fusion-study.md): ``auto`` is
# the first one the index holds every retriever of.
AUTO_ORDER = (("sparse", "dense", "bm25"), ("sparse", "dense"), ("sparse", "bm25"), ("dense", "bm25"), ("sparse",))
DEFAULT_RETRIEVER = "auto"
LABEL_FREE_METHODS = ("pseudo", "agreement")  # weights chosen per collection without labels (label_free_weights)
RETRIEVER_HELP = ("auto (the best combination this index holds), hybrid (all its retrievers fused), sparse, dense, "
                  "bm25, or a combination such as sparse+dense+bm25")


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
    bm25_score: float | None = None


def check_search_args(k: int, mode: str) -> None:
    if not 1 <= k <= 10_000:
        raise ValueError(f"k must be between 1 and 10000, got {k}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; available: {', '.join(MODES)}")


def parse_retriever(spec: str) -> tuple[str, ...] | str:
    """A retriever spec: ``auto`` or ``hybrid`` (resolved against an index), or the retrievers it names
    (``sparse``, ``dense+bm25``, ...) in canonical order. ValueError with the accepted forms otherwise."""
    if spec in ("auto", "hybrid"):
        return spec
    names = [part.strip() for part in str(spec).split("+")]
    unknown = [n for n in names if n not in SINGLE_RETRIEVERS]
    if unknown or not names:
        raise ValueError(f"unknown retriever {unknown[0] if unknown else spec!r} in {spec!r}; use {RETRIEVER_HELP}")
    if len(set(names)) != len(names):
        raise ValueError(f"retriever {spec!r} names a retriever twice; use {RETRIEVER_HELP}")
    return tuple(n for n in SINGLE_RETRIEVERS if n in names)


def check_retriever(spec: str) -> None:
    parse_retriever(spec)

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
        self._label_free: dict[tuple, dict[str, float]] = {}  # label_free_weights, once per engine
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

    # ------------------------------------------------------------------ BM25 field
    @property
    def has_bm25(self) -> bool:
        """Whether the index stores the BM25 field (``retriever="bm25"``)."""
        return self.parts.bm25 is not None

    def require_bm25(self):
        """The BM25 field (:class:`lsr.bm25_field.Bm25Side`), or a ValueError saying how to add it."""
        if self.parts.bm25 is None:
            raise ValueError(f"index {self.index_dir} has no BM25 field; add it with `lsr index --add-bm25 --index "
                             f"{self.index_dir}` or Engine.add_bm25()")
        return self.parts.bm25

    def bm25_query_vectors(self, queries: Sequence[Query]) -> list[Vector]:
        """BM25 query vectors (term ids, idf x count) of text queries."""
        if not all(isinstance(q, str) for q in queries):
            raise ValueError("BM25 retrieval needs text queries")
        field = self.require_bm25()
        return [field.query_vector(q) for q in queries]

    def bm25_candidates(self, queries: Sequence[str], k: int, mode: str = "exact", params: dict | None = None,
                        threads: int | None = None) -> list[list[tuple[int, float]]]:
        """Top-k (document number, BM25 score) of each text query from the BM25 field, in ``mode`` (exact, bmp,
        bmp-approx, seismic: the field's own structures); ``params`` are the mode's knobs."""
        check_search_args(k, mode)
        rankings = self._bm25_rankings(self.bm25_query_vectors(queries), k, mode, params or {}, threads)
        return [[(int(d), float(s)) for d, s in zip(ids, scores)] for ids, scores in rankings]

    def _bm25_rankings(self, vectors: list[Vector], k: int, mode: str, params: dict, threads: int | None):
        index = self.require_bm25().index
        if len(vectors) == 1:
            return [index.search(*vectors[0], k=k, mode=mode, **params)]
        return index.search_batch(vectors, k=k, threads=threads, mode=mode, **params)

    # ------------------------------------------------------------------ sparse query encoders
    @property
    def encoder(self) -> SpladeEncoder:
        """The model the index was built with (loaded lazily and checked against the recorded hash)."""
        if self._encoder is None:
            info = self.manifest["model"]
            encoder = SpladeEncoder(info["name"], query_max_length=info["query_max_length"], **document_settings(info))
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

    # ------------------------------------------------------------------ retrievers
    def available_retrievers(self) -> tuple[str, ...]:
        """The single retrievers this index holds: ``sparse``; ``dense`` with dense vectors; ``bm25`` with a BM25
        field."""
        have = {"sparse": True, "dense": self.dense is not None, "bm25": self.has_bm25}
        return tuple(name for name in SINGLE_RETRIEVERS if have[name])

    def resolve_retriever(self, spec: str = DEFAULT_RETRIEVER, text: bool = True) -> tuple[str, ...]:
        """The retrievers a spec means on this index (ValueError naming what is missing).

        ``auto``: the first combination of :data:`AUTO_ORDER` this index holds (only ``sparse`` unless the queries
        are ``text``: dense and BM25 retrieval encode text); ``hybrid``: every retriever the index holds, fused."""
        parsed = parse_retriever(spec)
        have = self.available_retrievers() if text else ("sparse",)
        if parsed == "auto":
            return next(combo for combo in AUTO_ORDER if set(combo) <= set(have))
        if parsed == "hybrid":
            if len(have) < 2:
                raise ValueError(f"hybrid retrieval fuses several retrievers, and index {self.index_dir} has only "
                                 "sparse vectors; add dense vectors with `lsr index --add-dense` (or a BM25 field)")
            return have
        for name in parsed:
            if name == "dense":
                self.require_dense()
            elif name == "bm25":
                self.require_bm25()
        return parsed

    def label_free_weights(self, retriever: str = "hybrid", method: str = "pseudo", *,
                           queries: int = DEFAULT_PSEUDO_QUERIES, seed: int = 0, depth: int = 100) -> dict[str, float]:
        """Fusion weights for this collection chosen without relevance labels (cached per engine).

        ``pseudo``: :func:`lsr.fusion.pseudo_query_weights` on ``queries`` known-item pseudo-queries drawn from the
        index's own documents (:func:`lsr.fusion.sample_pseudo_queries`, ``seed``); ``agreement``:
        :func:`lsr.fusion.agreement_weights` on the same pseudo-queries. Each retriever answers them to ``depth``."""
        if method not in LABEL_FREE_METHODS:
            raise ValueError(f"unknown label-free weighting {method!r}; available: {', '.join(LABEL_FREE_METHODS)}")
        names = self.resolve_retriever(retriever)
        if len(names) < 2:
            raise ValueError(f"retriever {retriever!r} is {names[0]} alone on {self.index_dir}: nothing to weigh")
        key = (names, method, queries, seed, depth)
        if key not in self._label_free:
            from lsr.pipeline import document_text

            pairs = sample_pseudo_queries(self.index.num_docs, lambda docno: document_text(self.docs.get(docno)),
                                          queries, seed)
            texts = [text for _, text in pairs]
            runs = {name: [(np.array([h.docno for h in hits], np.int64), np.array([h.score for h in hits]))
                           for hits in self.retrieve(texts, depth, retriever=name)] for name in names}
            self._label_free[key] = (pseudo_query_weights(runs, [docno for docno, _ in pairs]) if method == "pseudo"
                                     else agreement_weights(runs))
        return self._label_free[key]

    # ------------------------------------------------------------------ search
    def search(self, query: Query, k: int = 10, mode: str = "exact", *, retriever: str = DEFAULT_RETRIEVER,
               fusion=None, alpha: float | None = None, weights: dict[str, float] | str | None = None,
               filter: dict | None = None, query_encoder: str = DEFAULT_QUERY_ENCODER,
               query_runtime: str | None = None, **params) -> list[Hit]:
        """Top-k documents for one query; ``params`` are the sparse mode's knobs (e.g. BMP's alpha/beta).

        ``retriever``: ``auto`` (default: the best measured combination this index holds, see :data:`AUTO_ORDER`),
        ``hybrid`` (all of the index's retrievers fused), a single retriever (``sparse``, ``dense``, ``bm25``) or a
        combination (``sparse+dense``, ``dense+bm25``, ...) fused with :mod:`lsr.fusion`: ``fusion`` is
        ``"convex"``, ``"rrf"`` or a :class:`lsr.fusion.FusionConfig`, ``weights`` each retriever's weight or
        ``"pseudo"``/``"agreement"`` to choose them on this collection without labels (:meth:`label_free_weights`;
        ``alpha``: the sparse weight of sparse+dense; with the sparse retriever alone, BMP's alpha). ``filter`` keeps documents whose metadata equals every
        ``{field: value}``. ``query_encoder`` encodes text for the sparse side: ``model`` (SPLADE) or
        ``inference-free`` (tokenizer + the index's IDF table, no model). ``query_runtime`` (``torch``, ``onnx``,
        ``onnx-int8``; default: the engine's) runs the models on text queries.
        """
        return self.search_batch([query], k, mode, retriever=retriever, fusion=fusion, alpha=alpha, weights=weights,
                                 filter=filter, query_encoder=query_encoder, query_runtime=query_runtime, **params)[0]

    def search_batch(
        self, queries: Sequence[Query], k: int = 10, mode: str = "exact", threads: int | None = None, *,
        retriever: str = DEFAULT_RETRIEVER, fusion=None, alpha: float | None = None,
        weights: dict[str, float] | str | None = None, filter: dict | None = None,
        query_encoder: str = DEFAULT_QUERY_ENCODER, query_runtime: str | None = None, **params
    ) -> list[list[Hit]]:
        """Top-k documents for many queries (text queries encoded in batches, search parallel over queries)."""
        check_query_encoder(query_encoder)
        names = self.resolve_retriever(retriever, text=all(isinstance(q, str) for q in queries))
        if names == ("sparse",) and alpha is not None:  # nothing to fuse: alpha is the sparse mode's knob (BMP)
            params, alpha = {**params, "alpha": alpha}, None
        if names != ("sparse",) or fusion is not None or alpha is not None or weights is not None or filter:
            sparse = dense = None
            if "sparse" in names and (query_encoder != DEFAULT_QUERY_ENCODER or query_runtime):
                sparse = self.query_vectors(queries, query_encoder, query_runtime)
            if "dense" in names and query_runtime:
                dense = self.dense_query_vectors(queries, query_runtime)
            return self.retrieve(queries, k, mode=mode, retriever="+".join(names), fusion=fusion, alpha=alpha,
                                 weights=weights, filter=filter, threads=threads, params=params,
                                 sparse_vectors=sparse, dense_vectors=dense)
        check_search_args(k, mode)
        vectors = self.query_vectors(queries, query_encoder, query_runtime)
        if len(vectors) == 1:  # the single-query kernel: no parallel region, so concurrent callers scale over threads
            results = [self.index.search(*vectors[0], k=k, mode=mode, **params)]
        else:
            results = self.index.search_batch(vectors, k=k, threads=threads, mode=mode, **params)
        return [self._hits(ids, scores) for ids, scores in results]

    def retrieve(
        self, queries: Sequence[Query], k: int = 10, *, mode: str = "exact", retriever: str = DEFAULT_RETRIEVER,
        fusion: FusionConfig | str | None = None, alpha: float | None = None, normalization: str | None = None,
        depth: int | None = None, rrf_k: int | None = None, weights: dict[str, float] | str | None = None,
        filter: dict[str, Any] | None = None, sparse_vectors: Sequence[Vector] | None = None,
        dense_vectors: np.ndarray | None = None, threads: int | None = None, params: dict[str, Any] | None = None,
    ) -> list[list[HybridHit]]:
        """Top-k of each query with a retriever spec (see :meth:`search`), hits with per-retriever scores.

        ``filter`` keeps only documents whose metadata equals every given ``{field: value}`` (the ranking is
        deepened until k documents pass or the collection is exhausted). ``sparse_vectors`` / ``dense_vectors`` are
        precomputed query vectors (e.g. encoded in a micro-batch by the server); otherwise text queries are encoded
        here. ``params`` are the sparse mode's knobs (the BM25 field is searched in the same mode).
        """
        text = all(isinstance(q, str) for q in queries)
        names = self.resolve_retriever(retriever, text=text)
        check_search_args(k, mode)
        params = params or {}
        if isinstance(weights, str):  # a label-free method: weights chosen on this collection's pseudo-queries
            weights = self.label_free_weights("+".join(names), weights) if len(names) > 1 else None
        config = FusionConfig.make(fusion, alpha=alpha, normalization=normalization, depth=depth, rrf_k=rrf_k,
                                   weights=weights)
        if len(names) > 1:
            config.weights_for(names)  # weights that do not fit the retrievers fail before any search
        if not text and set(names) & {"dense", "bm25"}:
            raise ValueError(f"retriever {'+'.join(names)} needs text queries (dense and BM25 retrieval encode text)")
        if not len(queries):
            return []
        if "sparse" in names and sparse_vectors is None:
            sparse_vectors = self.query_vectors(queries)
        if "dense" in names:
            self.require_dense()
            if dense_vectors is None:
                dense_vectors = self.dense_query_vectors(queries)
            dense_vectors = np.asarray(dense_vectors, np.float32)
        batch = QueryBatch(list(queries), None if "sparse" not in names else list(sparse_vectors),
                           None if "dense" not in names else dense_vectors)

        def rank(kk: int, rows: list[int]) -> list[list[HybridHit]]:
            return self._rank(kk, mode, names, config, params, threads, batch.rows(rows))

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

    def _rank(self, k: int, mode: str, names: tuple[str, ...], config: FusionConfig, params: dict,
              threads: int | None, batch: "QueryBatch") -> list[list[HybridHit]]:
        """Each retriever's top-k' (k' = the fusion depth when fusing), fused with exact scores where a retriever
        can score the documents it did not return."""
        depth_k = max(k, config.depth) if len(names) > 1 else k
        lists = {name: RETRIEVER_REGISTRY[name].candidates(self, batch, depth_k, mode, params, threads)
                 for name in names}
        out = []
        for i in range(len(batch)):
            if len(names) == 1:
                ids, scores = lists[names[0]][i]
                out.append(self._hybrid_hits(ids, scores, {names[0]: scores}))
                continue
            scorers = {name: RETRIEVER_REGISTRY[name].scorer(self, batch, i) for name in names}
            fused = fuse({name: lists[name][i] for name in names}, config, k, scorers)
            out.append(self._hybrid_hits(fused.docs, fused.scores, fused.retriever_scores))
        return out

    def _hits(self, ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
        headers = self.docs.headers([int(i) for i in ids])
        return [Hit(headers[int(i)][0], float(s), headers[int(i)][1], int(i)) for i, s in zip(ids, scores)]

    def _hybrid_hits(self, ids, scores, per_retriever: dict[str, np.ndarray]) -> list[HybridHit]:
        ids = [int(i) for i in ids]
        headers = self.docs.headers(ids)
        hits = []
        for j, docno in enumerate(ids):
            own = {f"{name}_score": None if np.isnan(values[j]) else float(values[j])
                   for name, values in per_retriever.items()}
            hits.append(HybridHit(headers[docno][0], float(scores[j]), headers[docno][1], docno, **own))
        return hits

    # ------------------------------------------------------------------ documents
    def document(self, doc_id: str) -> Document:
        """A stored document by external id (KeyError if unknown)."""
        return self.docs.get(self.docs.docno(doc_id))

    def document_vector(self, doc_id: str, top: int | None = None) -> dict[str, float]:
        """A document's indexed (quantized) term weights, decoded to tokens."""
        terms, weights = self.index.doc_vector(self.docs.docno(doc_id))
        return self.encoder.decode(terms, weights, top)


# ---------------------------------------------------------------------- the retriever registry
@dataclass
class QueryBatch:
    """Queries with what each retriever reads: the text, sparse vectors, dense vectors [n, dim]."""

    queries: list[Query]
    sparse: list[Vector] | None = None
    dense: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.queries)

    def rows(self, rows: list[int]) -> "QueryBatch":
        return QueryBatch([self.queries[i] for i in rows], None if self.sparse is None else [self.sparse[i] for i in rows],
                          None if self.dense is None else self.dense[rows])


def _sparse_candidates(searcher: Searcher, batch: QueryBatch, k: int, mode: str, params: dict,
                       threads: int | None) -> list[Candidates]:
    if len(batch) == 1:  # the single-query kernel: no parallel region, so concurrent callers scale over threads
        return [searcher.index.search(*batch.sparse[0], k=k, mode=mode, **params)]
    return searcher.index.search_batch(list(batch.sparse), k=k, threads=threads, mode=mode, **params)


def _dense_candidates(searcher: Searcher, batch: QueryBatch, k: int, mode: str, params: dict,
                      threads: int | None) -> list[Candidates]:
    return searcher.dense.search_batch(batch.dense, k=k)


def _bm25_candidates(searcher: Searcher, batch: QueryBatch, k: int, mode: str, params: dict,
                     threads: int | None) -> list[Candidates]:
    return searcher._bm25_rankings(searcher.bm25_query_vectors(batch.queries), k, mode, params, threads)


def _sparse_scorer(searcher: Searcher, batch: QueryBatch, i: int) -> Scorer:
    return lambda docs: searcher.index.score_docs(batch.sparse[i], docs)


def _dense_scorer(searcher: Searcher, batch: QueryBatch, i: int) -> Scorer:
    return lambda docs: searcher.dense.score(batch.dense[i], docs).astype(np.float64)


def _bm25_scorer(searcher: Searcher, batch: QueryBatch, i: int) -> Scorer:
    vector = searcher.bm25_query_vectors([batch.queries[i]])[0]
    return lambda docs: searcher.require_bm25().index.score_docs(vector, docs)


@dataclass(frozen=True)
class SingleRetriever:
    """A retriever that produces its own candidates: ``candidates(searcher, batch, k, mode, params, threads)`` gives
    each query's top-k (doc numbers, scores); ``scorer(searcher, batch, i)`` the exact scorer of query i's
    documents, or None (a fused candidate it did not return then counts as its worst retrieved score)."""

    candidates: Callable[..., list[Candidates]]
    scorer: Callable[[Searcher, QueryBatch, int], Scorer | None]


RETRIEVER_REGISTRY: dict[str, SingleRetriever] = {
    "sparse": SingleRetriever(_sparse_candidates, _sparse_scorer),
    "dense": SingleRetriever(_dense_candidates, _dense_scorer),
    "bm25": SingleRetriever(_bm25_candidates, _bm25_scorer),
}
