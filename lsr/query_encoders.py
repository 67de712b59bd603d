"""Query encoders: the SPLADE model, or *inference-free* queries encoded with the tokenizer alone.

Inference-free (the doc-only SPLADE / OpenSearch "doc-only" mode): a query is the set of its own tokens, each
weighted by a table the index stores, ``query_idf.npy`` (float32, one weight per vocabulary id). The table is
the BM25 IDF ``ln(1 + (N - df + 0.5) / (df + 0.5))`` of each term over the *indexed* document vectors (df is the
length of the term's posting list), zero for special tokens and terms no document holds. The tokenizer is a copy
of the indexing model's fast tokenizer (``query_tokenizer.json``, sha256 in the manifest), so the query path
needs neither the model nor torch: tokenize, keep unique non-special ids, look up weights (microseconds).

Indexes built before this table existed get it with ``lsr index --add-inference-free --index DIR``
(:func:`add_inference_free`, also what ``Engine.add_inference_free`` and ``lsr eval`` call).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from lsr.index.storage import IndexFormatError, read_manifest, sha256_file, write_array, write_manifest

QUERY_ENCODERS = ("model", "inference-free")
DEFAULT_QUERY_ENCODER = "model"
IDF_ARRAY = "query_idf"
TOKENIZER_FILE = "query_tokenizer.json"
MANIFEST_KEY = "inference_free"


def check_query_encoder(name: str) -> str:
    """``name`` if it is a known query encoder, else a ValueError listing them."""
    if name not in QUERY_ENCODERS:
        raise ValueError(f"unknown query encoder {name!r}; available: {', '.join(QUERY_ENCODERS)}")
    return name


def bm25_idf(df: np.ndarray, num_docs: int) -> np.ndarray:
    """BM25 (Lucene) IDF ``ln(1 + (N - df + 0.5) / (df + 0.5))`` as float32; 0 where ``df == 0``."""
    df = np.asarray(df, dtype=np.float64)
    idf = np.log1p((num_docs - df + 0.5) / (df + 0.5))
    idf[df <= 0] = 0.0
    return idf.astype(np.float32)


def idf_from_postings(postings_offsets: np.ndarray, num_docs: int) -> np.ndarray:
    """IDF of every term id from an index's posting-list lengths (df = documents whose vector holds the term)."""
    return bm25_idf(np.diff(np.asarray(postings_offsets, dtype=np.int64)), num_docs)


def special_token_ids(tokenizer_json: str) -> list[int]:
    """Ids of the special tokens ([CLS], [SEP], [PAD], [MASK], [UNK], ...) declared by a tokenizer.json."""
    spec = json.loads(tokenizer_json)
    return sorted(int(t["id"]) for t in spec.get("added_tokens", []) if t.get("special"))


