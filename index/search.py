"""Exact top-k retrieval over a memory-mapped inverted index with integer scoring.

Scores are computed in int32: the query is quantized (:func:`quantize_query`) so that the
largest possible document score fits, which makes results exact and deterministic. The
float score reported is ``int_score * index_scale / qscale``.

Ranking: higher score first; equal scores are ordered by lower internal doc id first. Only
documents with a positive score are returned, so a result has ``min(k, #matching docs)`` rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numba import njit

from .batch import check_threads
from .bsearch import lower_bound
from .docids import RUN_ARRAYS, join_doc_ids, plain_runs
from .exact import ExactSearch
from .storage import IndexFormatError, check_checksums, huge_page_copy, open_array, read_manifest, verify_index
from .structures import load_structure, structure_for_mode

_INT32_MAX = 2**31 - 1
# read at random, one document at a time, by BMP and Seismic: what ``preload`` copies into huge pages
PRELOADED = ("forward_offsets", "forward_terms", "forward_impacts", "seismic_forward_terms16")


def quantize_query(
    term_ids: np.ndarray, weights: np.ndarray, max_impact_level: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Quantize a sparse query to int32 weights; return (terms uint32 sorted unique, qweights int32 > 0, qscale).

    Non-positive weights are dropped and duplicate terms keep their max weight. With
    ``qscale = (B - n) / sum(w)``, ``B = (2**31 - 1) // max_impact_level`` and n terms,
    ``q = max(1, floor(w * qscale))`` satisfies ``sum(q) <= B``, so no score overflows int32.
    """
    terms = np.asarray(term_ids)
    w = np.asarray(weights, dtype=np.float64)
    if terms.ndim != 1 or w.shape != terms.shape or (terms.size and terms.dtype.kind not in "iu"):
        raise ValueError("term_ids and weights must be 1-D arrays of equal length (integer term ids)")
    status, out_terms, out_weights, qscale = _quantize_kernel(
        np.ascontiguousarray(terms, np.int64), np.ascontiguousarray(w), _INT32_MAX // max_impact_level)
    if status == 1:
        raise ValueError("query weights must be finite")
    if status == 2:
        raise ValueError("query term ids must be >= 0")
    if status == 3:
        raise ValueError(f"query has too many terms; int32 scoring allows fewer than {_INT32_MAX // max_impact_level}")
    return out_terms, out_weights, qscale


@njit(cache=True, nogil=True)
def _quantize_kernel(terms, w, budget):
    """(status, terms, weights, qscale) for :func:`quantize_query`; status 0 ok, 1 non-finite, 2 negative id, 3 too long."""
    n = terms.shape[0]
    keep = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        if not np.isfinite(w[i]):
            return 1, np.empty(0, np.uint32), np.empty(0, np.int32), 1.0
        if terms[i] < 0:
            return 2, np.empty(0, np.uint32), np.empty(0, np.int32), 1.0
        if w[i] > 0:
            keep[m] = i
            m += 1
    keep = keep[:m]
    order = keep[np.argsort(terms[keep], kind="mergesort")]
    out_terms = np.empty(m, np.uint32)
    out_w = np.empty(m, np.float64)
    u = 0
    total = 0.0
    for j in range(m):
        t, x = terms[order[j]], w[order[j]]
        if u and out_terms[u - 1] == t:
            if x > out_w[u - 1]:
                total += x - out_w[u - 1]
                out_w[u - 1] = x
        else:
            out_terms[u] = t
            out_w[u] = x
            total += x
            u += 1
    if u == 0:
        return 0, np.empty(0, np.uint32), np.empty(0, np.int32), 1.0
    if u >= budget:
        return 3, np.empty(0, np.uint32), np.empty(0, np.int32), 1.0
    qscale = (budget - u) / total
    out_q = np.empty(u, np.int32)
    for j in range(u):
        out_q[j] = max(1.0, np.floor(out_w[j] * qscale))
    return 0, out_terms[:u].copy(), out_q, qscale


@njit(cache=True, nogil=True)
def score_docs_kernel(offsets, fterms, fimpacts, qterms, qweights, docs, out):
    """Integer score of each document in ``docs`` against a quantized query (sorted unique ``qterms``)."""
    n = qterms.shape[0]
    for i in range(docs.shape[0]):
        d = docs[i]
        total = 0
        for p in range(offsets[d], offsets[d + 1]):
            t = fterms[p]
            lo = lower_bound(qterms, 0, n, t)
            if lo < n and qterms[lo] == t:
                total += np.int64(qweights[lo]) * np.int64(fimpacts[p])
        out[i] = total


class InvertedIndex:
    """Memory-mapped inverted index answering exact top-k queries.

    Thread-safe: each calling thread gets its own scoring scratch. ``open(verify=False)``
    trusts array contents; pass ``verify=True`` to check checksums and invariants first.
    """

    def __init__(self, index_dir: Path, manifest: dict, arrays: dict[str, np.ndarray]):
        self.index_dir = Path(index_dir)
        self.manifest = manifest
        self.num_docs = int(manifest["num_docs"])
        self.vocab_size = int(manifest["vocab_size"])
        self.num_postings = int(manifest["num_postings"])
        self.scale = float(manifest["quantization"]["scale"])
        self._arrays = arrays
        if arrays["postings_docs"].dtype == np.uint16:
            self._runs = tuple(arrays[name] for name in RUN_ARRAYS)
        else:  # format version 2 and older: full uint32 ids, one run per list
            self._runs = plain_runs(arrays["postings_offsets"])
        self._max_level = int(np.iinfo(arrays["postings_impacts"].dtype).max)
        self._exact = ExactSearch(self)
        self._structures: dict[str, object] = {}

    @classmethod
    def open(cls, index_dir: Path, verify: bool = False, checksums: bool = False,
             preload: bool = False) -> "InvertedIndex":
        """Open an index directory (memory-mapped); with ``verify`` run :func:`verify_index` first, with
        ``checksums`` check the sha256 of every file the manifest lists. ``preload`` copies the arrays the pruned
        modes read at random (:data:`PRELOADED`: the forward index, where BMP and Seismic score documents) into
        memory backed by huge pages where the system allows (:func:`index.storage.huge_page_copy`): faster pruned
        search on large indexes, at the price of that much private memory per process instead of shared page
        cache."""
        index_dir = Path(index_dir)
        if verify:
            problems = verify_index(index_dir)
            if problems:
                raise IndexFormatError(f"{index_dir}: index failed verification:\n  " + "\n  ".join(problems))
        manifest = read_manifest(index_dir)
        if checksums:
            check_checksums(index_dir, manifest)
        arrays = {name: open_array(index_dir, manifest, name) for name in manifest["arrays"]}
        _check_shapes(index_dir, manifest, arrays)
        if preload:
            arrays = {name: huge_page_copy(arr) if name in PRELOADED else arr for name, arr in arrays.items()}
        return cls(index_dir, manifest, arrays)

    def array(self, name: str) -> np.ndarray:
        """A named index array (memory-mapped, read-only)."""
        return self._arrays[name]

    def postings_runs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(run offsets [V + 1], high halves, run ends): how ``postings_docs`` holds ids (:mod:`index.docids`)."""
        return self._runs

    def postings_docs(self) -> np.ndarray:
        """Full uint32 doc id of every posting (decoded into memory when the index stores 16-bit halves)."""
        docs = self._arrays["postings_docs"]
        if docs.dtype == np.uint32:
            return docs
        return join_doc_ids(self._arrays["postings_offsets"], docs, self._runs)

    def _quantize(self, term_ids: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Drop term ids outside the vocabulary, then :func:`quantize_query`."""
        terms, weights = np.asarray(term_ids), np.asarray(weights)
        if terms.ndim == 1 and terms.shape == weights.shape:
            in_vocab = terms < self.vocab_size
            terms, weights = terms[in_vocab], weights[in_vocab]
        return quantize_query(terms, weights, self._max_level)

    def search_quantized(self, qterms: np.ndarray, qweights: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k for an already quantized query (see :func:`quantize_query`): (doc ids uint32, int32 scores)."""
        qterms = np.ascontiguousarray(qterms, dtype=np.uint32)
        qweights = np.ascontiguousarray(qweights, dtype=np.int32)
        if qterms.ndim != 1 or qweights.shape != qterms.shape:
            raise ValueError("qterms and qweights must be 1-D arrays of equal length")
        if qterms.size and (qterms.max() >= self.vocab_size or qweights.min() <= 0
                            or int(qweights.sum(dtype=np.int64)) * self._max_level > _INT32_MAX):
            raise ValueError("quantized query needs terms < vocab_size and weights > 0 whose scores fit int32")
        return self._exact.search(qterms, qweights, check_k(k, self.num_docs))

    def structure(self, name: str):
        """A pruning structure (see :mod:`index.structures`) stored with this index, loaded on first use."""
        if name not in self._structures:
            self._structures[name] = load_structure(self, name)
        return self._structures[name]

    def _searcher(self, mode: str):
        """What answers ``mode``: exact search or the structure serving it."""
        name = structure_for_mode(mode)
        return self._exact if name is None else self.structure(name)

    def search(self, term_ids: np.ndarray, weights: np.ndarray, k: int = 10, mode: str = "exact",
               **params) -> tuple[np.ndarray, np.ndarray]:
        """Top-k in ``mode`` (exact, bmp, bmp-approx, seismic); (doc ids uint32, float32 scores) by (score desc, id asc)."""
        qterms, qweights, qscale = self._quantize(term_ids, weights)
        k = check_k(k, self.num_docs)
        ids, scores = self._searcher(mode).search(qterms, qweights, k, mode=mode, **params)
        return ids, self._dequantize(scores, qscale)

    def search_batch(self, queries: list[tuple[np.ndarray, np.ndarray]], k: int = 10,
                     threads: int | None = None, mode: str = "exact", **params) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`search` for many queries in parallel over ``threads`` workers (default: numba's setting)."""
        check_threads(threads)
        k = check_k(k, self.num_docs)
        quantized = [self._quantize(terms, weights) for terms, weights in queries]
        results = self._searcher(mode).search_batch(quantized, k, mode=mode, threads=threads, **params)
        return [(ids, self._dequantize(scores, q[2])) for (ids, scores), q in zip(results, quantized)]

    def _dequantize(self, int_scores: np.ndarray, qscale: float) -> np.ndarray:
        return (int_scores * (self.scale / qscale)).astype(np.float32)

    def score_docs(self, vector: tuple[np.ndarray, np.ndarray], docnos) -> np.ndarray:
        """Exact scores (float64 of the float32 search scores) of given documents for a (term ids, weights) query,
        computed exactly as search computes them: the same quantized query, the same integer products."""
        qterms, qweights, qscale = self._quantize(*vector)
        docnos = np.ascontiguousarray(docnos, np.int64)
        if docnos.size and (docnos.min() < 0 or docnos.max() >= self.num_docs):
            raise IndexError(f"doc ids must be in [0, {self.num_docs})")
        out = np.zeros(len(docnos), np.int64)
        if len(qterms):
            score_docs_kernel(self._arrays["forward_offsets"], self._arrays["forward_terms"],
                        self._arrays["forward_impacts"], qterms, qweights, docnos, out)
        return (out * (self.scale / qscale)).astype(np.float32).astype(np.float64)

    def doc_vector(self, doc_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Stored (term ids uint32 ascending, dequantized float32 weights) of one document."""
        if not 0 <= doc_id < self.num_docs:
            raise IndexError(f"doc id {doc_id} out of range [0, {self.num_docs})")
        offsets = self._arrays["forward_offsets"]
        start, end = offsets[doc_id], offsets[doc_id + 1]
        terms = np.array(self._arrays["forward_terms"][start:end], np.uint32)
        weights = (self._arrays["forward_impacts"][start:end] * self.scale).astype(np.float32)
        return terms, weights


def check_k(k: int, num_docs: int) -> int:
    """Validate k and cap it at num_docs."""
    if k < 1:
        raise ValueError("k must be >= 1")
    return min(int(k), num_docs)


def _check_shapes(index_dir: Path, manifest: dict, arrays: dict[str, np.ndarray]) -> None:
    """Cheap consistency checks that keep the kernels in bounds for a well-formed (unverified) index."""
    expected = {
        "postings_offsets": manifest["vocab_size"] + 1,
        "postings_docs": manifest["num_postings"],
        "postings_impacts": manifest["num_postings"],
        "forward_offsets": manifest["num_docs"] + 1,
        "forward_terms": manifest["num_postings"],
        "forward_impacts": manifest["num_postings"],
        "term_max_impact": manifest["vocab_size"],
    }
    docs = arrays.get("postings_docs")
    if docs is not None and docs.dtype == np.uint16:
        if not all(name in arrays for name in RUN_ARRAYS):
            raise IndexFormatError(f"{index_dir}/postings_docs.npy: uint16 doc ids need {', '.join(RUN_ARRAYS)}")
        expected["postings_run_offsets"] = manifest["vocab_size"] + 1
        expected["postings_run_ends"] = arrays["postings_run_high"].shape[0]
    elif docs is not None and docs.dtype != np.uint32:
        raise IndexFormatError(f"{index_dir}/postings_docs.npy: unsupported doc id dtype {docs.dtype}")
    for name, length in expected.items():
        if name not in arrays or arrays[name].shape != (length,):
            raise IndexFormatError(f"{index_dir / name}.npy: missing or not of length {length}")
    if arrays["postings_impacts"].dtype not in (np.uint8, np.uint16):
        dtype = arrays["postings_impacts"].dtype
        raise IndexFormatError(f"{index_dir}/postings_impacts.npy: unsupported impact dtype {dtype}")
    terms = arrays["forward_terms"].dtype
    if terms not in (np.uint16, np.uint32) or (terms == np.uint16 and manifest["vocab_size"] > 65536):
        raise IndexFormatError(f"{index_dir}/forward_terms.npy: term dtype {terms} does not fit the vocabulary")
    for name in ("postings_offsets", "forward_offsets"):
        offsets = arrays[name]
        if offsets[0] != 0 or offsets[-1] != manifest["num_postings"]:
            raise IndexFormatError(f"{index_dir / name}.npy: offsets must run from 0 to num_postings")
    if "postings_run_offsets" in expected:
        runs = arrays["postings_run_offsets"]
        if runs[0] != 0 or runs[-1] != arrays["postings_run_high"].shape[0]:
            raise IndexFormatError(f"{index_dir}/postings_run_offsets.npy: offsets must run from 0 to the runs")
