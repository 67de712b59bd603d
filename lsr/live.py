"""A live index: add and delete documents without rebuilding, committed atomically, compacted online.

Layout. The index directory itself is the first segment (a normal index: ``manifest.json``, arrays, document
store). ``lsr add`` / :func:`add_documents` writes each batch of new documents as another immutable index
directory under ``segments/`` (its own postings, pruning structures and dense vectors, quantized with the first
segment's scale so scores compare across segments, and a BM25 field with the first segment's ``avgdl``);
``lsr delete`` / :func:`delete_documents` records tombstones
(global document numbers) in ``deletes-<generation>.npy``. ``live.json`` is the commit: generation, segments with
their global number offsets, and the tombstone file. A commit writes and fsyncs the new files first and then
renames ``live.json`` into place, so a reader sees the old or the new commit, never a mix, and a process killed
at any point leaves the last commit intact. One writer at a time (``index.storage.writer_lock``).

:func:`compact` merges every segment's live documents into a fresh single-segment index (no re-encoding: the
stored impacts are reused) built beside the old one and swapped in atomically; searches keep using the old
snapshot until they reopen (``Engine.refresh``).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from lsr.index import IndexBuilder, InvertedIndex
from lsr.index.segments import SegmentedIndex
from lsr.index.storage import (IndexFormatError, WriterLockedError, fsync_tree, read_manifest, sha256_file,
                           staged_directory, write_array, write_json_atomic, writer_lock)
from lsr.corpus import Document
from lsr.docstore import DOCSTORE_FILE, DocStore
from lsr.encoder import SparseBatch
from lsr.faults import fault_point
from lsr.pipeline import Window, WindowIndexer, add_bm25_in, document_text, progress_bar, raise_error, text_windows
from lsr.searcher import Searcher
from lsr.snapshot import (LIVE_FILE, LIVE_FORMAT, LIVE_FORMAT_VERSION, SEGMENTS_DIR, load_deletes, open_local,
                          read_commit, segment_dirs)

log = logging.getLogger("lsr.live")

ADD_WINDOW = 2048
MAX_ADDED_SEGMENTS = 8  # more added segments than this are merged into one after an add

__all__ = ["DocumentNotFoundError", "DuplicateDocumentError", "WriterLockedError", "add_documents", "compact",
           "delete_documents", "read_commit"]


class DuplicateDocumentError(ValueError):
    """Documents to add whose ids are already live in the index (and ``update`` was not asked for)."""

    def __init__(self, message: str, ids: Sequence[str]):
        super().__init__(message)
        self.ids = list(ids)


class DocumentNotFoundError(KeyError):
    """Ids to delete that are not live in the index."""

    def __init__(self, ids: Sequence[str]):
        super().__init__(ids)
        self.ids = list(ids)

    def __str__(self) -> str:
        shown = ", ".join(repr(i) for i in self.ids[:10]) + (" …" if len(self.ids) > 10 else "")
        return f"{len(self.ids)} id(s) not in the index: {shown}"


# ---------------------------------------------------------------------- the commit file
def _new_commit(index_dir: Path) -> dict:
    manifest = read_manifest(index_dir)
    return {"format": LIVE_FORMAT, "format_version": LIVE_FORMAT_VERSION, "generation": 0,
            "base": {"num_docs": manifest["num_docs"], "manifest_sha256": sha256_file(index_dir / "manifest.json")},
            "segments": [], "deletes": None, "next_docno": manifest["num_docs"]}



def _commit(index_dir: Path, commit: dict, segments: list[dict] | None, deleted: np.ndarray | None) -> dict:
    """Write the next generation: the segment list (if given), tombstones (if changed) and ``live.json``, fsynced
    and renamed into place."""
    commit = copy.deepcopy(commit)
    commit["generation"] += 1
    gen = commit["generation"]
    if segments is not None:
        commit["segments"] = segments
        if segments:
            commit["next_docno"] = max(commit["next_docno"], segments[-1]["base"] + segments[-1]["num_docs"])
    if deleted is not None:
        name = f"deletes-{gen:06d}"
        entry = write_array(index_dir, name, np.asarray(deleted, np.int64))
        fsync_tree(index_dir / entry["file"])
        commit["deletes"] = {"file": entry["file"], "count": int(len(deleted)), "sha256": entry["sha256"]}
    commit["committed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json_atomic(index_dir / LIVE_FILE, commit)
    _collect_garbage(index_dir, commit)
    return commit


def _collect_garbage(index_dir: Path, commit: dict) -> None:
    """Remove tombstone files and segment directories no commit refers to (left by earlier commits or kills).
    Only the writer (holding the lock) calls this."""
    keep = {(commit.get("deletes") or {}).get("file")}
    for path in index_dir.glob("deletes-*.npy"):
        if path.name not in keep:
            path.unlink(missing_ok=True)
    live = {Path(s["dir"]).name for s in commit["segments"]}
    root = index_dir / SEGMENTS_DIR
    if root.is_dir():
        for path in root.iterdir():
            if path.name not in live:
                shutil.rmtree(path, ignore_errors=True)


def _discard_uncommitted(index_dir: Path) -> None:
    """After a failed commit (the writer still holding the lock): remove what the commit on disk does not refer to
    (whichever commit that is: the failure may have come before or after ``live.json`` was renamed into place)."""
    try:
        commit = read_commit(index_dir) or {"segments": [], "deletes": None}
        _collect_garbage(index_dir, commit)
        (index_dir / f"{LIVE_FILE}.tmp").unlink(missing_ok=True)
    except Exception as err:  # never hide the original error
        log.warning("could not clean up after a failed commit of %s: %s", index_dir, err)



def verify_live(index_dir: str | os.PathLike) -> list[str]:
    """Check an index at its latest commit: every segment's checksums and invariants (:func:`verify_index`), its
    BM25 field and document count, the commit's segment ranges and tombstones. Problems in order found."""
    from lsr.bm25_field import verify_field
    from lsr.index.storage import verify_index

    index_dir = Path(index_dir)
    problems = verify_index(index_dir)
    try:
        commit = read_commit(index_dir)
    except IndexFormatError as err:
        return problems + [str(err)]
    if commit is not None and (index_dir / "manifest.json").is_file() and \
            sha256_file(index_dir / "manifest.json") != commit["base"]["manifest_sha256"]:
        problems.append(f"{index_dir / LIVE_FILE}: commit does not belong to this index's manifest.json")
    end = 0
    for n, (path, base) in enumerate(segment_dirs(index_dir, commit)):
        if n:
            problems += verify_index(path)
        try:
            manifest = read_manifest(path)
        except IndexFormatError:
            continue  # reported by verify_index
        problems += verify_field(path, manifest)
        if base < end:
            problems.append(f"{index_dir / LIVE_FILE}: segment {path.name} starts at {base}, inside the previous one")
        end = base + manifest["num_docs"]
        store_path = path / (manifest.get("documents") or {}).get("file", "docs.sqlite")
        if not store_path.is_file():
            continue  # reported by verify_index
        try:
            count = len(DocStore(store_path, readonly=True))
        except sqlite3.DatabaseError as err:
            problems.append(f"{store_path}: unreadable document store ({err})")
            continue
        if count != manifest["num_docs"]:
            problems.append(f"{store_path}: {count} documents, the segment indexes {manifest['num_docs']}")
    if commit is not None:
        if commit["next_docno"] < end:
            problems.append(f"{index_dir / LIVE_FILE}: next_docno {commit['next_docno']} is below the last "
                            f"segment's end {end}")
        try:
            load_deletes(index_dir, commit)
        except (IndexFormatError, FileNotFoundError, ValueError) as err:
            problems.append(str(err))
    return problems


