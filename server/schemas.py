"""Request and response models of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from index.structures import MODES
from lsr.fusion import NORMALIZATIONS, MAX_DEPTH

MAX_K = 1000
MAX_QUERY_CHARS = 1000
MAX_BATCH_QUERIES = 256
HIT_FIELDS = ("id", "score", "title", "snippet", "highlights", "text", "metadata", "sparse_score", "dense_score",
              "explain")
DEFAULT_FIELDS = ("id", "score", "title", "snippet", "highlights", "sparse_score", "dense_score")

Retriever = Literal["sparse", "dense", "hybrid"]
QueryEncoderName = Literal["model", "inference-free"]
FusionName = Literal["convex", "rrf"]
Scalar = Union[str, int, float, bool, None]


class SearchOptions(BaseModel):
    """Everything about a search except the query text."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(10, ge=1, le=MAX_K, description="Number of hits (1..1000).")
    mode: str = Field("exact", description=f"Sparse search mode: {', '.join(MODES)}.")
    retriever: Retriever = Field("sparse", description="sparse (SPLADE), dense (embeddings) or hybrid (fused).")
    query_encoder: QueryEncoderName = Field(
        "model", description="Sparse query encoding: model (SPLADE) or inference-free (tokenizer + the index's IDF "
                             "table, no model inference).")
    fusion: Optional[FusionName] = Field(None, description="Hybrid fusion: convex or rrf (default: the tuned one).")
    alpha: Optional[float] = Field(None, ge=0.0, le=1.0, description="Convex fusion: weight of the sparse side.")
    normalization: Optional[Literal["tmm", "minmax", "zscore"]] = Field(
        None, description=f"Convex fusion score normalisation: {', '.join(NORMALIZATIONS)}.")
    depth: Optional[int] = Field(None, ge=1, le=MAX_DEPTH, description="Hybrid: candidates k' per retriever.")
    rrf_k: Optional[int] = Field(None, ge=0, le=100_000, description="RRF constant (default 60).")
    explain: bool = Field(False, description="Add the top contributing terms of each hit.")
    fields: Optional[list[str]] = Field(None, description=f"Hit fields to return, from: {', '.join(HIT_FIELDS)}.")
    filter: Optional[dict[str, Union[Scalar, list[Scalar]]]] = Field(
        None, description="Metadata equality filter {field: value} (a list value means any of).")
    params: Optional[dict[str, Union[int, float, str, bool]]] = Field(None, description="Sparse mode knobs.")

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
    explain: Optional[list[TermContribution]] = None


class SearchResponse(BaseModel):
    query: str
    retriever: str
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
    modes: list[str]
    query_encoders: list[str] = ["model"]
    queries: int
    errors: int
    latency_ms: dict[str, Optional[float]]
    batching: dict[str, Any]
    uptime_s: float


class ErrorBody(BaseModel):
    detail: Any
