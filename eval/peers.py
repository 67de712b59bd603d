"""Peer engines built from the same vectors as an lsr index: pyseismic-lsr and the BMP authors' ``bmp`` package.

* **pyseismic-lsr** (``import seismic``) gets the index's dequantized float vectors (CSR ``indptr`` / ``terms`` /
  ``weights``, as :func:`eval.bench_core.forward_vectors` returns them) with document ids ``str(docno)`` and
  tokens ``str(term id)``, and float queries. It always prunes globally (:func:`seismic_params` maps our
  structure's settings onto its knobs) and stores values in 16 bits.
* **bmp** gets the index's quantized forward impacts in *our* document order (so a BP-reordered index gives it
  the same blocks), rescaled so its 16-bit accumulator cannot overflow (:func:`bmp_impact_scale`), and float
  queries. What it gets wrong, measured rather than assumed:

  - ``Searcher.search`` quantizes the query itself: the largest weight becomes 32 and every other weight
    ``ceil(w * 32 / max w)`` (:func:`bmp_query_levels`), so even ``alpha = beta = 1`` ranks by a coarse
    approximation of the float scores, not exactly;
  - scores are accumulated in ``u16`` and wrap silently on overflow;
  - the block loop stops one block early: the last candidate block (lowest upper bound) is never scored, and
    with a single candidate block nothing is, so "safe" mode can miss documents;
  - a query with no candidate block (e.g. none of its terms indexed) panics in Rust
    (``pyo3_runtime.PanicException``, a ``BaseException``); :class:`BmpPeer` counts it and returns no hits;
  - ``beta < 1`` drops query terms for scoring too, not only for the block bounds (ours scores with all).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from lsr.index import InvertedIndex

BMP_QUERY_LEVELS = 32  # bmp's Searcher maps the largest query weight to this level
BMP_SCORE_MAX = 2**16 - 1  # its accumulator is u16
BMP_MAX_TERMS = 2**16  # it stores term ids as u16
SEISMIC_SHARED = ("centroid_fraction", "min_cluster_size", "summary_energy", "doc_cut")


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (MB): ``VmHWM`` of /proc/self/status.

    Not ``ru_maxrss``: Linux carries the pre-exec address space's high-water mark into it, so a child started
    with multiprocessing's "spawn" reports at least its parent's peak RSS. ``ru_maxrss`` only where /proc is
    missing."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def quiet_stdout():
    """Silence file descriptor 1 (the Rust peers print progress there)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


# ---------------------------------------------------------------------------------------------- pyseismic-lsr
def seismic_params(list_lengths: np.ndarray, ours: dict) -> dict:
    """pyseismic-lsr build parameters for the same budget as our seismic structure's params ``ours``.

    pyseismic-lsr always prunes globally: ``n_postings * #lists`` postings overall, at most
    ``max_fraction * n_postings`` per list. For our fixed pruning (the top λ = ``ours["n_postings"]`` of every
    list) it gets the same total, ``n_postings = Σ min(len, λ) / #non-empty lists``, and the same cap λ.
    Clustering and summary knobs are passed unchanged.
    """
    lam = int(ours["n_postings"])
    if ours.get("pruning") == "global":
        n_postings, max_fraction = lam, float(ours["max_fraction"])
    else:
        lengths = list_lengths[list_lengths > 0]
        n_postings = max(1, round(float(np.minimum(lengths, lam).sum()) / max(1, lengths.size)))
        max_fraction = lam / n_postings
    return {"n_postings": int(n_postings), "max_fraction": float(max_fraction),
            **{key: ours[key] for key in SEISMIC_SHARED}}


