"""The built-in retrievers: ``sparse`` (any search mode), ``dense``, ``hybrid`` (``lsr.fusion``) and ``bm25``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lsr.evaluation.base import EvalError, slug
from lsr.evaluation.index_cache import eval_engine, index_sizes, sparse_size
from lsr.evaluation.registry import EvalContext, Retrieval, register_retriever, timed_queries
from lsr.evaluation.results import portable_model, portable_path


@register_retriever("sparse")
def sparse_retriever(ctx: EvalContext) -> Retrieval:
    """This package's learned-sparse index in the context's search mode."""
    engine = eval_engine(ctx, ctx.mode)
    params = ctx.search_params()
    encoder = engine.query_encoder(ctx.query_encoder, ctx.query_runtime)
    lengths: list[int] = []

    def encode(text):
        vector = encoder.encode_query(text)
        lengths.append(len(vector[0]))
        return vector

    def search(vector, k):
        return [(h.id, h.score) for h in engine.search(vector, k=k, mode=ctx.mode, **params)]

    sizes = index_sizes(engine)
    r = timed_queries(
        ctx.dataset.queries, encode, search, ctx.k, desc=f"searching sparse/{ctx.mode}",
        progress=ctx.progress, index_size_bytes=sparse_size(sizes, ctx.mode),
        info={"implementation": "lsr", "model": portable_model(engine.manifest["model"]["name"]),
              "query_encoder": ctx.query_encoder, "index": portable_path(engine.index_dir), "sizes": sizes,
              "structures": sorted(engine.manifest.get("structures", {})), "search_params": params},
    )
    r.info["nnz"] = nnz_stats(engine, lengths[-len(r.qids):] if r.qids else [])  # the timed pass, not the warm-up
    return r


def nnz_stats(engine, query_lengths: Sequence[int]) -> dict:
    """Average non-zero terms per indexed document and per encoded query (the efficiency side of a model)."""
    m = engine.manifest
    return {"doc": round(m["num_postings"] / max(m["num_docs"], 1), 2),
            "query": round(float(np.mean(query_lengths)) if len(query_lengths) else 0.0, 2)}


@register_retriever("dense")
def dense_retriever(ctx: EvalContext) -> Retrieval:
    """Dense vectors stored in the index (``lsr.dense``): exact inner product, or HNSW on large collections."""
    engine = eval_engine(ctx, "exact", dense=True)
    encoder = engine.dense_query_encoder(ctx.query_runtime)

    def encode(text):
        return text, encoder.encode_query(text)

    def search(encoded, k):
        text, vector = encoded
        hits = engine.retrieve([text], k, retriever="dense", dense_vectors=vector[None, :])[0]
        return [(h.id, h.score) for h in hits]

    sizes = index_sizes(engine)
    return timed_queries(
        ctx.dataset.queries, encode, search, ctx.k, desc="searching dense", progress=ctx.progress,
        index_size_bytes=sizes["dense"],
        info={"implementation": "lsr-dense" + ("-hnsw" if engine.dense.uses_hnsw else "-exact"),
              "model": portable_model(encoder.name), "index": portable_path(engine.index_dir), "sizes": sizes},
    )


def fusion_config(ctx: EvalContext):
    """The :class:`lsr.fusion.FusionConfig` of ``--fusion`` and ``--param fusion.<field>=value``."""
    from lsr.fusion import FusionConfig

    p = ctx.params_for("fusion")
    unknown = set(p) - {"alpha", "normalization", "depth", "rrf_k"}
    if unknown:
        raise EvalError(f"unknown fusion parameter(s) {', '.join(sorted(unknown))}; "
                        f"known: alpha, normalization, depth, rrf_k")
    return FusionConfig.make(ctx.fusion, **p)


@register_retriever("hybrid")
def hybrid_retriever(ctx: EvalContext) -> Retrieval:
    """Sparse (in ``--mode``) and dense fused by ``lsr.fusion`` exactly as the engine and server do."""
    config = fusion_config(ctx)
    engine = eval_engine(ctx, ctx.mode, dense=True)
    sparse_encoder = engine.query_encoder(ctx.query_encoder, ctx.query_runtime)
    dense_encoder = engine.dense_query_encoder(ctx.query_runtime)
    params = ctx.search_params()

    def encode(text):
        return text, sparse_encoder.encode_query(text), dense_encoder.encode_query(text)

    def search(encoded, k):
        text, sv, dv = encoded
        hits = engine.retrieve([text], k, mode=ctx.mode, retriever="hybrid", fusion=config, sparse_vectors=[sv],
                               dense_vectors=dv[None, :], params=params)[0]
        return [(h.id, h.score) for h in hits]

    sizes = index_sizes(engine)
    return timed_queries(
        ctx.dataset.queries, encode, search, ctx.k, desc=f"searching hybrid/{config.method}", progress=ctx.progress,
        index_size_bytes=sparse_size(sizes, ctx.mode) + sizes["dense"],
        info={"implementation": "lsr-fusion", "model": {"sparse": portable_model(engine.manifest["model"]["name"]),
                                                        "dense": portable_model(dense_encoder.name)},
              "query_encoder": ctx.query_encoder,
              "fusion": config.to_dict(), "index": portable_path(engine.index_dir), "sizes": sizes,
              "search_params": params},
    )


# ====================================================================== BM25
@register_retriever("bm25")
def bm25_retriever(ctx: EvalContext) -> Retrieval:
    """BM25 over title + text: Pyserini (Lucene) when available, else bm25s; ``implementation`` says which."""
    from lsr import bm25
    from lsr.engine import document_text

    p = ctx.params_for("bm25")
    root = ctx.cache_dir / "bm25" / f"{slug(ctx.dataset.name)}-{ctx.dataset.fingerprint[:12]}"
    try:
        index = bm25.open_or_build(lambda: ((d.id, document_text(d)) for d in ctx.dataset.documents()), root,
                                   implementation=ctx.bm25, k1=float(p.get("k1", bm25.DEFAULT_K1)),
                                   b=float(p.get("b", bm25.DEFAULT_B)), progress=ctx.progress)
    except bm25.BM25Unavailable as err:
        raise EvalError(str(err)) from err
    return timed_queries(
        ctx.dataset.queries, index.analyze, index.search, ctx.k, desc=f"searching bm25/{index.implementation}",
        progress=ctx.progress, index_size_bytes=index.size_bytes,
        warmup=200 if index.implementation == "pyserini" else 5,  # the JVM compiles hot code for a while
        info={"implementation": index.implementation, "params": index.params, "index": portable_path(index.index_dir)},
    )
