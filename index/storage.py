"""On-disk layout of an index directory: ``.npy`` arrays described by ``manifest.json``.

The manifest records, for every array, its file, dtype, shape and sha256. Arrays are
opened memory-mapped; :func:`verify_index` checks checksums and structural invariants.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import mmap
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from numba import njit

from .docids import RUN_ARRAYS, join_doc_ids

FORMAT_NAME = "lsr-index"
# 2: uint16 forward term ids when the vocabulary fits, block-major capped Seismic summaries, BMP forward layout.
# Version 1 indexes open (uint32 term ids, bitmap/postings BMP); their Seismic structure must be rebuilt.
# 3: posting-list doc ids in 16 bits (uint16 low halves + runs of each high half: index.docids).
# Versions 1 and 2 store uint32 doc ids, which every reader still takes.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "manifest.json"
_HASH_CHUNK = 1 << 20


def term_dtype(vocab_size: int) -> type:
    """Narrowest unsigned type of term ids below ``vocab_size``: uint16 for BERT-size vocabularies, else uint32."""
    return np.uint16 if vocab_size <= 65536 else np.uint32


class IndexFormatError(RuntimeError):
    """An index directory is missing, corrupt or written in an unsupported format."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def array_entry(index_dir: Path, name: str, arr: np.ndarray) -> dict:
    """Manifest entry for an array already saved as ``index_dir/name.npy``."""
    file = f"{name}.npy"
    return {
        "file": file,
        "dtype": str(arr.dtype),
        "shape": list(arr.shape),
        "sha256": sha256_file(Path(index_dir) / file),
    }


def write_array(index_dir: Path, name: str, arr: np.ndarray) -> dict:
    """Save ``arr`` as ``index_dir/name.npy`` and return its manifest entry."""
    arr = np.ascontiguousarray(arr)
    path = Path(index_dir) / f"{name}.npy"
    try:
        np.save(path, arr)
    except OSError as err:  # numpy reports a short write without errno or file name
        raise OSError(err.errno or errno.ENOSPC, f"{path}: {err.strerror or err}") from err
    return array_entry(index_dir, name, arr)


_NPY_HEADER = 128  # bytes reserved for the .npy header of an array written in pieces


