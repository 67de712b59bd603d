"""Searching a sharded index on Ray.

Searching (:class:`ShardSet`: the parts ``Engine.open`` assembles an :class:`lsr.engine.Engine` from for a sharded
directory, so it has the same ``search`` / ``search_batch`` / ``document`` surface; what ``lsr search`` / ``lsr
serve`` use on one)
    One actor per shard holds its shard memory-mapped. The coordinator encodes text queries once, quantizes
    them exactly as one index would (the quantization depends only on the query and the shared scale), fans
    the quantized query out, and merges the shards' top-k by (integer score desc, global doc number asc). A
    document's global number is ``ordinal * N + shard``: it orders documents like a single index over the same
    corpus numbers them, so for ``exact`` and ``bmp`` (safe) the result equals a single index's — same ids,
    same float scores, same order including ties (``tests/test_distributed.py``). Approximate modes
    (``bmp-approx``, ``seismic``) run per shard; their recall against exact is measured by
    ``eval/bench_shards.py``. The BM25 field (``retriever="bm25"``, and in ``auto``/``hybrid`` fusion) is searched
    the same way: its query vector comes from :class:`lsr.bm25_field.Bm25Side` over every shard's field (the
    collection's vocabulary and avgdl, document frequencies added up), so its results equal a single index's
    too. Dense search merges the shards' top-k by (score desc, global number asc); hybrid
    and metadata filters run the search layer (:mod:`lsr.searcher`) unchanged over the merged lists (a fused candidate missing one
    side is scored by the shard that holds it). With ``--reorder`` a shard's documents are renumbered, so equal
    scores at the k-th place may be cut differently than in a single index (scores stay exact).

Without an address a local Ray runtime is started (``ray.init(num_cpus=...)``); ``address="auto"`` or
``"ray://host:10001"`` joins a cluster. Every node must see the index directory at the same path (a shared
filesystem) and have ``lsr`` installed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from lsr.bm25_field import field_dir
from lsr.index import InvertedIndex
from lsr.index.storage import IndexFormatError
from lsr.index.structures import structure_for_mode
from lsr.corpus import Document
from lsr.protocols import DenseSide
from lsr.searcher import Searcher
from lsr.sharded.layout import (IMPACT_LEVELS, ORDINALS_ARRAY, SHARDS_FILE, index_size_bytes, read_sharded_manifest,
                                shard_of, verify_sharded)
from lsr.sharded.ray_runtime import actor_class, init_ray, kill_actors, ray_get
from lsr.snapshot import build_details, open_local

log = logging.getLogger("lsr.sharded")

_NOT_OPENED = object()
_HEADER_CACHE = 100_000  # (id, title) of recently returned hits, on the coordinator
_DOC_CACHE = 2_048


# ---------------------------------------------------------------------- shard actors
class _ShardServer:
    """Ray actor: one shard opened as a single index (memory-mapped); answers in global doc numbers and int scores."""

    def __init__(self, shard_dir: str, shard: int, num_shards: int, threads: int) -> None:
        import numba

        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        self.threads = max(1, threads)
        self.engine = Searcher(open_local(shard_dir))
        self.index = self.engine.index
        manifest = self.engine.manifest
        ordinals = np.asarray(self.index.array(ORDINALS_ARRAY), np.int64)
        if "doc_original" in manifest["arrays"]:  # reordered: doc_original maps current numbers to build numbers
            ordinals = ordinals[np.asarray(self.index.array("doc_original"), np.int64)]
        self.keys = ordinals * num_shards + shard
        self._order = None if np.all(np.diff(self.keys) > 0) else np.argsort(self.keys, kind="stable")
        self.num_docs = self.index.num_docs
        self.shard_dir = Path(shard_dir)
        self._bm25 = None

    def _field(self, field: str):
        """The sparse index of a field: ``sparse`` (the learned one) or ``bm25`` (its BM25 field, opened on first use)."""
        if field == "sparse":
            return self.index
        if self._bm25 is None:
            self._bm25 = InvertedIndex.open(field_dir(self.shard_dir))
        return self._bm25

    def ready(self) -> dict:
        return {"documents": self.num_docs, "pid": os.getpid()}

    def _local(self, keys) -> np.ndarray:
        keys = np.asarray(keys, np.int64)
        sorted_keys = self.keys if self._order is None else self.keys[self._order]
        pos = np.searchsorted(sorted_keys, keys)
        pos = np.minimum(pos, len(sorted_keys) - 1)
        if len(keys) and not np.array_equal(sorted_keys[pos], keys):
            missing = keys[sorted_keys[pos] != keys]
            raise KeyError(f"global doc number(s) {missing[:5].tolist()} not in this shard")
        return pos if self._order is None else self._order[pos]

    def _headers(self, local: np.ndarray) -> dict[int, tuple[str, str]]:
        headers = self.engine.docs.headers([int(d) for d in local])
        return {int(self.keys[d]): headers[d] for d in headers}

    def search(self, quantized: list[tuple[np.ndarray, np.ndarray]], k: int, mode: str, params: dict,
               field: str = "sparse"):
        """Top-k of quantized queries in ``field``: ([(global numbers int64, int32 scores)], {global number: (id,
        title)})."""
        index = self._field(field)
        k = min(int(k), self.num_docs)
        empty = (np.empty(0, np.int64), np.empty(0, np.int32))
        name = structure_for_mode(mode)
        live = [i for i, (qterms, _) in enumerate(quantized) if len(qterms)]
        found: list = [None] * len(quantized)
        if k and live:
            if name is None:
                for i in live:
                    found[i] = index.search_quantized(*quantized[i], k=k)
            else:
                structure = index.structure(name)
                if len(live) == 1:
                    found[live[0]] = structure.search(*quantized[live[0]], k, mode=mode, **params)
                else:
                    results = structure.search_batch([(*quantized[i], 1.0) for i in live], k, mode=mode,
                                                      threads=self.threads, **params)
                    for i, result in zip(live, results):
                        found[i] = result
        out, hit_docs = [], []
        for result in found:
            if result is None:
                out.append(empty)
                continue
            ids, scores = result
            hit_docs.append(ids)
            out.append((self.keys[np.asarray(ids, np.int64)], np.asarray(scores, np.int32)))
        local = np.unique(np.concatenate(hit_docs)) if hit_docs else np.empty(0, np.int64)
        return out, self._headers(local)

    def dense_search(self, queries: np.ndarray, k: int, exact: bool | None = None, ef_search: int | None = None):
        dense = self.engine.require_dense()
        results = dense.search_batch(queries, k=min(int(k), self.num_docs), exact=exact, ef_search=ef_search)
        out = [(self.keys[np.asarray(ids, np.int64)], scores) for ids, scores in results]
        local = np.unique(np.concatenate([ids for ids, _ in results])) if results else np.empty(0, np.int64)
        return out, self._headers(local)

    def sparse_totals(self, qterms: np.ndarray, qweights: np.ndarray, keys, field: str = "sparse") -> np.ndarray:
        """Integer scores in ``field`` of the given documents for a quantized query (as
        :meth:`index.search.InvertedIndex.score_docs`)."""
        from lsr.index.search import score_docs_kernel

        index = self._field(field)
        local = self._local(keys)
        out = np.zeros(len(local), np.int64)
        if len(qterms) and len(local):
            score_docs_kernel(index.array("forward_offsets"), index.array("forward_terms"),
                        index.array("forward_impacts"), np.ascontiguousarray(qterms, np.uint32),
                        np.ascontiguousarray(qweights, np.int32), np.ascontiguousarray(local, np.int64), out)
        return out

    def dense_scores(self, query: np.ndarray, keys) -> np.ndarray:
        return self.engine.require_dense().score(query, self._local(keys))

    def headers(self, keys) -> dict[int, tuple[str, str]]:
        return self._headers(self._local(keys))

    def bundles(self, keys) -> dict[int, tuple[Document, np.ndarray, np.ndarray]]:
        """Document and stored vector (term ids, weights) of each global number."""
        local = self._local(keys)
        return {int(k): (self.engine.docs.get(int(d)), *self.index.doc_vector(int(d)))
                for k, d in zip(np.asarray(keys, np.int64), local)}

    def field_vector(self, key: int, field: str) -> tuple[np.ndarray, np.ndarray]:
        """Stored (term ids, dequantized weights) of one document in ``field``, by global number."""
        return self._field(field).doc_vector(int(self._local([key])[0]))

    def lookup(self, doc_id: str) -> int:
        return int(self.keys[self.engine.docs.docno(doc_id)])

    def ids(self) -> tuple[np.ndarray, list[str]]:
        """Global numbers and external ids of every document of the shard."""
        return self.keys, self.engine.docs.ids()


# ---------------------------------------------------------------------- the coordinator
class _LRU:
    """A small thread-safe LRU mapping."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, keys) -> tuple[dict, list]:
        found, missing = {}, []
        with self._lock:
            for k in keys:
                if k in self._data:
                    self._data.move_to_end(k)
                    found[k] = self._data[k]
                else:
                    missing.append(k)
        return found, missing

    def update(self, items: dict) -> None:
        with self._lock:
            self._data.update(items)
            for k in items:
                self._data.move_to_end(k)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


