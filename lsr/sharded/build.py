"""Building a sharded index on Ray.

Building (:func:`build_sharded`, ``lsr index CORPUS --shards N [--ray ADDRESS] [--workers W]``)
    The driver streams the corpus (:class:`lsr.corpus.CorpusReader`, never all of it in memory), numbers the
    documents in corpus order (their *ordinal*) and routes each by the stable hash of its id
    (:func:`lsr.sharded.layout.shard_of`). Windows of documents go round-robin to a pool of W encoder actors (each loads
    the SPLADE model once and splits its output by shard, one Ray object per shard), and each shard's part goes
    straight to that shard's builder actor (an :class:`index.IndexBuilder` plus a document store), in window
    order, so a shard numbers its documents in corpus order. At most ``2 W + 2`` windows are in flight.
    Quantization needs one scale for the whole collection, or scores from different shards would not be
    comparable: the builders buffer float weights (external memory) and report their maximum; the driver takes
    the global maximum and every shard is finalized with the same scale. The BM25 field (on by default for
    text corpora, as for a single index) needs collection statistics too: each builder reorders its shard (with
    ``reorder``) and analyzes its documents (:func:`lsr.pipeline.analyze_bm25_in`), the driver gathers the
    total document length and the words, and every shard's field is written with the collection's ``avgdl`` and
    word vocabulary (:func:`lsr.pipeline.write_bm25_in`), so its term ids and document frequencies are the
    collection's. Structures (``bmp``, ``seismic``, for both fields), dense vectors and each shard's own
    inference-free table are then built by the builder actors in parallel. The driver writes a collection-wide inference-free table (BM25 IDF over all
    shards' posting lists, so inference-free queries weigh terms as a single index would) and ``shards.json``.
    The whole directory is staged and moved into place only when complete, like ``Engine.build``.

Without an address a local Ray runtime is started (``ray.init(num_cpus=...)``); ``address="auto"`` or
``"ray://host:10001"`` joins a cluster. Every node must see the index directory at the same path (a shared
filesystem) and have ``lsr`` installed.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from lsr.version import __version__
from lsr.corpus import CorpusError, Document
from lsr.docstore import DocStore
from lsr.encoder import SparseBatch
from lsr.index import IndexBuilder
from lsr.index.storage import read_manifest, sha256_file, staged_directory, write_array, write_manifest
from lsr.bm25_field import BM25_DIR, Bm25Settings, collection_vocab, field_dir, has_field
from lsr.pipeline import (DOCSTORE_FILE, BuildSettings, CorpusSource, Source, Window, WindowIndexer, add_optional_parts,
                          add_structures_in, analyze_bm25_in, encode_documents, progress_bar, take_rows, write_bm25_in)
from lsr.sharded.layout import (
    IMPACT_LEVELS, ORDINALS_ARRAY, ROUTING, SHARDED_FORMAT, SHARDED_FORMAT_VERSION, SHARDS_FILE, index_size_bytes,
    shard_dir_name, shard_of,
)
from lsr.sharded.ray_runtime import actor_class, init_ray, kill_actors, ray_get, ray_module
from lsr.vectors import is_vector_file

log = logging.getLogger("lsr.sharded")

DEFAULT_WINDOW = 256  # documents per encoding task


# ---------------------------------------------------------------------- building
def _split_by_shard(docs: list[Document], ordinals: np.ndarray, shards: np.ndarray, num_shards: int,
                    batch: SparseBatch) -> list[tuple]:
    """Rows of a window grouped by shard: per shard (docs, ordinals, CSR vectors)."""
    parts = []
    for s in range(num_shards):
        rows = np.flatnonzero(shards == s)
        parts.append(([docs[r] for r in rows], ordinals[rows], take_rows(batch, rows)))
    return parts


class _EncodeWorker:
    """Ray actor: the SPLADE model loaded once; encodes windows of documents and splits them by shard."""

    def __init__(self, settings: BuildSettings, threads: int) -> None:
        self.encoder = settings.load_encoder(threads=max(1, threads))

    def describe(self) -> dict:
        return self.encoder.describe()

    def tokenizer_json(self) -> str | None:
        tokenizer = self.encoder.tokenizer
        return tokenizer.backend_tokenizer.to_str() if getattr(tokenizer, "is_fast", False) else None

    def encode(self, docs: list[Document], ordinals: np.ndarray, shards: np.ndarray, num_shards: int,
               batch_size: int):
        parts = _split_by_shard(docs, ordinals, shards, num_shards, encode_documents(self.encoder, docs, batch_size))
        return parts[0] if num_shards == 1 else tuple(parts)


class _ShardBuilder:
    """Ray actor: one shard's IndexBuilder and document store, fed in corpus order; finalized with a given scale."""

    def __init__(self, shard_dir: str, shard: int, num_shards: int, vocab_size: int, quant_bits: int) -> None:
        self.started = time.time()
        self.dir = Path(shard_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shard, self.num_shards = shard, num_shards
        self.builder = IndexBuilder(self.dir, vocab_size, quant_bits=quant_bits)
        self.store = DocStore(self.dir / DOCSTORE_FILE)
        self.errors: list[tuple] = []  # of the current window: (file, line, field, message), sent to the driver
        self.indexer = WindowIndexer(self.builder, self.store, None, 0,
                                     lambda err: self.errors.append((err.path, err.line, err.field, err.message)))
        self.ordinals: list[np.ndarray] = []
        self.rejected = 0
        self.bm25 = None  # the BM25 field's first pass, between finalize and finish

    def add(self, part: tuple) -> tuple[int, list[tuple]]:
        """Store and index one window's documents; duplicates ids are not added and come back as errors."""
        docs, ordinals, batch = part
        self.errors = []
        rows = self.indexer.add(Window(docs, len(docs), batch))
        self.rejected += len(self.errors)
        self.ordinals.append(np.asarray(ordinals, np.int64)[rows])
        self.store.commit()
        return len(rows), self.errors

    def stats(self) -> dict:
        return {"documents": self.builder.num_docs, "max_weight": self.builder.max_weight}

    def finalize(self, scale: float, extra: dict, tokenizer_json: str | None, settings: BuildSettings,
                 threads: int) -> dict | None:
        """Write the shard (shared ``scale``), its ordinals and inference-free table, reorder it and analyze its
        BM25 field (kept for :meth:`finish`): return the field's (total length, documents with terms) and words."""
        import numba

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
        add_structures_in(self.dir, (), settings.reorder)  # first: the BM25 field is analyzed in the final order
        if settings.bm25:
            self.bm25 = analyze_bm25_in(self.dir, Bm25Settings(analyzer=settings.bm25_analyzer))
            return {"length_stats": self.bm25.length_stats(), "vocab": self.bm25.vocab}
        return None

    def finish(self, settings: BuildSettings, threads: int, bm25: dict | None) -> dict:
        """Write the BM25 field with the collection's ``avgdl`` and vocabulary (``bm25``), then the structures (of
        both fields) and dense vectors."""
        if self.bm25 is not None:
            with self.bm25:
                write_bm25_in(self.dir, self.bm25, avgdl=bm25["avgdl"], vocab=bm25["vocab"])
            self.bm25 = None
        if settings.dense:
            import torch

            torch.set_num_threads(max(1, threads))
        add_optional_parts(self.dir, replace(settings, reorder=None, bm25=False), progress=False)
        manifest = read_manifest(self.dir)
        field = read_manifest(field_dir(self.dir)) if has_field(manifest) else None
        return {
            "dir": self.dir.name, "documents": manifest["num_docs"], "postings": manifest["num_postings"],
            "dropped_postings": manifest["dropped_postings"], "max_weight": manifest["quantization"]["max_weight"],
            "size_bytes": index_size_bytes(self.dir),
            "structures": manifest.get("structures", {}), "reorder": manifest.get("reorder"),
            "dense": manifest.get("dense"),
            "bm25": field and {"postings": field["num_postings"], "vocab_size": field["vocab_size"],
                               "quantization": field["quantization"],
                               "structures": sorted(field.get("structures", {})), "settings": field["bm25"]},
        }


def build_sharded(
    corpus: str | os.PathLike,
    index_dir: str | os.PathLike,
    shards: int,
    settings: BuildSettings | None = None,
    *,
    address: str | None = None,
    workers: int | None = None,
    encoder_threads: int = 1,
    progress: bool = True,
    encoder=None,
    **options,
) -> dict:
    """Build a sharded index of ``corpus`` into ``index_dir`` on Ray (see the module doc); return ``shards.json``.

    ``workers`` encoder actors of ``encoder_threads`` CPUs each (default: as many as the cluster's CPUs allow);
    ``address`` is the Ray cluster (default: a local runtime with ``workers`` CPUs). ``settings`` (or its fields
    as keywords; the window defaults to :data:`DEFAULT_WINDOW` documents) are :meth:`Engine.build`'s, applied to
    every shard (``scale`` is always the collection's). ``encoder``: an already loaded :class:`SpladeEncoder` the
    driver uses for a corpus of precomputed vectors (token ids); text is always encoded by the workers.
    """
    if settings is not None and options:
        raise TypeError(f"build_sharded: give settings or their fields ({', '.join(options)}), not both")
    settings = settings or BuildSettings(**{"window": DEFAULT_WINDOW, **options})
    if shards < 1:
        raise ValueError(f"--shards must be >= 1, got {shards}")
    if settings.quant_bits not in IMPACT_LEVELS:
        raise ValueError("quant_bits must be 8 or 16")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    started = time.time()
    corpus, index_dir = Path(corpus), Path(index_dir)
    ray = init_ray(address, None if workers is None else workers * encoder_threads)
    n_workers = 0
    encoders: list = []
    builders: list = []
    try:
        if is_vector_file(corpus):  # precomputed vectors: no model runs, the driver only maps tokens to ids
            encoder = encoder or settings.load_encoder()
            model_info = encoder.describe()
            tokenizer = encoder.tokenizer
            tokenizer_json = tokenizer.backend_tokenizer.to_str() if getattr(tokenizer, "is_fast", False) else None
        else:
            n_workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1) // encoder_threads))
            actor = actor_class(_EncodeWorker).options(num_cpus=encoder_threads)
            encoders = [actor.remote(settings, encoder_threads) for _ in range(n_workers)]
            described = ray_get([e.describe.remote() for e in encoders])
            if len({d["sha256"] for d in described}) != 1:
                raise ValueError(f"the encoder workers loaded different files for model {settings.model!r} "
                                 f"(sha256 {sorted({d['sha256'][:12] for d in described})}); install the same "
                                 "checkpoint on every node")
            model_info = described[0]
            tokenizer_json = ray_get(encoders[0].tokenizer_json.remote())
        source = settings.source(corpus, encoder)
        if settings.bm25 is None:  # as a single index: on for text corpora
            settings = replace(settings, bm25=isinstance(source, CorpusSource))
        vocab_size = int(model_info["vocab_size"])
        with staged_directory(index_dir) as staging, _stopped_on_error(lambda: encoders + builders):
            builder_actor = actor_class(_ShardBuilder).options(num_cpus=0, scheduling_strategy="SPREAD")
            builders = [builder_actor.remote(str(staging / shard_dir_name(s)), s, shards, vocab_size,
                                             settings.quant_bits) for s in range(shards)]
            stream_started = time.time()
            expected = source.total()
            window = settings.window
            if expected and n_workers:  # small corpora: still give every worker a few windows
                window = max(16, min(window, -(-expected // (4 * n_workers))))
            with progress_bar(f"indexing into {shards} shard(s)", expected, progress=progress) as bar:
                total = _stream(source, window, settings.batch_size, encoders, builders, bar)
            stream_seconds = time.time() - stream_started
            for e in encoders:
                ray.kill(e)
            encoders = []
            stats = ray_get([b.stats.remote() for b in builders])
            documents = sum(s["documents"] for s in stats)
            if documents == 0:
                raise CorpusError(corpus, 0, None, "no documents to index")
            empty = [i for i, s in enumerate(stats) if s["documents"] == 0]
            if empty:
                raise ValueError(f"shard(s) {empty} got no documents ({documents} documents for {shards} shards); "
                                 "use fewer shards")
            max_weight = max(s["max_weight"] for s in stats)
            scale = max_weight / IMPACT_LEVELS[settings.quant_bits] if max_weight > 0 else 1.0
            extra = {"lsr_version": __version__, "model": model_info, "corpus": str(corpus.resolve()),
                     "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            cpus = int(ray.cluster_resources().get("CPU", 1))
            threads = max(1, cpus // shards)
            analyzed = ray_get([b.finalize.remote(scale, extra, tokenizer_json, settings, threads) for b in builders])
            bm25 = ray.put(_collection_bm25(analyzed, settings.bm25_analyzer)) if settings.bm25 else None
            infos = ray_get([b.finish.remote(settings, threads, bm25) for b in builders])
            for b in builders:
                ray.kill(b)
            builders = []
            manifest = _sharded_manifest(
                staging, infos, model_info, settings.quant_bits, scale, max_weight, vocab_size, tokenizer_json,
                extra, skipped=source.skipped, corpus_records=total, encode={
                    "workers": n_workers, "seconds": round(stream_seconds, 3),
                    "docs_per_s": round(total / stream_seconds, 2) if stream_seconds > 0 else None,
                    "encoder_threads": encoder_threads, "window": window, "batch_size": settings.batch_size},
                seconds=time.time() - started)
    finally:
        for a in encoders + builders:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
    if source.skipped:
        log.warning("skipped %d bad record(s) in %s", source.skipped, corpus)
    return manifest


def _collection_bm25(analyzed: list[dict], analyzer: str) -> dict:
    """What every shard's BM25 field is written with so that it scores as a single index's: the collection's
    ``avgdl`` (total length over documents with terms) and word vocabulary (None for the ``model`` analyzer)."""
    total = sum(a["length_stats"][0] for a in analyzed)
    with_terms = sum(a["length_stats"][1] for a in analyzed)
    vocab = collection_vocab(a["vocab"] for a in analyzed) if analyzer == "word" else None
    return {"avgdl": total / with_terms if with_terms else 1.0, "vocab": vocab}


@contextmanager
def _stopped_on_error(actors):
    """On an error, kill the actors ``actors()`` returns and wait until they are gone (so that no builder still
    writes into the staging directory while it is removed)."""
    try:
        yield
    except BaseException:
        ray = ray_module()
        live = actors()
        kill_actors(live)
        if live:
            ray.wait([a.__ray_ready__.remote() for a in live], num_returns=len(live), timeout=30)
        raise


def _drain(pending: deque, bar, on_error, keep: int) -> None:
    """Wait for the oldest windows until at most ``keep`` are in flight; hand duplicate-id errors to ``on_error``."""
    while len(pending) > keep:
        size, refs = pending.popleft()
        for _, errors in ray_get(refs):
            for err in errors:
                on_error(CorpusError(*err))
        bar.update(size)


def _stream(source: Source, window: int, batch_size: int, encoders: list, builders: list, bar) -> int:
    """Route every window of ``source`` to the shard builders (text encoded by ``encoders`` in turn, precomputed
    vectors split here), at most ``2 W + 2`` windows in flight; return the number of documents routed."""
    num_shards = len(builders)
    pending: deque = deque()
    ordinal = 0
    for w, win in enumerate(source.windows(window)):
        docs = win.docs
        ordinals = np.arange(ordinal, ordinal + len(docs), dtype=np.int64)
        ordinal += len(docs)
        shards = np.fromiter((shard_of(d.id, num_shards) for d in docs), np.int64, len(docs))
        if win.vectors is None:
            encoder = encoders[w % len(encoders)]
            parts = encoder.encode.options(num_returns=num_shards).remote(docs, ordinals, shards, num_shards,
                                                                          batch_size)
            parts = [parts] if num_shards == 1 else parts
        else:
            parts = _split_by_shard(docs, ordinals, shards, num_shards, win.vectors)
        present = np.bincount(shards, minlength=num_shards) > 0
        pending.append((len(docs), [builders[s].add.remote(parts[s]) for s in range(num_shards) if present[s]]))
        _drain(pending, bar, source.on_error, 2 * max(1, len(encoders)) + 2)
    _drain(pending, bar, source.on_error, 0)
    return ordinal


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
    if all(i["bm25"] for i in infos):
        manifest["bm25"] = _bm25_entry(infos, documents)
    import json

    (root / SHARDS_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def _bm25_entry(infos: list[dict], documents: int) -> dict:
    """``shards.json``'s record of the shards' BM25 fields (``bm25/`` in each): one vocabulary, avgdl and
    quantization step for all, document frequencies added up at search time (:class:`lsr.bm25_field.Bm25Side`)."""
    fields = [i["bm25"] for i in infos]
    settings = fields[0]["settings"]
    return {"dir": BM25_DIR, "analyzer": settings["analyzer"], "k1": settings["k1"], "b": settings["b"],
            "avgdl": settings["avgdl"], "num_docs": documents, "num_postings": sum(f["postings"] for f in fields),
            "vocab_size": fields[0]["vocab_size"],
            "quantization": {k: fields[0]["quantization"][k] for k in ("bits", "scale")},
            "structures": {n: {} for n in sorted(set.intersection(*(set(f["structures"]) for f in fields)))}}


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
