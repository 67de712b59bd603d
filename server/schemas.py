"""Request and response models of the HTTP API."""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, field_validator

from lsr.engine import DEFAULT_RETRIEVER, MODES, RETRIEVER_HELP, parse_retriever
from lsr.fusion import NORMALIZATIONS, MAX_DEPTH

MAX_K = 1000
MAX_QUERY_CHARS = 1000
MAX_BATCH_QUERIES = 256          # default and ceiling of the server's --max-batch-queries
MAX_BODY_BYTES = 10 * 1024 * 1024  # default request body limit (--max-body-bytes)
MAX_DOCUMENTS_PER_REQUEST = 1000  # POST /documents
MAX_DOCUMENT_CHARS = 100_000      # text of one document
MAX_TITLE_CHARS = 2_000
MAX_ID_CHARS = 512
MAX_METADATA_DEPTH = 8
DEFAULT_TIMEOUT_S = 30.0          # per-request timeout of searches and document fetches (--timeout)
SCORE_FIELDS = ("sparse_score", "dense_score", "bm25_score")  # each retriever's score behind a hit's
HIT_FIELDS = ("id", "score", "title", "snippet", "highlights", "text", "metadata", *SCORE_FIELDS, "explain")
DEFAULT_FIELDS = ("id", "score", "title", "snippet", "highlights", *SCORE_FIELDS)

QueryEncoderName = Literal["model", "inference-free"]
FusionName = Literal["convex", "rrf"]
Normalization = Literal["tmm", "minmax", "zscore"]
Scalar = Union[str, int, float, bool, None]


def _json_integer(value: Any) -> Any:
    """JSON Schema's integer: 10 and 10.0, not "10" or true (pydantic's lax mode would take both)."""
    if isinstance(value, (str, bytes, bool)):
        raise ValueError("Input should be a valid integer")
    return value