def seismic_build(vectors_path: str, vocab_size: int, out_path: str | None = None, params: dict | None = None,
                  threads: int = 0) -> dict:
    """Build pyseismic-lsr from an ``.npz`` of CSR vectors (``indptr``, ``terms``, ``weights``); meant for a fresh
    child process, whose peak RSS is then the build's.

    ``params`` default to :func:`seismic_params` for our default structure settings on this collection;
    ``out_path`` saves the index to ``<out_path>.index.seismic`` (counted in the time, as our builds write to disk).
    Returns ``seconds``, ``peak_rss_mb``, ``rss_before_mb`` (after loading the vectors) and ``params``.
    """
    from seismic import SeismicDataset, SeismicIndex

    with np.load(vectors_path) as data:
        indptr, terms, weights = data["indptr"], data["terms"], data["weights"]
    if params is None:
        from lsr.index.seismic import BUILD_DEFAULTS, auto_n_postings

        ours = {**BUILD_DEFAULTS, "n_postings": auto_n_postings(len(indptr) - 1)}
        params = seismic_params(np.bincount(terms, minlength=vocab_size), ours)
    before = peak_rss_mb()
    started = time.perf_counter()
    with quiet_stdout():
        dataset = SeismicDataset(dim=vocab_size)
        step = 100_000
        for lo in range(0, len(indptr) - 1, step):
            hi = min(lo + step, len(indptr) - 1)
            a, b = int(indptr[lo]), int(indptr[hi])
            dataset.add_documents_by_id([str(d) for d in range(lo, hi)], terms[a:b].astype(np.int64),
                                        np.ascontiguousarray(weights[a:b], np.float32),
                                        (indptr[lo:hi + 1] - a).astype(np.int64))
        index = SeismicIndex.build_from_dataset(dataset, **params, num_threads=threads)
        del dataset
        if out_path is not None:
            index.save(out_path)
    result = {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before,
              "params": params}
    if out_path is not None:
        result["size_bytes"] = Path(f"{out_path}.index.seismic").stat().st_size
    return result


