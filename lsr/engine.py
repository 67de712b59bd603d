"""The engine facade: build an index from a corpus, open it, search it (used by CLI, server and eval)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

import numpy as np
from tqdm.auto import tqdm

from lsr.index import InvertedIndex
from lsr.index.structures import MODES
from lsr.index.storage import IndexFormatError, staged_directory
from lsr.corpus import Document
from lsr.docstore import DocStore
from lsr.encoder import SparseBatch, SpladeEncoder
from lsr.pipeline import (DOCSTORE_FILE, PROGRESS_FILE, BuildSettings, ResumeError, add_dense_in,  # noqa: F401
                          add_inference_free_in, add_structures_in, build_index, document_text)
from lsr.query_encoders import DEFAULT_QUERY_ENCODER, check_query_encoder
from lsr.vectors import write_vector

log = logging.getLogger("lsr.engine")

DEFAULT_INDEX_DIR = Path("lsr_index")

Query = Union[str, dict[str, float], tuple[Sequence[int], Sequence[float]]]


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

    # ------------------------------------------------------------------ build / open
    @classmethod
    def build(
        cls,
        corpus: str | os.PathLike,
        index_dir: str | os.PathLike = DEFAULT_INDEX_DIR,
        settings: BuildSettings | None = None,
        *,
        encoder: SpladeEncoder | None = None,
        progress: bool = True,
        resume: bool = False,
        **options,
    ) -> "Engine":
        """Index a corpus (BEIR dir, JSONL, CSV/TSV, text tree, or a vectors JSONL) into ``index_dir``.

        ``settings`` (:class:`lsr.pipeline.BuildSettings`), or its fields as keywords (``model``, ``batch_size``,
        ``doc_max_length``, ``structures``, ``dense``, ``window``, ...); ``encoder``: an already loaded model
        (then the model options of ``settings`` are its own).

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
        if settings is not None and options:
            raise TypeError(f"Engine.build: give settings or their fields ({', '.join(options)}), not both")
        encoder = build_index(corpus, index_dir, settings or BuildSettings(**options), encoder=encoder,
                              progress=progress, resume=resume)
        return cls.open(index_dir, encoder=encoder)

    @classmethod
    def open(
        cls, index_dir: str | os.PathLike = DEFAULT_INDEX_DIR, *, verify: bool = False, checksums: bool = True,
        encoder: SpladeEncoder | None = None,
    ) -> "Engine":
        """Open an index directory at its latest commit (memory-mapped); the query encoder loads on first text query.

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
            engine = Engine.open(self.index_dir, encoder=self._encoder)
        except (FileNotFoundError, IndexFormatError) as err:  # e.g. caught between the two renames of a compaction
            log.warning("%s changed but cannot be opened now (%s); keeping the previous snapshot", self.index_dir, err)
            return self
        if self.__dict__.get("_dense_encoder") is not None and engine.dense is not None \
                and engine.dense.model.get("sha256") == self._dense_encoder.hash:
            engine._dense_encoder = self._dense_encoder
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
            add_structures_in(self.index_dir, names, None, **params)
        else:
            with staged_directory(self.index_dir) as staging:
                shutil.copytree(self.index_dir, staging, dirs_exist_ok=True)
                add_structures_in(staging, names, reorder, **params)
        return Engine.open(self.index_dir, encoder=self._encoder)

    def add_inference_free(self) -> "Engine":
        """Add the inference-free query table (IDF from this index's posting lists, the model's tokenizer) to this
        index; return the reopened engine. Written beside the arrays and recorded by an atomic manifest rewrite."""
        if self._encoder is not None:
            add_inference_free_in(self.index_dir, self._encoder)
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
        add_dense_in(self.index_dir, model, batch_size=batch_size, dtype=dtype, hnsw_threshold=hnsw_threshold,
                     progress=progress)
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

    def dense_query_vectors(self, queries: Sequence[str]) -> np.ndarray:
        """Dense embeddings [n, dim] of text queries."""
        if not all(isinstance(q, str) for q in queries):
            raise ValueError("dense and hybrid retrieval need text queries")
        return self.dense_encoder.encode_queries(list(queries))

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

    def query_encoder(self, name: str = DEFAULT_QUERY_ENCODER):
        """The query encoder called ``name``: ``model`` (the SPLADE model) or ``inference-free`` (tokenizer + IDF)."""
        return self.encoder if check_query_encoder(name) == "model" else self.inference_free

    def _check_encoder(self, encoder: SpladeEncoder) -> None:
        recorded = self.manifest["model"]
        if encoder.hash != recorded["sha256"]:
            raise ModelMismatchError(
                f"index {self.index_dir} was built with model {recorded['name']!r} (sha256 {recorded['sha256'][:12]}…) "
                f"but {encoder.name!r} has sha256 {encoder.hash[:12]}…; queries must be encoded by the indexing model"
            )

    def query_vector(self, query: Query, query_encoder: str = DEFAULT_QUERY_ENCODER) -> tuple[np.ndarray, np.ndarray]:
        """Term ids and weights of a query given as text, ``{token: weight}`` or ``(term_ids, weights)``.

        Text is encoded by ``query_encoder``: ``model`` (SPLADE) or ``inference-free`` (tokenizer and IDF table)."""
        if isinstance(query, str):
            return self.query_encoder(query_encoder).encode_query(query)
        if isinstance(query, dict):
            ids = self.encoder.token_ids(query.keys())
            pairs = [(i, w) for i, w in zip(ids, query.values()) if i is not None]
            return (np.array([p[0] for p in pairs], np.uint32), np.array([p[1] for p in pairs], np.float32))
        term_ids, weights = query
        return np.asarray(term_ids, np.uint32), np.asarray(weights, np.float32)

    # ------------------------------------------------------------------ search
    def search(self, query: Query, k: int = 10, mode: str = "exact", *, retriever: str = "sparse",
               fusion=None, alpha: float | None = None, filter: dict | None = None,
               query_encoder: str = DEFAULT_QUERY_ENCODER, **params) -> list[Hit]:
        """Top-k documents for one query; ``params`` are the mode's knobs (e.g. BMP's alpha/beta).

        ``retriever="dense"|"hybrid"`` uses the dense vectors (hybrid: fused with :mod:`lsr.fusion`; ``fusion``
        is ``"convex"``, ``"rrf"`` or a :class:`lsr.fusion.FusionConfig`, ``alpha`` the sparse weight);
        ``filter`` keeps documents whose metadata equals every ``{field: value}``. ``query_encoder`` encodes text
        for the sparse side: ``model`` (SPLADE) or ``inference-free`` (tokenizer + the index's IDF table, no model).
        """
        check_query_encoder(query_encoder)
        if retriever != "sparse" or fusion is not None or alpha is not None or filter:
            from lsr import fusion as _fusion

            sparse = None
            if query_encoder != DEFAULT_QUERY_ENCODER and retriever != "dense":
                sparse = self.query_vector(query, query_encoder)
            return _fusion.search(self, query, k, mode=mode, retriever=retriever, fusion=fusion, alpha=alpha,
                                  filter=filter, params=params, sparse_vector=sparse)
        _check_search_args(k, mode)
        ids, scores = self.index.search(*self.query_vector(query, query_encoder), k=k, mode=mode, **params)
        return self._hits(ids, scores)

    def search_batch(
        self, queries: Sequence[Query], k: int = 10, mode: str = "exact", threads: int | None = None, *,
        retriever: str = "sparse", fusion=None, alpha: float | None = None, filter: dict | None = None,
        query_encoder: str = DEFAULT_QUERY_ENCODER, **params
    ) -> list[list[Hit]]:
        """Top-k documents for many queries (text queries encoded in batches, search parallel over queries)."""
        check_query_encoder(query_encoder)
        if retriever != "sparse" or fusion is not None or alpha is not None or filter:
            from lsr import fusion as _fusion

            sparse = None
            if query_encoder != DEFAULT_QUERY_ENCODER and retriever != "dense":
                sparse = self.query_vectors(queries, query_encoder)
            return _fusion.search_many(self, queries, k, mode=mode, retriever=retriever, fusion=fusion, alpha=alpha,
                                       filter=filter, threads=threads, params=params, sparse_vectors=sparse)
        _check_search_args(k, mode)
        vectors = self.query_vectors(queries, query_encoder)
        results = self.index.search_batch(vectors, k=k, threads=threads, mode=mode, **params)
        return [self._hits(ids, scores) for ids, scores in results]

    def query_vectors(self, queries: Sequence[Query], query_encoder: str = DEFAULT_QUERY_ENCODER
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Vectors of many queries; text queries are encoded together in batches."""
        texts = [q for q in queries if isinstance(q, str)]
        encoder = self.query_encoder(query_encoder) if texts else None
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
