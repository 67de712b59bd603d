"""Scale-out on Ray: encode a corpus on many workers into N index shards, search them with a global top-k.

Building (:func:`build_sharded`, ``lsr index CORPUS --shards N [--ray ADDRESS] [--workers W]``)
    The driver streams the corpus (:class:`lsr.corpus.CorpusReader`, never all of it in memory), numbers the
    documents in corpus order (their *ordinal*) and routes each by the stable hash of its id
    (:func:`lsr.sharding.shard_of`). Windows of documents go round-robin to a pool of W encoder actors (each loads
    the SPLADE model once and splits its output by shard, one Ray object per shard), and each shard's part goes
    straight to that shard's builder actor (an :class:`index.IndexBuilder` plus a document store), in window
    order, so a shard numbers its documents in corpus order. At most ``2 W + 2`` windows are in flight.
    Quantization needs one scale for the whole collection, or scores from different shards would not be
    comparable: the builders buffer float weights (external memory) and report their maximum; the driver takes
    the global maximum and every shard is finalized with the same scale. Structures (``bmp``, ``seismic``, with
    an optional ``reorder``), dense vectors and each shard's own inference-free table are then built by the
    builder actors in parallel. The driver writes a collection-wide inference-free table (BM25 IDF over all
    shards' posting lists, so inference-free queries weigh terms as a single index would) and ``shards.json``.
    The whole directory is staged and moved into place only when complete, like ``Engine.build``.

Searching (:class:`ShardedEngine`, the same ``search`` / ``search_batch`` / ``document`` surface as
:class:`lsr.engine.Engine`, and what ``lsr search`` / ``lsr serve`` use on a sharded directory)
    One actor per shard holds its shard memory-mapped. The coordinator encodes text queries once, quantizes
    them exactly as one index would (the quantization depends only on the query and the shared scale), fans
    the quantized query out, and merges the shards' top-k by (integer score desc, global doc number asc). A
    document's global number is ``ordinal * N + shard``: it orders documents like a single index over the same
    corpus numbers them, so for ``exact`` and ``bmp`` (safe) the result equals a single index's — same ids,
    same float scores, same order including ties (``tests/test_distributed.py``). Approximate modes
    (``bmp-approx``, ``seismic``) run per shard; their recall against exact is measured by
    ``eval/bench_shards.py``. Dense search merges the shards' top-k by (score desc, global number asc); hybrid
    and metadata filters run :mod:`lsr.fusion` unchanged over the merged lists (a fused candidate missing one
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
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lsr.index.storage import IndexFormatError, read_manifest, sha256_file, staged_directory, write_array, write_manifest
from lsr.index.structures import structure_for_mode
from lsr import __version__
from lsr.corpus import CorpusError, CorpusReader, Document
from lsr.engine import DOCSTORE_FILE, Engine, _windows, document_text
from lsr.sharding import (
    ORDINALS_ARRAY, ROUTING, SHARDED_FORMAT, SHARDED_FORMAT_VERSION, SHARDS_FILE, read_sharded_manifest,
    shard_dir_name, shard_of,
)

log = logging.getLogger("lsr.distributed")

DEFAULT_WINDOW = 256  # documents per encoding task
_IMPACT_LEVELS = {8: 255, 16: 65535}
_HEADER_CACHE = 100_000  # (id, title) of recently returned hits, on the coordinator
_DOC_CACHE = 2_048


# ---------------------------------------------------------------------- Ray runtime
def _ray():
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError("sharded indexes need Ray: pip install 'lsr[ray]'") from None
    return ray


def _kill(actors) -> None:
    """Kill Ray actors, ignoring those already gone."""
    ray = _ray()
    for a in actors:
        try:
            ray.kill(a)
        except Exception:  # noqa: BLE001 - already gone
            pass


def init_ray(address: str | None = None, num_cpus: int | None = None):
    """Join the Ray cluster at ``address`` (``auto``, ``ray://host:port``), or start a local runtime with
    ``num_cpus`` CPUs (default: all of this machine's); a runtime already started in this process is reused."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    quiet = {"log_to_driver": os.environ.get("LSR_RAY_LOGS") == "1", "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **quiet)
    return ray


def _get(refs):
    """``ray.get`` that re-raises a remote exception as itself (a CorpusError stays a CorpusError)."""
    ray = _ray()
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, Exception):
            log.debug("remote error: %s", err)
            raise cause from None
        raise


_ACTOR_CLASSES: dict[str, object] = {}


def _actor_class(cls):
    if cls.__name__ not in _ACTOR_CLASSES:
        _ACTOR_CLASSES[cls.__name__] = _ray().remote(cls)
    return _ACTOR_CLASSES[cls.__name__]


# ---------------------------------------------------------------------- building
def _split_by_shard(docs: list[Document], ordinals: np.ndarray, shards: np.ndarray, num_shards: int,
                    indptr: np.ndarray, terms: np.ndarray, weights: np.ndarray) -> list[tuple]:
    """Rows of a CSR window grouped by shard: per shard (docs, ordinals, indptr, terms, weights)."""
    parts = []
    for s in range(num_shards):
        rows = np.flatnonzero(shards == s)
        parts.append((
            [docs[r] for r in rows], ordinals[rows], *_take_rows(rows, indptr, terms, weights)))
    return parts


def _take_rows(rows: np.ndarray, indptr: np.ndarray, terms: np.ndarray, weights: np.ndarray):
    lengths = indptr[rows + 1] - indptr[rows]
    ptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=ptr[1:])
    take = np.repeat(indptr[rows] - ptr[:-1], lengths) + np.arange(ptr[-1], dtype=np.int64)
    return ptr, terms[take], weights[take]