class SeismicPeer:
    """A saved pyseismic-lsr index answering our queries (doc ids are our doc numbers)."""

    def __init__(self, path: str):
        from seismic import SeismicIndex, get_seismic_string

        with quiet_stdout():
            self.index = SeismicIndex.load(path)
        self._dtype = get_seismic_string()

    def prepare(self, queries: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Our (term ids, weights) queries as its (token strings, float32 values)."""
        out = []
        for terms, weights in queries:
            keep = np.asarray(weights) > 0
            out.append((np.array([str(t) for t in np.asarray(terms)[keep]], dtype=self._dtype),
                        np.ascontiguousarray(np.asarray(weights)[keep], np.float32)))
        return out

    def search(self, query: tuple[np.ndarray, np.ndarray], k: int, query_cut: int, heap_factor: float) -> np.ndarray:
        """Top-k doc numbers of one prepared query."""
        if not query[0].size:
            return np.empty(0, np.int64)
        hits = self.index.search("q", query[0], query[1], k, query_cut, heap_factor)
        return np.array([int(h[2]) for h in hits], np.int64)

    def search_batch(self, queries: list[tuple[np.ndarray, np.ndarray]], k: int, query_cut: int, heap_factor: float,
                     threads: int) -> list[np.ndarray]:
        """:meth:`search` for many prepared queries with its own parallel batch search."""
        ids = np.array([str(i) for i in range(len(queries))], dtype=self._dtype)
        results = self.index.batch_search(ids, [q[0] for q in queries], [q[1] for q in queries], k, query_cut,
                                          heap_factor, num_threads=threads)
        return [np.array([int(h[2]) for h in hits], np.int64) for hits in results]


# ---------------------------------------------------------------------------------------------- bmp
def bmp_query_levels(weights: np.ndarray) -> np.ndarray:
    """The integer query weights bmp's ``Searcher.search`` uses: ``ceil(w * (32 / max w))`` in float32."""
    w = np.asarray(weights, np.float32)
    w = w[w > 0]
    return np.ceil(w * (np.float32(BMP_QUERY_LEVELS) / w.max())) if w.size else w


def bmp_impacts(levels: int, scale: float) -> np.ndarray:
    """Lookup table impact -> impact given to bmp: ``max(1, rint(scale * impact))`` (0 stays 0)."""
    table = np.maximum(1, np.rint(np.arange(levels + 1) * scale)).astype(np.int64)
    table[0] = 0
    return table


def bmp_impact_scale(term_max: np.ndarray, queries: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, int]:
    """Largest impact scale (<= 1, see :func:`bmp_impacts`) with which none of ``queries`` can overflow bmp's u16.

    A document's score is at most ``Σ_t q_t * max impact of t`` with bmp's own 32-level query weights ``q_t``
    (:func:`bmp_query_levels`); the scale keeps the largest such bound over the benchmark queries within
    65535. This per-term bound is as generous to bmp as a guarantee can be (a bound over all possible queries,
    ``Σ q_t * global max impact``, would cost far more resolution); it does depend on the query set.
    Returns (scale, the resulting bound).
    """
    term_max = np.asarray(term_max).astype(np.int64)
    pairs = []  # per query: (bmp's query levels, max impact of each term; 0 for terms outside the vocabulary)
    for terms, weights in queries:
        terms, weights = np.asarray(terms), np.asarray(weights)
        terms = terms[weights > 0]
        inside = terms < term_max.size
        pairs.append((bmp_query_levels(weights).astype(np.int64),
                      np.where(inside, term_max[np.where(inside, terms, 0)], 0)))

    def bound(scale: float) -> int:
        table = bmp_impacts(int(term_max.max()), scale)
        return max((int((q * table[m]).sum()) for q, m in pairs), default=0)

    scale = min(1.0, BMP_SCORE_MAX / max(1, bound(1.0)))
    while (worst := bound(scale)) > BMP_SCORE_MAX:
        scale *= 0.99
    return scale, worst


def bmp_build(index_dir: str, out_path: str, bsize: int, impact_scale: float) -> dict:
    """Index our forward impacts (document order as stored, impacts through :func:`bmp_impacts`) with
    ``bmp.Indexer``; meant for a fresh child process. The time includes building the per-document Python dicts
    its API takes. Returns ``seconds``, ``peak_rss_mb``, ``rss_before_mb``, ``size_bytes``."""
    from bmp import Indexer

    index = InvertedIndex.open(Path(index_dir))
    if index.vocab_size > BMP_MAX_TERMS:
        raise ValueError(f"bmp stores term ids as u16; vocabulary {index.vocab_size} is too large")
    offsets = np.asarray(index.array("forward_offsets"))
    terms, impacts = index.array("forward_terms"), index.array("forward_impacts")
    table = bmp_impacts(int(np.iinfo(impacts.dtype).max), impact_scale)
    names = [str(t) for t in range(index.vocab_size)]
    before = peak_rss_mb()
    started = time.perf_counter()
    indexer = Indexer(out_path, bsize=bsize, compress_range=False)
    step = 50_000
    for lo in range(0, index.num_docs, step):
        hi = min(lo + step, index.num_docs)
        a = int(offsets[lo])
        chunk_terms = terms[a:offsets[hi]].tolist()
        chunk_imps = table[impacts[a:offsets[hi]]].tolist()
        for d in range(lo, hi):
            s, e = int(offsets[d]) - a, int(offsets[d + 1]) - a
            indexer.add_document(str(d), dict(zip([names[t] for t in chunk_terms[s:e]], chunk_imps[s:e])))
    with quiet_stdout():
        indexer.finish()
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before,
            "size_bytes": Path(out_path).stat().st_size, "bsize": bsize, "impact_scale": impact_scale}


class BmpPeer:
    """A bmp index file answering our queries (doc ids are our doc numbers)."""

    def __init__(self, path: str):
        from bmp import Searcher

        self.searcher = Searcher(path)
        self.panics = 0

    @staticmethod
    def prepare(queries: list[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, float]]:
        """Our (term ids, weights) queries as its ``{token: float weight}`` dicts (it quantizes them itself)."""
        return [{str(int(t)): float(w) for t, w in zip(terms, weights) if w > 0} for terms, weights in queries]

    def search(self, query: dict[str, float], k: int, alpha: float, beta: float) -> np.ndarray:
        """Top-k doc numbers of one prepared query (none, counted in ``panics``, when bmp panics)."""
        if not query:
            return np.empty(0, np.int64)
        try:
            docnos, _ = self.searcher.search(query, k=k, alpha=alpha, beta=beta)
        except BaseException as exc:  # pyo3's PanicException derives from BaseException
            if type(exc).__name__ != "PanicException":
                raise
            self.panics += 1
            return np.empty(0, np.int64)
        return np.array([int(d) for d in docnos], np.int64)

