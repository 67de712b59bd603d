"""The engine facade: build an index from a corpus, open it, search it (used by CLI, server and eval)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

import numpy as np
from tqdm.auto import tqdm

from lsr.index import IndexBuilder, InvertedIndex
from lsr.index.structures import MODES
from lsr.index.storage import (IndexFormatError, read_manifest, sha256_file, staged_directory, write_json_atomic,
                           write_manifest, writer_lock)
from lsr import __version__
from lsr.corpus import CorpusError, CorpusReader, Document
from lsr.docstore import DocStore, DuplicateIdError
from lsr.encoder import SparseBatch, SpladeEncoder
from lsr.onnx_encoders import DEFAULT_QUERY_RUNTIME, check_query_runtime
from lsr.query_encoders import DEFAULT_QUERY_ENCODER, check_query_encoder
from lsr.vectors import is_vector_file, read_vectors, write_vector

log = logging.getLogger("lsr.engine")

DEFAULT_INDEX_DIR = Path("lsr_index")
DOCSTORE_FILE = "docs.sqlite"
PROGRESS_FILE = "progress.json"  # the checkpoint of a resumable build, in its staging directory

Query = Union[str, dict[str, float], tuple[Sequence[int], Sequence[float]]]


class ResumeError(ValueError):
    """An interrupted build cannot be resumed as asked (other settings, damaged checkpoint)."""


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
class BuildStats:
    """What a build did."""

    documents: int
    skipped: int
    seconds: float
    postings: int


class Engine:
    """An on-disk learned-sparse index with its document store and query encoder."""

    def __init__(self, index_dir: Path, index: InvertedIndex, docs: DocStore, encoder: SpladeEncoder | None = None):
        self.index_dir = Path(index_dir)
        self.index = index
        self.docs = docs
        self.manifest = index.manifest
        self.commit: dict | None = None  # the live-index commit (lsr.live), None for a never-changed index
        self._encoder = encoder
        self._stamp = None
        self.query_runtime = DEFAULT_QUERY_RUNTIME  # what runs text queries through a model: torch, onnx, onnx-int8
        self._onnx_encoders: dict[tuple[str, str], object] = {}  # (sparse|dense, runtime) -> ONNX query encoder

    # ------------------------------------------------------------------ build / open
    @classmethod
    def build(
        cls,
        corpus: str | os.PathLike,
        index_dir: str | os.PathLike = DEFAULT_INDEX_DIR,
        *,
        model: str | None = None,
        encoder: SpladeEncoder | None = None,
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
        window: int = 2048,
        progress: bool = True,
        dense: bool = False,
        dense_model: str | None = None,
        dense_dtype: str = "float16",
        hnsw_threshold: int | None = None,
        scale: float | None = None,
        resume: bool = False,
    ) -> "Engine":
        """Index a corpus (BEIR dir, JSONL, CSV/TSV, text tree, or a vectors JSONL) into ``index_dir``.

        The index is written to a staging directory and moved into place only when complete, so a failed or
        interrupted build never leaves a half-written index and never touches the previous one.
        ``structures`` (``bmp``, ``seismic``) are built too; ``reorder`` (e.g. ``bp``) renumbers documents first
        so that similar documents share BMP blocks. ``dense`` also stores dense document vectors (``dense_model``,
        default: the embedded all-MiniLM-L6-v2) for ``retriever="dense"|"hybrid"`` search (see :meth:`add_dense`).
        ``scale`` fixes the quantization step (default: the largest weight / the top impact level).

        Progress is committed every ``window`` documents into a checkpoint (``progress.json`` in the staging
        directory ``.{name}.building`` beside ``index_dir``); a build killed at any point leaves the previous index
        as it was, and ``resume=True`` continues an interrupted build with the same settings, ending with the same
        index as an uninterrupted build. Without ``resume`` an interrupted build is discarded (with a warning).
        One builder or writer per index at a time (``index.storage.writer_lock``).
        """
        started = time.time()
        corpus, index_dir = Path(corpus), Path(index_dir)
        with writer_lock(index_dir, "lsr index"):  # first: a second builder is told at once, not after loading
            encoder = encoder or SpladeEncoder(
                model, doc_max_length=doc_max_length, query_max_length=query_max_length, doc_top_k=doc_top_k
            )
            reader = CorpusReader(corpus, id_field=id_field, text_field=text_field, title_field=title_field,
                                  skip_bad=skip_bad) if not is_vector_file(corpus) else None
            settings = {
                "corpus": str(corpus.resolve()), "corpus_file": _corpus_fingerprint(corpus, reader),
                "model": encoder.name, "model_sha256": encoder.hash, "vocab_size": encoder.vocab_size,
                "doc_max_length": encoder.doc_max_length, "query_max_length": encoder.query_max_length,
                "doc_top_k": encoder.doc_top_k, "batch_size": batch_size, "window": window, "quant_bits": quant_bits,
                "scale": scale, "id_field": id_field, "text_field": text_field, "title_field": title_field,
                "skip_bad": skip_bad, "structures": list(structures), "reorder": reorder, "dense": bool(dense),
                "dense_model": dense_model, "dense_dtype": dense_dtype, "hnsw_threshold": hnsw_threshold,
            }
            ckpt = _Checkpoint.prepare(index_dir, settings, resume)
            try:
                with staged_directory(index_dir, staging=ckpt.staging, keep_on=(KeyboardInterrupt,)) as staging:
                    builder = IndexBuilder(staging, encoder.vocab_size, quant_bits=quant_bits,
                                           resume=ckpt.builder_state())
                    store = DocStore(staging / DOCSTORE_FILE)
                    try:
                        ckpt.truncate_store(store)
                        if reader is None:
                            skipped = _add_vectors(corpus, encoder, builder, store, skip_bad, window, progress, ckpt)
                        else:
                            _add_corpus(reader, encoder, builder, store, batch_size, window, progress, ckpt)
                            skipped = reader.skipped
                    except BaseException:
                        store.abandon()  # uncommitted documents roll back; a resume in this process reopens it
                        raise
                    num_docs = builder.num_docs
                    store.close()
                    if num_docs == 0:
                        raise CorpusError(corpus, 0, None, "no documents to index")
                    builder.finalize({
                        "lsr_version": __version__,
                        "model": encoder.describe(),
                        "documents": {"file": DOCSTORE_FILE, "count": num_docs,
                                      "sha256": sha256_file(staging / DOCSTORE_FILE)},
                        "corpus": str(corpus.resolve()),
                        "skipped_records": skipped,
                        "truncated_documents": ckpt.truncated,
                        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "build_seconds": round(ckpt.elapsed + time.time() - started, 3),
                    }, scale=scale, keep_chunks=True)  # the chunks stay until the end: a resume re-finalizes them
                    _add_inference_free_in(staging, encoder)
                    if reorder is not None:
                        ckpt.discard()  # the document store gets renumbered: an interruption from here starts over
                    _add_structures_in(staging, structures, reorder)
                    if dense:
                        _add_dense_in(staging, dense_model, batch_size, dense_dtype, hnsw_threshold, progress)
                    ckpt.discard()
            except KeyboardInterrupt:
                if ckpt.path.is_file():
                    log.warning("interrupted: %d documents of %s are committed; `lsr index ... --resume` (the same "
                                "command with --resume) continues the build", ckpt.num_docs, index_dir)
                raise
        if skipped:
            log.warning("skipped %d bad record(s) in %s", skipped, corpus)
        if ckpt.truncated:
            log.warning("%d document(s) reached the model's length limit (%d tokens): only their start is indexed",
                        ckpt.truncated, encoder.doc_max_length)
        return cls.open(index_dir, encoder=encoder)

    @classmethod
    def open(
        cls, index_dir: str | os.PathLike = DEFAULT_INDEX_DIR, *, verify: bool = False, checksums: bool = True,
        encoder: SpladeEncoder | None = None, query_runtime: str | None = None,
    ) -> "Engine":
        """Open an index directory at its latest commit (memory-mapped); the query encoder loads on first text query.

        ``query_runtime`` (default :data:`lsr.onnx_encoders.DEFAULT_QUERY_RUNTIME`) runs text queries through the
        model: ``torch``, ``onnx`` (fp32 export) or ``onnx-int8`` (see :mod:`lsr.onnx_encoders`).

        A live index (documents added or deleted since the build, see :mod:`lsr.live`) opens as all its segments
        minus deleted documents. ``checksums`` (default) checks the sha256 of every file first, so a corrupt
        index fails with the file's name instead of answering wrongly (each file is hashed once per process);
        ``verify`` also checks the structural invariants (as ``lsr verify``).
        """
        from lsr.live import commit_stamp

        index_dir = Path(index_dir)
        for attempt in range(5):
            stamp = commit_stamp(index_dir)
            if stamp is None:
                raise FileNotFoundError(f"no index at {index_dir} (missing manifest.json); "
                                        "build one with `lsr index CORPUS`")
            try:
                engine = cls._open_commit(index_dir, verify, checksums)
            except (FileNotFoundError, IndexFormatError):
                if attempt < 4 and commit_stamp(index_dir) != stamp:
                    continue  # a writer committed while we were opening: open the new commit
                raise
            if commit_stamp(index_dir) == stamp:
                break
        engine._stamp = stamp
        engine.query_runtime = check_query_runtime(query_runtime or DEFAULT_QUERY_RUNTIME)
        if encoder is not None:
            engine._check_encoder(encoder)
            engine._encoder = encoder
        return engine

    @classmethod
    def _open_commit(cls, index_dir: Path, verify: bool, checksums: bool) -> "Engine":
        from lsr.live import open_segments, read_commit

        commit = read_commit(index_dir)
        if commit is None:
            index = InvertedIndex.open(index_dir, verify=verify, checksums=checksums)
            return cls(index_dir, index, DocStore(index_dir / index.manifest["documents"]["file"], readonly=True))
        index, docs, dense = open_segments(index_dir, commit, verify, checksums)
        engine = cls(index_dir, index, docs)
        engine._dense_index = dense
        engine.commit = commit
        return engine

    def refresh(self) -> "Engine":
        """The engine of the index's latest commit: ``self`` if nothing was committed since this one opened (or if
        the new commit cannot be opened yet: the previous snapshot stays usable)."""
        from lsr.live import commit_stamp

        if commit_stamp(self.index_dir) == self._stamp:
            return self
        try:
            engine = Engine.open(self.index_dir, encoder=self._encoder, query_runtime=self.query_runtime)
        except (FileNotFoundError, IndexFormatError) as err:  # e.g. caught between the two renames of a compaction
            log.warning("%s changed but cannot be opened now (%s); keeping the previous snapshot", self.index_dir, err)
            return self
        if self.__dict__.get("_dense_encoder") is not None and engine.dense is not None \
                and engine.dense.model.get("sha256") == self._dense_encoder.hash:
            engine._dense_encoder = self._dense_encoder
        engine._onnx_encoders = self._onnx_encoders  # same models: every commit of an index has the build's
        return engine

    # ------------------------------------------------------------------ live changes (lsr.live)
    def add_documents(self, docs: Sequence[Document], *, update: bool = False, batch_size: int = 32,
                      progress: bool = False) -> dict:
        """Add documents as a new segment (``update``: replace live documents with the same ids); one commit.
        Returns the counts; call :meth:`refresh` to search the new commit."""
        from lsr.live import add_documents

        return add_documents(self.index_dir, docs, update=update, encoder=self._encoder,
                             dense_encoder=self.__dict__.get("_dense_encoder"), batch_size=batch_size,
                             progress=progress)

    def delete_documents(self, ids: Sequence[str], *, missing_ok: bool = False) -> dict:
        """Delete documents by id (tombstones, one commit); call :meth:`refresh` to search the new commit."""
        from lsr.live import delete_documents

        return delete_documents(self.index_dir, ids, missing_ok=missing_ok)

    def add_structures(self, names: Sequence[str], reorder: str | None = None, **params) -> "Engine":
        """Add pruning structures (and optionally reorder documents) to this index; return the reopened engine.

        Reordering rewrites every array, so it happens in a staging copy that replaces the index atomically;
        structures alone are written beside the existing arrays and recorded by an atomic manifest rewrite.
        """
        self._require_one_segment("add structures")
        if reorder is None:
            _add_structures_in(self.index_dir, names, None, **params)
        else:
            with staged_directory(self.index_dir) as staging:
                shutil.copytree(self.index_dir, staging, dirs_exist_ok=True)
                _add_structures_in(staging, names, reorder, **params)
        return Engine.open(self.index_dir, encoder=self._encoder)

    def add_inference_free(self) -> "Engine":
        """Add the inference-free query table (IDF from this index's posting lists, the model's tokenizer) to this
        index; return the reopened engine. Written beside the arrays and recorded by an atomic manifest rewrite."""
        if self._encoder is not None:
            _add_inference_free_in(self.index_dir, self._encoder)
        else:
            from lsr.query_encoders import add_inference_free

            add_inference_free(self.index_dir)
        return Engine.open(self.index_dir, encoder=self._encoder)

    def add_dense(self, model: str | None = None, *, batch_size: int = 32, dtype: str = "float16",
                  hnsw_threshold: int | None = None, progress: bool = True) -> "Engine":
        """Encode every document with a dense model and store the vectors in this index; return the reopened engine.

        The vectors go beside the existing arrays and are recorded by an atomic manifest rewrite (replacing any
        previous dense vectors). An HNSW graph is built when the collection reaches ``hnsw_threshold`` documents.
        """
        self._require_one_segment("add dense vectors")
        _add_dense_in(self.index_dir, model, batch_size, dtype, hnsw_threshold, progress)
        return Engine.open(self.index_dir, encoder=self._encoder)

    def _require_one_segment(self, what: str) -> None:
        """Index-wide additions rewrite the first segment only: refuse them while documents were added or deleted."""
        if self.commit and (self.commit["segments"] or self.commit.get("deletes")):
            raise ValueError(f"{self.index_dir} has added segments or deletions (see `lsr info`); run `lsr compact "
                             f"--index {self.index_dir}` first, then {what}")

    # ------------------------------------------------------------------ dense side
    @property
    def dense(self):
        """The index's dense vectors (:class:`lsr.dense.DenseIndex`), or None if it has none."""
        if "_dense_index" not in self.__dict__:
            from lsr.dense import DenseIndex

            self._dense_index = DenseIndex.open(self.index_dir, self.manifest)
        return self._dense_index

    def require_dense(self):
        """The dense vectors, or a ValueError saying how to add them."""
        if self.dense is None:
            raise ValueError(f"index {self.index_dir} has no dense vectors; add them with `lsr index --dense` "
                             "or Engine.add_dense()")
        return self.dense

    @property
    def dense_encoder(self):
        """The dense model the index's vectors were made with (loaded lazily, checked against its hash)."""
        if self.__dict__.get("_dense_encoder") is None:
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

    # ------------------------------------------------------------------ encoder
    @property
    def encoder(self) -> SpladeEncoder:
        """The model the index was built with (loaded lazily and checked against the recorded hash)."""
        if self._encoder is None:
            info = self.manifest["model"]
            encoder = SpladeEncoder(info["name"], doc_max_length=info["doc_max_length"],
                                    query_max_length=info["query_max_length"], doc_top_k=info["doc_top_k"])
            self._check_encoder(encoder)
            self._encoder = encoder
        return self._encoder

    @property
    def inference_free(self):
        """The tokenizer-only query encoder (:class:`lsr.query_encoders.InferenceFreeEncoder`) stored in the index."""
        if self.__dict__.get("_inference_free") is None:
            from lsr.query_encoders import InferenceFreeEncoder

            self._inference_free = InferenceFreeEncoder.open(self.index_dir, self.manifest)
        return self._inference_free

    def query_encoder(self, name: str = DEFAULT_QUERY_ENCODER, runtime: str | None = None):
        """The query encoder called ``name``: ``model`` (the SPLADE model, run by ``runtime``, default the engine's
        ``query_runtime``) or ``inference-free`` (tokenizer + IDF)."""
        return self._runtime_encoder("sparse", runtime) if check_query_encoder(name) == "model" else self.inference_free

    def _runtime_encoder(self, kind: str, runtime: str | None):
        """The ``sparse`` or ``dense`` model's query encoder in a query runtime (ONNX ones loaded once, hash-checked)."""
        runtime = check_query_runtime(runtime or self.query_runtime)
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
                     query_runtime: str | None = None) -> tuple[np.ndarray, np.ndarray]:
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

    # ------------------------------------------------------------------ search
    def search(self, query: Query, k: int = 10, mode: str = "exact", *, retriever: str = "sparse",
               fusion=None, alpha: float | None = None, filter: dict | None = None,
               query_encoder: str = DEFAULT_QUERY_ENCODER, query_runtime: str | None = None, **params) -> list[Hit]:
        """Top-k documents for one query; ``params`` are the mode's knobs (e.g. BMP's alpha/beta).

        ``retriever="dense"|"hybrid"`` uses the dense vectors (hybrid: fused with :mod:`lsr.fusion`; ``fusion``
        is ``"convex"``, ``"rrf"`` or a :class:`lsr.fusion.FusionConfig`, ``alpha`` the sparse weight);
        ``filter`` keeps documents whose metadata equals every ``{field: value}``. ``query_encoder`` encodes text
        for the sparse side: ``model`` (SPLADE) or ``inference-free`` (tokenizer + the index's IDF table, no model).
        ``query_runtime`` (``torch``, ``onnx``, ``onnx-int8``; default: the engine's) runs the models on text queries.
        """
        check_query_encoder(query_encoder)
        if retriever != "sparse" or fusion is not None or alpha is not None or filter:
            from lsr import fusion as _fusion

            sparse = dense = None
            if (query_encoder != DEFAULT_QUERY_ENCODER or query_runtime) and retriever != "dense":
                sparse = self.query_vector(query, query_encoder, query_runtime)
            if query_runtime and retriever != "sparse" and isinstance(query, str):
                dense = self.dense_query_vectors([query], query_runtime)[0]
            return _fusion.search(self, query, k, mode=mode, retriever=retriever, fusion=fusion, alpha=alpha,
                                  filter=filter, params=params, sparse_vector=sparse, dense_vector=dense)
        _check_search_args(k, mode)
        ids, scores = self.index.search(*self.query_vector(query, query_encoder, query_runtime), k=k, mode=mode,
                                        **params)
        return self._hits(ids, scores)

    def search_batch(
        self, queries: Sequence[Query], k: int = 10, mode: str = "exact", threads: int | None = None, *,
        retriever: str = "sparse", fusion=None, alpha: float | None = None, filter: dict | None = None,
        query_encoder: str = DEFAULT_QUERY_ENCODER, query_runtime: str | None = None, **params
    ) -> list[list[Hit]]:
        """Top-k documents for many queries (text queries encoded in batches, search parallel over queries)."""
        check_query_encoder(query_encoder)
        if retriever != "sparse" or fusion is not None or alpha is not None or filter:
            from lsr import fusion as _fusion

            sparse = dense = None
            if (query_encoder != DEFAULT_QUERY_ENCODER or query_runtime) and retriever != "dense":
                sparse = self.query_vectors(queries, query_encoder, query_runtime)
            if query_runtime and retriever != "sparse":
                dense = self.dense_query_vectors(queries, query_runtime)
            return _fusion.search_many(self, queries, k, mode=mode, retriever=retriever, fusion=fusion, alpha=alpha,
                                       filter=filter, threads=threads, params=params, sparse_vectors=sparse,
                                       dense_vectors=dense)
        _check_search_args(k, mode)
        vectors = self.query_vectors(queries, query_encoder, query_runtime)
        results = self.index.search_batch(vectors, k=k, threads=threads, mode=mode, **params)
        return [self._hits(ids, scores) for ids, scores in results]

    def query_vectors(self, queries: Sequence[Query], query_encoder: str = DEFAULT_QUERY_ENCODER,
                      query_runtime: str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
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

    def _hits(self, ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
        headers = self.docs.headers([int(i) for i in ids])
        return [Hit(headers[int(i)][0], float(s), headers[int(i)][1], int(i)) for i, s in zip(ids, scores)]

    # ------------------------------------------------------------------ documents and info
    def document(self, doc_id: str) -> Document:
        """A stored document by external id (KeyError if unknown)."""
        return self.docs.get(self.docs.docno(doc_id))

    def document_vector(self, doc_id: str, top: int | None = None) -> dict[str, float]:
        """A document's indexed (quantized) term weights, decoded to tokens."""
        terms, weights = self.index.doc_vector(self.docs.docno(doc_id))
        return self.encoder.decode(terms, weights, top)

    def info(self) -> dict:
        """Counts, sizes, model and build details (for a live index: segments, deleted documents, generation)."""
        m = self.manifest
        segments = getattr(self.index, "segments", [self.index])
        df = np.add.reduce([np.diff(seg.array("postings_offsets")) for seg in segments])
        size = sum(f.stat().st_size for f in self.index_dir.rglob("*") if f.is_file())
        postings = sum(seg.num_postings for seg in segments)
        return {
            "index": str(self.index_dir.resolve()),
            "format_version": m["format_version"],
            "documents": self.index.num_docs,
            "terms": int(np.count_nonzero(df)),
            "vocab_size": m["vocab_size"],
            "postings": postings,
            "avg_terms_per_doc": round(postings / max(sum(seg.num_docs for seg in segments), 1), 1),
            "size_bytes": size,
            "segments": len(segments),
            "deleted": int(len(getattr(self.index, "deleted", ()))),
            "generation": (self.commit or {}).get("generation", 0),
            "quantization": m["quantization"],
            "model": m["model"],
            "built_at": m["built_at"],
            "build_seconds": m["build_seconds"],
            "corpus": m["corpus"],
            "dense": m.get("dense"),
            "inference_free": m.get("inference_free"),
        }

    def export_vectors(self, path: str | os.PathLike, with_text: bool = False) -> int:
        """Write every indexed document's (dequantized) vector as ``{"id", "vector": {token: weight}}`` JSONL."""
        count = 0
        with open(path, "w", encoding="utf-8") as fh:
            for docno in tqdm(range(self.index.num_docs), desc="exporting", unit="doc"):
                doc = self.docs.get(docno)
                terms, weights = self.index.doc_vector(docno)
                write_vector(fh, doc.id, self.encoder.decode(terms, weights), doc.text if with_text else None, doc.title)
                count += 1
        return count


# ---------------------------------------------------------------------- helpers
def _check_search_args(k: int, mode: str) -> None:
    if not 1 <= k <= 10_000:
        raise ValueError(f"k must be between 1 and 10000, got {k}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; available: {', '.join(MODES)}")


def document_text(doc: Document) -> str:
    """The text a document is encoded from: title and body."""
    return f"{doc.title} {doc.text}".strip() if doc.title else doc.text


def _windows(docs: Iterator[Document], size: int) -> Iterator[list[Document]]:
    window: list[Document] = []
    for doc in docs:
        window.append(doc)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def _store_window(window: list[Document], store: DocStore, first_docno: int, on_error) -> list[Document]:
    """Store documents with consecutive doc numbers; duplicates go to ``on_error`` (raise or skip)."""
    accepted: list[Document] = []
    for doc in window:
        try:
            store.add(first_docno + len(accepted), doc)
            accepted.append(doc)
        except DuplicateIdError:
            on_error(CorpusError(doc.source, doc.line, "id", f"duplicate id {doc.id!r}"))
    return accepted


def _add_corpus(reader: CorpusReader, encoder: SpladeEncoder, builder: IndexBuilder, store: DocStore,
                batch_size: int, window: int, progress: bool, ckpt: "_Checkpoint") -> None:
    records = ckpt.records
    docs = iter(reader)
    if records:  # resume: the committed windows' records are read again (cheap) and passed over, not encoded
        previous = logging.getLogger("lsr.corpus").disabled
        logging.getLogger("lsr.corpus").disabled = True  # their skips were reported the first time
        try:
            _fast_forward(docs, records, reader.path)
        finally:
            logging.getLogger("lsr.corpus").disabled = previous
        reader.skipped = ckpt.skipped
    with tqdm(total=reader.count(), initial=records, unit="doc", desc="indexing", disable=not progress,
              dynamic_ncols=True) as bar:  # closed on errors too, so a message never runs into the bar
        for docs_window in _windows(docs, window):
            accepted = _store_window(docs_window, store, builder.num_docs, reader.skip_error)
            batch = encoder.encode_documents([document_text(d) for d in accepted], batch_size)
            builder.add(batch.indptr, batch.indices, batch.values)
            ckpt.truncated += batch.truncated
            records += len(docs_window)
            ckpt.commit(builder, store, records, reader.skipped)
            bar.update(len(docs_window))


def _add_vectors(path: Path, encoder: SpladeEncoder, builder: IndexBuilder, store: DocStore, skip_bad: bool,
                 window: int, progress: bool, ckpt: "_Checkpoint") -> int:
    skipped = 0
    passing_over = False

    def on_error(err: CorpusError) -> None:
        nonlocal skipped
        if passing_over:  # a committed window's skip, counted in the checkpoint
            return
        if not skip_bad:
            raise err
        log.warning("skipping bad record: %s", err)
        skipped += 1

    vocab = encoder.tokenizer.get_vocab()
    records = ckpt.records
    vectors = iter(read_vectors(path, on_error))
    if records:  # resume: pass over the committed windows' records
        passing_over = True
        _fast_forward(vectors, records, path)
        passing_over = False
        skipped = ckpt.skipped
    bar = tqdm(initial=records, unit="doc", desc="indexing vectors", disable=not progress, dynamic_ncols=True)
    pending: list[tuple[Document, dict[str, float]]] = []

    def flush() -> None:
        accepted = {id(d) for d in _store_window([d for d, _ in pending], store, builder.num_docs, on_error)}
        rows = [vec for doc, vec in pending if id(doc) in accepted]
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum([len(r) for r in rows], out=indptr[1:])
        terms = np.fromiter((vocab[t] for r in rows for t in r), np.uint32, count=int(indptr[-1]))
        weights = np.fromiter((w for r in rows for w in r.values()), np.float32, count=int(indptr[-1]))
        builder.add(indptr, terms, weights)
        ckpt.commit(builder, store, records, skipped)
        bar.update(len(pending))
        pending.clear()

    for doc, vector in vectors:
        records += 1
        unknown = next((t for t in vector if t not in vocab), None)
        if unknown is not None:
            on_error(CorpusError(path, doc.line, f"vector.{unknown}", f"token not in the vocabulary of model {encoder.name!r}"))
            continue
        pending.append((doc, vector))
        if len(pending) == window:
            flush()
    if pending:
        flush()
    bar.close()
    return skipped


def _fast_forward(records: Iterator, count: int, path: Path) -> None:
    """Pass over the first ``count`` records of an iterator (a resumed build's committed windows)."""
    for done in range(count):
        if next(records, None) is None:
            raise ResumeError(f"{path} has only {done} records, the interrupted build had read {count}; "
                              "run without --resume to start over")


def _corpus_fingerprint(corpus: Path, reader: CorpusReader | None) -> dict | None:
    """Size and modification time of a single-file corpus (a resumed build must read the same records)."""
    file = corpus if reader is None else getattr(reader, "_file", None)
    if file is None or not Path(file).is_file():
        return None  # a folder of text files: not fingerprinted
    stat = Path(file).stat()
    return {"file": str(Path(file).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class _Checkpoint:
    """The committed progress of a resumable build: ``progress.json`` in its staging directory ``.{name}.building``.

    After each window the builder's postings are spilled as a chunk of their own (fsynced, renamed into place),
    the document store is committed, then ``progress.json`` is replaced atomically: it names the chunks that count,
    the number of documents and of corpus records read, and the settings a resume must repeat. Chunks not listed
    and documents numbered from ``num_docs`` on (a kill between those steps) are dropped on resume.
    """

    def __init__(self, staging: Path, settings: dict, state: dict | None):
        self.staging = staging
        self.path = staging / PROGRESS_FILE
        self.settings = settings
        state = state or {}
        self.records = int(state.get("records", 0))
        self.num_docs = int(state.get("num_docs", 0))
        self.skipped = int(state.get("skipped", 0))
        self.truncated = int(state.get("truncated", 0))
        self.windows = int(state.get("windows", 0))
        self.elapsed = float(state.get("elapsed_seconds", 0.0))
        self.chunks: list[dict] = list(state.get("chunks", []))
        self._resumed = bool(state)
        self._started = time.time()

    @classmethod
    def prepare(cls, index_dir: Path, settings: dict, resume: bool) -> "_Checkpoint":
        """The checkpoint to continue (``resume`` and one to resume), else a fresh, empty staging directory."""
        staging = index_dir.parent / f".{index_dir.name}.building"
        state = _read_progress(staging / PROGRESS_FILE)
        if state is not None and resume:
            _check_resumable(index_dir, staging, state, settings)
            log.warning("resuming the interrupted build of %s: %d documents (%d windows) were done",
                        index_dir, state["num_docs"], state["windows"])
            return cls(staging, settings, state)
        if state is not None:
            log.warning("found an interrupted build of %s (%d documents done); starting over — use --resume to "
                        "continue it", index_dir, state["num_docs"])
        elif resume:
            log.warning("nothing to resume for %s: building it from the start", index_dir)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return cls(staging, settings, None)

    def builder_state(self) -> tuple[list[str], int] | None:
        """``IndexBuilder(resume=...)`` of this checkpoint (None for a fresh build)."""
        return ([c["file"] for c in self.chunks], self.num_docs) if self._resumed else None

    def truncate_store(self, store: DocStore) -> None:
        """Drop documents committed to the store after the checkpoint (killed before progress.json was written)."""
        if self._resumed:
            store.truncate(self.num_docs)

    def commit(self, builder: IndexBuilder, store: DocStore, records: int, skipped: int) -> None:
        """Commit a window: its postings as a chunk, the document store, then progress.json (atomically)."""
        known = {c["file"]: c for c in self.chunks}
        chunks = [known.get(p.name) or {"file": p.name, "sha256": sha256_file(p)} for p in builder.checkpoint()]
        store.commit()
        torch = sys.modules.get("torch")
        write_json_atomic(self.path, {
            "format": "lsr-build-progress", "version": 1, "settings": self.settings,
            "records": records, "num_docs": builder.num_docs, "skipped": skipped, "windows": self.windows + 1,
            "truncated": self.truncated,
            "chunks": chunks, "elapsed_seconds": round(self.elapsed + time.time() - self._started, 3),
            "torch_threads": torch.get_num_threads() if torch is not None else None,
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        self.records, self.num_docs, self.skipped = records, builder.num_docs, skipped
        self.windows += 1
        self.chunks = chunks

    def discard(self) -> None:
        """The build can no longer be resumed from here (finished, or about to change what was committed)."""
        self.path.unlink(missing_ok=True)  # first: without it the chunks below are never trusted again
        shutil.rmtree(self.staging / "_chunks", ignore_errors=True)


def _read_progress(path: Path) -> dict | None:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable build checkpoint %s (%s)", path, exc)
        return None
    if not isinstance(state, dict) or state.get("format") != "lsr-build-progress" or state.get("version") != 1:
        log.warning("ignoring build checkpoint %s: not a version-1 lsr build checkpoint", path)
        return None
    return state


def _check_resumable(index_dir: Path, staging: Path, state: dict, settings: dict) -> None:
    """Raise :class:`ResumeError` unless ``state`` was made by the same job with intact chunk files."""
    before = state.get("settings", {})
    differ = [key for key in sorted(before.keys() | settings.keys()) if before.get(key) != settings.get(key)]
    if "corpus_file" in differ and before.get("corpus") == settings.get("corpus"):
        differ.remove("corpus_file")
        raise ResumeError(f"cannot resume the interrupted build of {index_dir}: the corpus {settings['corpus']} "
                          "changed since (size or modification time); run without --resume to start over")
    if differ:
        changes = "; ".join(f"{key} was {before.get(key)!r}, now {settings.get(key)!r}" for key in differ)
        raise ResumeError(f"cannot resume the interrupted build of {index_dir} with other settings: {changes} "
                          "(repeat the interrupted command with --resume, or run without --resume to start over)")
    for chunk in state.get("chunks", []):
        path = staging / "_chunks" / chunk["file"]
        if not path.is_file() or sha256_file(path) != chunk["sha256"]:
            raise ResumeError(f"cannot resume the interrupted build of {index_dir}: its checkpoint file {path} is "
                              "missing or damaged; run without --resume to start over")
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    if state.get("torch_threads") not in (None, threads):
        log.warning("the interrupted build encoded with %s torch threads, this run with %s: vectors may differ in "
                    "the last float bits from an uninterrupted build", state["torch_threads"], threads)


def _add_structures_in(index_dir: Path, names: Sequence[str], reorder: str | None, **params) -> None:
    """Reorder documents (renumbering the document store to match), then build the named structures."""
    from lsr.index.structures import add_structure

    if reorder is not None:
        from lsr.index.reorder import reorder_index

        new_to_old = reorder_index(index_dir, reorder)
        store = DocStore(index_dir / DOCSTORE_FILE)
        store.renumber(new_to_old)
        store.close()
        from lsr.dense import permute_dense

        permute_dense(index_dir, new_to_old)
        manifest = read_manifest(index_dir)
        manifest["documents"]["sha256"] = sha256_file(index_dir / DOCSTORE_FILE)
        write_manifest(index_dir, manifest)
    if names:
        index = InvertedIndex.open(index_dir)
        for name in names:
            add_structure(index, name, **params.get(name, {}))
            index = InvertedIndex.open(index_dir)


def _add_inference_free_in(index_dir: Path, encoder: SpladeEncoder) -> None:
    """Write the inference-free query table of an index directory, taking the tokenizer of its model."""
    from lsr.query_encoders import write_inference_free

    tokenizer = encoder.tokenizer
    if getattr(tokenizer, "is_fast", False):
        write_inference_free(index_dir, tokenizer.backend_tokenizer.to_str())
    else:
        log.warning("model %s has no fast tokenizer: index built without the inference-free query table",
                    encoder.name)


def _add_dense_in(index_dir: Path, model: str | None, batch_size: int, dtype: str, hnsw_threshold: int | None,
                  progress: bool) -> None:
    """Encode the documents of an index directory (in doc-number order) with a dense model and store them."""
    from lsr.dense import DEFAULT_HNSW_THRESHOLD, DenseEncoder, encode_store, write_dense

    encoder = DenseEncoder(model)
    store = DocStore(index_dir / DOCSTORE_FILE, readonly=True)
    count = len(store)
    texts = (document_text(store.get(docno)) for docno in range(count))
    vectors = encode_store(texts, encoder, count, batch_size=batch_size, progress=progress)
    del store, texts  # read-only connection: nothing to commit
    write_dense(index_dir, vectors, encoder.describe(), dtype=dtype,
                hnsw_threshold=DEFAULT_HNSW_THRESHOLD if hnsw_threshold is None else hnsw_threshold)