# ---------------------------------------------------------------------- writing
def add_documents(index_dir: str | os.PathLike, docs: Iterable[Document], *, update: bool = False, encoder=None,
                  dense_encoder=None, batch_size: int = 32, progress: bool = False, total: int | None = None,
                  max_segments: int = MAX_ADDED_SEGMENTS) -> dict:
    """Add documents as a new segment (one commit); return ``{"added", "replaced", "truncated", "generation",
    "segment"}`` (``truncated``: documents longer than the model's document length, indexed from their start).

    Ids already live in the index raise :class:`DuplicateDocumentError` unless ``update`` (then the old versions
    are deleted in the same commit: an update is delete + add). Duplicate ids within ``docs`` raise
    :class:`lsr.corpus.CorpusError`. Nothing is committed unless every document was indexed. When the index then
    holds more than ``max_segments`` added segments, they are merged into one (a second commit; the first
    segment, usually by far the largest, is left to :func:`compact`); ``merged_segments`` says how many.
    """
    index_dir = Path(index_dir)
    with writer_lock(index_dir, "add documents"):
        engine = Searcher(open_local(index_dir, checksums=True), encoder=encoder)
        commit = read_commit(index_dir) or _new_commit(index_dir)
        _collect_garbage(index_dir, commit)  # e.g. the segment of a writer killed before its commit: same name
        segment_name = f"{commit['generation'] + 1:06d}"
        root = index_dir / SEGMENTS_DIR
        root.mkdir(exist_ok=True)
        staging = root / f".building-{segment_name}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            count, replaced, truncated = _build_segment(engine, docs, staging, update=update,
                                                        dense_encoder=dense_encoder, batch_size=batch_size,
                                                        progress=progress, total=total)
            fsync_tree(staging)
            os.replace(staging, root / segment_name)
            fsync_tree(root, files=False)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        fault_point("add.segment_ready")
        deleted = None
        if replaced:
            deleted = np.union1d(load_deletes(index_dir, commit), np.asarray(replaced, np.int64))
        segment = {"dir": f"{SEGMENTS_DIR}/{segment_name}", "base": int(commit["next_docno"]), "num_docs": count}
        try:
            commit = _commit(index_dir, commit, commit["segments"] + [segment], deleted)
        except BaseException:  # e.g. disk full: drop the segment and tombstones no commit refers to
            _discard_uncommitted(index_dir)
            raise
        merged = None
        if len(commit["segments"]) > max_segments:
            try:
                merged = _merge_added_segments(index_dir, commit)
                commit = read_commit(index_dir)
            except Exception as err:  # the documents are committed; merging can wait for the next add
                _discard_uncommitted(index_dir)
                log.warning("added to %s, but merging its segments failed (%s); the next add retries", index_dir, err)
    return {"added": count, "replaced": len(replaced), "truncated": truncated, "generation": commit["generation"],
            "segment": segment["dir"], "merged_segments": merged}


