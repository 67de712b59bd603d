"""BEIR evaluation: datasets, cached indexes, a registry of retrievers, metrics, latency and result JSON.

A *retriever* is a callable ``fn(ctx: EvalContext) -> Retrieval`` registered under a name::

    from lsr.evaluation import register_retriever, timed_queries

    @register_retriever("dense")
    def dense(ctx):
        index = ...                                   # build once under ctx.cache_path("dense", ...)
        return timed_queries(ctx.dataset.queries, encode=index.encode, search=index.search, k=ctx.k,
                             desc="searching dense", progress=ctx.progress,
                             info={"implementation": "...", "model": "..."}, index_size_bytes=...)

Built in: ``sparse`` (this package's index, any search mode of ``index.structures.MODES``), ``dense`` and
``hybrid`` (the dense vectors stored in the same index, fused by ``lsr.fusion`` exactly as the engine and the
server fuse) and ``bm25`` (Pyserini or bm25s, see ``lsr.bm25``). Modules named in ``PLUGIN_MODULES`` and the
``LSR_EVAL_PLUGINS`` environment variable (comma-separated) are imported on demand so they can register more.

Every retriever answers the queries one at a time on one thread, timing query encoding and search
separately; the run it returns is what gets evaluated, so the latency is that of the measured run.
Metrics come from ``ir_measures`` (pytrec_eval) and are computed on the ranking exactly as returned.

Modules: ``datasets`` (BEIR datasets and qrels), ``registry`` (retrievers, their context, timed queries),
``index_cache`` (the cached index searched), ``retrievers`` (the built-in ones), ``metrics`` (ir_measures,
latency, significance), ``runs`` (TREC run files), ``results`` (result records on disk), ``runner``
(one evaluation, ``lsr eval``).
"""

from lsr.evaluation.base import EvalError, default_cache_dir
from lsr.evaluation.datasets import Dataset, Qrels, load_dataset, load_qrels_arg, read_qrels, resolve_dataset_dir
from lsr.evaluation.index_cache import adopt_index, eval_engine, index_sizes
from lsr.evaluation.metrics import METRICS, compare_runs, evaluate, latency_summary, per_query
from lsr.evaluation.registry import (RETRIEVERS, EvalContext, Retrieval, available_retrievers, get_retriever,
                                     register_retriever, single_thread, timed_queries)
from lsr.evaluation.results import result_key, save_result
from lsr.evaluation.retrievers import fusion_config
from lsr.evaluation.runner import parse_params, run_eval
from lsr.evaluation.runs import read_run, write_run

__all__ = [
    "METRICS", "RETRIEVERS", "Dataset", "EvalContext", "EvalError", "Qrels", "Retrieval", "adopt_index",
    "available_retrievers", "compare_runs", "default_cache_dir", "eval_engine", "evaluate", "fusion_config",
    "get_retriever", "index_sizes", "latency_summary", "load_dataset", "load_qrels_arg", "parse_params", "per_query",
    "read_qrels", "read_run", "register_retriever", "resolve_dataset_dir", "result_key", "run_eval", "save_result",
    "single_thread", "timed_queries", "write_run",
]
