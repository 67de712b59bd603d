"""The built-in retrievers: ``sparse`` (any search mode), ``dense``, ``bm25`` (the index's native BM25 field, any
search mode), ``hybrid`` and combinations such as ``sparse+dense+bm25`` (``lsr.fusion``), and the ``pyserini-bm25``
baseline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lsr.evaluation.base import EvalError, slug
from lsr.evaluation.index_cache import eval_engine, index_sizes, sparse_size
from lsr.evaluation.registry import EvalContext, Retrieval, register_combination, register_retriever, timed_queries
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
    """The :class:`lsr.fusion.FusionConfig` of ``--fusion`` and ``--param fusion.<field>=value`` (``fusion.weights``:
    a JSON object ``{"sparse": 1, "dense": 2}`` or a label-free method, ``pseudo`` or ``agreement``)."""
    from lsr.fusion import FusionConfig
    from lsr.searcher import LABEL_FREE_METHODS

    p = dict(ctx.params_for("fusion"))
    known = ("alpha", "normalization", "depth", "rrf_k", "weights")
    unknown = set(p) - set(known)
    if unknown:
        raise EvalError(f"unknown fusion parameter(s) {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    weights = p.pop("weights", None)
    if weights is not None and not isinstance(weights, dict) and weights not in LABEL_FREE_METHODS:
        raise EvalError(f"fusion.weights={weights!r}: expected a JSON object such as {{\"sparse\": 1, \"dense\": 2}} "
                        f"or one of {', '.join(LABEL_FREE_METHODS)}")
    try:
        return FusionConfig.make(ctx.fusion, **p, weights=weights if isinstance(weights, dict) else None)
    except ValueError as err:
        raise EvalError(str(err)) from err


def label_free_method(ctx: EvalContext) -> str | None:
    """``--param fusion.weights=pseudo|agreement``: weights chosen on the collection without labels (or None)."""
    weights = ctx.params_for("fusion").get("weights")
    return weights if isinstance(weights, str) else None


@register_combination
def fused_retriever(ctx: EvalContext, spec: str) -> Retrieval:
    """Several retrievers of the cached index fused by ``lsr.fusion`` exactly as the engine and server do: ``hybrid``
    (every retriever the index holds) or a combination such as ``sparse+dense+bm25``."""
    from lsr.searcher import parse_retriever

    try:
        wanted = parse_retriever(spec)
    except ValueError as err:
        raise EvalError(str(err)) from err
    config = fusion_config(ctx)
    everything = wanted in ("hybrid", "auto")  # what a default index holds: dense vectors and the BM25 field
    engine = eval_engine(ctx, ctx.mode, dense=everything or "dense" in wanted, bm25=everything or "bm25" in wanted)
    try:
        names = engine.resolve_retriever(spec)
        config.weights_for(names)
    except ValueError as err:
        raise EvalError(f"{ctx.dataset.name}: {err}") from err
    weights = label_free_method(ctx)
    if weights is not None:  # chosen before the queries are timed, on the collection's own pseudo-queries
        config = config.make(config, weights=engine.label_free_weights("+".join(names), weights))
    sparse_encoder = engine.query_encoder(ctx.query_encoder, ctx.query_runtime) if "sparse" in names else None
    dense_encoder = engine.dense_query_encoder(ctx.query_runtime) if "dense" in names else None
    params = ctx.search_params()

    def encode(text):
        return (text, None if sparse_encoder is None else sparse_encoder.encode_query(text),
                None if dense_encoder is None else dense_encoder.encode_query(text))

    def search(encoded, k):
        text, sv, dv = encoded
        hits = engine.retrieve([text], k, mode=ctx.mode, retriever="+".join(names), fusion=config,
                               sparse_vectors=None if sv is None else [sv],
                               dense_vectors=None if dv is None else dv[None, :], params=params)[0]
        return [(h.id, h.score) for h in hits]

    sizes = index_sizes(engine)
    return timed_queries(
        ctx.dataset.queries, encode, search, ctx.k, desc=f"searching {'+'.join(names)}/{config.method}",
        progress=ctx.progress,
        index_size_bytes=sum(sparse_size(sizes, ctx.mode) if n == "sparse" else sizes.get(n, 0) for n in names),
        info={"implementation": "lsr-fusion", "retrievers": list(names),
              "model": {"sparse": portable_model(engine.manifest["model"]["name"]),
                        **({"dense": portable_model(dense_encoder.name)} if dense_encoder is not None else {})},
              "query_encoder": ctx.query_encoder, "fusion": {**config.to_dict(), "weights": config.weights_for(names)},
              "label_free_weights": weights, "index": portable_path(engine.index_dir), "sizes": sizes,
              "search_params": params},
    )


@register_retriever("hybrid")
def hybrid_retriever(ctx: EvalContext) -> Retrieval:
    """Every retriever of a default index (sparse in ``--mode``, dense, BM25; added to the cached index) fused."""
    return fused_retriever(ctx, "hybrid")


@register_retriever("auto")
def auto_retriever(ctx: EvalContext) -> Retrieval:
    """The engine's default retriever on a default index (sparse, dense and BM25): the first combination of
    :data:`lsr.searcher.AUTO_ORDER` it holds, fused with the default fusion unless ``--fusion`` says otherwise."""
    return fused_retriever(ctx, "auto")


# ====================================================================== BM25
@register_retriever("bm25")
def bm25_retriever(ctx: EvalContext) -> Retrieval:
    """The index's BM25 field (:mod:`lsr.bm25_field`, added to the cached index when it lacks it) in ``--mode``."""
    engine = eval_engine(ctx, ctx.mode, bm25=True)
    params = ctx.search_params()
    headers = engine.docs.headers

    def search(text, k):
        ranked = engine.bm25_candidates([text], k, ctx.mode, params, threads=1)[0]
        ids = headers([d for d, _ in ranked])
        return [(ids[d][0], s) for d, s in ranked]

    sizes = index_sizes(engine)
    return timed_queries(
        ctx.dataset.queries, lambda text: text, search, ctx.k, desc=f"searching bm25/{ctx.mode}",
        progress=ctx.progress, index_size_bytes=sizes["bm25"],
        info={"implementation": "lsr-bm25", "params": engine.parts.bm25.describe(),
              "index": portable_path(engine.index_dir), "sizes": sizes, "search_params": params},
    )


@register_retriever("pyserini-bm25")
def pyserini_bm25_retriever(ctx: EvalContext) -> Retrieval:
    """The reference BM25 over title + text: Pyserini (Lucene) when available, else bm25s; ``implementation`` says
    which (``--bm25`` chooses)."""
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
