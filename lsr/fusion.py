"""Hybrid ranking: the candidate lists of any set of retrievers (SPLADE ``sparse``, ``dense``, ``bm25``) fused
into one list, and fusion weights chosen per collection without relevance labels.

Pure ranking over arrays: no index, no engine. Every ranking rule for hybrid search lives here; the search layer
(:meth:`lsr.searcher.Searcher.retrieve`, behind ``Engine.search(..., retriever="sparse+dense+bm25")``, the HTTP
server and evaluation) asks each retriever for its candidates and passes the retrievers' exact scoring functions in:

* candidates are the union of every retriever's top max(k, k') (``depth`` is k');
* **RRF** (reciprocal rank fusion): ``sum over retrievers of w_r / (rrf_k + rank)``, rank counted from 1, a
  retriever that did not return the document contributes nothing (``rrf_k = 60``, every ``w_r = 1`` unless
  weights are given);
* **convex** combination: ``sum over retrievers of w_r * norm_r(score)`` with weights summing to 1. A candidate
  that a retriever did not return gets its exact score from that retriever when the caller can compute it (the
  engine scores SPLADE, dense and BM25 exactly), else that retriever's worst retrieved score. Normalisation
  statistics come from each retriever's own top-k' however many results are asked for, so a document's fused
  score does not depend on k:

  - ``minmax``: ``(s - min) / (max - min)``
  - ``zscore``: ``(s - mean) / std``
  - ``tmm`` (theoretical min-max, Bruch et al., "An Analysis of Fusion Functions for Hybrid Retrieval",
    TOIS 2023): ``(s - inf_s) / (max - inf_s)`` where ``inf_s`` is the lowest score the scoring function can
    give (:data:`THEORETICAL_MIN`: 0 for SPLADE's non-negative dot products and for BM25, -1 for cosine
    similarity of normalised embeddings) and ``max`` the best score retrieved for the query.

Defaults (no tuning; chosen in eval/fusion_study.py on the shared collections, eval/results/fusion-study.md):
convex, ``minmax``, k' = 100, equal weights. Min-max met the targets on the most collections (nDCG@10 >= the
best single retriever, Recall@100 >= each); TMM's theoretical minimum of -1 for cosine squeezes dense scores into
the top half of [0, 1] and under-weights dense; k' = 100 covers the usual k, so the top-k ranking is the same
whatever k is asked for up to 100.

Weights, in this order: explicit ``weights``; ``alpha`` for sparse+dense (the sparse weight); else
:data:`DEFAULT_WEIGHTS` (equal weights: nothing tuned). :func:`pseudo_query_weights` chooses weights per
collection without labels from known-item pseudo-queries (:func:`sample_pseudo_queries`), and
:func:`agreement_weights` from how much the retrievers agree; eval/fusion_study.py measures both against the
defaults on the shared collections (eval/results/fusion-study.md).

Ties are broken by lower internal document number, as everywhere else in the index.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

FUSIONS = ("convex", "rrf")
NORMALIZATIONS = ("tmm", "minmax", "zscore")
THEORETICAL_MIN = {"sparse": 0.0, "dense": -1.0, "bm25": 0.0}

DEFAULT_FUSION = "convex"
DEFAULT_NORMALIZATION = "minmax"
DEFAULT_DEPTH = 100
DEFAULT_RRF_K = 60
MAX_DEPTH = 10_000
# Relative weight of each retriever in the no-tuning default (normalised over the retrievers being fused).
DEFAULT_WEIGHTS: dict[str, float] = {}  # empty: equal weights

Candidates = tuple[np.ndarray, np.ndarray]  # (doc numbers, scores), best first
Scorer = Callable[[np.ndarray], np.ndarray]  # doc numbers -> exact scores


@dataclass(frozen=True)
class FusionConfig:
    """How to fuse the candidate lists of several retrievers."""

    method: str = DEFAULT_FUSION
    alpha: float | None = None  # sparse+dense: weight of the sparse side (shorthand for weights)
    normalization: str = DEFAULT_NORMALIZATION
    depth: int = DEFAULT_DEPTH  # k': candidates taken from each retriever (at least k)
    rrf_k: int = DEFAULT_RRF_K
    weights: Mapping[str, float] | None = field(default=None, hash=False)  # retriever -> relative weight

    def __post_init__(self) -> None:
        if self.method not in FUSIONS:
            raise ValueError(f"unknown fusion {self.method!r}; available: {', '.join(FUSIONS)}")
        if self.alpha is not None and not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}; available: {', '.join(NORMALIZATIONS)}")
        if not 1 <= int(self.depth) <= MAX_DEPTH:
            raise ValueError(f"depth must be between 1 and {MAX_DEPTH}, got {self.depth}")
        if int(self.rrf_k) < 0:
            raise ValueError(f"rrf_k must be >= 0, got {self.rrf_k}")
        if self.weights is not None:
            bad = {name: w for name, w in self.weights.items() if not float(w) >= 0.0}
            if bad or not any(float(w) > 0 for w in self.weights.values()):
                raise ValueError(f"fusion weights must be >= 0 and not all 0, got {dict(self.weights)}")

    @classmethod
    def make(cls, fusion: "FusionConfig | str | None" = None, **overrides) -> "FusionConfig":
        """A config from a method name or an existing config, with non-None ``overrides`` applied."""
        base = fusion if isinstance(fusion, FusionConfig) else cls(method=fusion or DEFAULT_FUSION)
        changes = {key: value for key, value in overrides.items() if value is not None}
        return replace(base, **changes) if changes else base

    def weights_for(self, names: Sequence[str]) -> dict[str, float]:
        """Each retriever's weight: normalised to sum 1 for convex fusion, as given (default 1) for RRF."""
        if self.weights is not None:
            missing = [n for n in names if n not in self.weights]
            if missing:
                raise ValueError(f"fusion weights give no weight for {', '.join(missing)} "
                                 f"(weights: {dict(self.weights)})")
            raw = {n: float(self.weights[n]) for n in names}
        elif self.alpha is not None and sorted(names) == ["dense", "sparse"]:
            raw = {"sparse": float(self.alpha), "dense": 1.0 - float(self.alpha)}
        elif self.alpha is not None:
            raise ValueError(f"alpha weighs sparse against dense; for {'+'.join(names)} give weights instead")
        else:
            raw = {n: DEFAULT_WEIGHTS.get(n, 1.0) for n in names}
        if self.method == "rrf":
            return raw
        total = sum(raw.values())
        if total <= 0:
            raise ValueError(f"fusion weights of {'+'.join(names)} are all 0")
        return {n: w / total for n, w in raw.items()}

    def to_dict(self) -> dict:
        return {"method": self.method, "alpha": self.alpha, "normalization": self.normalization,
                "depth": self.depth, "rrf_k": self.rrf_k,
                "weights": None if self.weights is None else dict(self.weights)}


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


