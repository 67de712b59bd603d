"""SPLADE encoder: any Hugging Face masked-LM checkpoint turned into weighted vocabulary terms.

A text's vector is ``max over tokens of log(1 + relu(logits))`` over the real (non-padding) tokens.
Torch is imported only when a model is loaded (inference-free queries, :mod:`lsr.query_encoders`, never
import it). Because ``log(1 + relu(x))`` is monotone, the max is taken on the raw logits and the activation is
applied once per document instead of once per (token, vocabulary) cell; the vocabulary projection,
which dominates CPU time, runs only on real tokens, and documents are batched by length.

A document longer than the model's input can be read as overlapping *windows* of ``doc_max_length`` tokens, one
every ``window_stride`` tokens (``doc_windows``: at most N of them, or ``all``), the windows of many documents
batched together, and their vectors pooled into one per document (:func:`pool_windows`).
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np
from tqdm.auto import tqdm

if TYPE_CHECKING:  # torch is imported lazily: inference-free queries never load it
    import torch

from lsr.models import DEFAULT_SPLADE, ModelRef, model_hash, resolve_model

log = logging.getLogger("lsr.encoder")

WINDOW_POOLINGS = ("max", "mean", "decay", "first")  # how the windows of a document are pooled (pool_windows)
DocWindows = Union[int, str]  # at most N windows per document, or "all"
# the defaults of every build path (eval/results/long-documents.md measures the choices)
DEFAULT_DOC_WINDOWS: DocWindows = 1
DEFAULT_WINDOW_POOLING = "max"
DEFAULT_WINDOW_DECAY = 0.5


def check_doc_windows(value: DocWindows | None) -> DocWindows:
    """``value`` as a window count: a positive int, or ``"all"`` (None: 1); raise ValueError otherwise."""
    if value is None:
        return 1
    if isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or (isinstance(value, float) and value != count):
        raise ValueError(f"doc windows must be a positive integer or 'all', got {value!r}")
    return count


def check_window_settings(doc_windows: DocWindows, window_stride: int | None, window_pooling: str,
                          window_decay: float) -> None:
    """Raise ValueError for settings of document windows that mean nothing."""
    check_doc_windows(doc_windows)
    if window_stride is not None and int(window_stride) < 1:
        raise ValueError(f"window stride must be at least 1 token, got {window_stride!r}")
    if window_pooling not in WINDOW_POOLINGS:
        raise ValueError(f"unknown window pooling {window_pooling!r}; available: {', '.join(WINDOW_POOLINGS)}")
    if not 0.0 < float(window_decay) <= 1.0:
        raise ValueError(f"window decay must be in (0, 1], got {window_decay!r}")


def document_settings(info: dict) -> dict:
    """The document-encoding keywords of :class:`SpladeEncoder` recorded in an index manifest's ``model`` entry
    (indexes built before windows existed read one window)."""
    return {"doc_max_length": info["doc_max_length"], "doc_top_k": info.get("doc_top_k"),
            "doc_windows": info.get("doc_windows", 1), "window_stride": info.get("window_stride"),
            "window_pooling": info.get("window_pooling", "max"), "window_decay": info.get("window_decay", 0.5)}


def default_window_stride(doc_max_length: int) -> int:
    """Tokens between the starts of consecutive windows when none is given: three quarters of the window."""
    return max(1, doc_max_length * 3 // 4)


@dataclass
class SparseBatch:
    """Sparse vectors of several texts in CSR form (rows follow the input order)."""

    indptr: np.ndarray  # int64 [n + 1]
    indices: np.ndarray  # uint32 term ids, sorted within each row
    values: np.ndarray  # float32 weights > 0
    truncated: int = 0  # texts that reached the encoder's max length (any further tokens were not encoded)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Term ids and weights of row ``i``."""
        lo, hi = self.indptr[i], self.indptr[i + 1]
        return self.indices[lo:hi], self.values[lo:hi]

    @classmethod
    def concat(cls, batches: Sequence["SparseBatch"]) -> "SparseBatch":
        """Stack batches row-wise."""
        if not batches:
            return cls(np.zeros(1, np.int64), np.zeros(0, np.uint32), np.zeros(0, np.float32))
        truncated = sum(b.truncated for b in batches)
        sizes = [b.indptr[1:] - b.indptr[0] for b in batches]
        offsets = np.cumsum([0] + [len(b.indices) for b in batches[:-1]])
        indptr = np.concatenate([[0]] + [s + o for s, o in zip(sizes, offsets)]).astype(np.int64)
        return cls(indptr, np.concatenate([b.indices for b in batches]), np.concatenate([b.values for b in batches]),
                   truncated)


