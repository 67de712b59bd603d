"""What a client sees: hits rendered with the fields asked for (snippets, highlights, explanations), search
responses, and the search page (``/`` and ``/static``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from lsr.engine import Engine
from lsr.explain import snippet
from lsr.fusion import FusionConfig
from lsr.server.schemas import DEFAULT_FIELDS, SCORE_FIELDS, SearchHit, SearchOptions, SearchResponse
from lsr.server.workers import Cancellation

STATIC_DIR = Path(__file__).parent / "static"
EXPLAIN_TERMS = 10
HIGHLIGHT_TERMS = 32
SNIPPET_WORDS = 40


def hit_fields(opts: SearchOptions) -> set[str]:
    """The hit fields a request asks for (``id`` always; ``explain`` with ``explain=true``)."""
    fields = set(opts.fields or DEFAULT_FIELDS) | {"id"}
    if opts.explain:
        fields.add("explain")
    return fields


def needs_sparse_vector(opts: SearchOptions, retrievers: tuple[str, ...]) -> bool:
    """Whether the query's sparse vector is needed: sparse ranking, or explaining and highlighting hits."""
    return "sparse" in retrievers or opts.explain or "highlights" in set(opts.fields or DEFAULT_FIELDS)


def render_hits(engine: Engine, q: str, hits, opts: SearchOptions, sparse_vec,
                cancellation: Cancellation | None = None) -> list[dict]:
    """The requested fields of each hit; snippets highlight the terms behind the score (the query's own words for
    a dense hit without a sparse vector). ``cancellation`` is checked before each hit."""
    fields = hit_fields(opts)
    wants_doc = fields & {"snippet", "highlights", "text", "metadata"}
    own = engine.query_tokens(q) if fields & {"explain", "snippet", "highlights"} else None
    own_ids = None if own is None else set(own)
    docs = engine.stored_documents([hit.docno for hit in hits]) if wants_doc else {}
    out = []
    for hit in hits:
        if cancellation is not None:
            cancellation.check()
        row: dict[str, Any] = {"id": hit.id}
        if "score" in fields:
            row["score"] = hit.score
        if "title" in fields:
            row["title"] = hit.title
        for name in SCORE_FIELDS:
            if name in fields:
                row[name] = getattr(hit, name, None)
        terms = None
        if sparse_vec is not None and fields & {"explain", "snippet", "highlights"}:
            terms = engine.explain(sparse_vec, hit.docno, own_tokens=own_ids, top=HIGHLIGHT_TERMS)
            if "explain" in fields:
                row["explain"] = [t.to_dict() for t in terms[:EXPLAIN_TERMS]]
        if wants_doc:
            doc = docs[hit.docno]
            if "text" in fields:
                row["text"] = doc.text
            if "metadata" in fields:
                row["metadata"] = doc.metadata
            if fields & {"snippet", "highlights"}:
                if terms is not None:
                    weights = {t.term: t.contribution for t in terms}
                    expansion = {t.term for t in terms if t.expansion}
                else:
                    weights = {token: 1.0 for token in (own or {}).values()}
                    expansion = set()
                text, spans = snippet(doc.text, weights, SNIPPET_WORDS, expansion)
                if "snippet" in fields:
                    row["snippet"] = text
                if "highlights" in fields:
                    row["highlights"] = spans
        out.append(row)
    return out


def search_response(q: str, opts: SearchOptions, retrievers: tuple[str, ...], hits: list[dict],
                    took: float) -> SearchResponse:
    """One query's response (with the fusion settings used, each retriever's weight included, when fusing)."""
    fusion = None
    if len(retrievers) > 1:
        config = FusionConfig.make(opts.fusion, alpha=opts.alpha, normalization=opts.normalization,
                                   depth=opts.depth, rrf_k=opts.rrf_k, weights=opts.weights)
        fusion = {**config.to_dict(), "weights": config.weights_for(retrievers)}
    return SearchResponse(query=q, retriever="+".join(retrievers), query_encoder=opts.query_encoder, mode=opts.mode,
                          k=opts.k, fusion=fusion, took_ms=round(took * 1000, 3), hits=[SearchHit(**h) for h in hits])


def mount_page(app: FastAPI) -> None:
    """The search page at ``/`` and its files under ``/static`` (no CDN: it works offline)."""

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