def fast_tokenizer_json(model_path: str | Path) -> str:
    """The serialized fast tokenizer of a checkpoint, as transformers loads it (what the model path tokenizes with)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path), use_fast=True)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{model_path}: the model's tokenizer has no fast (tokenizers) version; inference-free "
                         "queries need one")
    return tokenizer.backend_tokenizer.to_str()


def write_inference_free(index_dir: str | Path, tokenizer_json: str) -> dict:
    """Write the query weight table and tokenizer into an index directory; record them with an atomic manifest rewrite.

    The arrays are written beside the existing ones (names not used by anything else), so a crash before the
    manifest rewrite leaves the index as it was.
    """
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    offsets = np.load(index_dir / manifest["arrays"]["postings_offsets"]["file"], mmap_mode="r")
    num_docs = int(manifest["num_docs"])
    idf = idf_from_postings(offsets, num_docs)
    specials = [i for i in special_token_ids(tokenizer_json) if i < len(idf)]
    idf[specials] = 0.0
    (index_dir / TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")
    entry = write_array(index_dir, IDF_ARRAY, idf)
    manifest = read_manifest(index_dir)  # re-read: nothing else may have changed, but do not clobber if it did
    manifest["arrays"][IDF_ARRAY] = entry
    manifest[MANIFEST_KEY] = {
        "array": IDF_ARRAY,
        "weighting": "bm25-idf over indexed document vectors: ln(1 + (N - df + 0.5) / (df + 0.5))",
        "num_docs": num_docs,
        "special_tokens_zeroed": len(specials),
        "nonzero_terms": int(np.count_nonzero(idf)),
        "tokenizer": {"file": TOKENIZER_FILE, "sha256": sha256_file(index_dir / TOKENIZER_FILE)},
        "query_max_length": int(manifest.get("model", {}).get("query_max_length") or 64),
    }
    write_manifest(index_dir, manifest)
    return manifest


def add_inference_free(index_dir: str | Path) -> dict:
    """Add the inference-free query table to an existing index (tokenizer of the model it was built with)."""
    from lsr.models import model_hash, resolve_model

    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    info = manifest["model"]
    ref = resolve_model(info["name"])
    if model_hash(ref.path) != info["sha256"]:
        raise ValueError(f"index {index_dir} was built with model {info['name']!r} (sha256 {info['sha256'][:12]}…), "
                         f"but {ref.path} holds other files; cannot take its tokenizer for inference-free queries")
    return write_inference_free(index_dir, fast_tokenizer_json(ref.path))


class InferenceFreeEncoder:
    """Tokenizer-only query encoder: unique non-special token ids weighted by the index's IDF table.

    ``counts=True`` multiplies each weight by how often the token occurs in the query.
    """

    name = "inference-free"

    def __init__(self, tokenizer_json: str, idf: np.ndarray, *, query_max_length: int = 64, counts: bool = False):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.idf = np.ascontiguousarray(idf, dtype=np.float32)
        self.max_tokens = max(int(query_max_length) - 2, 1)  # as the model path: max length counts [CLS] and [SEP]
        self.counts = counts

    @classmethod
    def open(cls, index_dir: str | Path, manifest: dict, **kwargs) -> "InferenceFreeEncoder":
        """The encoder stored in an index (IndexFormatError naming the command that adds it when absent)."""
        index_dir = Path(index_dir)
        info = manifest.get(MANIFEST_KEY)
        if not info:
            raise IndexFormatError(
                f"index {index_dir} has no inference-free query table; add it with "
                f"`lsr index --add-inference-free --index {index_dir}` (or Engine.add_inference_free())")
        from lsr.index.storage import open_array

        idf = np.asarray(open_array(index_dir, manifest, info["array"]))
        tok_path = index_dir / info["tokenizer"]["file"]
        try:
            data = tok_path.read_bytes()
        except FileNotFoundError:
            raise IndexFormatError(f"{tok_path}: tokenizer file missing") from None
        if hashlib.sha256(data).hexdigest() != info["tokenizer"]["sha256"]:
            raise IndexFormatError(f"{tok_path}: sha256 mismatch (file corrupt or modified)")
        kwargs.setdefault("query_max_length", info.get("query_max_length", 64))
        return cls(data.decode("utf-8"), idf, **kwargs)

    def token_ids(self, text: str) -> list[int]:
        """The query's token ids (no special tokens), truncated like the model path truncates."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids[: self.max_tokens]

    def encode_query(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Term ids (uint32, sorted) and weights (float32 > 0) of one query."""
        ids = np.asarray(self.token_ids(text), dtype=np.int64)
        if not ids.size:
            return np.zeros(0, np.uint32), np.zeros(0, np.float32)
        terms, counts = np.unique(ids, return_counts=True)
        terms = terms[terms < len(self.idf)]
        counts = counts[: len(terms)]
        weights = self.idf[terms]
        if self.counts:
            weights = weights * counts.astype(np.float32)
        keep = weights > 0
        return terms[keep].astype(np.uint32), weights[keep].astype(np.float32)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 0):
        """Vectors of many queries as a :class:`lsr.encoder.SparseBatch` (``batch_size`` ignored)."""
        from lsr.encoder import SparseBatch

        rows = [self.encode_query(t) for t in texts]
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum([len(r[0]) for r in rows], out=indptr[1:])
        if not rows:
            return SparseBatch.concat([])
        return SparseBatch(indptr, np.concatenate([r[0] for r in rows]).astype(np.uint32),
                           np.concatenate([r[1] for r in rows]).astype(np.float32))
