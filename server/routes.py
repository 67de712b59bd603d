"""The HTTP endpoints, their access rules (API keys, readiness) and their OpenAPI description."""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from lsr.engine import DEFAULT_RETRIEVER, MODES, RETRIEVER_HELP
from lsr.fusion import MAX_DEPTH
from lsr.server import operations
from lsr.server.auth import ApiKeyScheme, BearerScheme
from lsr.server.schemas import (
    HIT_FIELDS, AddDocumentsResponse, BatchSearchRequest, BatchSearchResponse, DeleteDocumentResponse,
    DocumentResponse, ErrorBody, FusionName, Health, Limits, Normalization, QueryEncoderName,
    SearchOptions, SearchRequest, SearchResponse, Stats, AddDocumentsRequest,
)
from lsr.server.state import ServerState, get_state

State = Annotated[ServerState, Depends(get_state)]


# ---------------------------------------------------------------------- access
# Dependencies are ``async def``: FastAPI runs a plain ``def`` dependency on a thread of its pool, a thread hop per
# request for a few attribute reads.
async def read_access(request: Request, state: State, _b: BearerScheme = None, _k: ApiKeyScheme = None) -> ServerState:
    """Reads are open unless the server has a read key; then the read key or the write key (401 otherwise)."""
    state.keys.authorize_read(request)
    return state


async def require_write_key(request: Request, state: State, _b: BearerScheme = None, _k: ApiKeyScheme = None) -> ServerState:
    """Writes need the write key: 403 on a read-only server (none configured), 401 for a missing or wrong key."""
    state.keys.authorize_write(request)
    return state


def _loaded(state: ServerState) -> ServerState:
    if not state.ready:
        detail = f"index failed to load: {state.error}" if state.error else "index is loading, retry shortly"
        raise HTTPException(503, detail, headers={"Retry-After": "1"})
    return state


async def ready_state(state: Annotated[ServerState, Depends(read_access)]) -> ServerState:
    """The shared state once the index is loaded (503 before), on the newest commit (checked once a second)."""
    _loaded(state)
    await state.maybe_refresh()
    return state


async def writable_state(state: Annotated[ServerState, Depends(require_write_key)]) -> ServerState:
    return _loaded(state)


def _json(response: BaseModel) -> Response:
    """A response model serialized once, by pydantic (returned as is, FastAPI would validate it again and then
    serialize it through ``jsonable_encoder`` and ``json.dumps``); its route's ``response_model`` still documents it."""
    return Response(response.model_dump_json(exclude_none=True), media_type="application/json")


Ready = Annotated[ServerState, Depends(ready_state)]
Writer = Annotated[ServerState, Depends(writable_state)]
_ERRORS = {400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 404: {"model": ErrorBody},
           413: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody},
           504: {"model": ErrorBody}}
_WRITE_ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 413, 422, 423, 503)}
_READ_OPERATIONS = {("/search", "get"), ("/search", "post"), ("/search/batch", "post"), ("/stats", "get"),
                    ("/documents/{doc_id}", "get")}

router = APIRouter()


# ---------------------------------------------------------------------- endpoints
@router.get("/healthz", response_model=Health, response_model_exclude_none=True, responses={503: {"model": Health}})
async def healthz(state: State):
    """200 when the index is loaded and searchable (status ``degraded``, with the reason, while its newest commit
    cannot be opened and the previous one is served), 503 while loading (or if loading failed)."""
    body, status = state.health()
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status)


@router.get("/limits", response_model=Limits)
async def limits(state: State):
    """What this server accepts: read-only or not, whether reads need a key, sizes, k, batch and timeout."""
    return state.describe_limits()


@router.get("/stats", response_model=Stats, responses=_ERRORS)
async def stats(state: Ready):
    """Documents, index size, models, query count and latency percentiles (server side, last 20k)."""
    return state.stats()


@router.get("/search", response_model=SearchResponse, response_model_exclude_none=True, responses=_ERRORS)
async def search_get(
    state: Ready,
    q: Annotated[Optional[str], Query(description="Query text.")] = None,
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
    mode: str = "exact",
    retriever: Annotated[str, Query(description=f"Retriever: {RETRIEVER_HELP}.")] = DEFAULT_RETRIEVER,
    query_encoder: QueryEncoderName = "model",
    fusion: Optional[FusionName] = None,
    alpha: Annotated[Optional[float], Query(ge=0.0, le=1.0)] = None,
    normalization: Optional[Normalization] = None,
    depth: Annotated[Optional[int], Query(ge=1, le=MAX_DEPTH)] = None,
    rrf_k: Annotated[Optional[int], Query(ge=0, le=100_000)] = None,
    explain: bool = False,
    fields: Annotated[Optional[str], Query(description="Comma-separated hit fields.")] = None,
):
    """Search with query parameters (see POST /search for the JSON form with filters)."""
    try:
        opts = SearchOptions(k=k, mode=mode, retriever=retriever, query_encoder=query_encoder, fusion=fusion,
                             alpha=alpha, normalization=normalization, depth=depth, rrf_k=rrf_k, explain=explain,
                             fields=[f.strip() for f in fields.split(",") if f.strip()] if fields else None)
    except ValidationError as err:
        raise RequestValidationError(err.errors()) from None
    return _json(await state.limits.bounded(operations.search(state, q, opts)))