def _build_segment(engine, docs: Iterable[Document], staging: Path, *, update: bool, dense_encoder,
                   batch_size: int, progress: bool, total: int | None) -> tuple[int, list[int], int]:
    """Index ``docs`` into a new segment directory like the engine's first segment;
    (count, replaced docnos, truncated documents)."""
    manifest = engine.manifest
    builder = IndexBuilder(staging, manifest["vocab_size"], quant_bits=manifest["quantization"]["bits"])
    store = DocStore(staging / DOCSTORE_FILE)
    encoder = engine.encoder.for_documents(manifest["model"])  # windows etc. as the index's first build
    indexer = WindowIndexer(builder, store, encoder, batch_size, raise_error)
    dense_vectors = []
    if engine.dense is not None and dense_encoder is None:
        dense_encoder = engine.dense_encoder
    replaced: list[int] = []
    with progress_bar("adding", total, progress=progress) as bar:
        for window in text_windows(docs, ADD_WINDOW):
            existing = []
            for doc in window.docs:
                try:
                    existing.append((doc, engine.docs.docno(doc.id)))
                except KeyError:
                    pass
            if existing and not update:
                first = existing[0][0]
                where = f"{first.source}:{first.line}: field 'id': " if first.source else ""
                raise DuplicateDocumentError(
                    f"{where}{len(existing)} id(s) already in the index ({', '.join(repr(d.id) for d, _ in existing[:5])}"
                    f"{' …' if len(existing) > 5 else ''}); use --update (\"update\": true) to replace them",
                    [d.id for d, _ in existing])
            replaced += [docno for _, docno in existing]
            indexer.add(window)
            if dense_encoder is not None:
                dense_vectors.append(dense_encoder.encode_documents([document_text(d) for d in window.docs],
                                                                    batch_size))
            store.commit()
            fault_point("add.window")
            bar.update(window.records)
    count = builder.num_docs
    store.close()
    if count == 0:
        raise ValueError("no documents to add")
    builder.finalize({
        "model": manifest["model"],
        "documents": {"file": DOCSTORE_FILE, "count": count, "sha256": sha256_file(staging / DOCSTORE_FILE)},
        "segment_of": str(engine.index_dir.resolve()),
        "truncated_documents": indexer.truncated,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, scale=float(manifest["quantization"]["scale"]))
    _copy_structures(manifest, staging)
    if dense_encoder is not None:
        _write_dense_like(engine.dense.info, staging, np.concatenate(dense_vectors))
    if engine.has_bm25:  # the base's avgdl and parameters, its vocabulary extended (lsr.bm25_field)
        add_bm25_in(staging, base=engine.parts.bm25)
    return count, replaced, indexer.truncated


def _copy_structures(manifest: dict, target: Path) -> None:
    """Build the structures of ``manifest`` (same build parameters) into the index at ``target``."""
    from lsr.index.structures import add_structure, structure_class

    for name, info in manifest.get("structures", {}).items():
        params = structure_class(name).rebuild_params(info.get("params", {}), manifest["num_docs"])
        add_structure(InvertedIndex.open(target), name, **params)


def _write_dense_like(info: dict, target: Path, vectors: np.ndarray) -> None:
    from lsr.dense import write_dense

    write_dense(target, vectors, info["model"], dtype=info["dtype"], hnsw_threshold=info["hnsw_threshold"],
                **({k: info["hnsw"][k] for k in ("ef_search",)} if info.get("hnsw") else {}))


def delete_documents(index_dir: str | os.PathLike, ids: Sequence[str], *, missing_ok: bool = False) -> dict:
    """Delete documents by id (one commit of tombstones); return ``{"deleted", "missing", "generation"}``.

    Ids that are not live raise :class:`DocumentNotFoundError` (and nothing is deleted) unless ``missing_ok``.
    """
    index_dir = Path(index_dir)
    with writer_lock(index_dir, "delete documents"):
        engine = Searcher(open_local(index_dir, checksums=True))
        found, missing = [], []
        for doc_id in dict.fromkeys(ids):
            try:
                found.append(engine.docs.docno(doc_id))
            except KeyError:
                missing.append(doc_id)
        if missing and not missing_ok:
            raise DocumentNotFoundError(missing)
        commit = read_commit(index_dir) or _new_commit(index_dir)
        if not found:
            return {"deleted": 0, "missing": missing, "generation": commit["generation"]}
        deleted = np.union1d(load_deletes(index_dir, commit), np.asarray(found, np.int64))
        try:
            commit = _commit(index_dir, commit, None, deleted)
        except BaseException:  # e.g. disk full: drop tombstones no commit refers to
            _discard_uncommitted(index_dir)
            raise
    return {"deleted": len(found), "missing": missing, "generation": commit["generation"]}


def compact(index_dir: str | os.PathLike, *, progress: bool = True) -> dict:
    """Merge every segment's live documents into one segment and drop deleted documents.

    The merged index is built beside the current one from the stored impacts (no encoding) and swapped in
    atomically; readers keep their snapshot until they reopen. Returns counts before and after.
    """
    from lsr.query_encoders import add_inference_free

    index_dir = Path(index_dir)
    with writer_lock(index_dir, "compact"):
        engine = Searcher(open_local(index_dir, checksums=True))
        commit = read_commit(index_dir)
        before = {"segments": 1 + len(commit["segments"]) if commit else 1,
                  "deleted": int(len(engine.index.deleted)) if commit else 0, "documents": engine.index.num_docs}
        if commit is None or (not commit["segments"] and not commit.get("deletes")):
            return {"compacted": False, "before": before, "after": before}
        if engine.index.num_docs == 0:
            raise ValueError(f"{index_dir}: every document is deleted; nothing to compact into (rebuild instead)")
        base = engine.manifest
        with staged_directory(index_dir) as staging:
            extra = {key: value for key, value in base.items() if key in ("lsr_version", "model", "corpus")}
            _write_merged(engine, range(len(engine.index.segments)), staging, {
                **extra, "skipped_records": 0, "build_seconds": 0.0,
                "compacted_from": {"generation": commit["generation"], **before}}, progress)
            if base.get("inference_free"):
                add_inference_free(staging)
            if engine.has_bm25:  # analyzed afresh: avgdl and document frequencies of the compacted collection
                add_bm25_in(staging, engine.parts.bm25.settings)
            fsync_tree(staging)
            fault_point("compact.before_exchange")
        after = {"segments": 1, "deleted": 0, "documents": engine.index.num_docs}
    return {"compacted": True, "before": before, "after": after}


def _merge_added_segments(index_dir: Path, commit: dict) -> int:
    """Merge the added segments (all but the first) into one, dropping their deleted documents; one commit.

    The merged segment keeps the first one's starting number and its documents keep their order, so rankings
    (ties included) do not change. Returns how many segments were merged. The caller holds the writer lock."""
    engine = Searcher(open_local(index_dir, checksums=True))
    index: SegmentedIndex = engine.index
    first = commit["segments"][0]["base"]
    name = f"{commit['generation'] + 1:06d}"
    root = index_dir / SEGMENTS_DIR
    staging = root / f".building-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        count = _write_merged(engine, range(1, len(index.segments)), staging,
                              {"segment_of": str(index_dir.resolve())}, progress=False)
        if engine.has_bm25 and count:
            add_bm25_in(staging, base=engine.parts.bm25)
        fsync_tree(staging)
        os.replace(staging, root / name)
        fsync_tree(root, files=False)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    deleted = index.deleted[index.deleted < first]
    segment = {"dir": f"{SEGMENTS_DIR}/{name}", "base": int(first), "num_docs": count}
    _commit(index_dir, commit, [segment] if count else [], deleted)
    return len(commit["segments"])