class SearchOptions(BaseModel):
    """Everything about a search except the query text."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(10, ge=1, le=MAX_K, description="Number of hits (1..1000).")
    mode: str = Field("exact", description=f"Sparse search mode: {', '.join(MODES)}.")
    retriever: str = Field(DEFAULT_RETRIEVER, description=f"Retriever: {RETRIEVER_HELP}.")
    query_encoder: QueryEncoderName = Field(
        "model", description="Sparse query encoding: model (SPLADE) or inference-free (tokenizer + the index's IDF "
                             "table, no model inference).")
    fusion: Optional[FusionName] = Field(None, description="Hybrid fusion: convex or rrf (default: the tuned one).")
    alpha: Optional[StrictFloat] = Field(None, ge=0.0, le=1.0, description="Convex fusion of sparse+dense: weight of "
                                                                            "the sparse side.")
    weights: Optional[dict[str, float]] = Field(
        None, description="Fusion: each retriever's weight, e.g. {\"sparse\": 1, \"dense\": 2, \"bm25\": 1}.")
    normalization: Optional[Normalization] = Field(
        None, description=f"Convex fusion score normalisation: {', '.join(NORMALIZATIONS)}.")
    depth: Optional[int] = Field(None, ge=1, le=MAX_DEPTH, description="Hybrid: candidates k' per retriever.")
    rrf_k: Optional[int] = Field(None, ge=0, le=100_000, description="RRF constant (default 60).")
    explain: StrictBool = Field(False, description="Add the top contributing terms of each hit.")
    fields: Optional[list[str]] = Field(None, description=f"Hit fields to return, from: {', '.join(HIT_FIELDS)}.")
    filter: Optional[dict[str, Union[Scalar, list[Scalar]]]] = Field(
        None, description="Metadata equality filter {field: value} (a list value means any of).")
    params: Optional[dict[str, Union[int, float, str, bool]]] = Field(None, description="Sparse mode knobs.")

    _integers = field_validator("k", "depth", "rrf_k", mode="before")(_json_integer)

    @field_validator("retriever")
    @classmethod
    def _known_retriever(cls, retriever: str) -> str:
        parse_retriever(retriever)
        return retriever

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, mode: str) -> str:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; available: {', '.join(MODES)}")
        return mode

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, fields: Optional[list[str]]) -> Optional[list[str]]:
        if fields is not None:
            unknown = [f for f in fields if f not in HIT_FIELDS]
            if unknown:
                raise ValueError(f"unknown field(s) {', '.join(unknown)}; available: {', '.join(HIT_FIELDS)}")
        return fields


class SearchRequest(SearchOptions):
    """POST /search body."""

    q: str = Field("", description="Query text (1..1000 characters).")


class BatchSearchRequest(SearchOptions):
    """POST /search/batch body: several queries with shared options."""

    queries: list[str] = Field(..., min_length=1, max_length=MAX_BATCH_QUERIES)


class TermContribution(BaseModel):
    term: str
    query_weight: float
    doc_weight: float
    contribution: float
    expansion: bool = Field(description="Not one of the query's own tokens: added by the model.")


class Highlight(BaseModel):
    start: int
    end: int
    term: str
    expansion: bool


class SearchHit(BaseModel):
    id: str
    score: Optional[float] = None
    title: Optional[str] = None
    snippet: Optional[str] = None
    highlights: Optional[list[Highlight]] = None
    text: Optional[str] = None
    metadata: Optional[dict[str, Any]] = None
    sparse_score: Optional[float] = None
    dense_score: Optional[float] = None
    bm25_score: Optional[float] = None
    explain: Optional[list[TermContribution]] = None


class SearchResponse(BaseModel):
    query: str
    retriever: str = Field(description="The retrievers that answered, e.g. sparse+dense+bm25 for retriever=auto.")
    query_encoder: str = "model"
    mode: str
    k: int
    fusion: Optional[dict[str, Any]] = None
    took_ms: float
    hits: list[SearchHit]


class BatchSearchResponse(BaseModel):
    took_ms: float
    results: list[SearchResponse]


class DocumentResponse(BaseModel):
    id: str
    title: str
    text: str
    metadata: dict[str, Any]
    terms: Optional[dict[str, float]] = None


class Health(BaseModel):
    status: str
    detail: Optional[str] = None


class Stats(BaseModel):
    documents: int
    index_size_bytes: int
    index: str
    model: dict[str, Any]
    dense_model: Optional[dict[str, Any]] = None
    dense_search: Optional[str] = None
    bm25: Optional[dict[str, Any]] = None
    modes: list[str]
    retrievers: list[str] = ["sparse"]
    default_retriever: str = "sparse"
    query_encoders: list[str] = ["model"]
    queries: int
    errors: int
    latency_ms: dict[str, Optional[float]]
    batching: dict[str, Any]
    uptime_s: float
    read_only: bool = True
    writes: int = 0
    limits: Optional[dict[str, Any]] = None
    generation: int = 0
    commit_error: Optional[str] = Field(None, description="Why the index's newest commit cannot be opened (the "
                                                          "previous one is served meanwhile); null when it is served.")
    threads: Optional[dict[str, Any]] = Field(None, description="Worker threads per kind: size, busy, jobs abandoned "
                                                                "after a timeout.")


class ErrorBody(BaseModel):
    detail: Any


def _check_json_value(value: Any, depth: int = 0) -> None:
    """Metadata must survive a JSON round trip: finite numbers, string keys, bounded nesting."""
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"metadata nested deeper than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("metadata numbers must be finite")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("metadata keys must be strings")
            _check_json_value(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json_value(item, depth + 1)


class DocumentIn(BaseModel):
    """One document to add (POST /documents)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., min_length=1, max_length=MAX_ID_CHARS,
                    description=f"Document id (1..{MAX_ID_CHARS} characters, not only whitespace, no NUL).",
                    json_schema_extra={"pattern": "^[^\\u0000]*[^\\u0000\\s][^\\u0000]*$"})  # checked by _real_id
    text: str = Field(..., max_length=MAX_DOCUMENT_CHARS,
                      description=f"Text (at most {MAX_DOCUMENT_CHARS:,} characters).")
    title: str = Field("", max_length=MAX_TITLE_CHARS)
    metadata: dict[str, Any] = Field(default_factory=dict, description="JSON object stored with the document "
                                     "(filterable by equality).")

    @field_validator("id")
    @classmethod
    def _real_id(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("id must not be blank")
        if "\x00" in value:
            raise ValueError("id must not contain NUL characters")
        return value

    @field_validator("metadata")
    @classmethod
    def _json_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_json_value(value)
        return value


class AddDocumentsRequest(BaseModel):
    """POST /documents body: documents to add (``update``: replace documents whose id is already indexed)."""

    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn] = Field(..., min_length=1, max_length=MAX_DOCUMENTS_PER_REQUEST,
                                        description="Distinct ids (a repeated id is 409, like one already indexed).")
    update: StrictBool = Field(False, description="Replace documents whose id is already in the index (else 409).")

    def duplicate_ids(self) -> list[str]:
        seen: set[str] = set()
        return sorted({d.id for d in self.documents if d.id in seen or seen.add(d.id)})


class AddDocumentsResponse(BaseModel):
    added: int
    replaced: int = 0
    generation: Optional[int] = None
    segment: Optional[str] = None


class DeleteDocumentResponse(BaseModel):
    deleted: int
    missing: list[str] = []
    generation: Optional[int] = None


class Limits(BaseModel):
    """What this server accepts (GET /limits)."""

    read_only: bool = Field(description="No write key configured: POST/DELETE /documents answer 403.")
    read_key_required: bool = Field(description="Searches, documents and stats need an API key.")
    max_body_bytes: int
    max_query_chars: int
    max_k: int = MAX_K
    max_batch_queries: int
    max_documents_per_request: int
    max_document_chars: int = MAX_DOCUMENT_CHARS
    max_id_chars: int = MAX_ID_CHARS
    timeout_s: Optional[float] = Field(description="Per-request timeout of searches and document fetches (504).")