@router.post("/search", response_model=SearchResponse, response_model_exclude_none=True, responses=_ERRORS)
async def search_post(body: SearchRequest, state: Ready):
    """Search with a JSON body: the GET parameters plus ``explain``, ``fields``, ``filter`` and mode ``params``."""
    return _json(await state.limits.bounded(operations.search(state, body.q, body)))


@router.post("/search/batch", response_model=BatchSearchResponse, response_model_exclude_none=True,
             responses=_ERRORS)
async def search_batch(body: BatchSearchRequest, state: Ready):
    """Several queries with shared options, encoded and searched together."""
    return _json(await state.limits.bounded(operations.search_batch(state, body)))


@router.get("/documents/{doc_id:path}", response_model=DocumentResponse, response_model_exclude_none=True,
            responses=_ERRORS)
async def document(doc_id: str, state: Ready,
                   terms: Annotated[int, Query(ge=0, le=1000, description="Also return the top indexed terms.")] = 0):
    """A stored document by id (404 if unknown); ``terms=N`` adds its N heaviest indexed terms."""
    return await state.limits.bounded(operations.fetch_document(state, doc_id, terms), "document fetch")


@router.post("/documents", status_code=201, response_model=AddDocumentsResponse, responses=_WRITE_ERRORS)
async def add_documents(body: AddDocumentsRequest, state: Writer):
    """Add documents as one commit (a new segment), searchable when this returns. Needs the API key.

    409 if an id is already indexed (unless ``update`` is true), 423 while another process writes the index.
    """
    return await operations.add_documents(state, body)


@router.delete("/documents/{doc_id:path}", response_model=DeleteDocumentResponse, responses=_WRITE_ERRORS)
async def delete_document(doc_id: str, state: Writer):
    """Delete a document (404 if unknown); gone from results when this returns. Needs the API key."""
    return await operations.delete_document(state, doc_id)


# ---------------------------------------------------------------------- OpenAPI
def patch_openapi(schema: dict, state: ServerState) -> dict:
    """The generated schema with this server's configured limits, and security only where it is enforced."""
    limits = state.limits
    comps = schema.get("components", {}).get("schemas", {})
    batch = comps.get("BatchSearchRequest", {}).get("properties", {}).get("queries")
    if batch is not None:
        batch["maxItems"] = limits.max_batch_queries
        batch.setdefault("items", {})["maxLength"] = limits.max_query_chars
    docs = comps.get("AddDocumentsRequest", {}).get("properties", {}).get("documents")
    if docs is not None:
        docs["maxItems"] = limits.max_documents
    # A query is required and not blank (answered 400, not 422, so the models do not enforce it; documented here).
    query = {"type": "string", "minLength": 1, "maxLength": limits.max_query_chars, "pattern": r"\S"}
    request = comps.get("SearchRequest", {})
    if "q" in request.get("properties", {}):
        request["properties"]["q"] = dict(query, title="Q", description=request["properties"]["q"].get("description"))
        request["required"] = sorted(set(request.get("required", [])) | {"q"})
    if batch is not None:
        batch["items"] = dict(query)
    for name in ("SearchRequest", "BatchSearchRequest"):
        props = comps.get(name, {}).get("properties", {})
        if props.get("mode", {}).get("type") == "string":
            props["mode"]["enum"] = list(MODES)
        for branch in props.get("fields", {}).get("anyOf", []):
            if branch.get("type") == "array":
                branch["items"] = {"type": "string", "enum": list(HIT_FIELDS)}
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            if path == "/search" and method == "get":
                for param in op.get("parameters", []):
                    if param.get("name") == "q":
                        param["required"] = True
                        param["schema"] = dict(query, title="Q")
                    elif param.get("name") == "mode" and param.get("schema", {}).get("type") == "string":
                        param["schema"]["enum"] = list(MODES)
                    elif param.get("name") == "fields":  # comma-separated hit fields
                        one = "(?:" + "|".join(HIT_FIELDS) + ")"
                        pattern = rf"^[\s,]*(?:{one}(?:\s*,[\s,]*{one})*)?[\s,]*$"  # what the endpoint accepts
                        param["schema"] = {"anyOf": [{"type": "string", "pattern": pattern},
                                                     {"type": "null"}], "title": "Fields",
                                           "description": param.get("description")}
            if (path, method) in _READ_OPERATIONS and not state.read_key_required:
                op.pop("security", None)
    return schema
