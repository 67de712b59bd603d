"""SPLADE encoder: any Hugging Face masked-LM checkpoint turned into weighted vocabulary terms.

A text's vector is ``max over tokens of log(1 + relu(logits))`` over the real (non-padding) tokens.
Torch is imported only when a model is loaded (inference-free queries, :mod:`lsr.query_encoders`, never
import it). Because ``log(1 + relu(x))`` is monotone, the max is taken on the raw logits and the activation is
applied once per document instead of once per (token, vocabulary) cell; the vocabulary projection,
which dominates CPU time, runs only on real tokens, and documents are batched by length.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

if TYPE_CHECKING:  # torch is imported lazily: inference-free queries never load it
    import torch

from lsr.models import DEFAULT_SPLADE, ModelRef, model_hash, resolve_model

log = logging.getLogger("lsr.encoder")


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
    ) -> None:
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.ref: ModelRef = resolve_model(model, DEFAULT_SPLADE)
        self.name = self.ref.name
        self.doc_max_length = doc_max_length
        self.query_max_length = query_max_length
        self.doc_top_k = doc_top_k
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
        }

    # ------------------------------------------------------------------ encoding
    def encode_documents(
        self, texts: Sequence[str], batch_size: int = 32, progress: bool = False
    ) -> SparseBatch:
        """Encode documents (length-sorted batches, optional top-k term pruning)."""
        return self._encode(texts, self.doc_max_length, batch_size, self.doc_top_k, progress)

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
