"""Hybrid ranking: sparse (SPLADE) and dense candidate lists fused into one list.

Pure ranking over arrays: no index, no engine. Every ranking rule for hybrid search lives here; the search layer
(:meth:`lsr.searcher.Searcher.retrieve`, behind ``Engine.search(..., retriever="hybrid")``, the HTTP server and
evaluation) asks each side for its candidates and passes the sides' exact scoring functions in:

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

import numpy as np

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
