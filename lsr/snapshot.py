"""Reading an index directory at one commit: a single index, or a live one (segments minus deleted documents).

The commit of a live index is ``live.json`` (written by :mod:`lsr.live`): its generation, the segments with
their global number offsets and the tombstone file. :func:`open_local` opens the latest commit as
:class:`LocalIndex`, the :class:`lsr.protocols.IndexParts` of a single or live index (segments searched as one
through :class:`SegmentedDocStore`, :class:`lsr.index.segments.SegmentedIndex` and :class:`SegmentedDense`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from lsr.corpus import Document
from lsr.docstore import DocStore
from lsr.index import InvertedIndex
from lsr.index.segments import SegmentedIndex, merge_top_k
from lsr.index.storage import IndexFormatError, read_manifest, sha256_file
from lsr.protocols import DenseSide

LIVE_FILE = "live.json"
LIVE_FORMAT = "lsr-live"
LIVE_FORMAT_VERSION = 1
SEGMENTS_DIR = "segments"
OPEN_ATTEMPTS = 5  # a writer committing while we open: open again (the new commit)


# ---------------------------------------------------------------------- the commit file
def read_commit(index_dir: str | os.PathLike) -> dict | None:
    """The index's ``live.json`` commit, or None for a single-segment index that never changed."""
    path = Path(index_dir) / LIVE_FILE
    try:
        commit = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise IndexFormatError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(commit, dict) or commit.get("format") != LIVE_FORMAT:
        raise IndexFormatError(f"{path}: not an {LIVE_FORMAT!r} commit")
    if commit.get("format_version") != LIVE_FORMAT_VERSION:
        raise IndexFormatError(f"{path}: live-index format version {commit.get('format_version')!r}, this code "
                               f"reads version {LIVE_FORMAT_VERSION}")
    return commit


def commit_stamp(index_dir: str | os.PathLike) -> tuple | None:
    """What changes whenever anything is committed to the index (the first segment's manifest or ``live.json``
    replaced); None if there is no index."""
    stamp = []
    for name in ("manifest.json", LIVE_FILE):
        try:
            st = os.stat(Path(index_dir) / name)
        except FileNotFoundError:
            if name == "manifest.json":
                return None
            stamp.append(None)
            continue
        stamp.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(stamp)



def load_deletes(index_dir: Path, commit: dict) -> np.ndarray:
    """The commit's tombstones (sorted global document numbers, int64), checked against their checksum."""
    info = commit.get("deletes")
    if not info:
        return np.empty(0, np.int64)
    path = index_dir / info["file"]
    if sha256_file(path) != info["sha256"]:
        raise IndexFormatError(f"{path}: sha256 mismatch (file corrupt or modified); run `lsr verify` and rebuild or "
                               "restore the index")
    deleted = np.load(path, allow_pickle=False).astype(np.int64)
    if deleted.shape != (info["count"],) or np.any(np.diff(deleted) <= 0) or \
            (deleted.size and (deleted[0] < 0 or deleted[-1] >= commit["next_docno"])):
        raise IndexFormatError(f"{path}: tombstones must be {info['count']} sorted unique numbers below "
                               f"{commit['next_docno']}")
    return deleted


def segment_dirs(index_dir: Path, commit: dict | None) -> list[tuple[Path, int]]:
    """(directory, first global number) of every segment of a commit, the index directory itself first."""
    return [(index_dir, 0)] + [(index_dir / s["dir"], int(s["base"])) for s in (commit or {}).get("segments", [])]