def _write_merged(engine, segment_numbers: Iterable[int], target: Path, extra: dict, progress: bool) -> int:
    """Write the live documents of some segments of ``engine`` (in order) as one index at ``target``, from their
    stored impacts, with the first segment's quantization, structures and dense model; return the count."""
    index: SegmentedIndex = engine.index
    base = engine.manifest
    segment_numbers = list(segment_numbers)
    builder = IndexBuilder(target, base["vocab_size"], quant_bits=base["quantization"]["bits"])
    store = DocStore(target / DOCSTORE_FILE)
    indexer = WindowIndexer(builder, store, None, 0, raise_error)
    vectors = []
    total = sum(int((~index.dead_masks[s]).sum()) for s in segment_numbers)
    with progress_bar("merging", total, progress=progress) as bar:
        for s in segment_numbers:
            seg = index.segments[s]
            live = np.flatnonzero(~index.dead_masks[s])
            for chunk in np.array_split(live, max(1, len(live) // ADD_WINDOW)):
                if not len(chunk):
                    continue
                docs = [engine.docs.stores[s].get(int(local)) for local in chunk]
                indexer.add(Window(docs, len(docs), _forward_rows(seg, chunk)))
                store.commit()
                fault_point("merge.window")
                if engine.dense is not None:
                    vectors.append(np.asarray(engine.dense.parts[s].vectors[chunk], np.float32))
                bar.update(len(chunk))
    store.close()
    count = builder.num_docs
    if count == 0:
        shutil.rmtree(target / "_chunks", ignore_errors=True)
        return 0
    builder.finalize({
        **extra,
        "model": base["model"],
        "documents": {"file": DOCSTORE_FILE, "count": count, "sha256": sha256_file(target / DOCSTORE_FILE)},
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, scale=index.scale)
    _copy_structures(base, target)
    if engine.dense is not None:
        _write_dense_like(engine.dense.info, target, np.concatenate(vectors))
    return count


def _forward_rows(seg: InvertedIndex, locals_: np.ndarray) -> SparseBatch:
    """CSR (term ids, float weights = impact * scale) of some documents of a segment."""
    offsets = seg.array("forward_offsets")
    starts, ends = offsets[locals_], offsets[locals_ + 1]
    indptr = np.zeros(len(locals_) + 1, np.int64)
    np.cumsum(ends - starts, out=indptr[1:])
    terms = np.concatenate([seg.array("forward_terms")[a:b] for a, b in zip(starts, ends)])
    impacts = np.concatenate([seg.array("forward_impacts")[a:b] for a, b in zip(starts, ends)])
    return SparseBatch(indptr, terms, impacts.astype(np.float64) * seg.scale)
