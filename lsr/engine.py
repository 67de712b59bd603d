"""The engine facade: build an index from a corpus, open it, search it (used by CLI, server and eval).

An :class:`Engine` is assembled from the parts of an opened index (:mod:`lsr.protocols`): a single or live index
(:class:`lsr.snapshot.LocalIndex`) or a sharded one (:class:`lsr.sharded.search.ShardSet`), searched alike by
:class:`lsr.searcher.Searcher`. :meth:`Engine.open` opens all three.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lsr.index.structures import MODES
from lsr.index.storage import IndexFormatError, staged_directory
from lsr.corpus import Document
from lsr.docstore import DOCSTORE_FILE
from lsr.encoder import SpladeEncoder
from lsr.onnx_encoders import check_query_runtime
from lsr.bm25_field import Bm25Settings
from lsr.pipeline import (PROGRESS_FILE, BuildSettings, ResumeError, add_bm25_in, add_dense_in, add_inference_free_in,
                          add_structures_in, build_index, document_text)
from lsr.protocols import IndexParts
from lsr.searcher import (DEFAULT_RETRIEVER, RETRIEVER_HELP, Hit, HybridHit, ModelMismatchError, Query, Searcher,
                          parse_retriever)
from lsr.sharded.layout import is_sharded, read_only_error
from lsr.snapshot import LocalIndex, commit_stamp, open_local
from lsr.vectors import write_vector

log = logging.getLogger("lsr.engine")

DEFAULT_INDEX_DIR = Path("lsr_index")

__all__ = ["DEFAULT_INDEX_DIR", "DEFAULT_RETRIEVER", "DOCSTORE_FILE", "MODES", "PROGRESS_FILE", "RETRIEVER_HELP",
           "BuildSettings", "Engine", "Hit", "HybridHit", "ModelMismatchError", "Query", "ResumeError",
           "check_query_runtime", "document_text", "parse_retriever"]




class Engine(Searcher):
    """An on-disk learned-sparse index (single, live or sharded) with its document store and query encoders."""

    def __init__(self, parts: IndexParts, encoder: SpladeEncoder | None = None, query_runtime: str | None = None):
        super().__init__(parts, encoder, query_runtime)
        self.commit: dict | None = parts.commit if isinstance(parts, LocalIndex) else None  # lsr.live's commit
        self.checksums = False  # whether opening hashed every file (kept for the commits it reopens)
        self.preload = False  # whether opening copied the randomly read arrays into memory (likewise)

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
        ``doc_max_length``, ``doc_windows``, ``structures``, ``dense``, ``window``, ...); ``encoder``: an already
        loaded model (then the model options of ``settings``, windows of long documents included, are its own).

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
        cls, index_dir: str | os.PathLike = DEFAULT_INDEX_DIR, *, verify: bool = False, checksums: bool = False,
        encoder: SpladeEncoder | None = None, query_runtime: str | None = None, preload: bool = False, **cluster,
    ) -> "Engine":
        """Open an index directory at its latest commit (memory-mapped); the query encoder loads on first text query.

        ``query_runtime`` (default :data:`lsr.onnx_encoders.DEFAULT_QUERY_RUNTIME`) runs text queries through the
        model: ``auto`` (per model), ``torch``, ``onnx`` (fp32 export) or ``onnx-int8`` (see :mod:`lsr.onnx_encoders`).

        A live index (documents added or deleted since the build, see :mod:`lsr.live`) opens as all its segments
        minus deleted documents. Opening reads the manifests and checks every array's ``.npy`` header and file size
        against them (a truncated or swapped file fails naming it), without reading the data: a one-shot command
        opens a large index in milliseconds. ``checksums`` also checks the sha256 of every file (each file hashed
        once per process), as writers (``lsr add``/``delete``/``compact``, structure builds) do before changing an
        index; ``verify`` also checks the structural invariants (as ``lsr verify``, which hashes everything). A sharded index (``shards.json``)
        opens through its shard actors; ``cluster`` options (``address``, ``num_cpus``, ``threads_per_shard``,
        ``cpus_per_shard``) go to :meth:`lsr.sharded.search.ShardSet.open` and are refused for other indexes.
        ``preload`` (single and live indexes) copies the forward index, which pruned search reads at random, into
        memory backed by huge pages (:meth:`lsr.index.InvertedIndex.open`): for a long-running server of a large
        index.
        """
        if is_sharded(index_dir):
            from lsr.sharded.search import ShardSet

            if preload:
                raise TypeError(f"{index_dir} is a sharded index: preload applies to single and live indexes")
            return cls(ShardSet.open(index_dir, verify=verify, **cluster), encoder, query_runtime)
        if cluster:
            raise TypeError(f"{index_dir} is not a sharded index: options {', '.join(sorted(cluster))} apply only "
                            "to sharded indexes")
        engine = cls(open_local(index_dir, verify, checksums, preload), encoder, query_runtime)
        engine.checksums, engine.preload = checksums, preload
        return engine

    def refresh(self) -> "Engine":
        """The engine of the index's latest commit: ``self`` if nothing was committed since this one opened (or if
        the new commit cannot be opened yet: the previous snapshot stays usable)."""
        if self.parts.is_current():
            return self
        try:
            return self.reopen()
        except (FileNotFoundError, IndexFormatError) as err:  # e.g. caught between the two renames of a compaction
            log.warning("%s changed but cannot be opened now (%s); keeping the previous snapshot", self.index_dir, err)
            return self

    def start(self) -> "Engine":
        """Acquire what searching needs now (a sharded index: start its shard actors) instead of on first use."""
        self.parts.start()
        return self

    def close(self) -> None:
        """Release what searching acquired (a sharded index: stop its shard actors)."""
        self.parts.close()

    def info(self) -> dict:
        """Counts, sizes, model and build details (live index: segments, deleted documents, generation; sharded
        index: per-shard rows)."""
        return self.parts.info()

    def _local(self, what: str) -> Path:
        """The directory of this single or live index, for an operation a sharded index cannot do."""
        if not isinstance(self.parts, LocalIndex):
            raise read_only_error(self.index_dir, what)
        return self.index_dir


    # ------------------------------------------------------------------ live changes (lsr.live)
    def add_documents(self, docs: Sequence[Document], *, update: bool = False, batch_size: int = 32,
                      progress: bool = False) -> dict:
        """Add documents as a new segment (``update``: replace live documents with the same ids); one commit.
        Returns the counts; call :meth:`refresh` to search the new commit."""
        from lsr.live import add_documents

        return add_documents(self._local("add documents"), docs, update=update, encoder=self._encoder,
                             dense_encoder=self._dense_encoder, batch_size=batch_size, progress=progress)

    def delete_documents(self, ids: Sequence[str], *, missing_ok: bool = False) -> dict:
        """Delete documents by id (tombstones, one commit); call :meth:`refresh` to search the new commit."""
        from lsr.live import delete_documents

        return delete_documents(self._local("delete documents"), ids, missing_ok=missing_ok)

    def add_structures(self, names: Sequence[str], reorder: str | None = None, progress: bool = False,
                       **params) -> "Engine":
        """Add pruning structures (and optionally reorder documents) to this index; return the reopened engine.

        Reordering rewrites every array, so it happens in a staging copy that replaces the index atomically;
        structures alone are written beside the existing arrays and recorded by an atomic manifest rewrite.
        ``progress``: show the reordering and each structure build.
        """
        self._require_one_segment("add structures")
        if reorder is None:
            add_structures_in(self.index_dir, names, None, progress=progress, **params)
        else:
            with staged_directory(self.index_dir) as staging:
                shutil.copytree(self.index_dir, staging, dirs_exist_ok=True)
                add_structures_in(staging, names, reorder, progress=progress, **params)
        return Engine.open(self.index_dir, encoder=self._encoder)

    def add_inference_free(self) -> "Engine":
        """Add the inference-free query table (IDF from this index's posting lists, the model's tokenizer) to this
        index; return the reopened engine. Written beside the arrays and recorded by an atomic manifest rewrite."""
        self._local("add the inference-free query table")
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

    def add_bm25(self, analyzer: str | None = None) -> "Engine":
        """Analyze every stored document into the BM25 field (:mod:`lsr.bm25_field`; ``analyzer`` ``word`` or
        ``model``, default: the existing field's, else ``word``) with the index's pruning structures; return the
        reopened engine. Written beside the arrays (replacing any previous field), recorded by a manifest rewrite."""
        self._require_one_segment("add the BM25 field")
        add_bm25_in(self.index_dir, None if analyzer is None else Bm25Settings(analyzer=analyzer))
        return Engine.open(self.index_dir, encoder=self._encoder)

    def _require_one_segment(self, what: str) -> None:
        """Index-wide additions rewrite the first segment only: refuse them while documents were added or deleted."""
        self._local(what)
        if self.commit and (self.commit["segments"] or self.commit.get("deletes")):
            raise ValueError(f"{self.index_dir} has added segments or deletions (see `lsr info`); run `lsr compact "
                             f"--index {self.index_dir}` first, then {what}")

    def export_vectors(self, path: str | os.PathLike, with_text: bool = False) -> int:
        """Write every indexed document's (dequantized) vector as ``{"id", "vector": {token: weight}}`` JSONL."""
        self._local("export vectors")
        count = 0
        with open(path, "w", encoding="utf-8") as fh:
            for docno in tqdm(range(self.index.num_docs), desc="exporting", unit="doc"):
                doc = self.docs.get(docno)
                terms, weights = self.index.doc_vector(docno)
                write_vector(fh, doc.id, self.encoder.decode(terms, weights), doc.text if with_text else None, doc.title)
                count += 1
        return count

    # ------------------------------------------------------------------ serving (the surface lsr.server goes through)
    # What add_documents / delete_documents raise, so callers catch ``Engine.DuplicateDocumentError`` and so on
    # without importing lsr.live or lsr.index (as Django models carry their ``DoesNotExist``).
    from lsr.index.storage import WriterLockedError
    from lsr.live import DocumentNotFoundError, DuplicateDocumentError

    @property
    def writable(self) -> bool:
        """Whether :meth:`add_documents` and :meth:`delete_documents` can change this index (a sharded index is
        rebuilt instead)."""
        return isinstance(self.parts, LocalIndex)

    def warm_up(self, search: bool = True) -> None:
        """Load the query encoders now instead of on the first query; ``search`` also runs one query per retriever,
        so the search kernels are compiled before the first real one."""
        self.encoder  # noqa: B018 - the torch model: highlights, explain, writes
        self.query_encoder()  # and the query runtime's encoders
        if self.dense is not None:
            self.dense_query_encoder()
        if search:
            for name in self.available_retrievers():
                self.search("warm up", 10, retriever=name)
            self.search("warm up", 10)

    def query_encoder_names(self) -> list[str]:
        """The query encoders this index supports: ``model``, and ``inference-free`` if it has the query table."""
        return ["model"] + (["inference-free"] if self.manifest.get("inference_free") else [])

    def search_modes(self) -> list[str]:
        """The sparse search modes this index has the structures for."""
        have = set(self.manifest.get("structures", {}))
        return [mode for mode, needs in MODES.items() if needs is None or needs in have]

    def size_bytes(self) -> int:
        """Bytes on disk of the index directory (segments and shards included; files replaced meanwhile skipped)."""
        total = 0
        for root, _, files in os.walk(self.index_dir):
            for name in files:
                try:
                    total += os.stat(os.path.join(root, name)).st_size
                except FileNotFoundError:
                    continue
        return total

    def status(self) -> dict:
        """What a server reports about the snapshot it serves: documents, commit generation, models, dense search,
        the BM25 field's settings, modes, query encoders and size on disk."""
        dense, bm25 = self.dense, self.parts.bm25
        return {
            "documents": int(self.index.num_docs),
            "generation": self.generation,
            "model": self.manifest["model"],
            "dense_model": None if dense is None else dense.model,
            "dense_search": None if dense is None else ("hnsw" if dense.uses_hnsw else "exact"),
            "bm25": None if bm25 is None else {"analyzer": bm25.settings.analyzer, "k1": bm25.settings.k1,
                                               "b": bm25.settings.b, "avgdl": round(bm25.avgdl, 3)},
            "modes": self.search_modes(),
            "retrievers": list(self.available_retrievers()),
            "default_retriever": "+".join(self.resolve_retriever()),
            "query_encoders": self.query_encoder_names(),
            "size_bytes": self.size_bytes(),
        }

    @property
    def generation(self) -> int:
        """The generation of the commit this engine serves (0: as built, never changed)."""
        return (self.commit or {}).get("generation", 0)

    def newest_commit(self) -> tuple | None:
        """What identifies the index's newest commit on disk (two ``stat`` calls); differs from
        :attr:`opened_commit` once something was committed since this engine opened."""
        return commit_stamp(self.index_dir) if self.writable else None

    @property
    def opened_commit(self) -> tuple | None:
        """The commit this engine serves, as :meth:`newest_commit` identified it when it opened."""
        return self.parts.stamp if isinstance(self.parts, LocalIndex) else None

    def reopen(self) -> "Engine":
        """The engine of the newest commit, sharing this engine's loaded encoders. Unlike :meth:`refresh` it
        raises when that commit cannot be opened (the caller decides whether to retry)."""
        engine = Engine.open(self.index_dir, encoder=self._encoder, query_runtime=self.query_runtime,
                             checksums=self.checksums, preload=self.preload)
        engine._onnx_encoders = self._onnx_encoders  # same models: every commit of an index has the build's
        dense_encoder = self._dense_encoder
        if dense_encoder is not None and engine.dense is not None \
                and engine.dense.model.get("sha256") == dense_encoder.hash:
            engine._dense_encoder = dense_encoder
        return engine

    def search_encoded(self, queries: Sequence[Query], k: int = 10, *, sparse_vectors: Sequence | None = None,
                       dense_vectors: np.ndarray | None = None, mode: str = "exact",
                       retriever: str = DEFAULT_RETRIEVER, fusion=None, alpha: float | None = None,
                       normalization: str | None = None, depth: int | None = None, rrf_k: int | None = None,
                       weights: dict[str, float] | None = None, filter: dict | None = None,
                       params: dict | None = None, threads: int | None = None) -> list[list[Hit]]:
        """:meth:`search_batch` with the queries' vectors already encoded (e.g. in a server's micro-batches:
        ``sparse_vectors`` as ``(term ids, weights)`` per query, ``dense_vectors`` [n, dim]) and every fusion knob
        (``normalization``, ``depth``, ``rrf_k``, ``weights``); hits carry each retriever's score."""
        return self.retrieve(queries, k, mode=mode, retriever=retriever, fusion=fusion, alpha=alpha,
                             normalization=normalization, depth=depth, rrf_k=rrf_k, weights=weights, filter=filter,
                             sparse_vectors=sparse_vectors, dense_vectors=dense_vectors, threads=threads,
                             params=params or {})

    def stored_document(self, docno: int) -> Document:
        """The stored document with internal number ``docno`` (a hit's ``docno``; KeyError if none)."""
        return self.docs.get(docno)

    def stored_documents(self, docnos: list[int]) -> dict[int, Document]:
        """Several stored documents by internal number, in one read: docno -> document (numbers not stored left out)."""
        return self.docs.get_many(docnos)

    def query_tokens(self, text: str) -> dict[int, str]:
        """The query's own tokens under the sparse model's tokenizer (special tokens dropped): id -> token."""
        from lsr.explain import query_token_ids

        return {i: self.encoder.token(i) for i in sorted(query_token_ids(self, text))}

    def explain(self, query_vector: tuple[np.ndarray, np.ndarray], docno: int, *,
                own_tokens: set[int] | None = None, top: int | None = 10) -> list:
        """Why a document matched a query vector: the shared terms by contribution (query weight x document
        weight, heaviest first), terms outside ``own_tokens`` marked as expansion (:func:`lsr.explain.explain`)."""
        from lsr.explain import explain

        return explain(self, query_vector, docno, own_tokens=own_tokens, top=top)