def rrf(rankings: Sequence[np.ndarray], rrf_k: int = DEFAULT_RRF_K,
        weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(Weighted) reciprocal rank fusion of ranked doc-number lists: (union of docs, fused scores), unordered."""
    fused: dict[int, float] = {}
    for r, ranking in enumerate(rankings):
        weight = 1.0 if weights is None else float(weights[r])
        for rank, doc in enumerate(np.asarray(ranking).tolist(), 1):
            fused[doc] = fused.get(doc, 0.0) + weight / (rrf_k + rank)
    docs = np.fromiter(fused.keys(), np.int64, len(fused))
    return docs, np.fromiter(fused.values(), np.float64, len(fused))


def convex(scores: Mapping[str, np.ndarray], weights: Mapping[str, float], normalization: str,
           references: Mapping[str, np.ndarray]) -> np.ndarray:
    """``sum_r weights[r] * norm(scores[r])``, each retriever normalised by its own retrieved scores."""
    total = None
    for name, values in scores.items():
        part = weights[name] * normalize(values, normalization, references[name], THEORETICAL_MIN.get(name, 0.0))
        total = part if total is None else total + part
    return total


@dataclass
class Fused:
    """A fused ranking: doc numbers, fused scores, and each retriever's score (NaN where it has none)."""

    docs: np.ndarray  # int64
    scores: np.ndarray  # float64
    retriever_scores: dict[str, np.ndarray]


def fuse(lists: Mapping[str, Candidates], config: FusionConfig, k: int,
         scorers: Mapping[str, Scorer | None] | None = None) -> Fused:
    """Fuse one query's top lists (retriever name -> (doc numbers, scores), best first) into the top ``k``.

    ``scorers[name]`` gives exact scores of arbitrary documents for that retriever; they fill in the retrievers a
    candidate is missing from (convex fusion). Without one a missing score counts as that retriever's worst
    retrieved score.
    """
    names = list(lists)
    ids = {n: np.asarray(lists[n][0], np.int64) for n in names}
    retrieved = {n: np.asarray(lists[n][1], np.float64) for n in names}
    docs = np.unique(np.concatenate([ids[n] for n in names])) if names else np.zeros(0, np.int64)
    per = {n: _scatter(docs, ids[n], retrieved[n]) for n in names}
    reference = {n: retrieved[n][:config.depth] for n in names}  # the statistics of each top-k', whatever k is
    weights = config.weights_for(names)
    if config.method == "rrf":
        rrf_docs, rrf_scores = rrf([ids[n] for n in names], config.rrf_k, [weights[n] for n in names])
        fused = rrf_scores[np.argsort(rrf_docs)]  # aligned with docs (both sorted unions)
    else:
        per = {n: _fill(docs, per[n], (scorers or {}).get(n), retrieved[n]) for n in names}
        fused = convex(per, weights, config.normalization, reference)
    top = np.lexsort((docs, -fused))[:k]
    return Fused(docs[top], fused[top], {n: per[n][top] for n in names})


def _scatter(docs: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    out = np.full(len(docs), np.nan)
    out[np.searchsorted(docs, ids)] = scores
    return out


def _fill(docs: np.ndarray, values: np.ndarray, scorer: Scorer | None, retrieved: np.ndarray) -> np.ndarray:
    missing = np.isnan(values)
    if missing.any():
        values = values.copy()
        if scorer is not None:
            values[missing] = scorer(docs[missing])
        else:
            values[missing] = retrieved.min() if retrieved.size else 0.0
    return values


# ---------------------------------------------------------------------- label-free weights
# Known-item pseudo-queries (Azzopardi, de Rijke & Balog, "Building simulated queries for known-item topics",
# SIGIR 2007): a query is a few words taken from one document, and that document is its one relevant answer.
# Sampled from the collection itself, they measure how well each weighting finds a collection's documents without
# any relevance label and without looking at the test queries.
DEFAULT_PSEUDO_QUERIES = 200
PSEUDO_QUERY_WORDS = (4, 10)
WEIGHT_STEP = 0.1
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")


def pseudo_query(text: str, rng: random.Random, words: tuple[int, int] = PSEUDO_QUERY_WORDS) -> str | None:
    """A known-item pseudo-query from a document's text: a random run of ``words[0]..words[1]`` consecutive words
    of one of its sentences (None if the document has fewer than ``words[0]`` words)."""
    sentences = [s.split() for s in _SENTENCE_END.split(text)]
    long_enough = [s for s in sentences if len(s) >= words[0]]
    if not long_enough:
        whole = text.split()
        if len(whole) < words[0]:
            return None
        long_enough = [whole]
    sentence = long_enough[rng.randrange(len(long_enough))]
    length = min(len(sentence), rng.randint(*words))
    start = rng.randrange(len(sentence) - length + 1)
    return " ".join(sentence[start:start + length])


def sample_pseudo_queries(num_docs: int, text_of: Callable[[int], str], n: int = DEFAULT_PSEUDO_QUERIES,
                          seed: int = 0, words: tuple[int, int] = PSEUDO_QUERY_WORDS) -> list[tuple[int, str]]:
    """Up to ``n`` (doc number, pseudo-query) pairs from documents drawn at random (``seed``: the same pairs on the
    same collection every time); ``text_of(docno)`` is a document's title and text."""
    rng = random.Random(seed)
    order = rng.sample(range(num_docs), min(num_docs, 4 * n))  # spares for documents too short to quote
    pairs = []
    for docno in order:
        query = pseudo_query(text_of(docno), rng, words)
        if query is not None:
            pairs.append((docno, query))
            if len(pairs) == n:
                break
    return pairs


def weight_grid(names: Sequence[str], step: float = WEIGHT_STEP) -> np.ndarray:
    """Every weight vector on the simplex with the given step [points, len(names)], equal weights nearest first."""
    steps = round(1 / step)
    points = [c for c in itertools.product(range(steps + 1), repeat=len(names)) if sum(c) == steps]
    grid = np.asarray(points, np.float64) / steps
    uniform = np.full(len(names), 1.0 / len(names))
    order = sorted(range(len(grid)), key=lambda i: (round(float(np.sum((grid[i] - uniform) ** 2)), 12), points[i]))
    return grid[order]


def pseudo_query_weights(runs: Mapping[str, Sequence[Candidates]], targets: Sequence[int], *,
                         normalization: str = DEFAULT_NORMALIZATION, step: float = WEIGHT_STEP,
                         cutoff: int = 10) -> dict[str, float]:
    """Convex-fusion weights that best find each pseudo-query's source document: the point of
    :func:`weight_grid` with the highest mean reciprocal rank of ``targets[i]`` (cut at ``cutoff``) over the
    fused lists of ``runs[name][i]`` (retriever -> candidates of pseudo-query i). Ties go to the point nearest
    equal weights. Deterministic; needs no relevance label: the targets are where the queries were taken from.
    """
    names = list(runs)
    grid = weight_grid(names, step)
    total = np.zeros(len(grid))
    for i, target in enumerate(targets):
        lists = {n: runs[n][i] for n in names}
        docs = np.unique(np.concatenate([np.asarray(lists[n][0], np.int64) for n in names]))
        matrix = np.empty((len(docs), len(names)))
        for j, n in enumerate(names):
            ids, scores = np.asarray(lists[n][0], np.int64), np.asarray(lists[n][1], np.float64)
            column = _fill(docs, _scatter(docs, ids, scores), None, scores)
            matrix[:, j] = normalize(column, normalization, scores, THEORETICAL_MIN.get(n, 0.0))
        where = np.searchsorted(docs, target)
        if where == len(docs) or docs[where] != target:
            continue  # no retriever found it: no weighting does
        fused = matrix @ grid.T  # [docs, points]
        mine = fused[where]
        rank = 1 + (fused > mine).sum(axis=0) + ((fused == mine) & (docs < target)[:, None]).sum(axis=0)
        total += np.where(rank <= cutoff, 1.0 / rank, 0.0)
    best = int(np.argmax(total))  # first maximum: the grid is ordered nearest-equal first
    return {n: round(float(w), 6) for n, w in zip(names, grid[best])}


def agreement_weights(runs: Mapping[str, Sequence[Candidates]], cutoff: int = 10) -> dict[str, float]:
    """Weights from agreement between retrievers (Wu & Crestani, "Data fusion with estimated weights", CIKM 2002):
    a retriever's estimated quality is the mean overlap of its top ``cutoff`` with each other retriever's, over
    the queries of ``runs``; weights are those estimates normalised to sum 1 (equal when nothing overlaps)."""
    names = list(runs)
    queries = len(next(iter(runs.values()), []))
    tops = {n: [set(np.asarray(runs[n][i][0])[:cutoff].tolist()) for i in range(queries)] for n in names}
    quality = {}
    for n in names:
        overlaps = [len(tops[n][i] & tops[m][i]) / cutoff for m in names if m != n for i in range(queries)]
        quality[n] = float(np.mean(overlaps)) if overlaps else 1.0
    total = sum(quality.values())
    if total <= 0:
        return {n: round(1.0 / len(names), 6) for n in names}
    return {n: round(q / total, 6) for n, q in quality.items()}