def default_device() -> str:
    """``cuda`` when a GPU is present, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SpladeEncoder:
    """Encode documents and queries into SPLADE sparse vectors over the model's vocabulary."""

    runtime = "torch"  # query runtime (lsr.onnx_encoders has the ONNX ones)

    def __init__(
        self,
        model: str | None = None,
        *,
        doc_max_length: int = 256,
        query_max_length: int = 64,
        doc_top_k: int | None = None,
        device: str | None = None,
        threads: int | None = None,
        doc_windows: DocWindows = DEFAULT_DOC_WINDOWS,
        window_stride: int | None = None,
        window_pooling: str = DEFAULT_WINDOW_POOLING,
        window_decay: float = DEFAULT_WINDOW_DECAY,
    ) -> None:
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.ref: ModelRef = resolve_model(model, DEFAULT_SPLADE)
        self.name = self.ref.name
        self.query_max_length = query_max_length
        self._set_document_settings(doc_max_length, doc_top_k, doc_windows, window_stride, window_pooling,
                                    window_decay)
        self.device = device or default_device()
        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(self.ref.path)
        self.model = AutoModelForMaskedLM.from_pretrained(self.ref.path).to(self.device).eval()
        self.vocab_size = int(self.model.get_output_embeddings().out_features)
        self._head = getattr(self.model, "cls", None) or getattr(self.model, "lm_head", None)
        self._id_to_token = self.tokenizer.convert_ids_to_tokens(list(range(self.vocab_size)))

    @functools.cached_property
    def hash(self) -> str:
        """Content hash of the checkpoint files (recorded in indexes)."""
        return model_hash(self.ref.path)

    def describe(self) -> dict:
        """Settings recorded in an index manifest so queries are encoded like the documents were."""
        return {
            "name": self.name,
            "sha256": self.hash,
            "vocab_size": self.vocab_size,
            "doc_max_length": self.doc_max_length,
            "query_max_length": self.query_max_length,
            "doc_top_k": self.doc_top_k,
            **self.window_settings(),
        }

    def _set_document_settings(self, doc_max_length: int, doc_top_k: int | None, doc_windows: DocWindows,
                               window_stride: int | None, window_pooling: str, window_decay: float) -> None:
        check_window_settings(doc_windows, window_stride, window_pooling, window_decay)
        self.doc_max_length, self.doc_top_k = doc_max_length, doc_top_k
        self.doc_windows = check_doc_windows(doc_windows)
        self.window_stride = int(window_stride or default_window_stride(doc_max_length))
        self.window_pooling, self.window_decay = window_pooling, float(window_decay)

    def for_documents(self, info: dict) -> "SpladeEncoder":
        """This model encoding documents as the index whose manifest ``model`` entry is ``info`` did (itself when it
        already does; else a copy sharing the loaded model)."""
        wanted = document_settings(info)
        clone = copy.copy(self)
        clone._set_document_settings(**wanted)
        return self if all(getattr(clone, key) == getattr(self, key) for key in wanted) else clone

    def window_settings(self) -> dict:
        """How long documents are read: ``doc_windows``, ``window_stride``, ``window_pooling``, ``window_decay``."""
        return {"doc_windows": self.doc_windows, "window_stride": self.window_stride,
                "window_pooling": self.window_pooling, "window_decay": self.window_decay}

    # ------------------------------------------------------------------ encoding
    def encode_documents(
        self, texts: Sequence[str], batch_size: int = 32, progress: bool = False
    ) -> SparseBatch:
        """Encode documents (length-sorted batches, optional top-k term pruning), through windows pooled into one
        vector each when ``doc_windows`` is not 1."""
        if self.doc_windows == 1:
            return self._encode(texts, self.doc_max_length, batch_size, self.doc_top_k, progress)
        windows, owner, position, truncated = self.encode_windows(texts, self.doc_windows, batch_size, progress)
        out = pool_windows(windows, owner, position, len(texts), self.window_pooling, self.window_decay)
        if self.doc_top_k:
            out = keep_top_k_rows(out, self.doc_top_k)
        out.truncated = truncated
        return out

    def encode_windows(self, texts: Sequence[str], count: DocWindows, batch_size: int = 32, progress: bool = False
                       ) -> tuple[SparseBatch, np.ndarray, np.ndarray, int]:
        """The vectors of the windows of documents (at most ``count`` per document, or ``"all"``): one row per
        window, with the document (``owner``) and the place in it (``position``, 0 first) of each row, and the
        number of documents with tokens past their last window. Blank texts have no window."""
        import torch

        count = check_doc_windows(count)
        encoded = self.tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False,
                                 return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        prefix, suffix = self._special_tokens
        body = self.doc_max_length - len(prefix) - len(suffix)
        ids: list[list[int]] = []
        owner: list[int] = []
        position: list[int] = []
        truncated = 0
        for doc, tokens in enumerate(encoded):
            if not texts[doc].strip():
                continue
            needed = 1 + -(-max(len(tokens) - body, 0) // self.window_stride)
            used = needed if count == "all" else min(needed, count)
            truncated += used < needed
            for k in range(used):
                start = k * self.window_stride
                ids.append(prefix + tokens[start:start + body] + suffix)
                owner.append(doc)
                position.append(k)
        rows: list[SparseBatch] = [SparseBatch.concat([])] * len(ids)
        order = np.argsort([len(i) for i in ids], kind="stable")
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), desc="encoding", unit="batch", disable=not progress):
                chosen = order[start : start + batch_size]
                batch = _to_csr(self._forward([ids[i] for i in chosen]))
                for j, i in enumerate(chosen):
                    rows[i] = SparseBatch(batch.indptr[j : j + 2] - batch.indptr[j], *batch.row(j))
        return SparseBatch.concat(rows), np.array(owner, np.int64), np.array(position, np.int64), truncated

    def encode_queries(self, texts: Sequence[str], batch_size: int = 32) -> SparseBatch:
        """Encode queries (no term pruning)."""
        return self._encode(texts, self.query_max_length, batch_size, None, False)

    def encode_query(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Term ids and weights of one query."""
        return self.encode_queries([text]).row(0)

    def iter_encode_documents(
        self, texts: Iterable[str], batch_size: int = 32, window: int = 2048, progress: bool = False,
        total: int | None = None,
    ) -> Iterator[SparseBatch]:
        """Stream documents: length-sort within windows of ``window`` texts, yield one batch per window."""
        bar = tqdm(total=total, unit="doc", desc="encoding", disable=not progress, dynamic_ncols=True)
        buffer: list[str] = []
        for text in texts:
            buffer.append(text)
            if len(buffer) == window:
                yield self.encode_documents(buffer, batch_size)
                bar.update(len(buffer))
                buffer = []
        if buffer:
            yield self.encode_documents(buffer, batch_size)
            bar.update(len(buffer))
        bar.close()

    def _encode(
        self, texts: Sequence[str], max_length: int, batch_size: int, top_k: int | None, progress: bool
    ) -> SparseBatch:
        import torch

        with torch.inference_mode():
            return self._encode_inner(texts, max_length, batch_size, top_k, progress)

    def _encode_inner(
        self, texts: Sequence[str], max_length: int, batch_size: int, top_k: int | None, progress: bool
    ) -> SparseBatch:
        if not texts:
            return SparseBatch.concat([])
        encoded = self.tokenizer(
            list(texts), truncation=True, max_length=max_length, padding=False, return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        truncated = sum(len(ids) >= max_length for ids in encoded)
        empty = SparseBatch(np.zeros(2, np.int64), np.zeros(0, np.uint32), np.zeros(0, np.float32))
        rows: list[SparseBatch] = [empty] * len(texts)  # blank texts stay empty vectors
        order = np.array([i for i in np.argsort([len(ids) for ids in encoded], kind="stable") if texts[i].strip()],
                         dtype=np.int64)
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="encoding", unit="batch", disable=not progress):
            chosen = order[start : start + batch_size]
            reps = self._forward([encoded[i] for i in chosen])
            if top_k:
                reps = _keep_top_k(reps, top_k)
            batch = _to_csr(reps)
            for j, i in enumerate(chosen):
                rows[i] = SparseBatch(batch.indptr[j : j + 2] - batch.indptr[j], *batch.row(j))
        out = SparseBatch.concat(rows)
        out.truncated = truncated
        return out

    def _forward(self, ids: list[list[int]]) -> torch.Tensor:
        """Max-pooled SPLADE activations [batch, vocab] for token-id lists (padded to the longest)."""
        import torch

        padded = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        input_ids = padded["input_ids"].to(self.device)
        mask = padded["attention_mask"].to(self.device)
        if self._head is None:  # unknown architecture: full logits, masked max
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits
            pooled = logits.masked_fill_(~mask.bool().unsqueeze(-1), float("-inf")).amax(dim=1)
        else:
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            lengths = mask.sum(dim=1).tolist()
            pooled = torch.stack([self._head(hidden[i, :n]).amax(dim=0) for i, n in enumerate(lengths)])
        return torch.log1p(torch.relu_(pooled))

    @functools.cached_property
    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text's tokens (e.g. [CLS] and [SEP])."""
        plain = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        at = next(i for i in range(len(full)) if full[i:i + len(plain)] == plain)
        return full[:at], full[at + len(plain):]

    # ------------------------------------------------------------------ vocabulary
    def decode(self, term_ids: np.ndarray, weights: np.ndarray, top: int | None = None) -> dict[str, float]:
        """Map a sparse vector back to ``{token: weight}``, heaviest first."""
        order = np.argsort(-np.asarray(weights), kind="stable")[:top]
        return {self._id_to_token[int(term_ids[i])]: float(weights[i]) for i in order}

    def token(self, term_id: int) -> str:
        """The vocabulary token of a term id."""
        return self._id_to_token[term_id]

    def token_ids(self, tokens: Iterable[str]) -> list[int | None]:
        """Term ids of vocabulary tokens (None for tokens outside the vocabulary)."""
        vocab = self.tokenizer.get_vocab()
        return [vocab.get(t) for t in tokens]


def pool_windows(windows: SparseBatch, owner: np.ndarray, position: np.ndarray, num_docs: int, pooling: str,
                 decay: float = 0.5) -> SparseBatch:
    """One vector per document from the vectors of its windows (rows of ``windows``; ``owner``: the document of
    each row, ``position``: its place in the document). ``max``: a term's largest weight over the windows;
    ``mean``: its mean over the document's windows (0 where absent); ``decay``: the largest of weight × decay^position;
    ``first``: the largest of the first window's weight and decay × the others'. Documents without rows stay empty."""
    if pooling not in WINDOW_POOLINGS:
        raise ValueError(f"unknown window pooling {pooling!r}; available: {', '.join(WINDOW_POOLINGS)}")
    owner, position = np.asarray(owner, np.int64), np.asarray(position, np.int64)
    lengths = np.diff(windows.indptr)
    values = windows.values.astype(np.float32)
    if pooling == "decay":
        values = values * np.repeat(np.float32(decay) ** position.astype(np.float32), lengths)
    elif pooling == "first":
        values = values * np.repeat(np.where(position > 0, np.float32(decay), np.float32(1)), lengths)
    keys = (np.repeat(owner, lengths) << 32) | windows.indices.astype(np.int64)  # (document, term), sortable
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    docs = keys[starts] >> 32
    if not len(starts):
        pooled = values
    elif pooling == "mean":
        pooled = np.add.reduceat(values, starts) / np.bincount(owner, minlength=num_docs)[docs].astype(np.float32)
    else:
        pooled = np.maximum.reduceat(values, starts)
    indptr = np.zeros(num_docs + 1, np.int64)
    np.cumsum(np.bincount(docs, minlength=num_docs), out=indptr[1:])
    return SparseBatch(indptr, (keys[starts] & 0xFFFFFFFF).astype(np.uint32), pooled.astype(np.float32))


def keep_top_k_rows(batch: SparseBatch, k: int) -> SparseBatch:
    """The ``k`` heaviest terms of each row of a CSR batch (term ids stay sorted within rows)."""
    keep = np.ones(len(batch.values), bool)
    for i in np.flatnonzero(np.diff(batch.indptr) > k):
        lo, hi = batch.indptr[i], batch.indptr[i + 1]
        keep[lo + np.argsort(-batch.values[lo:hi], kind="stable")[k:]] = False
    rows = np.repeat(np.arange(len(batch), dtype=np.int64), np.diff(batch.indptr))
    indptr = np.zeros(len(batch) + 1, np.int64)
    np.cumsum(np.bincount(rows[keep], minlength=len(batch)), out=indptr[1:])
    return SparseBatch(indptr, batch.indices[keep], batch.values[keep], batch.truncated)


def _keep_top_k(reps: "torch.Tensor", k: int) -> "torch.Tensor":
    import torch

    if k >= reps.shape[1]:
        return reps
    values, indices = reps.topk(k, dim=1)
    return torch.zeros_like(reps).scatter_(1, indices, values)


def _to_csr(reps: "torch.Tensor") -> SparseBatch:
    import torch

    rows, cols = torch.nonzero(reps, as_tuple=True)
    values = reps[rows, cols].float().cpu().numpy()
    counts = torch.bincount(rows, minlength=reps.shape[0]).cpu().numpy()
    indptr = np.zeros(reps.shape[0] + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return SparseBatch(indptr, cols.cpu().numpy().astype(np.uint32), values.astype(np.float32))