# ---------------------------------------------------------------------- segments as one
class SegmentedDocStore:
    """The document stores of every segment as one store over global document numbers (deleted ids hidden)."""

    def __init__(self, stores: Sequence[DocStore], index: SegmentedIndex):
        self.stores = list(stores)
        self.index = index

    def _split(self, docnos: Iterable[int]) -> dict[int, list[tuple[int, int]]]:
        groups: dict[int, list[tuple[int, int]]] = {}
        for docno in docnos:
            s, local = self.index.locate(int(docno))
            groups.setdefault(s, []).append((int(docno), local))
        return groups

    def get(self, docno: int) -> Document:
        """The document with this global number (KeyError if none)."""
        try:
            s, local = self.index.locate(docno)
        except IndexError:
            raise KeyError(docno) from None
        return self.stores[s].get(local)

    def get_many(self, docnos: list[int]) -> dict[int, Document]:
        """Several live documents by global number, one read per segment (other numbers are left out)."""
        out = {}
        stored = [d for d in docnos if self.index.is_live(int(d))]
        for s, pairs in self._split(stored).items():
            found = self.stores[s].get_many([local for _, local in pairs])
            out.update({docno: found[local] for docno, local in pairs if local in found})
        return out

    def headers(self, docnos: list[int]) -> dict[int, tuple[str, str]]:
        """(external id, title) of several documents."""
        out = {}
        for s, pairs in self._split(docnos).items():
            found = self.stores[s].headers([local for _, local in pairs])
            out.update({docno: found[local] for docno, local in pairs})
        return out

    def docno(self, doc_id: str) -> int:
        """Global number of the live document with this external id (KeyError if none)."""
        for s in range(len(self.stores) - 1, -1, -1):
            try:
                docno = self.stores[s].docno(doc_id) + self.index.bases[s]
            except KeyError:
                continue
            if self.index.is_live(docno):
                return docno
        raise KeyError(doc_id)

    def ids(self) -> list[str]:
        """External ids of the live documents in global-number order."""
        out = []
        for s, store in enumerate(self.stores):
            dead = self.index.dead_masks[s]
            out += [doc_id for local, doc_id in enumerate(store.ids()) if not dead[local]]
        return out

    def __len__(self) -> int:
        return self.index.num_docs


