"""The build pipeline: corpus -> windows of documents -> sparse vectors -> document store and index builder.

Every path that writes an index goes through it: :func:`build_index` (``Engine.build``, ``lsr index``; resumable,
committed window by window into a checkpoint), :mod:`lsr.sharded.build` (windows encoded on Ray actors and stored
by shard builders), :mod:`lsr.live` (``lsr add`` segments, merges from stored impacts) and ``lsr encode``
(vectors JSONL). A corpus is read by a *source* (:class:`CorpusSource` for text, encoded here;
:class:`VectorSource` for precomputed vectors) as :class:`Window` s; a :class:`WindowIndexer` stores each window's
documents under consecutive numbers and feeds its vectors to an :class:`lsr.index.IndexBuilder`.
:class:`BuildSettings` holds a build's options; :func:`add_structures_in`, :func:`add_inference_free_in` and
:func:`add_dense_in` add the optional parts to a written index directory.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TypeVar, Union

import numpy as np
from tqdm.auto import tqdm

from lsr.version import __version__
from lsr.bm25_field import DEFAULT_ANALYZER, Bm25Settings
from lsr.corpus import CorpusError, CorpusReader, Document
from lsr.docstore import DOCSTORE_FILE, DocStore, DuplicateIdError
from lsr.encoder import (DEFAULT_DOC_WINDOWS, DEFAULT_WINDOW_DECAY, DEFAULT_WINDOW_POOLING, DocWindows, SparseBatch,
                         SpladeEncoder, check_doc_windows, check_window_settings)
from lsr.faults import fault_point
from lsr.index import IndexBuilder, InvertedIndex
from lsr.index.storage import (read_manifest, sha256_file, staged_directory, write_json_atomic, write_manifest,
                               writer_lock)
from lsr.vectors import is_vector_file, read_vectors

log = logging.getLogger("lsr.engine")  # the build's messages keep the name users know them by

PROGRESS_FILE = "progress.json"  # the checkpoint of a resumable build, in its staging directory

T = TypeVar("T")
OnError = Callable[[CorpusError], None]


class ResumeError(ValueError):
    """An interrupted build cannot be resumed as asked (other settings, damaged checkpoint)."""


# Built by default: safe BMP (forward layout) costs ~0.4x the base index and answers `--mode bmp`; Seismic's
# summaries cost more than the base index, so it stays opt-in.
DEFAULT_STRUCTURES = ("bmp",)


@dataclass(frozen=True)
class BuildSettings:
    """How an index is built: the ``lsr index`` options, ``Engine.build`` and ``build_sharded`` keywords.

    A resumed build must repeat them: its checkpoint records them (:meth:`checkpoint_key`) and a resume compares.
    """

    model: str | None = None  # masked-LM checkpoint, hub id or local path (None: the embedded splade-tiny)
    batch_size: int = 32
    doc_max_length: int = 256
    query_max_length: int = 64
    doc_top_k: int | None = None  # keep only the top-k terms of each document
    doc_windows: DocWindows = DEFAULT_DOC_WINDOWS  # windows of doc_max_length tokens read per document (N, or "all"), pooled into one
    window_stride: int | None = None  # tokens between window starts (None: 3/4 of the window)
    window_pooling: str = DEFAULT_WINDOW_POOLING  # max, mean, decay or first (lsr.encoder.pool_windows)
    window_decay: float = DEFAULT_WINDOW_DECAY  # the weight of later windows for decay / first pooling
    quant_bits: int = 8
    scale: float | None = None  # quantization step (None: the largest weight / the top impact level)
    id_field: str | None = None
    text_field: str | None = None
    title_field: str | None = None
    skip_bad: bool = False
    structures: Sequence[str] = DEFAULT_STRUCTURES  # pruning structures built too: bmp, seismic
    reorder: str | None = None  # renumber documents first (bp, cluster) so that similar ones share BMP blocks
    window: int = 2048  # documents encoded and committed together
    dense: bool = False  # also store dense document vectors
    dense_model: str | None = None
    dense_dtype: str = "float16"
    hnsw_threshold: int | None = None
    bm25: bool | None = None  # also store the BM25 field (None: for text corpora, not for vector files)
    bm25_analyzer: str = DEFAULT_ANALYZER  # word (Lucene-English-like) or model (the SPLADE tokenizer)

    def __post_init__(self) -> None:
        object.__setattr__(self, "structures", tuple(self.structures))
        check_window_settings(self.doc_windows, self.window_stride, self.window_pooling, self.window_decay)
        object.__setattr__(self, "doc_windows", check_doc_windows(self.doc_windows))
        Bm25Settings(analyzer=self.bm25_analyzer)  # a clear error for an unknown analyzer, before any work

    def load_encoder(self, threads: int | None = None) -> SpladeEncoder:
        """The SPLADE model these settings name."""
        return SpladeEncoder(self.model, doc_max_length=self.doc_max_length, query_max_length=self.query_max_length,
                             doc_top_k=self.doc_top_k, threads=threads, **self.window_settings())

    def window_settings(self) -> dict:
        """How long documents are read (the :class:`lsr.encoder.SpladeEncoder` keywords)."""
        return {"doc_windows": self.doc_windows, "window_stride": self.window_stride,
                "window_pooling": self.window_pooling, "window_decay": self.window_decay}

    def of_encoder(self, encoder: SpladeEncoder) -> "BuildSettings":
        """These settings with the model options of an already loaded encoder."""
        return replace(self, model=encoder.name, doc_max_length=encoder.doc_max_length,
                       query_max_length=encoder.query_max_length, doc_top_k=encoder.doc_top_k,
                       **encoder.window_settings())

    def corpus_reader(self, corpus: Path) -> CorpusReader:
        """The reader of a text corpus with these settings' fields."""
        return CorpusReader(corpus, id_field=self.id_field, text_field=self.text_field, title_field=self.title_field,
                            skip_bad=self.skip_bad)

    def source(self, corpus: Path, encoder: SpladeEncoder | None = None) -> "Source":
        """The windows of ``corpus``: precomputed vectors (mapped to ``encoder``'s vocabulary), else text."""
        if is_vector_file(corpus):
            return VectorSource(corpus, encoder or self.load_encoder(), self.skip_bad)
        return CorpusSource(self.corpus_reader(corpus))

    def checkpoint_key(self, corpus: Path, source: "Source", encoder: SpladeEncoder) -> dict:
        """What a resumed build must repeat: these settings, the corpus (and its file's size and time), the model."""
        return {"corpus": str(corpus.resolve()), "corpus_file": _corpus_fingerprint(corpus, source),
                "model_sha256": encoder.hash, "vocab_size": encoder.vocab_size,
                **asdict(self), "structures": list(self.structures)}


