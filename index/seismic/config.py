"""Seismic's settings, named after the paper's knobs, and their checks.

Build (:class:`BuildConfig`, defaults :data:`BUILD_DEFAULTS`): static pruning keeps ``n_postings`` postings
per list (the paper's λ; ``pruning`` "fixed" or "global", with ``max_fraction``), blocking makes
``centroid_fraction`` of a list's documents centroids (clusters of at most ``min_cluster_size`` documents are
dissolved; documents are clustered on their ``doc_cut`` heaviest terms, with random ``seed``), summaries keep
``summary_energy`` of a block's L1 mass in at most ``summary_cap`` terms (None: no cap), their values as
``summary_bits``-bit codes (4 or 8; rounded up, so a summary still bounds its block from above).
Search (:class:`SearchConfig`, :data:`SEARCH_DEFAULTS`): ``query_cut`` (how many of the query's heaviest terms
are visited) and ``heap_factor`` (block skipping threshold).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..params import check_int, check_number

BUILD_DEFAULTS = {
    "n_postings": None,  # None: chosen from the collection size, see auto_n_postings
    "pruning": "fixed",
    "max_fraction": 1.5,
    "centroid_fraction": 0.1,
    "min_cluster_size": 2,
    "summary_energy": 0.4,
    "summary_cap": 128,
    "summary_bits": 4,
    "doc_cut": 15,
    "seed": 0,
}
# query_cut 10 (was 8): +0.006-0.014 Recall@10 on ~44-term queries at a few more lists visited. heap_factor 0.6
# (was 0.8): summaries capped at 128 terms underestimate a block's best score more, and at 0.8 Recall@10 was 0.907
# on 200k msmarco-shaped documents and 0.885 on wn-gcide; 0.6 gives 0.977 (0.59 ms) and 0.953, and beats a larger
# summary cap at equal recall (cap 256, heap_factor 0.7: 0.975 at 0.65 ms, 1.5x the summary bytes).
# eval/results/scale-200k-notes.md.
SEARCH_DEFAULTS = {"query_cut": 10, "heap_factor": 0.6}
PRUNING = ("fixed", "global")
SUMMARY_BITS = (4, 8)
LEGACY_SUMMARY_BITS = 8  # structures built before summary_bits existed hold 8-bit codes


def auto_n_postings(num_docs: int) -> int:
    """Default λ: ``22 * N^(1/3)``, clipped to [512, 6000] (810 at 50k documents, 1,287 at 200k, 2,200 at 1M,
    4,549 at MS MARCO's 8.8M; 6000 is the paper's MS MARCO setting).

    The budget that reaches a given recall grows far slower than the collection: on the synthetic ``msmarco``
    shape (eval/results/scale-200k-notes.md) the fastest λ at Recall@10 >= 0.97 was ~800 at 50k documents and
    ~1,300 at 200k, while the former N/128 rule (6000 from 768k documents on) made Seismic about 2x slower than
    pyseismic-lsr with a budget scaled to the collection. Summary memory and build time grow with λ."""
    return int(min(6000, max(512, round(22 * num_docs ** (1 / 3)))))


@dataclass(frozen=True)
class BuildConfig:
    """Checked build settings (see the module docstring)."""

    n_postings: int
    pruning: str
    max_fraction: float
    centroid_fraction: float
    min_cluster_size: int
    summary_energy: float
    summary_cap: int | None
    summary_bits: int
    doc_cut: int
    seed: int

    @classmethod
    def from_params(cls, params: dict, num_docs: int) -> "BuildConfig":
        """Settings from build arguments (missing ones: :data:`BUILD_DEFAULTS`) for ``num_docs`` documents."""
        p = _known(params, BUILD_DEFAULTS, "build")
        if p["n_postings"] is None:
            p["n_postings"] = auto_n_postings(num_docs)
        if p["pruning"] not in PRUNING:
            raise ValueError(f"seismic pruning must be 'fixed' or 'global', got {p['pruning']!r}")
        if p["summary_bits"] not in SUMMARY_BITS:
            raise ValueError(f"seismic summary_bits must be 4 or 8, got {p['summary_bits']!r}")
        return cls(n_postings=_int(p, "n_postings", 1), pruning=p["pruning"],
                   max_fraction=_number(p, "max_fraction", 0.0, math.inf),
                   centroid_fraction=_number(p, "centroid_fraction", 0.0, 1.0),
                   min_cluster_size=_int(p, "min_cluster_size", 0),
                   summary_energy=_number(p, "summary_energy", 0.0, 1.0),
                   summary_cap=None if p["summary_cap"] is None else _int(p, "summary_cap", 1),
                   summary_bits=int(p["summary_bits"]),
                   doc_cut=_int(p, "doc_cut", 1), seed=_int(p, "seed", 0))

    def to_params(self) -> dict:
        """The settings as recorded in the manifest."""
        return asdict(self)


@dataclass(frozen=True)
class SearchConfig:
    """Checked search settings: ``query_cut`` None (every query term) is stored as 2**31 - 1."""

    query_cut: int
    heap_factor: float

    @classmethod
    def from_params(cls, params: dict) -> "SearchConfig":
        """Settings from search arguments (missing ones: :data:`SEARCH_DEFAULTS`)."""
        p = _known(params, SEARCH_DEFAULTS, "search")
        if p["query_cut"] is None:
            p["query_cut"] = 2**31 - 1
        return cls(query_cut=_int(p, "query_cut", 1),
                   heap_factor=_number(p, "heap_factor", 0.0, math.inf, low_open=False))


def _known(given: dict, defaults: dict, what: str) -> dict:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown seismic {what} parameter(s): {', '.join(unknown)}; "
                         f"known: {', '.join(defaults)}")
    return {**defaults, **given}


def _int(params: dict, name: str, low: int) -> int:
    return check_int(f"seismic {name}", params[name], low)


def _number(params: dict, name: str, low: float, high: float, low_open: bool = True) -> float:
    return check_number(f"seismic {name}", params[name], low, high, low_open)