class ArrayAppender:
    """Write a 1-D array into ``index_dir/name.npy`` piece by piece, without holding it in memory; :meth:`close`
    writes the ``.npy`` header (its length is known only then) and returns the manifest entry."""

    def __init__(self, index_dir: Path, name: str, dtype: type):
        self.index_dir, self.name, self.dtype = Path(index_dir), name, np.dtype(dtype)
        self.length = 0
        self._fh = open(self.index_dir / f"{name}.npy", "wb")
        self._fh.write(b"\0" * _NPY_HEADER)

    def append(self, arr: np.ndarray) -> None:
        """Append the values of ``arr`` (cast to the array's dtype)."""
        self._fh.write(np.ascontiguousarray(arr, self.dtype).tobytes())
        self.length += len(arr)

    def close(self) -> dict:
        """Write the header, close the file; the manifest entry."""
        descr = np.lib.format.dtype_to_descr(self.dtype)
        text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': ({self.length},), }}".encode("latin1")
        body = _NPY_HEADER - 10
        self._fh.seek(0)
        self._fh.write(b"\x93NUMPY\x01\x00" + body.to_bytes(2, "little") + text.ljust(body - 1) + b"\n")
        self._fh.close()
        file = f"{self.name}.npy"
        return {"file": file, "dtype": str(self.dtype), "shape": [self.length],
                "sha256": sha256_file(self.index_dir / file)}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staged_directory(
    target: Path, *, staging: Path | None = None, keep_on: tuple[type[BaseException], ...] = ()
) -> Iterator[Path]:
    """Build a directory in a fresh sibling and move it into place only when the block completes.

    On any exception the staging directory is removed and ``target`` is untouched; a previous ``target``
    is swapped out atomically (``renameat2(RENAME_EXCHANGE)`` where the filesystem has it, so ``target``
    names a complete index at every instant) and removed only after the new one is in place. Staging
    directories left by killed processes are cleaned up first. ``staging``: use this existing directory
    (a resumable build's, owned by the caller) instead of a fresh one; ``keep_on``: exception types that
    leave it in place (e.g. ``KeyboardInterrupt``, so the build can be resumed).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.building-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    if staging is None:
        staging = target.parent / f".{target.name}.building-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    staging = Path(staging)
    try:
        yield staging
    except BaseException as exc:
        if not isinstance(exc, keep_on):
            shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        _publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``; a previous ``target`` is swapped out atomically, then removed."""
    if not target.exists():
        os.replace(staging, target)
        _fsync_dir(target.parent)
        return
    if _exchange(staging, target):  # staging now holds the previous index
        _fsync_dir(target.parent)
        shutil.rmtree(staging, ignore_errors=True)
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old, target)
        raise
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no such libc symbol (glibc < 2.28, ...)
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    func = _renameat2()
    if func is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if func(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


class WriterLockedError(RuntimeError):
    """Another process holds the index's writer lock."""


def lock_path(index_dir: Path) -> Path:
    """The writer lock file of an index directory: a sibling, so it survives the directory being swapped."""
    index_dir = Path(index_dir)
    return index_dir.parent / f".{index_dir.name}.lock"


@contextmanager
def writer_lock(index_dir: Path, what: str) -> Iterator[None]:
    """Hold the single-writer lock of ``index_dir`` (non-blocking ``flock``); the holder's pid, ``what`` and start
    time are written into the lock file. Raise :class:`WriterLockedError` naming the holder if it is taken.
    The kernel drops the lock when the holder dies, so a killed writer never leaves the index locked; the lock
    file is removed on release."""
    path = lock_path(index_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise WriterLockedError(f"{index_dir} is locked by {holder}; a single writer at a time") from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the previous holder removes the file on release: make sure we locked the one at ``path``
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({what}, since {started})".encode(), 0)
        yield
    finally:
        try:
            os.unlink(path)  # while still locked, so nobody else holds the lock of a file that disappears
        except FileNotFoundError:
            pass
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_manifest(index_dir: Path, manifest: dict) -> None:
    """Atomically write ``manifest.json`` (temp file, fsync, rename, fsync directory)."""
    write_json_atomic(Path(index_dir) / MANIFEST, manifest)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write a JSON file atomically: temp file, fsync, rename over ``path``, fsync its directory."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def fsync_tree(path: Path, files: bool = True) -> None:
    """fsync a file, or a directory (and with ``files`` every file below it), so a later rename commits it."""
    path = Path(path)
    if path.is_file():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
        return
    if files:
        for child in path.rglob("*"):
            if child.is_file():
                with open(child, "rb") as fh:
                    os.fsync(fh.fileno())
    for directory in [path, *(p for p in path.rglob("*") if p.is_dir())]:
        _fsync_dir(directory)


def huge_page_copy(arr: np.ndarray) -> np.ndarray:
    """A read-only copy of ``arr`` in anonymous memory the kernel may back with transparent huge pages (2 MB pages:
    far fewer TLB misses than a file mapping's 4 KB pages when a kernel reads a large array at random)."""
    if arr.nbytes == 0:
        return np.array(arr)
    buf = mmap.mmap(-1, arr.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buf.madvise(mmap.MADV_HUGEPAGE)
    out = np.frombuffer(buf, dtype=arr.dtype, count=arr.size).reshape(arr.shape)
    out[...] = arr
    out.flags.writeable = False
    return out


def read_manifest(index_dir: Path) -> dict:
    """Load and validate ``manifest.json``; raise :class:`IndexFormatError` if unusable."""
    path = Path(index_dir) / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IndexFormatError(f"{path}: no index manifest (not an index directory?)") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IndexFormatError(f"{path}: manifest is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{path}: not an {FORMAT_NAME!r} manifest")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise IndexFormatError(
            f"{path}: index format version {version!r}, this code reads version {FORMAT_VERSION} (and the older 1 and 2)"
        )
    if not isinstance(manifest.get("arrays"), dict):
        raise IndexFormatError(f"{path}: manifest has no 'arrays' table")
    return manifest


_CHECKED: dict[tuple, str] = {}  # (path, inode, size, mtime) -> sha256 already confirmed in this process


def check_checksum(path: Path, expected: str) -> None:
    """Raise :class:`IndexFormatError` naming ``path`` unless its sha256 is ``expected`` (a file already
    confirmed in this process and unchanged since is not hashed again)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise IndexFormatError(f"{path}: file missing") from None
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if _CHECKED.get(key) == expected:
        return
    if sha256_file(path) != expected:
        raise IndexFormatError(f"{path}: sha256 mismatch (file corrupt or modified); run `lsr verify` "
                               "and rebuild or restore the index")
    _CHECKED[key] = expected


def side_files(manifest: dict) -> list[dict]:
    """The manifest entries (``file``, ``sha256``) of the checksummed files beside the arrays: the document store
    and the dense HNSW graph."""
    entries = [manifest.get("documents") or {}, (manifest.get("dense") or {}).get("hnsw") or {}]
    return [entry for entry in entries if entry.get("sha256")]


def check_checksums(index_dir: Path, manifest: dict) -> None:
    """Check the sha256 of every file an index manifest lists (arrays, document store, dense graph)."""
    index_dir = Path(index_dir)
    for entry in [*manifest["arrays"].values(), *side_files(manifest)]:
        check_checksum(index_dir / entry["file"], entry["sha256"])


def open_array(index_dir: Path, manifest: dict, name: str, verify: bool = False) -> np.ndarray:
    """Memory-map array ``name``, checking dtype/shape (and sha256 if ``verify``) against the manifest."""
    try:
        entry = manifest["arrays"][name]
    except KeyError:
        raise IndexFormatError(f"{Path(index_dir) / MANIFEST}: no array {name!r} in manifest") from None
    path = Path(index_dir) / entry["file"]
    if verify and sha256_file(path) != entry["sha256"]:
        raise IndexFormatError(f"{path}: sha256 mismatch (file corrupt or modified)")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise IndexFormatError(f"{path}: array file missing") from None
    except ValueError as exc:
        raise IndexFormatError(f"{path}: unreadable .npy file ({exc})") from None
    if str(arr.dtype) != entry["dtype"] or list(arr.shape) != list(entry["shape"]):
        raise IndexFormatError(
            f"{path}: expected {entry['dtype']}{tuple(entry['shape'])}, "
            f"found {arr.dtype}{tuple(arr.shape)}"
        )
    size = path.stat().st_size
    if isinstance(arr, np.memmap):
        if arr.offset + arr.nbytes != size:
            raise IndexFormatError(f"{path}: file has {size} bytes, its header says {arr.offset + arr.nbytes}")
        arr = arr.view(np.ndarray)  # the same mapped pages; slicing a plain ndarray skips memmap's Python hooks
    return arr


@njit(cache=True, nogil=True)
def _check_lists(offsets, values, upper):
    """Count (values >= upper, adjacent non-increasing pairs inside a list)."""
    out_of_range = 0
    unsorted = 0
    for i in range(offsets.shape[0] - 1):
        start, end = offsets[i], offsets[i + 1]
        for p in range(start, end):
            if values[p] >= upper:
                out_of_range += 1
            if p > start and values[p] <= values[p - 1]:
                unsorted += 1
    return out_of_range, unsorted


def _check_offsets(name: str, offsets: np.ndarray, length: int, total: int) -> list[str]:
    problems = []
    if offsets.shape != (length + 1,):
        return [f"{name}: expected {length + 1} offsets, found {offsets.shape}"]
    if offsets[0] != 0 or offsets[-1] != total:
        problems.append(f"{name}: must start at 0 and end at {total}, found {offsets[0]}..{offsets[-1]}")
    if np.any(np.diff(offsets) < 0):
        problems.append(f"{name}: offsets are not monotone")
    return problems


def _check_runs(arrays: dict[str, np.ndarray], vocab_size: int) -> list[str]:
    """Problems of the runs of 16-bit posting doc ids (:mod:`index.docids`)."""
    if not all(name in arrays for name in RUN_ARRAYS):
        return [f"postings_docs.npy: uint16 doc ids need the arrays {', '.join(RUN_ARRAYS)}"]
    run_offsets, high, ends = (np.ascontiguousarray(arrays[name]) for name in RUN_ARRAYS)
    problems = _check_offsets("postings_run_offsets.npy", run_offsets, vocab_size, high.shape[0])
    if ends.shape != high.shape:
        problems.append(f"postings_run_ends.npy: shape {ends.shape} differs from postings_run_high.npy {high.shape}")
    if problems:
        return problems
    lengths = np.diff(np.asarray(arrays["postings_offsets"], np.int64))
    bad = _bad_runs(run_offsets, high, ends, lengths)
    return [f"postings_run_*.npy: {bad} terms whose runs do not cover their list in increasing order"] if bad else []


@njit(cache=True, nogil=True)
def _bad_runs(run_offsets, high, ends, lengths):
    bad = 0
    for t in range(lengths.shape[0]):
        a, b = run_offsets[t], run_offsets[t + 1]
        ok = (b > a and np.int64(ends[b - 1]) == lengths[t]) or (b == a and lengths[t] == 0)
        for r in range(a + 1, b):
            if high[r] <= high[r - 1] or ends[r] <= ends[r - 1]:
                ok = False
        if b > a and ends[a] == 0:
            ok = False
        if not ok:
            bad += 1
    return bad


def _check_structure(arrays: dict[str, np.ndarray], num_docs: int, vocab_size: int) -> list[str]:
    problems = []
    doc_ids = arrays["postings_docs"]
    if doc_ids.dtype == np.uint16:
        offsets = np.ascontiguousarray(arrays["postings_offsets"])
        found = _check_offsets("postings_offsets.npy", offsets, vocab_size, doc_ids.shape[0])
        found = found or _check_runs(arrays, vocab_size)
        if found:
            return found
        doc_ids = join_doc_ids(arrays["postings_offsets"], doc_ids, tuple(arrays[name] for name in RUN_ARRAYS))
    elif doc_ids.dtype != np.uint32:
        return [f"postings_docs.npy: doc id dtype {doc_ids.dtype} is neither uint16 nor uint32"]
    for prefix, lists, values, ids, upper in (
        ("postings", vocab_size, "postings_docs", doc_ids, num_docs),
        ("forward", num_docs, "forward_terms", arrays["forward_terms"], vocab_size),
    ):
        impacts = arrays[f"{prefix}_impacts"]
        if impacts.shape != ids.shape:
            problems.append(f"{prefix}_impacts.npy: shape {impacts.shape} differs from {values}.npy {ids.shape}")
        offsets = np.ascontiguousarray(arrays[f"{prefix}_offsets"])
        found = _check_offsets(f"{prefix}_offsets.npy", offsets, lists, ids.shape[0])
        problems += found
        if not found:
            out_of_range, unsorted = _check_lists(offsets, ids, upper)
            if out_of_range:
                problems.append(f"{values}.npy: {out_of_range} ids >= {upper}")
            if unsorted:
                problems.append(f"{values}.npy: {unsorted} ids not strictly increasing within a list")
        zeros = np.count_nonzero(impacts == 0)
        if zeros:
            problems.append(f"{prefix}_impacts.npy: {zeros} zero impacts")
    return problems


def verify_index(index_dir: Path) -> list[str]:
    """Check the sha256 of every array, the document store and the dense graph, and the index invariants; return the
    problems found (empty if OK)."""
    index_dir = Path(index_dir)
    try:
        manifest = read_manifest(index_dir)
    except IndexFormatError as exc:
        return [str(exc)]
    problems = []
    arrays = {}
    for name, entry in manifest["arrays"].items():
        path = index_dir / entry["file"]
        if not path.is_file():
            problems.append(f"{path}: array file missing")
            continue
        if sha256_file(path) != entry["sha256"]:
            problems.append(f"{path}: sha256 mismatch (file corrupt or modified)")
        try:
            arrays[name] = open_array(index_dir, manifest, name)
        except IndexFormatError as exc:
            problems.append(str(exc))
    for entry in side_files(manifest):
        path = index_dir / entry["file"]
        if not path.is_file():
            problems.append(f"{path}: file missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{path}: sha256 mismatch (file corrupt or modified)")
    required = ("postings_offsets", "postings_docs", "postings_impacts",
                "forward_offsets", "forward_terms", "forward_impacts")
    missing = [name for name in required if name not in arrays]
    if missing:
        return problems + [f"{index_dir}: cannot check structure, missing arrays {missing}"]
    num_postings = manifest.get("num_postings")
    for name in ("postings_docs", "forward_terms"):
        if arrays[name].shape != (num_postings,):
            problems.append(f"{index_dir / name}.npy: expected {num_postings} postings, found {arrays[name].shape}")
    return problems + _check_structure(arrays, int(manifest["num_docs"]), int(manifest["vocab_size"]))