class SegmentedDense:
    """The dense vectors of every segment searched as one (what :mod:`lsr.fusion` calls on ``engine.dense``)."""

    def __init__(self, parts: Sequence, index: SegmentedIndex):
        self.parts = list(parts)
        self.index = index
        self.info = parts[0].info
        self.dim = parts[0].dim
        self.num_docs = index.num_docs

    @property
    def model(self) -> dict:
        return self.info["model"]

    @property
    def uses_hnsw(self) -> bool:
        return any(p.uses_hnsw for p in self.parts)

    def search_batch(self, queries: np.ndarray, k: int = 10, exact: bool | None = None,
                     ef_search: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-k of each query over the live documents of every segment."""
        index = self.index
        per_query: list[list] = [[] for _ in queries]
        for s, part in enumerate(self.parts):
            first = part.search_batch(queries, index.first_fetch(s, k), exact=exact, ef_search=ef_search)
            for q, query in enumerate(queries):
                per_query[q].append(index.live_top_k(
                    s, k, lambda kk, part=part, query=query: part.search_batch(query[None, :], kk, exact=exact,
                                                                              ef_search=ef_search)[0], first[q]))
        return [merge_top_k(parts, k) for parts in per_query]

    def search(self, query: np.ndarray, k: int = 10, exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.search_batch(np.asarray(query, np.float32)[None, :], k, exact)[0]

    def score(self, query: np.ndarray, docnos: Sequence[int]) -> np.ndarray:
        """Exact inner products of one query with the given global document numbers."""
        docnos = np.asarray(docnos, np.int64)
        out = np.zeros(len(docnos), np.float32)
        seg_of = np.searchsorted(np.asarray(self.index.bases), docnos, side="right") - 1
        for s in np.unique(seg_of):
            rows = np.flatnonzero(seg_of == s)
            out[rows] = self.parts[s].score(query, docnos[rows] - self.index.bases[s])
        return out

    def vector(self, docno: int) -> np.ndarray:
        s, local = self.index.locate(docno)
        return self.parts[s].vector(local)


def open_segments(index_dir: Path, commit: dict, verify: bool = False, checksums: bool = False,
                  preload: bool = False) -> tuple[SegmentedIndex, SegmentedDocStore, object]:
    """The (index, document store, dense side or None) of a commit."""
    from lsr.dense import DenseIndex

    read_manifest(index_dir)  # first: a manifest this code cannot read (e.g. a newer format version) says so
    if sha256_file(index_dir / "manifest.json") != commit["base"]["manifest_sha256"]:
        raise IndexFormatError(f"{index_dir / LIVE_FILE}: commit does not belong to this index's first segment "
                               "(manifest.json changed)")
    parts = segment_dirs(index_dir, commit)
    indexes = [InvertedIndex.open(path, verify=verify, checksums=checksums, preload=preload) for path, _ in parts]
    index = SegmentedIndex(indexes, [base for _, base in parts], load_deletes(index_dir, commit))
    stores = []
    for (path, _), seg in zip(parts, indexes):
        stores.append(DocStore(path / seg.manifest["documents"]["file"], readonly=True))
    dense_parts = [DenseIndex.open(path, seg.manifest, verify=verify) for (path, _), seg in zip(parts, indexes)]
    if any(d is None for d in dense_parts) and any(d is not None for d in dense_parts):
        raise IndexFormatError(f"{index_dir}: some segments have dense vectors and others not")
    dense = SegmentedDense(dense_parts, index) if dense_parts[0] is not None else None
    return index, SegmentedDocStore(stores, index), dense



# ---------------------------------------------------------------------- the parts of a single or live index
_NOT_OPENED = object()


class LocalIndex:
    """A single or live index directory at one commit: the :class:`lsr.protocols.IndexParts` an
    :class:`lsr.engine.Engine` of it is assembled from (the dense side and BM25 field of a never-changed index open on first use)."""

    def __init__(self, index_dir: Path, index: InvertedIndex | SegmentedIndex, docs: DocStore | SegmentedDocStore,
                 *, commit: dict | None = None, dense: DenseSide | None | object = _NOT_OPENED,
                 stamp: tuple | None = None):
        self.index_dir = Path(index_dir)
        self.index = index
        self.docs = docs
        self.manifest = index.manifest
        self.commit = commit  # the live-index commit, None for a never-changed index
        self.stamp = stamp  # commit_stamp() when opened
        self._dense = dense
        # a live index's segments can be merged away after this commit: open its BM25 field now, like its arrays
        self._bm25 = _NOT_OPENED if commit is None else open_bm25(self.index_dir, commit, index)

    @property
    def dense(self) -> DenseSide | None:
        """The dense vectors (:class:`lsr.dense.DenseIndex` or :class:`SegmentedDense`), or None."""
        if self._dense is _NOT_OPENED:
            from lsr.dense import DenseIndex

            self._dense = DenseIndex.open(self.index_dir, self.manifest)
        return self._dense

    @property
    def bm25(self):
        """The BM25 field (:class:`lsr.bm25_field.Bm25Side`, over every segment of a live index), or None."""
        if self._bm25 is _NOT_OPENED:
            self._bm25 = open_bm25(self.index_dir, self.commit, self.index)
        return self._bm25

    def is_current(self) -> bool:
        return commit_stamp(self.index_dir) == self.stamp

    def start(self) -> None:
        """Nothing to start: the arrays are memory-mapped."""

    def close(self) -> None:
        """Nothing to release beyond what garbage collection does."""

    def info(self) -> dict:
        """Counts, sizes, model and build details (for a live index: segments, deleted documents, generation)."""
        m = self.manifest
        segments = getattr(self.index, "segments", [self.index])
        df = np.add.reduce([np.diff(seg.array("postings_offsets")) for seg in segments])
        size = sum(f.stat().st_size for f in self.index_dir.rglob("*") if f.is_file())
        postings = sum(seg.num_postings for seg in segments)
        structures: dict[str, int] = {}
        for seg in segments:
            for name, built in seg.manifest.get("structures", {}).items():
                arrays = seg.manifest["arrays"]
                structures[name] = structures.get(name, 0) + sum(
                    (seg.index_dir / arrays[a]["file"]).stat().st_size for a in built.get("arrays", []) if a in arrays)
        return {
            "index": str(self.index_dir.resolve()),
            "format_version": m["format_version"],
            "documents": self.index.num_docs,
            "terms": int(np.count_nonzero(df)),
            "vocab_size": m["vocab_size"],
            "postings": postings,
            "avg_terms_per_doc": round(postings / max(sum(seg.num_docs for seg in segments), 1), 1),
            "size_bytes": size,
            "structure_bytes": structures,
            "segments": len(segments),
            "deleted": int(len(getattr(self.index, "deleted", ()))),
            "generation": (self.commit or {}).get("generation", 0),
            **build_details(m),
        }


def open_bm25(index_dir: Path, commit: dict | None, index):
    """The BM25 field of a single index or of every segment of a live one (None if the index has none); segments
    are searched as one :class:`SegmentedIndex` with the same tombstones as ``index``."""
    from lsr.bm25_field import Bm25Side, field_dir, has_field

    parts = segment_dirs(index_dir, commit)
    manifests = [read_manifest(path) for path, _ in parts]
    have = [has_field(m) for m in manifests]
    if not any(have):
        return None
    if not all(have):
        raise IndexFormatError(f"{index_dir}: some segments have the BM25 field and others not; run `lsr index "
                               f"--add-bm25 --index {index_dir}` after `lsr compact`")
    dirs = [field_dir(path) for path, _ in parts]
    fields = [InvertedIndex.open(d) for d in dirs]  # headers and sizes checked; `lsr verify` hashes them
    if commit is None:
        return Bm25Side.open(dirs, fields[0])
    return Bm25Side.open(dirs, SegmentedIndex(fields, [base for _, base in parts], index.deleted))


def build_details(manifest: dict) -> dict:
    """The build's part of ``info()``: quantization, models, when and from what, optional parts (single, live and
    sharded indexes alike)."""
    required = {key: manifest[key] for key in ("quantization", "model", "built_at", "build_seconds", "corpus")}
    return {**required, "dense": manifest.get("dense"), "inference_free": manifest.get("inference_free"),
            "bm25": manifest.get("bm25")}


def open_local(index_dir: str | os.PathLike, verify: bool = False, checksums: bool = False,
               preload: bool = False) -> LocalIndex:
    """Open a single or live index directory at its latest commit (memory-mapped).

    Array headers and file sizes are always checked; ``checksums`` also checks the sha256 of every file (writers do);
    ``verify`` also checks the structural invariants; ``preload``: see :meth:`lsr.index.InvertedIndex.open`. A
    commit made while opening is followed: the directory is opened again at the new commit.
    """
    index_dir = Path(index_dir)
    for attempt in range(OPEN_ATTEMPTS):
        stamp = commit_stamp(index_dir)
        if stamp is None:
            raise FileNotFoundError(f"no index at {index_dir} (missing manifest.json); "
                                    "build one with `lsr index CORPUS`")
        try:
            parts = _open_commit(index_dir, verify, checksums, preload)
        except (FileNotFoundError, IndexFormatError):
            if attempt < OPEN_ATTEMPTS - 1 and commit_stamp(index_dir) != stamp:
                continue  # a writer committed while we were opening: open the new commit
            raise
        if commit_stamp(index_dir) == stamp:
            break
    parts.stamp = stamp
    return parts


def _open_commit(index_dir: Path, verify: bool, checksums: bool, preload: bool) -> LocalIndex:
    commit = read_commit(index_dir)
    if commit is None:
        index = InvertedIndex.open(index_dir, verify=verify, checksums=checksums, preload=preload)
        return LocalIndex(index_dir, index, DocStore(index_dir / index.manifest["documents"]["file"], readonly=True))
    index, docs, dense = open_segments(index_dir, commit, verify, checksums, preload)
    return LocalIndex(index_dir, index, docs, commit=commit, dense=dense)
