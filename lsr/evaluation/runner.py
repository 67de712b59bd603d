"""One evaluation: a retriever on a dataset split, checked, run, scored and described (``lsr eval``)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from lsr.version import __version__
from lsr.evaluation.base import EvalError, default_cache_dir
from lsr.evaluation.datasets import DEFAULT_SPLIT, load_dataset
from lsr.evaluation.index_cache import adopt_index
from lsr.evaluation.metrics import evaluate, latency_summary
from lsr.evaluation.registry import DEFAULT_K, EvalContext, get_retriever
from lsr.evaluation.results import machine, portable_path
from lsr.evaluation.retrievers import fusion_config
from lsr.evaluation.runs import write_run

MODE_RETRIEVERS = ("sparse", "hybrid", "bm25")  # the retrievers a search mode applies to


def run_eval(
    dataset: str | os.PathLike, *, retriever: str = "sparse", mode: str = "exact", split: str = DEFAULT_SPLIT,
    model: str | None = None, fusion: str | None = None, k: int = DEFAULT_K, params: dict | None = None,
    reorder: str | None = "auto", bm25: str = "auto", cache_dir: str | os.PathLike | None = None,
    progress: bool = True, max_queries: int | None = None, run_out: str | os.PathLike | None = None,
    adopt: str | os.PathLike | None = None, batch_size: int = 32, query_encoder: str = "model",
    query_runtime: str | None = None,
) -> dict:
    """Evaluate one retriever on one dataset split; return the result record (what ``--json`` prints).

    ``query_encoder`` (sparse and hybrid retrievers) is ``model`` or ``inference-free``; ``query_runtime`` runs the
    models on the queries (:mod:`lsr.onnx_encoders`; the documents are always encoded with torch)."""
    from lsr.index.structures import MODES
    from lsr.onnx_encoders import DEFAULT_QUERY_RUNTIME, check_query_runtime
    from lsr.query_encoders import QUERY_ENCODERS

    if query_encoder not in QUERY_ENCODERS:
        raise EvalError(f"unknown query encoder {query_encoder!r}; available: {', '.join(QUERY_ENCODERS)}")
    every = retriever in ("hybrid", "auto")  # every retriever a default index holds (sparse, dense, BM25)
    fused = every or "+" in retriever
    uses_sparse = retriever == "sparse" or (fused and (every or "sparse" in retriever.split("+")))
    uses_mode = retriever in MODE_RETRIEVERS or (fused and (every or bool({"sparse", "bm25"} & set(retriever.split("+")))))
    if query_encoder != "model" and not uses_sparse:
        raise EvalError(f"--query-encoder {query_encoder} applies to retrievers with a sparse side, not {retriever!r}")
    if mode not in MODES:
        raise EvalError(f"unknown mode {mode!r}; available: {', '.join(MODES)}")
    if not 1 <= k <= 10_000:
        raise EvalError(f"k must be between 1 and 10000, got {k}")
    query_runtime = check_query_runtime(query_runtime or DEFAULT_QUERY_RUNTIME)
    get_retriever(retriever)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    started = time.time()
    ds = load_dataset(dataset, split, cache).limit(max_queries)
    ctx = EvalContext(ds, cache, k=k, mode=mode, model=model, fusion=fusion, params=dict(params or {}),
                      reorder=reorder, bm25=bm25, batch_size=batch_size, progress=progress,
                      query_encoder=query_encoder, query_runtime=query_runtime)
    if fused:
        fusion = fusion_config(ctx).method  # bad fusion settings fail before any index is built
    if adopt is not None:
        adopt_index(ctx, adopt)
    r = ctx.retrieve(retriever)
    metrics = evaluate(r.run, ds.qrels)
    if run_out is not None:
        write_run(run_out, r.run, tag=f"lsr-{retriever}" + (f"-{mode}" if uses_mode else "")
                  + ("-if" if query_encoder == "inference-free" else ""))
    result = {
        "dataset": ds.name, "split": split, "retriever": retriever,
        **({"retrievers": r.info["retrievers"], "weights": r.info["fusion"]["weights"],
            "label_free_weights": r.info["label_free_weights"]} if fused else {}),
        "mode": mode if uses_mode else None, "fusion": fusion if fused else None,
        "query_encoder": query_encoder if uses_sparse else None,
        "query_runtime": query_runtime if retriever not in ("bm25", "pyserini-bm25") else None,
        "implementation": r.info.get("implementation"), "model": r.info.get("model"),
        "queries": len(ds.queries), "documents": ds.num_docs, "k": k,
        **{m: round(v, 6) for m, v in metrics.items()},
        "latency_ms": latency_summary(r.search_ms),
        "latency_with_encoding_ms": latency_summary(r.encode_ms + r.search_ms),
        "encoding_ms": latency_summary(r.encode_ms),
        "threads": 1,
        "index_size_bytes": r.index_size_bytes,
        "nnz": r.info.get("nnz"),
        "params": ctx.params, "details": r.info,
        "dataset_path": portable_path(ds.root), "lsr_version": __version__, "machine": machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_seconds": round(time.time() - started, 1),
    }
    return result


def parse_params(items: Sequence[str]) -> dict:
    """``key=value`` strings to a dict; values parsed as JSON when they can be (numbers, booleans, null)."""
    params = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise EvalError(f"--param {item!r}: expected KEY=VALUE")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params
