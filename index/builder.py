"""External-memory construction of an index directory from batches of sparse document vectors."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numba import njit

from .docids import PART_BITS, log_runs, runs_from_log
from .storage import FORMAT_NAME, FORMAT_VERSION, MANIFEST, array_entry, term_dtype, write_array, write_manifest

_IMPACT_DTYPES = {8: np.uint8, 16: np.uint16}
_MAX_IDS = 2**32  # doc and term ids are stored as uint32


@njit(cache=True, nogil=True)
def _canonicalize(indptr, terms, weights):
    """Per document: sort terms, combine duplicates by max weight, drop zero weights."""
    out_ptr = np.empty(indptr.shape[0], np.int64)
    out_terms = np.empty(terms.shape[0], np.uint32)
    out_weights = np.empty(terms.shape[0], np.float32)
    out_ptr[0] = 0
    pos = 0
    for i in range(indptr.shape[0] - 1):
        start, end = indptr[i], indptr[i + 1]
        need_sort = False
        for p in range(start + 1, end):
            if terms[p] <= terms[p - 1]:
                need_sort = True
                break
        order = np.argsort(terms[start:end]) if need_sort else np.empty(0, np.int64)
        for j in range(end - start):
            p = start + (order[j] if need_sort else j)
            w = weights[p]
            if w == 0:
                continue
            if pos > out_ptr[i] and out_terms[pos - 1] == terms[p]:
                out_weights[pos - 1] = max(out_weights[pos - 1], w)
            else:
                out_terms[pos] = terms[p]
                out_weights[pos] = w
                pos += 1
        out_ptr[i + 1] = pos
    return out_ptr, out_terms[:pos], out_weights[:pos]


@njit(cache=True, nogil=True)
def _scatter(docs, terms, impacts, cursor, post_docs, post_impacts, term_max, doc_counts):
    """Append each posting to its term's slot at ``cursor[term]`` (the id's low 16 bits: :mod:`index.docids`);
    tally term maxima and doc sizes."""
    for i in range(docs.shape[0]):
        t = terms[i]
        pos = cursor[t]
        post_docs[pos] = docs[i] & 0xFFFF
        post_impacts[pos] = impacts[i]
        cursor[t] = pos + 1
        if impacts[i] > term_max[t]:
            term_max[t] = impacts[i]
        doc_counts[docs[i] + 1] += 1


def _validate_batch(indptr: np.ndarray, term_ids: np.ndarray, weights: np.ndarray, vocab_size: int) -> None:
    if indptr.ndim != 1 or indptr.shape[0] < 1 or indptr.dtype.kind not in "iu":
        raise ValueError("indptr must be a 1-D integer array of length n_docs + 1")
    if term_ids.ndim != 1 or term_ids.dtype.kind not in "iu":
        raise ValueError("term_ids must be a 1-D integer array")
    if weights.ndim != 1 or weights.shape != term_ids.shape:
        raise ValueError("weights must be 1-D with the same length as term_ids")
    if indptr[0] != 0 or indptr[-1] != term_ids.shape[0] or np.any(np.diff(indptr) < 0):
        raise ValueError("indptr must be non-decreasing from 0 to len(term_ids)")
    if term_ids.size and (term_ids.min() < 0 or term_ids.max() >= vocab_size):
        raise ValueError(f"term ids must be in [0, {vocab_size})")
    if not np.all(np.isfinite(weights)):
        raise ValueError("weights must be finite")
    if np.any(weights < 0):
        raise ValueError("weights must be >= 0")


class IndexBuilder:
    """Build an index directory from batches of document vectors, in chunks (external memory).

    Postings are buffered as float32 COO and spilled to ``out_dir/_chunks`` every
    ``chunk_postings`` postings. :meth:`finalize` quantizes weights to ``quant_bits``-bit
    impacts with one global scale (``max_weight / (2**quant_bits - 1)``), dropping postings
    that round to 0, and streams the chunks into memory-mapped output arrays.

    Checkpoints: :meth:`checkpoint` spills whatever is buffered as a chunk of its own (written to a
    temporary name, fsynced, renamed) and returns the chunk files so far; a new builder constructed with
    ``resume=(those chunk files, num_docs)`` continues from that state (other files under ``_chunks`` are
    removed), and its :meth:`finalize` writes exactly what the uninterrupted builder would have.
    """

    def __init__(self, out_dir: Path, vocab_size: int, quant_bits: int = 8, chunk_postings: int = 20_000_000,
                 *, resume: tuple[Sequence[str | os.PathLike], int] | None = None):
        if quant_bits not in _IMPACT_DTYPES:
            raise ValueError(f"quant_bits must be one of {sorted(_IMPACT_DTYPES)}")
        if not 0 < vocab_size <= _MAX_IDS:
            raise ValueError(f"vocab_size must be in [1, {_MAX_IDS}]")
        if chunk_postings < 1:
            raise ValueError("chunk_postings must be >= 1")
        self.out_dir = Path(out_dir)
        self.vocab_size = int(vocab_size)
        self.quant_bits = quant_bits
        self.chunk_postings = int(chunk_postings)
        self._chunk_dir = self.out_dir / "_chunks"
        self._chunks: list[Path] = []
        self._buffer: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._buffered = 0
        self._num_docs = 0
        self._term_counts = np.zeros(self.vocab_size, np.int64)
        self._max_weight = 0.0
        self._min_weight = np.inf
        self._finalized = False
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume is None:
            shutil.rmtree(self._chunk_dir, ignore_errors=True)
        else:
            self._restore(*resume)

    def _restore(self, chunks: Sequence[str | os.PathLike], num_docs: int) -> None:
        """State of a checkpointed build: its chunk files (in order) and document count; drop other chunk files."""
        paths = [Path(c) if Path(c).is_absolute() else self._chunk_dir / c for c in chunks]
        if any(p.parent != self._chunk_dir for p in paths):
            raise ValueError(f"checkpoint chunks must be files in {self._chunk_dir}")
        if not 0 <= num_docs <= _MAX_IDS:
            raise ValueError(f"num_docs must be in [0, {_MAX_IDS}], got {num_docs}")
        listed = {p.name for p in paths}
        if self._chunk_dir.is_dir():
            for extra in self._chunk_dir.iterdir():  # written after the checkpoint, or a torn temporary file
                if extra.name not in listed:
                    extra.unlink()
        next_doc = 0
        for path in paths:
            try:
                with np.load(path, allow_pickle=False) as chunk:
                    docs, terms, weights = chunk["docs"], chunk["terms"], chunk["weights"]
            except (OSError, ValueError, KeyError) as exc:
                raise ValueError(f"checkpoint chunk {path} is unreadable ({exc})") from None
            if not (docs.shape == terms.shape == weights.shape and docs.ndim == 1 and docs.size) \
                    or docs[0] < next_doc or np.any(np.diff(docs.astype(np.int64)) < 0) or docs[-1] >= num_docs \
                    or terms.max() >= self.vocab_size or not np.all(weights > 0) or not np.all(np.isfinite(weights)):
                raise ValueError(f"checkpoint chunk {path} does not fit the checkpoint ({num_docs} documents)")
            next_doc = int(docs[-1])
            self._term_counts += np.bincount(terms, minlength=self.vocab_size)
            self._max_weight = max(self._max_weight, float(weights.max()))
            self._min_weight = min(self._min_weight, float(weights.min()))
            self._chunks.append(path)
        self._num_docs = int(num_docs)

    @property
    def num_docs(self) -> int:
        """Number of documents added so far."""
        return self._num_docs

    @property
    def max_weight(self) -> float:
        """Largest weight added so far (0.0 before any): the default quantization scale is this / levels."""
        return float(self._max_weight)

    def add(self, indptr: np.ndarray, term_ids: np.ndarray, weights: np.ndarray) -> None:
        """Append a batch of documents given in CSR form (indptr int64 len n+1, term_ids int, weights float32 >= 0).

        Documents receive consecutive internal ids 0, 1, 2, ... in the order added. Terms need
        not be sorted or unique (duplicates within a document are combined by max); zero
        weights are ignored. Raise ValueError on term ids outside [0, vocab_size) and on
        negative or non-finite weights.
        """
        if self._finalized:
            raise RuntimeError("IndexBuilder.add() called after finalize()")
        indptr, term_ids = np.asarray(indptr), np.asarray(term_ids)
        weights = np.asarray(weights, dtype=np.float32)
        _validate_batch(indptr, term_ids, weights, self.vocab_size)
        n = indptr.shape[0] - 1
        if self._num_docs + n > _MAX_IDS:
            raise ValueError(f"an index holds at most {_MAX_IDS} documents")
        ptr, terms, weights = _canonicalize(
            indptr.astype(np.int64), term_ids.astype(np.int64), np.ascontiguousarray(weights)
        )
        docs = np.repeat(np.arange(self._num_docs, self._num_docs + n, dtype=np.uint32), np.diff(ptr))
        self._num_docs += n
        if terms.size:
            self._max_weight = max(self._max_weight, float(weights.max()))
            self._min_weight = min(self._min_weight, float(weights.min()))
            self._term_counts += np.bincount(terms, minlength=self.vocab_size)
        self._append(docs, terms.astype(term_dtype(self.vocab_size)), weights)

    def _append(self, docs: np.ndarray, terms: np.ndarray, weights: np.ndarray) -> None:
        """Buffer postings, spilling full chunks of ``chunk_postings`` to disk."""
        if not docs.size:
            return
        self._buffer.append((docs, terms, weights))
        self._buffered += docs.size
        if self._buffered < self.chunk_postings:
            return
        docs, terms, weights = (np.concatenate(parts) for parts in zip(*self._buffer))
        size = self.chunk_postings
        full = docs.size // size
        for c in range(full):
            part = slice(c * size, (c + 1) * size)
            self._spill(docs[part], terms[part], weights[part])
        rest = slice(full * size, None)
        self._buffer = [(docs[rest].copy(), terms[rest].copy(), weights[rest].copy())] if docs.size % size else []
        self._buffered = docs.size % size

    def _spill(self, docs: np.ndarray, terms: np.ndarray, weights: np.ndarray) -> None:
        self._chunk_dir.mkdir(exist_ok=True)
        path = self._chunk_dir / f"chunk_{len(self._chunks):05d}.npz"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:  # a chunk file is complete whenever it exists under its name
            np.savez(fh, docs=docs, terms=terms, weights=weights)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self._chunks.append(path)

    def checkpoint(self) -> list[Path]:
        """Spill the buffered postings as a chunk of their own (if any); return every chunk file so far, in order.

        Once this returns, ``IndexBuilder(out_dir, ..., resume=(chunks, num_docs))`` can continue the build.
        """
        if self._finalized:
            raise RuntimeError("IndexBuilder.checkpoint() called after finalize()")
        if self._buffer:
            self._spill(*(np.concatenate(parts) for parts in zip(*self._buffer)))
            self._buffer, self._buffered = [], 0
        if self._chunks:
            fd = os.open(self._chunk_dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return list(self._chunks)

    def _read_chunks(self, scale: float, dtype: type):
        """Yield (docs, terms, impacts) of each chunk, quantized, without dropped postings."""
        levels = np.iinfo(dtype).max
        for path in self._chunks:
            with np.load(path) as chunk:
                docs, terms, weights = chunk["docs"], chunk["terms"], chunk["weights"]
            impacts = np.minimum(np.rint(weights.astype(np.float64) / scale), levels).astype(dtype)
            keep = impacts > 0
            yield docs[keep], terms[keep], impacts[keep]

    def finalize(self, extra: dict | None = None, scale: float | None = None, keep_chunks: bool = False) -> dict:
        """Write the final arrays + manifest.json into out_dir; return the manifest.

        ``scale`` fixes the quantization step instead of ``max_weight / levels`` (the shards of one collection
        share the collection's scale, so their impacts and scores are comparable); weights above
        ``scale * levels`` saturate at the top level. ``keep_chunks`` leaves the chunk files in ``_chunks``
        (a resumable build removes them itself once the index is published).
        """
        if scale is not None and not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        if self._finalized:
            raise RuntimeError("IndexBuilder.finalize() called twice")
        base_keys = {"format", "format_version", "num_docs", "vocab_size", "num_postings",
                     "dropped_postings", "quantization", "arrays"}
        if extra and base_keys & extra.keys():
            raise ValueError(f"extra manifest keys clash with reserved keys {sorted(base_keys & extra.keys())}")
        self._finalized = True
        (self.out_dir / MANIFEST).unlink(missing_ok=True)
        if self._buffer:
            self._spill(*(np.concatenate(parts) for parts in zip(*self._buffer)))
            self._buffer, self._buffered = [], 0

        dtype = _IMPACT_DTYPES[self.quant_bits]
        levels = np.iinfo(dtype).max
        if scale is None:
            scale = self._max_weight / levels if self._max_weight > 0 else 1.0
        total = int(self._term_counts.sum())
        if self._chunks and np.rint(self._min_weight / scale) < 1:
            term_counts = np.zeros(self.vocab_size, np.int64)
            for _, terms, _ in self._read_chunks(scale, dtype):
                term_counts += np.bincount(terms, minlength=self.vocab_size)
        else:
            term_counts = self._term_counts
        postings_offsets = np.zeros(self.vocab_size + 1, np.int64)
        np.cumsum(term_counts, out=postings_offsets[1:])
        num_postings = int(postings_offsets[-1])

        def create(name: str, dt: type, length: int) -> np.ndarray:
            path = self.out_dir / f"{name}.npy"
            arr = np.lib.format.open_memmap(path, mode="w+", dtype=dt, shape=(length,))
            with open(path, "r+b") as fh:  # reserve the blocks: a full disk is an OSError now, not SIGBUS later
                os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
            return arr

        out = {
            "postings_docs": create("postings_docs", np.uint16, num_postings),
            "postings_impacts": create("postings_impacts", dtype, num_postings),
            "forward_offsets": create("forward_offsets", np.int64, self._num_docs + 1),
            "forward_terms": create("forward_terms", term_dtype(self.vocab_size), num_postings),
            "forward_impacts": create("forward_impacts", dtype, num_postings),
        }
        out["forward_offsets"][:] = 0
        term_max = np.zeros(self.vocab_size, dtype)
        cursor = postings_offsets[:-1].copy()
        run_cursor, last_high = postings_offsets[:-1].copy(), np.full(self.vocab_size, -1, np.int64)
        run_log = []
        pos = 0
        for docs, terms, impacts in self._read_chunks(scale, dtype):
            spanned = (int(docs[-1]) >> PART_BITS) - (int(docs[0]) >> PART_BITS) + 1 if docs.size else 0
            logged = [np.empty(min(docs.size, self.vocab_size * spanned), np.int64) for _ in range(3)]
            n = log_runs(docs, terms, run_cursor, postings_offsets, last_high, *logged)
            run_log.append([a[:n].copy() for a in logged])
            _scatter(docs, terms, impacts, cursor, out["postings_docs"], out["postings_impacts"],
                     term_max, out["forward_offsets"])
            out["forward_terms"][pos:pos + docs.size] = terms
            out["forward_impacts"][pos:pos + docs.size] = impacts
            pos += docs.size
        np.cumsum(out["forward_offsets"], out=out["forward_offsets"])
        if not keep_chunks:
            shutil.rmtree(self._chunk_dir, ignore_errors=True)
            self._chunks = []

        arrays = {
            "postings_offsets": write_array(self.out_dir, "postings_offsets", postings_offsets),
            "term_max_impact": write_array(self.out_dir, "term_max_impact", term_max),
        }
        logged = [np.concatenate([run[i] for run in run_log] or [np.empty(0, np.int64)]) for i in range(3)]
        for name, arr in runs_from_log(*logged, np.asarray(term_counts)).items():
            arrays[name] = write_array(self.out_dir, name, arr)
        for name, arr in out.items():
            arr.flush()
            arrays[name] = array_entry(self.out_dir, name, arr)
        del out
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "num_docs": self._num_docs,
            "vocab_size": self.vocab_size,
            "num_postings": num_postings,
            "dropped_postings": total - num_postings,
            "quantization": {"bits": self.quant_bits, "scale": float(scale), "max_weight": self._max_weight},
            "arrays": dict(sorted(arrays.items())),
            **(extra or {}),
        }
        write_manifest(self.out_dir, manifest)
        return manifest