# ---------------------------------------------------------------------- windows of documents
@dataclass
class Window:
    """Consecutive records of a corpus: the documents read and, when precomputed, their vectors."""

    docs: list[Document]
    records: int  # corpus records consumed, bad ones included
    vectors: SparseBatch | None = None


def windows(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    window: list[T] = []
    for item in items:
        window.append(item)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def text_windows(docs: Iterable[Document], size: int) -> Iterator[Window]:
    """Windows of documents to encode."""
    for window in windows(docs, size):
        yield Window(window, len(window))


def document_text(doc: Document) -> str:
    """The text a document is encoded from: title and body."""
    return f"{doc.title} {doc.text}".strip() if doc.title else doc.text


def encode_documents(encoder: SpladeEncoder, docs: Sequence[Document], batch_size: int) -> SparseBatch:
    """Sparse vectors of documents (title and body)."""
    return encoder.encode_documents([document_text(d) for d in docs], batch_size)


def take_rows(batch: SparseBatch, rows: Sequence[int] | np.ndarray) -> SparseBatch:
    """The given rows of a CSR batch, in that order."""
    rows = np.asarray(rows, np.int64)
    lengths = batch.indptr[rows + 1] - batch.indptr[rows]
    indptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    take = np.repeat(batch.indptr[rows] - indptr[:-1], lengths) + np.arange(indptr[-1], dtype=np.int64)
    return SparseBatch(indptr, batch.indices[take], batch.values[take])


def progress_bar(desc: str, total: int | None = None, initial: int = 0, progress: bool = True) -> tqdm:
    """The progress bar of a build step, counting documents (closed on errors too when used with ``with``)."""
    return tqdm(total=total, initial=initial, unit="doc", desc=desc, disable=not progress, dynamic_ncols=True)


def raise_error(err: CorpusError) -> None:
    """The ``on_error`` of a step that accepts no bad record."""
    raise err


class BadRecords:
    """The ``on_error`` of a source: raise a bad record's error, or (``skip_bad``) log and count it."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.skipped = 0
        self.passing_over = False  # a resumed build reads its committed records again: their errors were counted

    def __call__(self, err: CorpusError) -> None:
        if self.passing_over:
            return
        if not self.skip_bad:
            raise err
        log.warning("skipping bad record: %s", err)
        self.skipped += 1


def pass_over(records: Iterator, count: int, path: Path) -> None:
    """Pass over the first ``count`` records of an iterator (a resumed build's committed windows)."""
    for done in range(count):
        if next(records, None) is None:
            raise ResumeError(f"{path} has only {done} records, the interrupted build had read {count}; "
                              "run without --resume to start over")


class CorpusSource:
    """Windows of a text corpus (:class:`lsr.corpus.CorpusReader`), to be encoded."""

    desc = "indexing"

    def __init__(self, reader: CorpusReader):
        self.reader = reader
        self.path = reader.path

    @property
    def skipped(self) -> int:
        return self.reader.skipped

    def on_error(self, err: CorpusError) -> None:
        self.reader.skip_error(err)

    def total(self) -> int | None:
        return self.reader.count()

    def windows(self, size: int, start: int = 0, skipped: int = 0) -> Iterator[Window]:
        """Windows from record ``start`` on (a resume: ``skipped`` bad records were counted before it)."""
        docs = iter(self.reader)
        if start:  # the committed windows' records are read again (cheap) and passed over, not encoded
            corpus_log = logging.getLogger("lsr.corpus")
            previous, corpus_log.disabled = corpus_log.disabled, True  # their skips were reported the first time
            try:
                pass_over(docs, start, self.path)
            finally:
                corpus_log.disabled = previous
            self.reader.skipped = skipped
        return text_windows(docs, size)


class VectorSource:
    """Windows of a precomputed vectors JSONL (:mod:`lsr.vectors`), tokens mapped to the model's vocabulary."""

    desc = "indexing vectors"

    def __init__(self, path: Path, encoder: SpladeEncoder, skip_bad: bool):
        self.path = Path(path)
        self.vocab = encoder.tokenizer.get_vocab()
        self.model = encoder.name
        self.on_error = BadRecords(skip_bad)

    @property
    def skipped(self) -> int:
        return self.on_error.skipped

    def total(self) -> None:
        return None

    def windows(self, size: int, start: int = 0, skipped: int = 0) -> Iterator[Window]:
        """Windows of ``size`` valid vectors from record ``start`` on (see :meth:`CorpusSource.windows`)."""
        vectors = iter(read_vectors(self.path, self.on_error))
        if start:
            self.on_error.passing_over = True
            pass_over(vectors, start, self.path)
            self.on_error.passing_over = False
            self.on_error.skipped = skipped
        pending: list[tuple[Document, dict[str, float]]] = []
        records = 0
        for doc, vector in vectors:
            records += 1
            unknown = next((t for t in vector if t not in self.vocab), None)
            if unknown is not None:
                self.on_error(CorpusError(self.path, doc.line, f"vector.{unknown}",
                                          f"token not in the vocabulary of model {self.model!r}"))
                continue
            pending.append((doc, vector))
            if len(pending) == size:
                yield self._window(pending, records)
                pending, records = [], 0
        if pending:
            yield self._window(pending, records)

    def _window(self, pending: list[tuple[Document, dict[str, float]]], records: int) -> Window:
        indptr = np.zeros(len(pending) + 1, np.int64)
        np.cumsum([len(v) for _, v in pending], out=indptr[1:])
        terms = np.fromiter((self.vocab[t] for _, v in pending for t in v), np.uint32, count=int(indptr[-1]))
        weights = np.fromiter((w for _, v in pending for w in v.values()), np.float32, count=int(indptr[-1]))
        return Window([d for d, _ in pending], records, SparseBatch(indptr, terms, weights))


Source = Union[CorpusSource, VectorSource]


def store_window(docs: Sequence[Document], store: DocStore, first_docno: int, on_error: OnError) -> list[int]:
    """Store documents with consecutive numbers from ``first_docno``; return the rows stored. Duplicate ids go to
    ``on_error`` (raise, or skip)."""
    rows: list[int] = []
    for row, doc in enumerate(docs):
        try:
            store.add(first_docno + len(rows), doc)
            rows.append(row)
        except DuplicateIdError:
            on_error(CorpusError(doc.source, doc.line, "id", f"duplicate id {doc.id!r}"))
    return rows


class WindowIndexer:
    """Stores windows of documents in a document store and feeds their vectors to an index builder (encoding the
    windows that have none with ``encoder``); duplicate ids go to ``on_error``. The caller commits the store."""

    def __init__(self, builder: IndexBuilder, store: DocStore, encoder: SpladeEncoder | None, batch_size: int,
                 on_error: OnError):
        self.builder, self.store, self.encoder = builder, store, encoder
        self.batch_size = batch_size
        self.on_error = on_error
        self.truncated = 0  # documents that reached the model's length limit

    def add(self, window: Window) -> list[int]:
        """Index one window; return the rows of ``window.docs`` indexed (the others were bad)."""
        rows = store_window(window.docs, self.store, self.builder.num_docs, self.on_error)
        if window.vectors is None:
            batch = encode_documents(self.encoder, [window.docs[r] for r in rows], self.batch_size)
        else:
            batch = window.vectors if len(rows) == len(window.docs) else take_rows(window.vectors, rows)
        self.builder.add(batch.indptr, batch.indices, batch.values)
        self.truncated += batch.truncated
        return rows


# ---------------------------------------------------------------------- a resumable build (Engine.build)
def build_index(corpus: str | Path, index_dir: str | Path, settings: BuildSettings, *,
                encoder: SpladeEncoder | None = None, progress: bool = True, resume: bool = False) -> SpladeEncoder:
    """Index a corpus into ``index_dir`` (see :meth:`lsr.engine.Engine.build`); return the encoder used."""
    started = time.time()
    corpus, index_dir = Path(corpus), Path(index_dir)
    with writer_lock(index_dir, "lsr index"):  # first: a second builder is told at once, not after loading
        encoder = encoder or settings.load_encoder()
        settings = settings.of_encoder(encoder)
        source = settings.source(corpus, encoder)
        ckpt = Checkpoint.prepare(index_dir, settings.checkpoint_key(corpus, source, encoder), resume)
        try:
            with staged_directory(index_dir, staging=ckpt.staging, keep_on=(KeyboardInterrupt,)) as staging:
                _write_index(staging, corpus, source, settings, encoder, ckpt, progress, started)
        except KeyboardInterrupt:
            if ckpt.path.is_file():
                log.warning("interrupted: %d documents of %s are committed; `lsr index ... --resume` (the same "
                            "command with --resume) continues the build", ckpt.num_docs, index_dir)
            raise
    if source.skipped:
        log.warning("skipped %d bad record(s) in %s", source.skipped, corpus)
    if ckpt.truncated:
        log.warning("%d document(s) reached the model's length limit (%s window(s) of %d tokens per document): only "
                    "their start is indexed (--doc-windows all reads every token)", ckpt.truncated,
                    encoder.doc_windows, encoder.doc_max_length)
    return encoder


def _write_index(staging: Path, corpus: Path, source: Source, settings: BuildSettings, encoder: SpladeEncoder,
                 ckpt: "Checkpoint", progress: bool, started: float) -> None:
    """Every window (committed one by one into ``ckpt``), then the index and its optional parts, in ``staging``."""
    builder = IndexBuilder(staging, encoder.vocab_size, quant_bits=settings.quant_bits, resume=ckpt.builder_state())
    store = DocStore(staging / DOCSTORE_FILE)
    try:
        ckpt.truncate_store(store)
        indexer = WindowIndexer(builder, store, encoder, settings.batch_size, source.on_error)
        indexer.truncated = ckpt.truncated
        with progress_bar(source.desc, source.total(), ckpt.records, progress) as bar:
            for window in source.windows(settings.window, ckpt.records, ckpt.skipped):
                indexer.add(window)
                ckpt.commit(builder, store, ckpt.records + window.records, source.skipped, indexer.truncated)
                bar.update(window.records)
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
        "documents": {"file": DOCSTORE_FILE, "count": num_docs, "sha256": sha256_file(staging / DOCSTORE_FILE)},
        "corpus": str(corpus.resolve()),
        "skipped_records": source.skipped,
        "truncated_documents": ckpt.truncated,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(ckpt.elapsed + time.time() - started, 3),
    }, scale=settings.scale, keep_chunks=True)  # the chunks stay until the end: a resume re-finalizes them
    add_inference_free_in(staging, encoder)
    fault_point("build.finalized")
    if settings.reorder is not None:
        ckpt.discard()  # the document store gets renumbered: an interruption from here starts over
    if settings.bm25 is None:
        settings = replace(settings, bm25=isinstance(source, CorpusSource))
    add_optional_parts(staging, settings, progress)
    ckpt.discard()
    fault_point("build.before_exchange")