class _EncodeWorker:
    """Ray actor: the SPLADE model loaded once; encodes windows of documents and splits them by shard."""

    def __init__(self, model: str | None, doc_max_length: int, query_max_length: int, doc_top_k: int | None,
                 threads: int) -> None:
        from lsr.encoder import SpladeEncoder

        self.encoder = SpladeEncoder(model, doc_max_length=doc_max_length, query_max_length=query_max_length,
                                     doc_top_k=doc_top_k, threads=max(1, threads))

    def describe(self) -> dict:
        return self.encoder.describe()

    def tokenizer_json(self) -> str | None:
        tokenizer = self.encoder.tokenizer
        return tokenizer.backend_tokenizer.to_str() if getattr(tokenizer, "is_fast", False) else None

    def encode(self, docs: list[Document], ordinals: np.ndarray, shards: np.ndarray, num_shards: int,
               batch_size: int):
        batch = self.encoder.encode_documents([document_text(d) for d in docs], batch_size)
        parts = _split_by_shard(docs, ordinals, shards, num_shards, batch.indptr, batch.indices, batch.values)
        return parts[0] if num_shards == 1 else tuple(parts)


class _ShardBuilder:
    """Ray actor: one shard's IndexBuilder and document store, fed in corpus order; finalized with a given scale."""

    def __init__(self, shard_dir: str, shard: int, num_shards: int, vocab_size: int, quant_bits: int) -> None:
        from lsr.index import IndexBuilder
        from lsr.docstore import DocStore

        self.started = time.time()
        self.dir = Path(shard_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shard, self.num_shards = shard, num_shards
        self.builder = IndexBuilder(self.dir, vocab_size, quant_bits=quant_bits)
        self.store = DocStore(self.dir / DOCSTORE_FILE)
        self.ordinals: list[np.ndarray] = []
        self.rejected = 0

    def add(self, part: tuple) -> tuple[int, list[tuple]]:
        """Store and index one window's documents; duplicates ids are not added and come back as errors."""
        from lsr.docstore import DuplicateIdError

        docs, ordinals, indptr, terms, weights = part
        keep, errors = [], []
        for i, doc in enumerate(docs):
            try:
                self.store.add(self.builder.num_docs + len(keep), doc)
                keep.append(i)
            except DuplicateIdError:
                errors.append((doc.source, doc.line, "id", f"duplicate id {doc.id!r}"))
        if errors:
            self.rejected += len(errors)
            rows = np.asarray(keep, np.int64)
            indptr, terms, weights = _take_rows(rows, np.asarray(indptr), np.asarray(terms), np.asarray(weights))
            ordinals = np.asarray(ordinals)[rows]
        if keep:
            self.builder.add(indptr, terms, weights)
            self.ordinals.append(np.asarray(ordinals, np.int64))
        self.store.commit()
        return len(keep), errors

    def stats(self) -> dict:
        return {"documents": self.builder.num_docs, "max_weight": self.builder.max_weight}

    def finalize(self, scale: float, extra: dict, tokenizer_json: str | None, structures: Sequence[str],
                 reorder: str | None, dense: dict | None, threads: int) -> dict:
        """Write the shard (shared ``scale``), its ordinals, inference-free table, structures and dense vectors."""
        import numba

        from lsr.engine import _add_dense_in, _add_structures_in

        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        self.store.close()
        count = self.builder.num_docs
        self.builder.finalize({
            **extra,
            "documents": {"file": DOCSTORE_FILE, "count": count, "sha256": sha256_file(self.dir / DOCSTORE_FILE)},
            "skipped_records": self.rejected,
            "build_seconds": round(time.time() - self.started, 3),
        }, scale=scale)
        ordinals = np.concatenate(self.ordinals) if self.ordinals else np.zeros(0, np.int64)
        entry = write_array(self.dir, ORDINALS_ARRAY, ordinals)
        manifest = read_manifest(self.dir)
        manifest["arrays"][ORDINALS_ARRAY] = entry
        manifest["arrays"] = dict(sorted(manifest["arrays"].items()))
        manifest["shard"] = {"shard": self.shard, "num_shards": self.num_shards, "routing": ROUTING,
                             "ordinals": ORDINALS_ARRAY, "global_docno": "ordinal * num_shards + shard"}
        write_manifest(self.dir, manifest)
        if tokenizer_json is not None:
            from lsr.query_encoders import write_inference_free

            write_inference_free(self.dir, tokenizer_json)
        _add_structures_in(self.dir, list(structures), reorder)
        if dense is not None:
            import torch

            torch.set_num_threads(max(1, threads))
            _add_dense_in(self.dir, dense["model"], dense["batch_size"], dense["dtype"], dense["hnsw_threshold"],
                          False)
        manifest = read_manifest(self.dir)
        return {
            "dir": self.dir.name, "documents": count, "postings": manifest["num_postings"],
            "dropped_postings": manifest["dropped_postings"], "max_weight": manifest["quantization"]["max_weight"],
            "size_bytes": sum(f.stat().st_size for f in self.dir.iterdir() if f.is_file()),
            "structures": manifest.get("structures", {}), "reorder": manifest.get("reorder"),
            "dense": manifest.get("dense"),
        }


def build_sharded(
    corpus: str | os.PathLike,
    index_dir: str | os.PathLike,
    shards: int,
    *,
    address: str | None = None,
    workers: int | None = None,
    encoder_threads: int = 1,
    model: str | None = None,
    batch_size: int = 32,
    doc_max_length: int = 256,
    query_max_length: int = 64,
    doc_top_k: int | None = None,
    quant_bits: int = 8,
    id_field: str | None = None,
    text_field: str | None = None,
    title_field: str | None = None,
    skip_bad: bool = False,
    structures: Sequence[str] = (),
    reorder: str | None = None,
    dense: bool = False,
    dense_model: str | None = None,
    dense_dtype: str = "float16",
    hnsw_threshold: int | None = None,
    window: int = DEFAULT_WINDOW,
    progress: bool = True,
    encoder=None,
) -> dict:
    """Build a sharded index of ``corpus`` into ``index_dir`` on Ray (see the module doc); return ``shards.json``.

    ``workers`` encoder actors of ``encoder_threads`` CPUs each (default: as many as the cluster's CPUs allow);
    ``address`` is the Ray cluster (default: a local runtime with ``workers`` CPUs). The other options are
    :meth:`Engine.build`'s, applied to every shard. ``encoder``: an already loaded :class:`SpladeEncoder` the driver
    uses for a corpus of precomputed vectors (token ids); text is always encoded by the workers.
    """
    from lsr.vectors import is_vector_file

    if shards < 1:
        raise ValueError(f"--shards must be >= 1, got {shards}")
    if quant_bits not in _IMPACT_LEVELS:
        raise ValueError("quant_bits must be 8 or 16")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    started = time.time()
    corpus, index_dir = Path(corpus), Path(index_dir)
    vectors = is_vector_file(corpus)
    reader = None if vectors else CorpusReader(corpus, id_field=id_field, text_field=text_field,
                                               title_field=title_field, skip_bad=skip_bad)
    ray = init_ray(address, None if workers is None else workers * encoder_threads)
    n_workers = 0
    encoders: list = []
    builders: list = []
    try:
        if vectors:  # precomputed vectors: no model runs, the driver only maps tokens to ids
            from lsr.encoder import SpladeEncoder

            encoder = encoder or SpladeEncoder(model, doc_max_length=doc_max_length,
                                               query_max_length=query_max_length, doc_top_k=doc_top_k)
            model_info = encoder.describe()
            tokenizer = encoder.tokenizer
            tokenizer_json = tokenizer.backend_tokenizer.to_str() if getattr(tokenizer, "is_fast", False) else None
        else:
            n_workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1) // encoder_threads))
            actor = _actor_class(_EncodeWorker).options(num_cpus=encoder_threads)
            encoders = [actor.remote(model, doc_max_length, query_max_length, doc_top_k, encoder_threads)
                        for _ in range(n_workers)]
            described = _get([e.describe.remote() for e in encoders])
            if len({d["sha256"] for d in described}) != 1:
                raise ValueError(f"the encoder workers loaded different files for model {model!r} "
                                 f"(sha256 {sorted({d['sha256'][:12] for d in described})}); install the same "
                                 "checkpoint on every node")
            model_info = described[0]
            tokenizer_json = _get(encoders[0].tokenizer_json.remote())
        vocab_size = int(model_info["vocab_size"])
        with staged_directory(index_dir) as staging, _stopped_on_error(lambda: encoders + builders):
            builder_actor = _actor_class(_ShardBuilder).options(num_cpus=0, scheduling_strategy="SPREAD")
            builders = [builder_actor.remote(str(staging / shard_dir_name(s)), s, shards, vocab_size, quant_bits)
                        for s in range(shards)]
            stream_started = time.time()
            expected = reader.count() if reader is not None else None
            if expected and n_workers:  # small corpora: still give every worker a few windows
                window = max(16, min(window, -(-expected // (4 * n_workers))))
            bar = tqdm(total=expected, unit="doc",
                       desc=f"indexing into {shards} shard(s)", disable=not progress, dynamic_ncols=True)
            if vectors:
                total, skipped = _stream_vectors(corpus, encoder, builders, skip_bad, window, bar)
            else:
                total = _stream_corpus(reader, encoders, builders, batch_size, window, bar)
                skipped = reader.skipped
            bar.close()
            stream_seconds = time.time() - stream_started
            for e in encoders:
                ray.kill(e)
            encoders = []
            stats = _get([b.stats.remote() for b in builders])
            documents = sum(s["documents"] for s in stats)
            if documents == 0:
                raise CorpusError(corpus, 0, None, "no documents to index")
            empty = [i for i, s in enumerate(stats) if s["documents"] == 0]
            if empty:
                raise ValueError(f"shard(s) {empty} got no documents ({documents} documents for {shards} shards); "
                                 "use fewer shards")
            max_weight = max(s["max_weight"] for s in stats)
            scale = max_weight / _IMPACT_LEVELS[quant_bits] if max_weight > 0 else 1.0
            extra = {"lsr_version": __version__, "model": model_info, "corpus": str(corpus.resolve()),
                     "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            dense_opts = None
            if dense:
                from lsr.dense import DEFAULT_HNSW_THRESHOLD

                dense_opts = {"model": dense_model, "batch_size": batch_size, "dtype": dense_dtype,
                              "hnsw_threshold": DEFAULT_HNSW_THRESHOLD if hnsw_threshold is None else hnsw_threshold}
            cpus = int(ray.cluster_resources().get("CPU", 1))
            threads = max(1, cpus // shards)
            infos = _get([b.finalize.remote(scale, extra, tokenizer_json, list(structures), reorder, dense_opts,
                                            threads) for b in builders])
            for b in builders:
                ray.kill(b)
            builders = []
            manifest = _sharded_manifest(
                staging, infos, model_info, quant_bits, scale, max_weight, vocab_size, tokenizer_json, extra,
                skipped=skipped, corpus_records=total, encode={
                    "workers": n_workers, "seconds": round(stream_seconds, 3),
                    "docs_per_s": round(total / stream_seconds, 2) if stream_seconds > 0 else None,
                    "encoder_threads": encoder_threads, "window": window, "batch_size": batch_size},
                seconds=time.time() - started)
    finally:
        for a in encoders + builders:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
    if skipped:
        log.warning("skipped %d bad record(s) in %s", skipped, corpus)
    return manifest


@contextmanager
def _stopped_on_error(actors):
    """On an error, kill the actors ``actors()`` returns and wait until they are gone (so that no builder still
    writes into the staging directory while it is removed)."""
    try:
        yield
    except BaseException:
        ray = _ray()
        live = actors()
        _kill(live)
        if live:
            ray.wait([a.__ray_ready__.remote() for a in live], num_returns=len(live), timeout=30)
        raise


def _drain(pending: deque, bar, on_error, keep: int) -> None:
    """Wait for the oldest windows until at most ``keep`` are in flight; hand duplicate-id errors to ``on_error``."""
    while len(pending) > keep:
        size, refs = pending.popleft()
        for _, errors in _get(refs):
            for err in errors:
                on_error(CorpusError(*err))
        bar.update(size)


def _stream_corpus(reader: CorpusReader, encoders: list, builders: list, batch_size: int, window: int, bar) -> int:
    num_shards = len(builders)
    pending: deque = deque()
    ordinal = 0
    for w, docs in enumerate(_windows(iter(reader), window)):
        ordinals = np.arange(ordinal, ordinal + len(docs), dtype=np.int64)
        ordinal += len(docs)
        shards = np.fromiter((shard_of(d.id, num_shards) for d in docs), np.int64, len(docs))
        encoder = encoders[w % len(encoders)]
        parts = encoder.encode.options(num_returns=num_shards).remote(docs, ordinals, shards, num_shards, batch_size)
        parts = [parts] if num_shards == 1 else parts
        present = np.bincount(shards, minlength=num_shards) > 0
        pending.append((len(docs), [builders[s].add.remote(parts[s]) for s in range(num_shards) if present[s]]))
        _drain(pending, bar, reader.skip_error, 2 * len(encoders) + 2)
    _drain(pending, bar, reader.skip_error, 0)
    return ordinal


def _stream_vectors(path: Path, encoder, builders: list, skip_bad: bool, window: int, bar) -> tuple[int, int]:
    from lsr.vectors import read_vectors

    num_shards = len(builders)
    skipped = 0

    def on_error(err: CorpusError) -> None:
        nonlocal skipped
        if not skip_bad:
            raise err
        log.warning("skipping bad record: %s", err)
        skipped += 1

    vocab = encoder.tokenizer.get_vocab()
    pending: deque = deque()
    rows: list[tuple[Document, dict[str, float]]] = []
    ordinal = 0

    def flush() -> None:
        nonlocal ordinal
        docs = [d for d, _ in rows]
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum([len(v) for _, v in rows], out=indptr[1:])
        terms = np.fromiter((vocab[t] for _, v in rows for t in v), np.uint32, count=int(indptr[-1]))
        weights = np.fromiter((w for _, v in rows for w in v.values()), np.float32, count=int(indptr[-1]))
        ordinals = np.arange(ordinal, ordinal + len(docs), dtype=np.int64)
        ordinal += len(docs)
        shards = np.fromiter((shard_of(d.id, num_shards) for d in docs), np.int64, len(docs))
        parts = _split_by_shard(docs, ordinals, shards, num_shards, indptr, terms, weights)
        pending.append((len(docs), [builders[s].add.remote(parts[s]) for s in range(num_shards) if parts[s][0]]))
        rows.clear()
        _drain(pending, bar, on_error, 4)

    for doc, vector in read_vectors(path, on_error):
        unknown = next((t for t in vector if t not in vocab), None)
        if unknown is not None:
            on_error(CorpusError(path, doc.line, f"vector.{unknown}",
                                 f"token not in the vocabulary of model {encoder.name!r}"))
            continue
        rows.append((doc, vector))
        if len(rows) == window:
            flush()
    if rows:
        flush()
    _drain(pending, bar, on_error, 0)
    return ordinal, skipped


def _sharded_manifest(root: Path, infos: list[dict], model_info: dict, quant_bits: int, scale: float,
                      max_weight: float, vocab_size: int, tokenizer_json: str | None, extra: dict, *, skipped: int,
                      corpus_records: int, encode: dict, seconds: float) -> dict:
    """Write the collection-wide inference-free table and ``shards.json`` into ``root``; return the manifest."""
    documents = sum(i["documents"] for i in infos)
    names = set.intersection(*(set(i["structures"]) for i in infos))
    dense = infos[0]["dense"] if all(i["dense"] for i in infos) else None
    manifest = {
        "format": SHARDED_FORMAT,
        "format_version": SHARDED_FORMAT_VERSION,
        "lsr_version": __version__,
        "num_shards": len(infos),
        "routing": ROUTING,
        "global_docno": "ordinal * num_shards + shard (ordinal: position in the corpus)",
        "shards": [{k: i[k] for k in ("dir", "documents", "postings", "dropped_postings", "max_weight",
                                      "size_bytes")} | {"hnsw": bool(i["dense"] and i["dense"].get("hnsw"))}
                   for i in infos],
        "num_docs": documents,
        "vocab_size": vocab_size,
        "num_postings": sum(i["postings"] for i in infos),
        "quantization": {"bits": quant_bits, "scale": float(scale), "max_weight": float(max_weight),
                         "shared": True},
        "model": model_info,
        "structures": {n: infos[0]["structures"][n] for n in sorted(names)},
        "reorder": infos[0]["reorder"],
        "dense": dense,
        "arrays": {},
        "corpus": extra["corpus"],
        "corpus_records": corpus_records,
        "skipped_records": skipped,
        "built_at": extra["built_at"],
        "build_seconds": round(seconds, 3),
        "encoding": encode,
    }
    if tokenizer_json is not None:
        _write_global_inference_free(root, manifest, infos, tokenizer_json)
    import json

    (root / SHARDS_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def _write_global_inference_free(root: Path, manifest: dict, infos: list[dict], tokenizer_json: str) -> None:
    """BM25 IDF over every shard's posting lists (document frequencies add up): a single index's table."""
    from lsr.query_encoders import IDF_ARRAY, MANIFEST_KEY, TOKENIZER_FILE, bm25_idf, special_token_ids

    df = np.zeros(manifest["vocab_size"], np.int64)
    for info in infos:
        offsets = np.load(root / info["dir"] / "postings_offsets.npy", mmap_mode="r")
        df += np.diff(np.asarray(offsets, np.int64))
    idf = bm25_idf(df, manifest["num_docs"])
    specials = [i for i in special_token_ids(tokenizer_json) if i < len(idf)]
    idf[specials] = 0.0
    (root / TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")
    manifest["arrays"][IDF_ARRAY] = write_array(root, IDF_ARRAY, idf)
    manifest[MANIFEST_KEY] = {
        "array": IDF_ARRAY,
        "weighting": "bm25-idf over the indexed document vectors of all shards: ln(1 + (N - df + 0.5) / (df + 0.5))",
        "num_docs": manifest["num_docs"],
        "special_tokens_zeroed": len(specials),
        "nonzero_terms": int(np.count_nonzero(idf)),
        "tokenizer": {"file": TOKENIZER_FILE, "sha256": sha256_file(root / TOKENIZER_FILE)},
        "query_max_length": int(manifest["model"].get("query_max_length") or 64),
    }


# ---------------------------------------------------------------------- shard actors
class _ShardServer:
    """Ray actor: one shard opened with Engine.open (memory-mapped); answers in global doc numbers and int scores."""

    def __init__(self, shard_dir: str, shard: int, num_shards: int, threads: int) -> None:
        import numba

        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        self.threads = max(1, threads)
        self.engine = Engine.open(shard_dir)
        self.index = self.engine.index
        manifest = self.engine.manifest
        ordinals = np.asarray(self.index.array(ORDINALS_ARRAY), np.int64)
        if "doc_original" in manifest["arrays"]:  # reordered: doc_original maps current numbers to build numbers
            ordinals = ordinals[np.asarray(self.index.array("doc_original"), np.int64)]
        self.keys = ordinals * num_shards + shard
        self._order = None if np.all(np.diff(self.keys) > 0) else np.argsort(self.keys, kind="stable")
        self.num_docs = self.index.num_docs

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

    def search(self, quantized: list[tuple[np.ndarray, np.ndarray]], k: int, mode: str, params: dict):
        """Top-k of quantized queries: ([(global numbers int64, int32 scores)], {global number: (id, title)})."""
        k = min(int(k), self.num_docs)
        empty = (np.empty(0, np.int64), np.empty(0, np.int32))
        name = structure_for_mode(mode)
        live = [i for i, (qterms, _) in enumerate(quantized) if len(qterms)]
        found: list = [None] * len(quantized)
        if k and live:
            if name is None:
                for i in live:
                    found[i] = self.index.search_quantized(*quantized[i], k=k)
            else:
                structure = self.index.structure(name)
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

    def sparse_totals(self, qterms: np.ndarray, qweights: np.ndarray, keys) -> np.ndarray:
        """Integer scores of the given documents for a quantized query (as :meth:`index.search.InvertedIndex.score_docs`)."""
        from lsr.index.search import _score_docs

        local = self._local(keys)
        out = np.zeros(len(local), np.int64)
        if len(qterms) and len(local):
            _score_docs(self.index.array("forward_offsets"), self.index.array("forward_terms"),
                        self.index.array("forward_impacts"), np.ascontiguousarray(qterms, np.uint32),
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

    def lookup(self, doc_id: str) -> int:
        return int(self.keys[self.engine.docs.docno(doc_id)])


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
    """The inverted index side of a :class:`ShardedEngine`: what ``Engine`` and :mod:`lsr.fusion` call on
    ``engine.index`` (``search``, ``search_batch``, ``doc_vector``, ``num_docs``), answered by the shard actors.
    Document numbers are global (``ordinal * num_shards + shard``)."""

    def __init__(self, engine: "ShardedEngine") -> None:
        m = engine.manifest
        self._engine = engine
        self.manifest = m
        self.index_dir = engine.index_dir
        self.num_shards = int(m["num_shards"])
        self.num_docs = int(m["num_docs"])
        self.vocab_size = int(m["vocab_size"])
        self.num_postings = int(m["num_postings"])
        self.scale = float(m["quantization"]["scale"])
        self._max_level = _IMPACT_LEVELS[int(m["quantization"]["bits"])]

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
            raise IndexFormatError(f"index {self.index_dir} has no {name!r} structure; rebuild it with "
                                   f"`lsr index CORPUS --shards {self.num_shards} --structures {name}`")
        quantized = [self.quantize(t, w) for t, w in queries]
        empty = (np.empty(0, np.int64), np.empty(0, np.float32))
        if not quantized or not any(len(q[0]) for q in quantized):
            return [empty for _ in quantized]
        payload = [(q[0], q[1]) for q in quantized]
        answers = _get([a.search.remote(payload, k, mode, params) for a in self._engine.actors])
        self._engine.docs.remember({h: v for _, headers in answers for h, v in headers.items()})
        out = []
        for i, (_, _, qscale) in enumerate(quantized):
            keys, scores = _merge([results[i] for results, _ in answers], k)
            out.append((keys, (scores * (self.scale / qscale)).astype(np.float32)))  # as InvertedIndex._dequantize
        return out

    def score_docs(self, vector: tuple[np.ndarray, np.ndarray], docnos) -> np.ndarray:
        """Exact sparse scores of given global doc numbers (the :func:`lsr.fusion.sparse_scores` hook)."""
        docnos = np.asarray(docnos, np.int64)
        qterms, qweights, qscale = self.quantize(*vector)
        totals = np.zeros(len(docnos), np.int64)
        if len(qterms) and len(docnos):
            groups = _by_shard(docnos, self.num_shards)
            actors = self._engine.actors
            found = _get([actors[s].sparse_totals.remote(qterms, qweights, keys) for s, keys in groups.items()])
            values = dict(zip(np.concatenate(list(groups.values())).tolist(), np.concatenate(found).tolist()))
            totals = np.array([values[int(d)] for d in docnos], np.int64)
        return (totals * (self.scale / qscale)).astype(np.float32).astype(np.float64)

    def doc_vector(self, doc_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Stored (term ids, dequantized weights) of one document by global number."""
        if not 0 <= int(doc_id):
            raise IndexError(f"doc id {doc_id} out of range")
        try:
            _, terms, weights = self._engine.docs.bundle(int(doc_id))
        except KeyError:
            raise IndexError(f"no document with global number {doc_id}") from None
        return terms, weights


class ShardedDense:
    """The dense side of a :class:`ShardedEngine` (what :mod:`lsr.fusion` calls on ``engine.dense``)."""

    def __init__(self, engine: "ShardedEngine") -> None:
        self._engine = engine
        self.info = engine.manifest["dense"]
        self.num_docs = int(engine.manifest["num_docs"])
        self.dim = int(self.info["dim"])
        self.num_shards = int(engine.manifest["num_shards"])

    @property
    def model(self) -> dict:
        return self.info["model"]

    @property
    def uses_hnsw(self) -> bool:
        return any(s.get("hnsw") for s in self._engine.manifest["shards"])

    def search(self, query: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        return self.search_batch(np.asarray(query, np.float32)[None, :], k)[0]

    def search_batch(self, queries: np.ndarray, k: int = 10, exact: bool | None = None,
                     ef_search: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        from lsr.dense import check_dense_queries

        queries, k = check_dense_queries(queries, self.dim, k, self.num_docs)
        if not len(queries):
            return []
        answers = _get([a.dense_search.remote(queries, k, exact, ef_search) for a in self._engine.actors])
        self._engine.docs.remember({h: v for _, headers in answers for h, v in headers.items()})
        return [_merge([results[i] for results, _ in answers], k) for i in range(len(queries))]

    def score(self, query: np.ndarray, docnos) -> np.ndarray:
        docnos = np.asarray(docnos, np.int64)
        if not docnos.size:
            return np.empty(0, np.float32)
        groups = _by_shard(docnos, self.num_shards)
        actors = self._engine.actors
        found = _get([actors[s].dense_scores.remote(np.asarray(query, np.float32), keys) for s, keys in groups.items()])
        values = dict(zip(np.concatenate(list(groups.values())).tolist(), np.concatenate(found).tolist()))
        return np.array([values[int(d)] for d in docnos], np.float32)


class ShardedDocs:
    """The document store side of a :class:`ShardedEngine`: look-ups go to the shard that holds the document."""

    def __init__(self, engine: "ShardedEngine") -> None:
        self._engine = engine
        self.num_shards = int(engine.manifest["num_shards"])
        self._headers = _LRU(_HEADER_CACHE)
        self._bundles = _LRU(_DOC_CACHE)  # global number -> (Document, term ids, weights)
        self._hit_lists = _LRU(_DOC_CACHE)  # global number -> the hit list it was returned in

    def __len__(self) -> int:
        return int(self._engine.manifest["num_docs"])

    def remember(self, headers: dict) -> None:
        self._headers.update(headers)

    def headers(self, docnos: list[int]) -> dict[int, tuple[str, str]]:
        found, missing = self._headers.get_many([int(d) for d in docnos])
        if missing:
            actors = self._engine.actors
            groups = _by_shard(missing, self.num_shards)
            fetched = {}
            for part in _get([actors[s].headers.remote(keys) for s, keys in groups.items()]):
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
            actors = self._engine.actors
            fetched: dict = {}
            try:
                for part in _get([actors[s].bundles.remote(keys) for s, keys in
                                  _by_shard(wanted, self.num_shards).items()]):
                    fetched.update(part)
            except KeyError:  # only ``docno`` can be unknown (the others were hits): KeyError unless it exists
                fetched = _get(actors[docno % self.num_shards].bundles.remote([docno]))
            self._bundles.update(fetched)
            found = fetched
        return found[docno]

    def get(self, docno: int) -> Document:
        try:
            return self.bundle(docno)[0]
        except KeyError:
            raise KeyError(docno) from None

    def docno(self, doc_id: str) -> int:
        return _get(self._engine.actors[shard_of(doc_id, self.num_shards)].lookup.remote(doc_id))


class ShardedEngine(Engine):
    """A sharded index searched through Ray shard actors, with :class:`lsr.engine.Engine`'s surface.

    ``search``/``search_batch`` (sparse in every mode, dense, hybrid, filters, inference-free queries),
    ``document``, ``document_vector``, ``query_vector`` and ``info`` work as on an Engine; ``Hit.docno`` is
    the global doc number. Shard actors start on first use (:meth:`start`) and stop with :meth:`close`.
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
        super().__init__(index_dir, ShardedIndex(self), ShardedDocs(self))

    @classmethod
    def open(cls, index_dir: str | os.PathLike, *, address: str | None = None, num_cpus: int | None = None,
             threads_per_shard: int = 1, cpus_per_shard: float = 0.0, verify: bool = False,
             encoder=None) -> "ShardedEngine":
        """Open a sharded index (reads the manifests only; the shard actors start on the first search).

        ``address``/``num_cpus`` as :func:`init_ray`; each shard actor reserves ``cpus_per_shard`` CPUs (0: none,
        so more shards than CPUs still start) and searches query batches on ``threads_per_shard`` threads.
        """
        index_dir = Path(index_dir)
        manifest = read_sharded_manifest(index_dir)
        if verify:
            from lsr.index import verify_index

            problems = [p for s in manifest["shards"] for p in verify_index(index_dir / s["dir"])]
            if problems:
                raise IndexFormatError(f"{index_dir}: sharded index failed verification:\n  " + "\n  ".join(problems))
        engine = cls(index_dir, manifest, address=address, num_cpus=num_cpus, threads_per_shard=threads_per_shard,
                     cpus_per_shard=cpus_per_shard)
        if encoder is not None:
            engine._check_encoder(encoder)
            engine._encoder = encoder
        return engine

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
        actor = _actor_class(_ShardServer).options(num_cpus=self._cpus_per_shard, max_concurrency=8,
                                                   scheduling_strategy="SPREAD")
        actors = [actor.remote(str(self.index_dir / s["dir"]), i, self.num_shards, self._threads_per_shard)
                  for i, s in enumerate(self.manifest["shards"])]
        ready = _get([a.ready.remote() for a in actors])
        for i, (info, shard) in enumerate(zip(ready, self.manifest["shards"])):
            if info["documents"] != shard["documents"]:
                raise IndexFormatError(f"{self.index_dir / shard['dir']}: holds {info['documents']} documents, "
                                       f"{SHARDS_FILE} says {shard['documents']}")
        return actors

    def start(self) -> "ShardedEngine":
        """Start the shard actors now (otherwise the first search does)."""
        self.actors  # noqa: B018
        return self

    def close(self) -> None:
        """Stop the shard actors."""
        actors, self._actors = self._actors, None
        if actors:
            _kill(actors)

    def shard_of(self, doc_id: str) -> int:
        """The shard holding (or that would hold) a document id."""
        return shard_of(doc_id, self.num_shards)

    # ------------------------------------------------------------------ Engine surface
    @property
    def dense(self):
        """The shards' dense vectors (:class:`ShardedDense`), or None if the shards have none."""
        if "_dense_index" not in self.__dict__:
            self._dense_index = ShardedDense(self) if self.manifest.get("dense") else None
        return self._dense_index

    def info(self) -> dict:
        """Counts, sizes, model and build details (summed over the shards), plus per-shard rows."""
        from lsr.sharding import index_size_bytes

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
            "quantization": m["quantization"],
            "model": m["model"],
            "built_at": m["built_at"],
            "build_seconds": m["build_seconds"],
            "corpus": m["corpus"],
            "dense": m.get("dense"),
            "inference_free": m.get("inference_free"),
            "num_shards": m["num_shards"],
            "routing": m["routing"],
            "shards": m["shards"],
            "encoding": m.get("encoding"),
        }

    def _unsupported(self, *args, **kwargs):
        raise NotImplementedError("a sharded index is rebuilt with `lsr index CORPUS --shards N` (with "
                                  "--structures/--dense); open a shard directory with Engine.open to change it alone")

    add_structures = add_dense = add_inference_free = export_vectors = _unsupported

