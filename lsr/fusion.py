"""Hybrid ranking: sparse (SPLADE) + dense retrieval fused into one list.

Every ranking rule for hybrid search lives here and is shared by the Python API (``Engine.search(...,
retriever="hybrid")``), the HTTP server and evaluation:

* candidates are the union of the sparse top-``depth`` and the dense top-``depth`` (``depth`` is k');
* **RRF** (reciprocal rank fusion): ``sum over retrievers of 1 / (rrf_k + rank)``, rank counted from 1,
  a retriever that did not return the document contributes nothing (``rrf_k = 60`` by default);
* **convex** combination: ``alpha * norm(sparse) + (1 - alpha) * norm(dense)``. A candidate that only one
  retriever returned gets its exact score from the other one (both are cheap to score for a handful of
  documents), so no score is imputed. Normalisation statistics come from each retriever's own top-``depth``:

  - ``minmax``: ``(s - min) / (max - min)``
  - ``zscore``: ``(s - mean) / std``
  - ``tmm`` (theoretical min-max, Bruch et al., "An Analysis of Fusion Functions for Hybrid Retrieval",
    TOIS 2023): ``(s - inf_s) / (max - inf_s)`` where ``inf_s`` is the lowest score the scoring function can
    give (0 for SPLADE's non-negative dot products, -1 for cosine similarity of normalised embeddings) and
    ``max`` the best score retrieved for the query.

Ties are broken by lower internal document number, as everywhere else in the index.
The defaults (:data:`DEFAULT_FUSION` …): convex, ``tmm``, ``alpha = 0.25``, ``depth = 20`` (see the note at them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from lsr.engine import Hit, _check_search_args

if TYPE_CHECKING:  # pragma: no cover
    from lsr.engine import Engine, Query

RETRIEVERS = ("sparse", "dense", "hybrid")
FUSIONS = ("convex", "rrf")
NORMALIZATIONS = ("tmm", "minmax", "zscore")
THEORETICAL_MIN = {"sparse": 0.0, "dense": -1.0}

# Convex combination with theoretical-min-max normalisation (the normalisation Bruch et al. recommend: its lower
# bounds are fixed, so a weak retriever's scores stay compressed instead of being stretched to the same spread as
# a strong one's), with alpha and k' the best of that normalisation on scifact's train split by eval/tune_fusion.py
# (``best_per_method["convex-tmm"]`` in eval/results/fusion-scifact.json: train nDCG@10 0.719, vs 0.721 for the
# overall best, z-score alpha 0.45). The overall best lost to sparse alone on wn-gcide (0.208 vs 0.212, where dense
# is far weaker: 0.128); this one beats sparse and dense on every shared collection (eval/RESULTS.md).
DEFAULT_FUSION = "convex"
DEFAULT_ALPHA = 0.25
DEFAULT_NORMALIZATION = "tmm"
DEFAULT_DEPTH = 20
DEFAULT_RRF_K = 60
MAX_DEPTH = 10_000


@dataclass(frozen=True)
class FusionConfig:
    """How to fuse sparse and dense results."""

    method: str = DEFAULT_FUSION
    alpha: float = DEFAULT_ALPHA  # weight of the sparse side in a convex combination
    normalization: str = DEFAULT_NORMALIZATION
    depth: int = DEFAULT_DEPTH  # k': candidates taken from each retriever (at least k)
    rrf_k: int = DEFAULT_RRF_K

    def __post_init__(self) -> None:
        if self.method not in FUSIONS:
            raise ValueError(f"unknown fusion {self.method!r}; available: {', '.join(FUSIONS)}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}; available: {', '.join(NORMALIZATIONS)}")
        if not 1 <= int(self.depth) <= MAX_DEPTH:
            raise ValueError(f"depth must be between 1 and {MAX_DEPTH}, got {self.depth}")
        if int(self.rrf_k) < 0:
            raise ValueError(f"rrf_k must be >= 0, got {self.rrf_k}")

    @classmethod
    def make(cls, fusion: "FusionConfig | str | None" = None, **overrides) -> "FusionConfig":
        """A config from a method name or an existing config, with non-None ``overrides`` applied."""
        base = fusion if isinstance(fusion, FusionConfig) else cls(method=fusion or DEFAULT_FUSION)
        changes = {key: value for key, value in overrides.items() if value is not None}
        return replace(base, **changes) if changes else base

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------- pure fusion functions
def normalize(scores: np.ndarray, method: str, reference: np.ndarray | None = None,
              theoretical_min: float = 0.0) -> np.ndarray:
    """Normalise ``scores`` with statistics of ``reference`` (default: the scores themselves)."""
    scores = np.asarray(scores, np.float64)
    ref = scores if reference is None else np.asarray(reference, np.float64)
    if not ref.size:
        return np.zeros_like(scores)
    if method == "minmax":
        lo, hi = ref.min(), ref.max()
        return (scores - lo) / (hi - lo) if hi > lo else np.where(scores >= hi, 1.0, 0.0)
    if method == "zscore":
        std = ref.std()
        return (scores - ref.mean()) / std if std > 0 else np.zeros_like(scores)
    if method == "tmm":
        hi = ref.max()
        return (scores - theoretical_min) / (hi - theoretical_min) if hi > theoretical_min else np.zeros_like(scores)
    raise ValueError(f"unknown normalization {method!r}; available: {', '.join(NORMALIZATIONS)}")


def rrf(rankings: Sequence[np.ndarray], rrf_k: int = DEFAULT_RRF_K) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion of ranked doc-number lists: (union of docs, fused scores), unordered."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, doc in enumerate(np.asarray(ranking).tolist(), 1):
            fused[doc] = fused.get(doc, 0.0) + 1.0 / (rrf_k + rank)
    docs = np.fromiter(fused.keys(), np.int64, len(fused))
    return docs, np.fromiter(fused.values(), np.float64, len(fused))


def convex(sparse: np.ndarray, dense: np.ndarray, alpha: float, normalization: str,
           sparse_ref: np.ndarray, dense_ref: np.ndarray) -> np.ndarray:
    """``alpha * norm(sparse) + (1 - alpha) * norm(dense)`` (each side normalised by its own retrieved set)."""
    s = normalize(sparse, normalization, sparse_ref, THEORETICAL_MIN["sparse"])
    d = normalize(dense, normalization, dense_ref, THEORETICAL_MIN["dense"])
    return alpha * s + (1.0 - alpha) * d


@dataclass
class Fused:
    """A fused ranking: doc numbers with fused, sparse and dense scores (NaN where a side has no score)."""

    docs: np.ndarray  # int64
    scores: np.ndarray  # float64
    sparse: np.ndarray
    dense: np.ndarray


def fuse(sparse: tuple[np.ndarray, np.ndarray], dense: tuple[np.ndarray, np.ndarray], config: FusionConfig,
         k: int, score_sparse: Callable[[np.ndarray], np.ndarray] | None = None,
         score_dense: Callable[[np.ndarray], np.ndarray] | None = None) -> Fused:
    """Fuse one query's sparse and dense top lists ((doc numbers, scores), best first) into the top ``k``.

    ``score_sparse``/``score_dense`` give exact scores of arbitrary documents; they fill in the side a
    candidate is missing from (convex fusion). Without them a missing side counts as that side's worst
    retrieved score.
    """
    s_docs, s_scores = np.asarray(sparse[0], np.int64), np.asarray(sparse[1], np.float64)
    d_docs, d_scores = np.asarray(dense[0], np.int64), np.asarray(dense[1], np.float64)
    docs = np.union1d(s_docs, d_docs)
    s_all = _scatter(docs, s_docs, s_scores)
    d_all = _scatter(docs, d_docs, d_scores)
    if config.method == "rrf":
        rrf_docs, rrf_scores = rrf([s_docs, d_docs], config.rrf_k)
        order = np.argsort(rrf_docs)
        fused = rrf_scores[order]  # aligned with docs (both sorted unions)
    else:
        s_all = _fill(docs, s_all, score_sparse, s_scores)
        d_all = _fill(docs, d_all, score_dense, d_scores)
        fused = convex(s_all, d_all, config.alpha, config.normalization, s_scores, d_scores)
    top = np.lexsort((docs, -fused))[:k]
    return Fused(docs[top], fused[top], s_all[top], d_all[top])


def _scatter(docs: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    out = np.full(len(docs), np.nan)
    out[np.searchsorted(docs, ids)] = scores
    return out


def _fill(docs: np.ndarray, values: np.ndarray, scorer, retrieved: np.ndarray) -> np.ndarray:
    missing = np.isnan(values)
    if missing.any():
        values = values.copy()
        if scorer is not None:
            values[missing] = scorer(docs[missing])
        else:
            values[missing] = retrieved.min() if retrieved.size else 0.0
    return values


# ---------------------------------------------------------------------- retrieval over an engine
@dataclass
class HybridHit(Hit):
    """A search result with the per-retriever scores behind its score (None: that retriever did not score it)."""

    sparse_score: float | None = None
    dense_score: float | None = None


def check_retriever(retriever: str) -> None:
    if retriever not in RETRIEVERS:
        raise ValueError(f"unknown retriever {retriever!r}; available: {', '.join(RETRIEVERS)}")


def sparse_scores(engine: "Engine", vector: tuple[np.ndarray, np.ndarray], docnos: np.ndarray) -> np.ndarray:
    """Exact sparse scores of given documents, computed exactly like the index scores them (quantized query)."""
    return engine.index.score_docs(vector, docnos)


def search_many(
    engine: "Engine", queries: Sequence["Query"], k: int = 10, *, mode: str = "exact", retriever: str = "sparse",
    fusion: FusionConfig | str | None = None, alpha: float | None = None, normalization: str | None = None,
    depth: int | None = None, rrf_k: int | None = None, filter: dict[str, Any] | None = None,
    sparse_vectors: Sequence | None = None, dense_vectors: np.ndarray | None = None, threads: int | None = None,
    params: dict[str, Any] | None = None,
) -> list[list[HybridHit]]:
    """Top-k of each query with the sparse, dense or hybrid retriever (the shared entry point).

    ``filter`` keeps only documents whose metadata equals every given ``{field: value}`` (the ranking is
    deepened until k documents pass or the collection is exhausted). ``sparse_vectors`` / ``dense_vectors`` are
    precomputed query vectors (e.g. encoded in a micro-batch by the server); otherwise text queries are encoded
    here. ``params`` are the sparse mode's knobs.
    """
    check_retriever(retriever)
    _check_search_args(k, mode)
    params = params or {}
    config = FusionConfig.make(fusion, alpha=alpha, normalization=normalization, depth=depth, rrf_k=rrf_k)
    if not len(queries):
        return []
    if retriever in ("sparse", "hybrid") and sparse_vectors is None:
        sparse_vectors = engine.query_vectors(queries)
    if retriever in ("dense", "hybrid"):
        engine.require_dense()
        if dense_vectors is None:
            dense_vectors = engine.dense_query_vectors(queries)
        dense_vectors = np.asarray(dense_vectors, np.float32)

    def rank(kk: int, rows: list[int]) -> list[list[HybridHit]]:
        return _rank(engine, kk, mode, retriever, config, params, threads,
                     None if sparse_vectors is None else [sparse_vectors[i] for i in rows],
                     None if dense_vectors is None else dense_vectors[rows])

    rows = list(range(len(queries)))
    if not filter:
        return rank(k, rows)
    num_docs = engine.index.num_docs
    results: list[list[HybridHit]] = [[] for _ in rows]
    fetch, pending = min(num_docs, max(4 * k, 100)), rows
    while pending:
        ranked = rank(fetch, pending)
        again = []
        for row, hits in zip(pending, ranked):
            passed = [h for h in hits if matches_filter(engine.docs.get(h.docno).metadata, filter)]
            if len(passed) >= k or len(hits) < fetch or fetch >= num_docs:
                results[row] = passed[:k]
            else:
                again.append(row)
        pending, fetch = again, min(num_docs, fetch * 4)
    return results


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


def _rank(engine: "Engine", k: int, mode: str, retriever: str, config: FusionConfig, params: dict,
          threads: int | None, sparse_vectors, dense_vectors) -> list[list[HybridHit]]:
    n = len(sparse_vectors if sparse_vectors is not None else dense_vectors)
    depth_k = max(k, config.depth) if retriever == "hybrid" else k
    sparse_results = dense_results = None
    if retriever in ("sparse", "hybrid"):
        if n == 1:  # the single-query kernel: no parallel region, so concurrent callers scale over threads
            sparse_results = [engine.index.search(*sparse_vectors[0], k=depth_k, mode=mode, **params)]
        else:
            sparse_results = engine.index.search_batch(list(sparse_vectors), k=depth_k, threads=threads, mode=mode,
                                                       **params)
    if retriever in ("dense", "hybrid"):
        dense_results = engine.dense.search_batch(dense_vectors, k=depth_k)
    out = []
    for i in range(n):
        if retriever == "sparse":
            ids, scores = sparse_results[i]
            out.append(_hits(engine, ids, scores, scores, None))
        elif retriever == "dense":
            ids, scores = dense_results[i]
            out.append(_hits(engine, ids, scores, None, scores))
        else:
            vector, qvec = sparse_vectors[i], dense_vectors[i]
            fused = fuse(sparse_results[i], dense_results[i], config, k,
                         score_sparse=lambda docs, v=vector: sparse_scores(engine, v, docs),
                         score_dense=lambda docs, q=qvec: engine.dense.score(q, docs).astype(np.float64))
            out.append(_hits(engine, fused.docs, fused.scores, fused.sparse, fused.dense))
    return out


def search(engine: "Engine", query: "Query", k: int = 10, **kwargs) -> list[HybridHit]:
    """:func:`search_many` for one query (``sparse_vector`` / ``dense_vector`` may be given precomputed)."""
    sparse_vector = kwargs.pop("sparse_vector", None)
    dense_vector = kwargs.pop("dense_vector", None)
    return search_many(
        engine, [query], k,
        sparse_vectors=None if sparse_vector is None else [sparse_vector],
        dense_vectors=None if dense_vector is None else np.asarray(dense_vector, np.float32)[None, :],
        **kwargs,
    )[0]


def _hits(engine: "Engine", ids, scores, sparse, dense) -> list[HybridHit]:
    ids = [int(i) for i in ids]
    headers = engine.docs.headers(ids)
    hits = []
    for j, docno in enumerate(ids):
        hits.append(HybridHit(
            headers[docno][0], float(scores[j]), headers[docno][1], docno,
            sparse_score=None if sparse is None or np.isnan(sparse[j]) else float(sparse[j]),
            dense_score=None if dense is None or np.isnan(dense[j]) else float(dense[j]),
        ))
    return hits