def _corpus_fingerprint(corpus: Path, source: Source) -> dict | None:
    """Size and modification time of a single-file corpus (a resumed build must read the same records)."""
    file = corpus if isinstance(source, VectorSource) else source.reader.file
    if file is None or not Path(file).is_file():
        return None  # a folder of text files: not fingerprinted
    stat = Path(file).stat()
    return {"file": str(Path(file).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class Checkpoint:
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
    def prepare(cls, index_dir: Path, settings: dict, resume: bool) -> "Checkpoint":
        """The checkpoint to continue (``resume`` and one to resume), else a fresh, empty staging directory.
        ``settings``: :meth:`BuildSettings.checkpoint_key`."""
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

    def commit(self, builder: IndexBuilder, store: DocStore, records: int, skipped: int, truncated: int) -> None:
        """Commit a window: its postings as a chunk, the document store, then progress.json (atomically)."""
        known = {c["file"]: c for c in self.chunks}
        chunks = [known.get(p.name) or {"file": p.name, "sha256": sha256_file(p)} for p in builder.checkpoint()]
        fault_point("build.chunk_written")
        store.commit()
        fault_point("build.store_committed")
        torch = sys.modules.get("torch")
        write_json_atomic(self.path, {
            "format": "lsr-build-progress", "version": 1, "settings": self.settings,
            "records": records, "num_docs": builder.num_docs, "skipped": skipped, "windows": self.windows + 1,
            "truncated": truncated,
            "chunks": chunks, "elapsed_seconds": round(self.elapsed + time.time() - self._started, 3),
            "torch_threads": torch.get_num_threads() if torch is not None else None,
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        fault_point("build.progress_written")
        self.records, self.num_docs, self.skipped, self.truncated = records, builder.num_docs, skipped, truncated
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


# ---------------------------------------------------------------------- optional parts of an index
def add_optional_parts(index_dir: Path, settings: BuildSettings, progress: bool) -> None:
    """The reordering, BM25 field, structures and dense vectors ``settings`` ask for, added to a written index
    directory (the BM25 field after the reordering, so it is analyzed in the final document order)."""
    add_structures_in(index_dir, (), settings.reorder, progress=progress)
    if settings.bm25:
        add_bm25_in(index_dir, Bm25Settings(analyzer=settings.bm25_analyzer))
    add_structures_in(index_dir, settings.structures, None, progress=progress)
    if settings.dense:
        add_dense_in(index_dir, settings.dense_model, batch_size=settings.batch_size, dtype=settings.dense_dtype,
                     hnsw_threshold=settings.hnsw_threshold, progress=progress)


def add_structures_in(index_dir: Path, names: Sequence[str], reorder: str | None, progress: bool = False,
                      **params) -> None:
    """Reorder documents (renumbering the document store to match, and re-analyzing the BM25 field), then build the
    named structures (for the BM25 field too, with their default parameters); ``progress``: show each step."""
    from lsr.bm25_field import field_dir, has_field
    from lsr.index.structures import add_structure

    if reorder is not None:
        from lsr.dense import permute_dense
        from lsr.index.reorder import reorder_index

        with progress_bar(f"reordering documents ({reorder})", progress=progress) as bar:
            def advance(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            new_to_old = reorder_index(index_dir, reorder, on_progress=advance)
        store = DocStore(index_dir / DOCSTORE_FILE)
        store.renumber(new_to_old)
        store.close()
        permute_dense(index_dir, new_to_old)
        manifest = read_manifest(index_dir)
        manifest["documents"]["sha256"] = sha256_file(index_dir / DOCSTORE_FILE)
        write_manifest(index_dir, manifest)
        if has_field(manifest):
            add_bm25_in(index_dir)
    if names:
        index = InvertedIndex.open(index_dir)
        for name in names:
            started = time.perf_counter()
            if progress:
                tqdm.write(f"building the {name} structure ...")
            add_structure(index, name, **params.get(name, {}))
            if progress:
                tqdm.write(f"built the {name} structure in {time.perf_counter() - started:.1f}s")
            index = InvertedIndex.open(index_dir)
        if has_field(read_manifest(index_dir)):
            for name in names:
                add_structure(InvertedIndex.open(field_dir(index_dir)), name)


def add_bm25_in(index_dir: Path, settings: Bm25Settings | None = None, *, base=None) -> None:
    """Analyze the stored documents of an index directory into its BM25 field (replacing any), with the pruning
    structures the index has, and record it in the manifest. ``settings``: default those of the field it replaces,
    else the defaults. ``base``: the open field (:class:`lsr.bm25_field.Bm25Side`) of the live index a new segment
    joins, whose settings, ``avgdl`` and vocabulary it keeps (:func:`lsr.bm25_field.build_bm25_field`)."""
    with analyze_bm25_in(index_dir, settings, base=base) as analysis:
        write_bm25_in(index_dir, analysis)


def analyze_bm25_in(index_dir: Path, settings: Bm25Settings | None = None, *, base=None):
    """The first pass of :func:`add_bm25_in`: the stored documents analyzed (:class:`lsr.bm25_field.Bm25Analysis`,
    its term counts spilled under ``index_dir``; a context manager that removes them)."""
    from lsr.bm25_field import Bm25Analysis, Bm25Side, field_dir, has_field

    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    if base is None and settings is None:
        settings = Bm25Side.open([field_dir(index_dir)]).settings if has_field(manifest) else Bm25Settings()
    analyzer = (base.settings if base is not None else settings).analyzer
    tokenizer_json = _model_tokenizer_json(index_dir, manifest) if analyzer == "model" and base is None else None
    store = DocStore(index_dir / DOCSTORE_FILE, readonly=True)
    texts = (document_text(store.get(docno)) for docno in range(len(store)))
    analysis = Bm25Analysis(texts, index_dir / ".bm25-tf", settings or Bm25Settings(), tokenizer_json=tokenizer_json,
                            base=base)
    del store, texts  # read-only connection: nothing to commit
    return analysis


def write_bm25_in(index_dir: Path, analysis, *, avgdl: float | None = None, vocab: Sequence[str] | None = None) -> None:
    """The second pass of :func:`add_bm25_in`: write the analyzed field (``avgdl``, ``vocab``: the collection's,
    for a shard; :meth:`lsr.bm25_field.Bm25Analysis.write`) with the index's pruning structures, and record it."""
    from lsr.bm25_field import field_dir, manifest_entry
    from lsr.index.structures import add_structure

    index_dir = Path(index_dir)
    with staged_directory(field_dir(index_dir)) as staging:
        analysis.write(staging, avgdl=avgdl, vocab=vocab)
        for name in read_manifest(index_dir).get("structures", {}):
            add_structure(InvertedIndex.open(staging), name)
    manifest = read_manifest(index_dir)
    manifest["bm25"] = manifest_entry(index_dir)
    write_manifest(index_dir, manifest)


def _model_tokenizer_json(index_dir: Path, manifest: dict) -> str:
    """The SPLADE model's fast tokenizer: the index's inference-free copy, else loaded from the model."""
    from lsr.models import resolve_model
    from lsr.query_encoders import TOKENIZER_FILE, fast_tokenizer_json

    stored = index_dir / TOKENIZER_FILE
    if stored.is_file():
        return stored.read_text(encoding="utf-8")
    return fast_tokenizer_json(resolve_model(manifest["model"]["name"]).path)


def add_inference_free_in(index_dir: Path, encoder: SpladeEncoder) -> None:
    """Write the inference-free query table of an index directory, taking the tokenizer of its model."""
    from lsr.query_encoders import write_inference_free

    tokenizer = encoder.tokenizer
    if getattr(tokenizer, "is_fast", False):
        write_inference_free(index_dir, tokenizer.backend_tokenizer.to_str())
    else:
        log.warning("model %s has no fast tokenizer: index built without the inference-free query table",
                    encoder.name)


def add_dense_in(index_dir: Path, model: str | None = None, *, batch_size: int = 32, dtype: str = "float16",
                 hnsw_threshold: int | None = None, progress: bool = True) -> None:
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