def _by_shard(keys, num_shards: int) -> dict[int, np.ndarray]:
    keys = np.asarray(keys, np.int64)
    return {int(s): keys[keys % num_shards == s] for s in np.unique(keys % num_shards)}


def _merge(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Global top-k of the shards' lists: score desc, then global doc number asc (a single index's tie rule)."""
    keys = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
    scores = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int32)
    top = np.lexsort((keys, -scores.astype(np.float64) if scores.dtype.kind == "f" else -scores.astype(np.int64)))[:k]
    return keys[top], scores[top]


class ShardedIndex:
    """The sparse side (:class:`lsr.protocols.SparseSide`) of a :class:`ShardSet`, answered by the shard actors:
    the learned field (``sparse``) or the BM25 field (``bm25``, described by ``shards.json``'s ``bm25`` entry).
    Document numbers are global (``ordinal * num_shards + shard``)."""

    def __init__(self, shards: "ShardSet", field: str = "sparse") -> None:
        m = shards.manifest if field == "sparse" else {**shards.manifest[field], "num_shards": shards.num_shards}
        self._shards = shards
        self.field = field
        self.manifest = m
        self.index_dir = shards.index_dir
        self.num_shards = int(m["num_shards"])
        self.num_docs = int(m["num_docs"])
        self.vocab_size = int(m["vocab_size"])
        self.num_postings = int(m["num_postings"])
        self.scale = float(m["quantization"]["scale"])
        self._max_level = IMPACT_LEVELS[int(m["quantization"]["bits"])]

    def quantize(self, term_ids, weights) -> tuple[np.ndarray, np.ndarray, float]:
        """The query exactly as every shard (and a single index) quantizes it."""
        from lsr.index.search import quantize_query

        terms, weights = np.asarray(term_ids), np.asarray(weights)
        if terms.ndim == 1 and terms.shape == weights.shape:
            in_vocab = terms < self.vocab_size
            terms, weights = terms[in_vocab], weights[in_vocab]
        return quantize_query(terms, weights, self._max_level)

    def search(self, term_ids, weights, k: int = 10, mode: str = "exact", **params) -> tuple[np.ndarray, np.ndarray]:
        """Global top-k of one query vector: (global doc numbers int64, float32 scores)."""
        return self.search_batch([(term_ids, weights)], k=k, mode=mode, **params)[0]

    def search_batch(self, queries: list, k: int = 10, threads: int | None = None, mode: str = "exact",
                     **params) -> list[tuple[np.ndarray, np.ndarray]]:
        """Global top-k of many query vectors: one request per shard carrying every query."""
        if threads is not None and threads < 1:
            raise ValueError("threads must be >= 1")
        if k < 1:
            raise ValueError("k must be >= 1")
        k = min(int(k), self.num_docs)
        name = structure_for_mode(mode)
        if name is None and params:
            raise ValueError(f"mode {mode!r} takes no parameters, got {', '.join(params)}")
        if name is not None and name not in self.manifest.get("structures", {}):
            raise IndexFormatError(f"index {self.index_dir} has no {name!r} structure{self._of_field}; rebuild it with "
                                   f"`lsr index CORPUS --shards {self.num_shards} --structures {name}`")
        quantized = [self.quantize(t, w) for t, w in queries]
        empty = (np.empty(0, np.int64), np.empty(0, np.float32))
        if not quantized or not any(len(q[0]) for q in quantized):
            return [empty for _ in quantized]
        payload = [(q[0], q[1]) for q in quantized]
        answers = ray_get([a.search.remote(payload, k, mode, params, self.field) for a in self._shards.actors])
        self._shards.docs.remember({h: v for _, headers in answers for h, v in headers.items()})
        out = []
        for i, (_, _, qscale) in enumerate(quantized):
            keys, scores = _merge([results[i] for results, _ in answers], k)
            out.append((keys, (scores * (self.scale / qscale)).astype(np.float32)))  # as InvertedIndex._dequantize
        return out

    def score_docs(self, vector: tuple[np.ndarray, np.ndarray], docnos) -> np.ndarray:
        """Exact sparse scores of given global doc numbers (what hybrid search fills a missing sparse side with)."""
        docnos = np.asarray(docnos, np.int64)
        qterms, qweights, qscale = self.quantize(*vector)
        totals = np.zeros(len(docnos), np.int64)
        if len(qterms) and len(docnos):
            groups = _by_shard(docnos, self.num_shards)
            actors = self._shards.actors
            found = ray_get([actors[s].sparse_totals.remote(qterms, qweights, keys, self.field)
                             for s, keys in groups.items()])
            values = dict(zip(np.concatenate(list(groups.values())).tolist(), np.concatenate(found).tolist()))
            totals = np.array([values[int(d)] for d in docnos], np.int64)
        return (totals * (self.scale / qscale)).astype(np.float32).astype(np.float64)

    def doc_vector(self, doc_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Stored (term ids, dequantized weights) of one document by global number."""
        if not 0 <= int(doc_id):
            raise IndexError(f"doc id {doc_id} out of range")
        try:
            if self.field != "sparse":
                return ray_get(self._shards.actors[int(doc_id) % self.num_shards].field_vector.remote(int(doc_id),
                                                                                                      self.field))
            _, terms, weights = self._shards.docs.bundle(int(doc_id))
        except KeyError:
            raise IndexError(f"no document with global number {doc_id}") from None
        return terms, weights

    @property
    def _of_field(self) -> str:
        return "" if self.field == "sparse" else f" for its {self.field} field"


class ShardedDense:
    """The dense side (:class:`lsr.protocols.DenseSide`) of a :class:`ShardSet`."""

    def __init__(self, shards: "ShardSet") -> None:
        self._shards = shards
        self.info = shards.manifest["dense"]
        self.num_docs = int(shards.manifest["num_docs"])
        self.dim = int(self.info["dim"])
        self.num_shards = int(shards.manifest["num_shards"])

    @property
    def model(self) -> dict:
        return self.info["model"]

    @property
    def uses_hnsw(self) -> bool:
        return any(s.get("hnsw") for s in self._shards.manifest["shards"])

    def search(self, query: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        return self.search_batch(np.asarray(query, np.float32)[None, :], k)[0]

    def search_batch(self, queries: np.ndarray, k: int = 10, exact: bool | None = None,
                     ef_search: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        from lsr.dense import check_dense_queries

        queries, k = check_dense_queries(queries, self.dim, k, self.num_docs)
        if not len(queries):
            return []
        answers = ray_get([a.dense_search.remote(queries, k, exact, ef_search) for a in self._shards.actors])
        self._shards.docs.remember({h: v for _, headers in answers for h, v in headers.items()})
        return [_merge([results[i] for results, _ in answers], k) for i in range(len(queries))]

    def score(self, query: np.ndarray, docnos) -> np.ndarray:
        docnos = np.asarray(docnos, np.int64)
        if not docnos.size:
            return np.empty(0, np.float32)
        groups = _by_shard(docnos, self.num_shards)
        actors = self._shards.actors
        found = ray_get([actors[s].dense_scores.remote(np.asarray(query, np.float32), keys) for s, keys in groups.items()])
        values = dict(zip(np.concatenate(list(groups.values())).tolist(), np.concatenate(found).tolist()))
        return np.array([values[int(d)] for d in docnos], np.float32)


class ShardedDocs:
    """The document source (:class:`lsr.protocols.DocumentSource`) of a :class:`ShardSet`: look-ups go to the shard
    that holds the document."""

    def __init__(self, shards: "ShardSet") -> None:
        self._shards = shards
        self.num_shards = int(shards.manifest["num_shards"])
        self._headers = _LRU(_HEADER_CACHE)
        self._bundles = _LRU(_DOC_CACHE)  # global number -> (Document, term ids, weights)
        self._hit_lists = _LRU(_DOC_CACHE)  # global number -> the hit list it was returned in

    def __len__(self) -> int:
        return int(self._shards.manifest["num_docs"])

    def remember(self, headers: dict) -> None:
        self._headers.update(headers)

    def headers(self, docnos: list[int]) -> dict[int, tuple[str, str]]:
        found, missing = self._headers.get_many([int(d) for d in docnos])
        if missing:
            actors = self._shards.actors
            groups = _by_shard(missing, self.num_shards)
            fetched = {}
            for part in ray_get([actors[s].headers.remote(keys) for s, keys in groups.items()]):
                fetched.update(part)
            self._headers.update(fetched)
            found.update(fetched)
        if len(docnos) <= 100:  # a final hit list: what a caller may render next (see bundle)
            hits = tuple(int(d) for d in docnos)
            self._hit_lists.update({d: hits for d in hits})
        return found

    def bundle(self, docno: int) -> tuple[Document, np.ndarray, np.ndarray]:
        """A document with its stored vector. A miss fetches the whole hit list the document was returned in (one
        request per shard), so rendering k hits (text, snippets, explanations) costs one round trip, not 2 k."""
        docno = int(docno)
        found, missing = self._bundles.get_many([docno])
        if missing:
            group, _ = self._hit_lists.get_many([docno])
            wanted = set(group.get(docno, ())) | {docno}
            _, wanted = self._bundles.get_many(sorted(wanted))
            actors = self._shards.actors
            fetched: dict = {}
            try:
                for part in ray_get([actors[s].bundles.remote(keys) for s, keys in
                                  _by_shard(wanted, self.num_shards).items()]):
                    fetched.update(part)
            except KeyError:  # only ``docno`` can be unknown (the others were hits): KeyError unless it exists
                fetched = ray_get(actors[docno % self.num_shards].bundles.remote([docno]))
            self._bundles.update(fetched)
            found = fetched
        return found[docno]

    def get(self, docno: int) -> Document:
        try:
            return self.bundle(docno)[0]
        except KeyError:
            raise KeyError(docno) from None

    def get_many(self, docnos: list[int]) -> dict[int, Document]:
        """Several documents (a hit list: one round trip per shard, see :meth:`bundle`); unknown numbers left out."""
        out = {}
        for docno in docnos:
            try:
                out[int(docno)] = self.bundle(docno)[0]
            except KeyError:
                continue
        return out

    def docno(self, doc_id: str) -> int:
        return ray_get(self._shards.actors[shard_of(doc_id, self.num_shards)].lookup.remote(doc_id))

    def ids(self) -> list[str]:
        """External ids of every document in global-number order."""
        parts = ray_get([a.ids.remote() for a in self._shards.actors])
        keys = np.concatenate([k for k, _ in parts])
        ids = [i for _, shard_ids in parts for i in shard_ids]
        return [ids[j] for j in np.argsort(keys, kind="stable")]


class ShardSet:
    """A sharded index: the :class:`lsr.protocols.IndexParts` (sparse side, documents, dense side) an
    :class:`lsr.engine.Engine` of it is assembled from, answered by one Ray actor per shard.

    Document numbers are global (``ordinal * num_shards + shard``). The shard actors start on first use
    (:meth:`start`) and stop with :meth:`close`.
    """

    def __init__(self, index_dir: Path, manifest: dict, *, address: str | None = None, num_cpus: int | None = None,
                 threads_per_shard: int = 1, cpus_per_shard: float = 0.0) -> None:
        self.manifest = manifest
        self.index_dir = Path(index_dir)
        self.num_shards = int(manifest["num_shards"])
        self._address, self._num_cpus = address, num_cpus
        self._threads_per_shard, self._cpus_per_shard = threads_per_shard, cpus_per_shard
        self._actors: list | None = None
        self._start_lock = threading.Lock()
        self.index = ShardedIndex(self)
        self.docs = ShardedDocs(self)
        self.dense: DenseSide | None = ShardedDense(self) if manifest.get("dense") else None
        self._bm25 = _NOT_OPENED if manifest.get("bm25") else None

    @property
    def bm25(self):
        """The BM25 field (:class:`lsr.bm25_field.Bm25Side` over every shard's ``bm25/``: the collection's
        vocabulary and avgdl, document frequencies added up, searched by the shard actors), or None."""
        if self._bm25 is _NOT_OPENED:
            from lsr.bm25_field import Bm25Side

            with self._start_lock:
                if self._bm25 is _NOT_OPENED:
                    dirs = [field_dir(self.index_dir / s["dir"]) for s in self.manifest["shards"]]
                    self._bm25 = Bm25Side(dirs, ShardedIndex(self, "bm25"))
        return self._bm25

    @classmethod
    def open(cls, index_dir: str | os.PathLike, *, address: str | None = None, num_cpus: int | None = None,
             threads_per_shard: int = 1, cpus_per_shard: float = 0.0, verify: bool = False) -> "ShardSet":
        """Open a sharded index (reads the manifests only; the shard actors start on the first search).

        ``address``/``num_cpus`` as :func:`init_ray`; each shard actor reserves ``cpus_per_shard`` CPUs (0: none,
        so more shards than CPUs still start) and searches query batches on ``threads_per_shard`` threads.
        """
        index_dir = Path(index_dir)
        manifest = read_sharded_manifest(index_dir)
        if verify:
            problems = verify_sharded(index_dir)
            if problems:
                raise IndexFormatError(f"{index_dir}: sharded index failed verification:\n  " + "\n  ".join(problems))
        return cls(index_dir, manifest, address=address, num_cpus=num_cpus, threads_per_shard=threads_per_shard,
                   cpus_per_shard=cpus_per_shard)

    # ------------------------------------------------------------------ actors
    @property
    def actors(self) -> list:
        """The shard actors (started on first use)."""
        if self._actors is None:
            with self._start_lock:
                if self._actors is None:
                    self._actors = self._start()
        return self._actors

    def _start(self) -> list:
        init_ray(self._address, self._num_cpus)
        actor = actor_class(_ShardServer).options(num_cpus=self._cpus_per_shard, max_concurrency=8,
                                                   scheduling_strategy="SPREAD")
        actors = [actor.remote(str(self.index_dir / s["dir"]), i, self.num_shards, self._threads_per_shard)
                  for i, s in enumerate(self.manifest["shards"])]
        ready = ray_get([a.ready.remote() for a in actors])
        for info, shard in zip(ready, self.manifest["shards"]):
            if info["documents"] != shard["documents"]:
                raise IndexFormatError(f"{self.index_dir / shard['dir']}: holds {info['documents']} documents, "
                                       f"{SHARDS_FILE} says {shard['documents']}")
        return actors

    def start(self) -> None:
        """Start the shard actors now (otherwise the first search does)."""
        self.actors  # noqa: B018

    def close(self) -> None:
        """Stop the shard actors."""
        actors, self._actors = self._actors, None
        if actors:
            kill_actors(actors)

    def is_current(self) -> bool:
        """Always: a sharded index is rebuilt (a new directory), never committed to in place."""
        return True

    def shard_of(self, doc_id: str) -> int:
        """The shard holding (or that would hold) a document id."""
        return shard_of(doc_id, self.num_shards)

    def info(self) -> dict:
        """Counts, sizes, model and build details (summed over the shards), plus per-shard rows."""
        m = self.manifest
        df = np.zeros(m["vocab_size"], np.int64)
        for s in m["shards"]:
            df += np.diff(np.load(self.index_dir / s["dir"] / "postings_offsets.npy", mmap_mode="r"))
        return {
            "index": str(self.index_dir.resolve()),
            "format_version": m["format_version"],
            "documents": m["num_docs"],
            "terms": int(np.count_nonzero(df)),
            "vocab_size": m["vocab_size"],
            "postings": m["num_postings"],
            "avg_terms_per_doc": round(m["num_postings"] / max(m["num_docs"], 1), 1),
            "size_bytes": index_size_bytes(self.index_dir),
            **build_details(m),
            "num_shards": m["num_shards"],
            "routing": m["routing"],
            "shards": m["shards"],
            "encoding": m.get("encoding"),
        }
