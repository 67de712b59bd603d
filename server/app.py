"""The HTTP face of an index: FastAPI app with sparse, dense and hybrid search, documents, stats and a web page.

Run it with ``lsr serve --index DIR`` (or ``uvicorn`` on :func:`create_app`). The index is loaded in a
background thread at start-up; until it is ready every endpoint that needs it answers 503. All ranking happens
in the library (:mod:`lsr.fusion`, :mod:`lsr.explain`); this module validates requests, micro-batches query
encoding (:mod:`server.batching`) and runs searches on a thread pool so the event loop never blocks (the Numba
kernels, faiss and numpy release the GIL).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lsr.index.structures import MODES
from lsr import __version__
from lsr.fusion import MAX_DEPTH
from lsr.server.batching import MicroBatcher
from lsr.server.schemas import (
    DEFAULT_FIELDS, DEFAULT_TIMEOUT_S, HIT_FIELDS, MAX_BATCH_QUERIES, MAX_BODY_BYTES, MAX_DOCUMENTS_PER_REQUEST,
    MAX_QUERY_CHARS, FusionName, Normalization, QueryEncoderName, Retriever,
    AddDocumentsRequest, AddDocumentsResponse, BatchSearchRequest, BatchSearchResponse, DeleteDocumentResponse,
    DocumentResponse, ErrorBody, Health, Limits, SearchHit, SearchOptions, SearchRequest, SearchResponse, Stats,
)

log = logging.getLogger("lsr.server")
STATIC_DIR = Path(__file__).parent / "static"
EXPLAIN_TERMS = 10
HIGHLIGHT_TERMS = 32
SNIPPET_WORDS = 40
REFRESH_INTERVAL_S = 1.0  # searches pick up commits of other writers (e.g. `lsr add`) at most this late
READ_ONLY_DETAIL = "server is read-only: start it with --api-key or LSR_API_KEY to enable writes"
_FROM_ENV: Any = object()  # create_app's default for the keys: read them from the environment


def _key_from(value: Any, env: str) -> Optional[str]:
    """A configured key (``_FROM_ENV``: the variable ``env``); empty means none."""
    if value is _FROM_ENV:
        value = os.environ.get(env)
    return value or None


class UserError(Exception):
    """Bad input: answered with ``status`` and a JSON ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class ServerState:
    """What every request shares: the engine, the encoder batchers, the thread pools and the counters."""

    def __init__(self, index_dir: str | os.PathLike, *, max_batch: int = 32, search_threads: int | None = None,
                 encode_threads: int = 1, warmup: bool = True, api_key: Optional[str] = None,
                 read_api_key: Optional[str] = None, timeout_s: Optional[float] = DEFAULT_TIMEOUT_S,
                 max_body_bytes: int = MAX_BODY_BYTES, max_query_chars: int = MAX_QUERY_CHARS,
                 max_batch_queries: int = MAX_BATCH_QUERIES, max_documents: int = MAX_DOCUMENTS_PER_REQUEST,
                 refresh_interval_s: Optional[float] = REFRESH_INTERVAL_S, query_runtime: Optional[str] = None) -> None:
        from lsr.onnx_encoders import DEFAULT_QUERY_RUNTIME, check_query_runtime

        self.query_runtime = check_query_runtime(query_runtime or DEFAULT_QUERY_RUNTIME)
        for name, value, ceiling in (("max_query_chars", max_query_chars, MAX_QUERY_CHARS),
                                     ("max_batch_queries", max_batch_queries, MAX_BATCH_QUERIES),
                                     ("max_documents", max_documents, MAX_DOCUMENTS_PER_REQUEST),
                                     ("max_body_bytes", max_body_bytes, None)):
            if value < 1 or (ceiling is not None and value > ceiling):
                raise ValueError(f"{name} must be in 1..{ceiling or 'any'}, got {value}")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 (or None for no timeout), got {timeout_s}")
        self.index_dir = Path(index_dir)
        self.max_batch = max_batch
        self.warmup = warmup
        # Keys as bytes: hmac.compare_digest on str accepts ASCII only, and a client may send any header bytes.
        self._write_key = api_key.encode("utf-8") if api_key else None
        self._read_key = read_api_key.encode("utf-8") if read_api_key else None
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes
        self.max_query_chars = max_query_chars
        self.max_batch_queries = max_batch_queries
        self.max_documents = max_documents
        self.refresh_interval_s = refresh_interval_s
        self._last_refresh = time.monotonic()
        self._swap_lock = threading.Lock()   # one engine swap at a time
        self._write_lock = threading.Lock()  # one write at a time in this server (lsr.live locks across processes)
        self.writes = 0
        self.engine = None
        self.ready = False
        self.error: str | None = None
        self.size_bytes = 0
        self.started = time.time()
        self.queries = 0
        self.errors = 0
        self.latencies: deque[float] = deque(maxlen=20_000)
        self._lock = threading.Lock()
        # One encoder thread; torch's intra-op threads are per thread, so set them there. One is the default: query
        # batches are small, and intra-op threads that wait on each other collapse when the cores are shared.
        self.encode_threads = encode_threads
        self.encode_pool = ThreadPoolExecutor(1, thread_name_prefix="lsr-encode", initializer=_torch_threads,
                                              initargs=(encode_threads,))
        self.search_pool = ThreadPoolExecutor(search_threads or max(2, os.cpu_count() or 2),
                                              thread_name_prefix="lsr-search")
        self.sparse_batcher = MicroBatcher(self._encode_sparse, self.encode_pool, max_batch, "sparse")
        self.dense_batcher = MicroBatcher(self._encode_dense, self.encode_pool, max_batch, "dense")

    # ------------------------------------------------------------------ keys and limits
    @property
    def read_only(self) -> bool:
        return self._write_key is None

    @property
    def read_key_required(self) -> bool:
        return self._read_key is not None

    def key_allows(self, presented: Optional[str], *, write: bool) -> bool:
        """Whether ``presented`` is the write key (or, for reads, the read key); constant-time comparisons."""
        if presented is None:
            return False
        raw = presented.encode("latin-1", "replace")  # the header's bytes (Starlette decodes them as latin-1)
        ok = self._write_key is not None and hmac.compare_digest(raw, self._write_key)
        if not write and self._read_key is not None:
            ok = hmac.compare_digest(raw, self._read_key) or ok
        return ok

    def limits(self) -> Limits:
        return Limits(read_only=self.read_only, read_key_required=self.read_key_required,
                      max_body_bytes=self.max_body_bytes, max_query_chars=self.max_query_chars,
                      max_batch_queries=self.max_batch_queries, max_documents_per_request=self.max_documents,
                      timeout_s=self.timeout_s)

    async def bounded(self, work, what: str = "search"):
        """Await ``work`` (a coroutine) under the per-request timeout: 504 when it runs out."""
        if self.timeout_s is None:
            return await work
        try:
            return await asyncio.wait_for(work, self.timeout_s)
        except asyncio.TimeoutError:
            raise UserError(504, f"{what} timed out after {self.timeout_s:g} s") from None

    # ------------------------------------------------------------------ newer commits
    async def maybe_refresh(self) -> None:
        """Swap in the newest commit (another process may have written) at most every ``refresh_interval_s``."""
        if self.refresh_interval_s is None or self.engine is None or not hasattr(self.engine, "refresh"):
            return
        now = time.monotonic()
        if now - self._last_refresh < self.refresh_interval_s:
            return
        self._last_refresh = now  # set before awaiting: concurrent requests do not refresh again
        await asyncio.get_running_loop().run_in_executor(self.search_pool, self.refresh)

    def refresh(self) -> None:
        """``engine.refresh()`` (a stat of the commit file when nothing changed); the old engine keeps serving
        the requests already holding it. A failure is logged and the current snapshot stays."""
        with self._swap_lock:
            engine = self.engine
            try:
                newer = engine.refresh()
            except Exception:  # noqa: BLE001 - keep serving the snapshot we have
                log.exception("refreshing %s failed; still serving the previous commit", self.index_dir)
                return
            if newer is not None and newer is not engine:
                self.engine = newer
                self.size_bytes = _index_size(self.index_dir, self.size_bytes)
                log.info("index %s: now serving generation %s", self.index_dir, getattr(newer, "generation", "?"))

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        """Open the index, load its encoders and warm the kernels up; sets ``ready`` (or ``error``)."""
        from lsr.engine import Engine
        from lsr.sharded.layout import index_size_bytes, is_sharded, open_engine  # a sharded index: lsr.sharded

        try:
            started = time.time()
            _single_threaded_blas()
            engine = open_engine(self.index_dir) if is_sharded(self.index_dir) else Engine.open(self.index_dir)
            engine.query_runtime = self.query_runtime
            engine.encoder  # noqa: B018 - load the sparse model now (highlights, writes), not on the first request
            engine.query_encoder()  # and the query runtime's encoders
            if engine.dense is not None:
                engine.dense_query_encoder()
            if self.warmup:
                from lsr import fusion

                fusion.search(engine, "warm up", 10)
                if engine.dense is not None:
                    fusion.search(engine, "warm up", 10, retriever="hybrid")
            self.size_bytes = index_size_bytes(self.index_dir)  # shards included
            self.engine = engine
            self.ready = True
            log.info("index %s ready in %.1fs", self.index_dir, time.time() - started)
        except Exception as err:  # noqa: BLE001 - reported by /healthz and 503s
            log.exception("loading %s failed", self.index_dir)
            self.error = f"{type(err).__name__}: {err}"

    def load_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name="lsr-load", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.encode_pool.shutdown(wait=False, cancel_futures=True)
        self.search_pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ encoding (runs on the encoder thread)
    def _encode_sparse(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        batch = self.engine.query_encoder().encode_queries(texts, batch_size=max(len(texts), 1))
        return [tuple(np.array(a) for a in batch.row(i)) for i in range(len(texts))]

    def _encode_dense(self, texts: list[str]) -> np.ndarray:
        return self.engine.dense_query_encoder().encode_queries(texts, batch_size=max(len(texts), 1))

    # ------------------------------------------------------------------ searching
    def record(self, seconds: float, queries: int = 1) -> None:
        with self._lock:
            self.queries += queries
            self.latencies.append(seconds * 1000.0)

    async def search(self, q: str, opts: SearchOptions) -> SearchResponse:
        """One query: encode (micro-batched), search on the pool, render."""
        started = time.perf_counter()
        q = check_query(q, self.max_query_chars)
        self._check_options(opts)
        need_sparse, need_dense = self._needs(opts)
        free = opts.query_encoder == "inference-free"  # tokenizer + table lookup: microseconds, no batching
        sparse_vec, dense_vec = await asyncio.gather(
            self.sparse_batcher.submit(q) if need_sparse and not free else _none(),
            self.dense_batcher.submit(q) if need_dense else _none(),
        )
        if need_sparse and free:
            sparse_vec = self._encode_free([q])[0]
        loop = asyncio.get_running_loop()
        hits = await loop.run_in_executor(self.search_pool, self._search_sync, [q], opts,
                                          None if sparse_vec is None else [sparse_vec],
                                          None if dense_vec is None else np.asarray(dense_vec)[None, :])
        took = time.perf_counter() - started
        self.record(took)
        return self._response(q, opts, hits[0], took)

    async def search_batch(self, body: BatchSearchRequest) -> BatchSearchResponse:
        """Many queries with shared options: encoded together, searched together."""
        started = time.perf_counter()
        if len(body.queries) > self.max_batch_queries:
            raise UserError(422, f"too many queries: {len(body.queries)}, at most {self.max_batch_queries} per "
                                 "batch (server limit --max-batch-queries)")
        queries = [check_query(q, self.max_query_chars) for q in body.queries]
        self._check_options(body)
        need_sparse, need_dense = self._needs(body)
        loop = asyncio.get_running_loop()
        if need_sparse and body.query_encoder == "inference-free":
            sparse_vecs = self._encode_free(queries)
        else:
            sparse_vecs = await loop.run_in_executor(self.encode_pool, self._encode_sparse, queries) if need_sparse else None
        dense_vecs = await loop.run_in_executor(self.encode_pool, self._encode_dense, queries) if need_dense else None
        results = await loop.run_in_executor(self.search_pool, self._search_sync, queries, body, sparse_vecs, dense_vecs)
        took = time.perf_counter() - started
        self.record(took, len(queries))
        return BatchSearchResponse(took_ms=round(took * 1000, 3), results=[
            self._response(q, body, hits, took) for q, hits in zip(queries, results)])

    def _encode_free(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Inference-free query vectors (tokenizer and the index's IDF table; no model, no batching needed)."""
        encoder = self.engine.inference_free
        return [encoder.encode_query(t) for t in texts]

    def _check_options(self, opts: SearchOptions) -> None:
        if opts.retriever != "sparse" and self.engine.dense is None:
            raise UserError(422, f"retriever {opts.retriever!r} needs dense vectors, and this index has none "
                                 "(build it with `lsr index --dense`)")
        if opts.query_encoder == "inference-free" and not self.engine.manifest.get("inference_free"):
            raise UserError(422, f"query_encoder 'inference-free' needs the index's query table, and this index has "
                                 f"none (add it with `lsr index --add-inference-free --index {self.index_dir}`)")

    def _needs(self, opts: SearchOptions) -> tuple[bool, bool]:
        fields = set(opts.fields or DEFAULT_FIELDS)
        need_sparse = opts.retriever != "dense" or opts.explain or "highlights" in fields
        return need_sparse, opts.retriever != "sparse"

    def _search_sync(self, queries: list[str], opts: SearchOptions, sparse_vecs, dense_vecs) -> list[list[dict]]:
        """Runs on a search thread: rank with the library, then render the hits."""
        from lsr.index.storage import IndexFormatError
        from lsr import fusion

        engine = self.engine  # one snapshot for the whole request, even if a newer commit is swapped in meanwhile
        try:
            ranked = fusion.search_many(
                engine, queries, opts.k, mode=opts.mode, retriever=opts.retriever, fusion=opts.fusion,
                alpha=opts.alpha, normalization=opts.normalization, depth=opts.depth, rrf_k=opts.rrf_k,
                filter=opts.filter, sparse_vectors=sparse_vecs, dense_vectors=dense_vecs, threads=1,
                params=opts.params or {},
            )
        except (ValueError, TypeError, IndexFormatError) as err:  # bad mode knobs, mode without its structure
            raise UserError(422, str(err)) from err
        return [self._render(engine, q, hits, opts, None if sparse_vecs is None else sparse_vecs[i])
                for i, (q, hits) in enumerate(zip(queries, ranked))]

    def _render(self, engine, q: str, hits, opts: SearchOptions, sparse_vec) -> list[dict]:
        from lsr.explain import explain, query_token_ids, snippet

        fields = set(opts.fields or DEFAULT_FIELDS) | {"id"}
        if opts.explain:
            fields.add("explain")
        wants_doc = fields & {"snippet", "highlights", "text", "metadata"}
        own = query_token_ids(engine, q) if (fields & {"explain", "snippet", "highlights"}) else None
        out = []
        for hit in hits:
            row: dict[str, Any] = {"id": hit.id}
            if "score" in fields:
                row["score"] = hit.score
            if "title" in fields:
                row["title"] = hit.title
            for name in ("sparse_score", "dense_score"):
                if name in fields:
                    row[name] = getattr(hit, name, None)
            terms = None
            if sparse_vec is not None and fields & {"explain", "snippet", "highlights"}:
                terms = explain(engine, sparse_vec, hit.docno, own_tokens=own, top=HIGHLIGHT_TERMS)
                if "explain" in fields:
                    row["explain"] = [t.to_dict() for t in terms[:EXPLAIN_TERMS]]
            if wants_doc:
                doc = engine.docs.get(hit.docno)
                if "text" in fields:
                    row["text"] = doc.text
                if "metadata" in fields:
                    row["metadata"] = doc.metadata
                if fields & {"snippet", "highlights"}:
                    if terms is not None:
                        weights = {t.term: t.contribution for t in terms}
                        expansion = {t.term for t in terms if t.expansion}
                    else:  # dense hit without a sparse vector: the query's own words
                        weights = {engine.encoder.token(i): 1.0 for i in (own or ())}
                        expansion = set()
                    text, spans = snippet(doc.text, weights, SNIPPET_WORDS, expansion)
                    if "snippet" in fields:
                        row["snippet"] = text
                    if "highlights" in fields:
                        row["highlights"] = spans
            out.append(row)
        return out

    def _response(self, q: str, opts: SearchOptions, hits: list[dict], took: float) -> SearchResponse:
        from lsr.fusion import FusionConfig

        fusion = None
        if opts.retriever == "hybrid":
            fusion = FusionConfig.make(opts.fusion, alpha=opts.alpha, normalization=opts.normalization,
                                       depth=opts.depth, rrf_k=opts.rrf_k).to_dict()
        return SearchResponse(query=q, retriever=opts.retriever, query_encoder=opts.query_encoder, mode=opts.mode,
                              k=opts.k, fusion=fusion,
                              took_ms=round(took * 1000, 3), hits=[SearchHit(**h) for h in hits])

    # ------------------------------------------------------------------ stats
    def stats(self) -> Stats:
        engine = self.engine
        with self._lock:
            lat = np.array(self.latencies) if self.latencies else None
            queries, errors = self.queries, self.errors
        dense = engine.dense
        return Stats(
            documents=engine.index.num_docs, index_size_bytes=self.size_bytes, index=str(self.index_dir.resolve()),
            model=engine.manifest["model"], dense_model=None if dense is None else dense.model,
            dense_search=None if dense is None else ("hnsw" if dense.uses_hnsw else "exact"),
            modes=_available_modes(engine), queries=queries, errors=errors,
            query_encoders=["model"] + (["inference-free"] if engine.manifest.get("inference_free") else []),
            latency_ms={
                "p50": None if lat is None else round(float(np.percentile(lat, 50)), 3),
                "p99": None if lat is None else round(float(np.percentile(lat, 99)), 3),
                "mean": None if lat is None else round(float(lat.mean()), 3),
            },
            batching={"sparse": self.sparse_batcher.stats(), "dense": self.dense_batcher.stats()},
            uptime_s=round(time.time() - self.started, 1),
            read_only=self.read_only, writes=self.writes, limits=self.limits().model_dump(),
        )

    # ------------------------------------------------------------------ writes (lsr.live)
    async def add_documents(self, body: AddDocumentsRequest) -> dict:
        """Append the documents as a new segment (one commit), then serve that commit."""
        from lsr.corpus import Document

        if len(body.documents) > self.max_documents:
            raise UserError(422, f"too many documents: {len(body.documents)}, at most {self.max_documents} per "
                                 "request (server limit --max-documents)")
        dupes = body.duplicate_ids()
        if dupes:
            raise UserError(409, f"duplicate id(s) in the request: {', '.join(map(repr, dupes[:10]))}"
                                 f"{' …' if len(dupes) > 10 else ''}")
        # source:line name the document in a library error ("documents:3: field 'id': ..." = the third one)
        docs = [Document(id=d.id, text=d.text, title=d.title, metadata=d.metadata, source="documents", line=i)
                for i, d in enumerate(body.documents, 1)]
        return await self._write(self._add_sync, docs, body.update)

    async def delete_document(self, doc_id: str) -> dict:
        return await self._write(self._delete_sync, doc_id)

    async def _write(self, fn, *args) -> dict:
        from lsr.sharded.layout import is_sharded

        if is_sharded(self.index_dir):
            raise UserError(409, "this server serves a sharded index, which it cannot write to; add documents "
                                 "to a single index")
        # On the encoder thread: the write encodes with the server's models, whose tokenizers must not be used
        # by two threads at once; it also queues writes behind each other. Not under the request timeout: a
        # write that was started is finished (and answered), never abandoned half-way.
        return await asyncio.get_running_loop().run_in_executor(self.encode_pool, fn, *args)

    def _add_sync(self, docs, update: bool) -> dict:
        from lsr import live

        with self._write_lock:
            engine = self.engine
            try:
                result = live.add_documents(
                    self.index_dir, docs, update=update, encoder=engine.encoder,
                    dense_encoder=engine.dense_encoder if engine.dense is not None else None)
            except live.WriterLockedError as err:
                raise UserError(423, f"the index is locked by another writer: {err}") from None
            except live.DuplicateDocumentError as err:
                raise UserError(409, f"{err} (send \"update\": true to replace them)") from None
            except ValueError as err:  # a document the library refuses
                raise UserError(422, str(err)) from None
            self.writes += 1
            self.refresh()
            return result

    def _delete_sync(self, doc_id: str) -> dict:
        from lsr import live

        with self._write_lock:
            try:
                result = live.delete_documents(self.index_dir, [doc_id])
            except live.WriterLockedError as err:
                raise UserError(423, f"the index is locked by another writer: {err}") from None
            except live.DocumentNotFoundError:
                raise UserError(404, f"no document with id {doc_id!r}") from None
            self.writes += 1
            self.refresh()
            return result


def _torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _single_threaded_blas() -> None:
    """Requests are parallel over the search pool; BLAS threads inside each one only fight over the cores."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return
    threadpool_limits(1, user_api="blas")


async def _none():
    return None


def _available_modes(engine) -> list[str]:
    from lsr.index.structures import MODES

    have = set(engine.manifest.get("structures", {}))
    return [mode for mode, needs in MODES.items() if needs is None or needs in have]


def check_query(q: Optional[str], max_chars: int = MAX_QUERY_CHARS) -> str:
    """400 for an empty or over-long query."""
    if q is None or not q.strip():
        raise UserError(400, "empty query: give some text in q")
    if len(q) > max_chars:
        raise UserError(400, f"query too long: {len(q)} characters, at most {max_chars}")
    return q.strip()


def _index_size(index_dir: Path, fallback: int) -> int:
    from lsr.sharded.layout import index_size_bytes

    try:
        return index_size_bytes(index_dir)
    except OSError:  # a file replaced while we walked the directory
        return fallback


# ---------------------------------------------------------------------- dependencies
def get_state(request: Request) -> ServerState:
    return request.app.state.lsr


_bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                     description="The API key as a bearer token: `Authorization: Bearer <key>`.")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey",
                               description="The API key in a header: `X-API-Key: <key>`.")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="lsr"'}


def _check_key(state: ServerState, request: Request, *, write: bool) -> None:
    """401 unless a key was sent and every credential sent is valid (a wrong or malformed ``Authorization`` is
    refused even next to a right ``X-API-Key``)."""
    presented = []
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "invalid Authorization header: expected `Bearer <key>`", headers=_CHALLENGE)
        presented.append(token.strip())
    if "x-api-key" in request.headers:
        presented.append(request.headers["x-api-key"])
    if not presented:
        raise HTTPException(401, "missing API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
                            headers=_CHALLENGE)
    if not all([state.key_allows(key, write=write) for key in presented]):  # a list: compare every one
        raise HTTPException(401, "invalid API key", headers=_CHALLENGE)


# The two schemes are declared (OpenAPI, /docs "Authorize"); the headers are read by _check_key itself.
_Bearer = Annotated[Optional[HTTPAuthorizationCredentials], Security(_bearer)]
_ApiKey = Annotated[Optional[str], Security(_api_key_header)]


def read_access(request: Request, state: Annotated[ServerState, Depends(get_state)], _b: _Bearer = None,
                _k: _ApiKey = None) -> ServerState:
    """Reads are open unless the server has a read key; then the read key or the write key (401 otherwise)."""
    if state.read_key_required:
        _check_key(state, request, write=False)
    return state


def require_write_key(request: Request, state: Annotated[ServerState, Depends(get_state)], _b: _Bearer = None,
                      _k: _ApiKey = None) -> ServerState:
    """Writes need the write key: 403 on a read-only server (none configured), 401 for a missing or wrong key."""
    if state.read_only:
        raise HTTPException(403, READ_ONLY_DETAIL)
    _check_key(state, request, write=True)
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


def writable_state(state: Annotated[ServerState, Depends(require_write_key)]) -> ServerState:
    return _loaded(state)


Ready = Annotated[ServerState, Depends(ready_state)]
Writer = Annotated[ServerState, Depends(writable_state)]
_ERRORS = {400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 404: {"model": ErrorBody},
           413: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody},
           504: {"model": ErrorBody}}
_WRITE_ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 413, 422, 423, 503)}
_READ_OPERATIONS = {("/search", "get"), ("/search", "post"), ("/search/batch", "post"), ("/stats", "get"),
                    ("/documents/{doc_id}", "get")}


class BodyLimit:
    """ASGI middleware: 413 (JSON) for a request body over the limit, by Content-Length or by the bytes streamed.

    The body is read here (it is read whole by the JSON endpoints anyway) and handed on to the app.
    """

    def __init__(self, app, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.state.max_body_bytes
        too_large = JSONResponse({"detail": f"request body too large: at most {limit} bytes"}, status_code=413,
                                 headers={"Connection": "close"})
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    bad = JSONResponse({"detail": "invalid Content-Length header"}, status_code=400)
                    await bad(scope, receive, send)
                    return
                if length > limit:
                    await too_large(scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _patch_openapi(schema: dict, state: ServerState) -> dict:
    """The generated schema with this server's configured limits, and security only where it is enforced."""
    comps = schema.get("components", {}).get("schemas", {})
    batch = comps.get("BatchSearchRequest", {}).get("properties", {}).get("queries")
    if batch is not None:
        batch["maxItems"] = state.max_batch_queries
        batch.setdefault("items", {})["maxLength"] = state.max_query_chars
    docs = comps.get("AddDocumentsRequest", {}).get("properties", {}).get("documents")
    if docs is not None:
        docs["maxItems"] = state.max_documents
    # A query is required and not blank (answered 400, not 422, so the models do not enforce it; documented here).
    query = {"type": "string", "minLength": 1, "maxLength": state.max_query_chars, "pattern": r"\S"}
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


# ---------------------------------------------------------------------- the app
def create_app(index_dir: str | os.PathLike = "lsr_index", *, max_batch: int = 32, search_threads: int | None = None,
               encode_threads: int = 1, load: str = "background", warmup: bool = True,
               api_key: Optional[str] = _FROM_ENV, read_api_key: Optional[str] = _FROM_ENV,
               timeout_s: Optional[float] = DEFAULT_TIMEOUT_S, max_body_bytes: int = MAX_BODY_BYTES,
               max_query_chars: int = MAX_QUERY_CHARS, max_batch_queries: int = MAX_BATCH_QUERIES,
               max_documents: int = MAX_DOCUMENTS_PER_REQUEST,
               refresh_interval_s: Optional[float] = REFRESH_INTERVAL_S, query_runtime: Optional[str] = None) -> FastAPI:
    """The FastAPI app serving ``index_dir``; ``load`` is ``background`` (default), ``now`` or ``never``.

    ``max_batch=1`` turns micro-batching off (each query is encoded alone). ``api_key`` enables the write
    endpoints (default: ``LSR_API_KEY``; none: the server is read-only and writes answer 403); ``read_api_key``
    (default: ``LSR_READ_API_KEY``) makes searches, documents and stats require it or the write key. Limits:
    ``timeout_s`` per search or document fetch (504; None: none), ``max_body_bytes`` (413), ``max_query_chars``
    (400), ``max_batch_queries`` and ``max_documents`` per request (422); they can be lowered from the defaults,
    not raised. ``refresh_interval_s``: how often searches check for commits made by other processes.
    ``query_runtime``: what runs the models on queries (``torch``, ``onnx``, ``onnx-int8``; default: the latter).
    """
    api_key, read_api_key = _key_from(api_key, "LSR_API_KEY"), _key_from(read_api_key, "LSR_READ_API_KEY")
    state = ServerState(index_dir, max_batch=max_batch, search_threads=search_threads,
                        encode_threads=encode_threads, warmup=warmup, api_key=api_key, read_api_key=read_api_key,
                        timeout_s=timeout_s, max_body_bytes=max_body_bytes, max_query_chars=max_query_chars,
                        max_batch_queries=max_batch_queries, max_documents=max_documents,
                        refresh_interval_s=refresh_interval_s, query_runtime=query_runtime)
    if state.read_only:
        log.warning("lsr server is read-only: no API key configured (start it with --api-key or LSR_API_KEY to "
                    "enable POST/DELETE /documents)")
    else:
        log.info("lsr server accepts writes with its API key%s",
                 "; reads need a key too" if state.read_key_required else "")
    if load == "now":
        state.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load == "background" and not state.ready and state.error is None:
            state.load_in_background()
        yield
        await state.sparse_batcher.close()
        await state.dense_batcher.close()
        state.close()

    app = FastAPI(title="lsr", version=__version__, lifespan=lifespan,
                  description="Learned sparse retrieval with dense and hybrid search. Writes (POST and DELETE "
                              "/documents) need the server's API key, sent as `Authorization: Bearer <key>` or "
                              "`X-API-Key: <key>`; limits are listed at GET /limits.")
    app.state.lsr = state
    app.add_middleware(BodyLimit, state=state)
    generate_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = _patch_openapi(generate_openapi(), state)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(UserError)
    async def _user_error(request: Request, err: UserError):
        state.errors += 1
        return JSONResponse({"detail": err.detail}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        state.errors += 1
        return JSONResponse({"detail": _jsonable_errors(err.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        headers = dict(err.headers or {})
        if err.status_code == 405:  # Allow: every method of the path, not just the first route's
            from starlette.routing import Match

            allowed = {m for route in app.router.routes if route.matches(request.scope)[0] != Match.NONE
                       for m in (getattr(route, "methods", None) or ())}
            headers["Allow"] = ", ".join(sorted(allowed))
        return JSONResponse({"detail": err.detail}, status_code=err.status_code, headers=headers or None)

    @app.exception_handler(Exception)
    async def _crash(request: Request, err: Exception):  # a bug, never user input: keep the body JSON
        log.exception("internal error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(err).__name__}"}, status_code=500)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", response_model=Health, response_model_exclude_none=True, responses={503: {"model": Health}})
    async def healthz(state: Annotated[ServerState, Depends(get_state)]):
        """200 when the index is loaded and searchable, 503 while loading (or if loading failed)."""
        if state.ready:
            return Health(status="ok")
        body = Health(status="error", detail=state.error) if state.error else Health(status="loading")
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)

    @app.get("/limits", response_model=Limits)
    async def limits(state: Annotated[ServerState, Depends(get_state)]):
        """What this server accepts: read-only or not, whether reads need a key, sizes, k, batch and timeout."""
        return state.limits()

    @app.get("/stats", response_model=Stats, responses=_ERRORS)
    async def stats(state: Ready):
        """Documents, index size, models, query count and latency percentiles (server side, last 20k)."""
        return state.stats()

    @app.get("/search", response_model=SearchResponse, response_model_exclude_none=True, responses=_ERRORS)
    async def search_get(
        state: Ready,
        q: Annotated[Optional[str], Query(description="Query text.")] = None,
        k: Annotated[int, Query(ge=1, le=1000)] = 10,
        mode: str = "exact",
        retriever: Retriever = "sparse",
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
                                 alpha=alpha,
                                 normalization=normalization, depth=depth, rrf_k=rrf_k, explain=explain,
                                 fields=[f.strip() for f in fields.split(",") if f.strip()] if fields else None)
        except ValidationError as err:
            raise RequestValidationError(err.errors()) from None
        return await state.bounded(state.search(q, opts))

    @app.post("/search", response_model=SearchResponse, response_model_exclude_none=True, responses=_ERRORS)
    async def search_post(body: SearchRequest, state: Ready):
        """Search with a JSON body: the GET parameters plus ``explain``, ``fields``, ``filter`` and mode ``params``."""
        return await state.bounded(state.search(body.q, body))

    @app.post("/search/batch", response_model=BatchSearchResponse, response_model_exclude_none=True,
              responses=_ERRORS)
    async def search_batch(body: BatchSearchRequest, state: Ready):
        """Several queries with shared options, encoded and searched together."""
        return await state.bounded(state.search_batch(body))

    @app.get("/documents/{doc_id:path}", response_model=DocumentResponse, response_model_exclude_none=True,
             responses=_ERRORS)
    async def document(doc_id: str, state: Ready,
                       terms: Annotated[int, Query(ge=0, le=1000, description="Also return the top indexed terms.")] = 0):
        """A stored document by id (404 if unknown); ``terms=N`` adds its N heaviest indexed terms."""
        def fetch():
            engine = state.engine
            try:
                doc = engine.document(doc_id)
            except KeyError:
                raise UserError(404, f"no document with id {doc_id!r}") from None
            vector = engine.document_vector(doc_id, top=terms) if terms else None
            return DocumentResponse(id=doc.id, title=doc.title, text=doc.text, metadata=doc.metadata, terms=vector)

        return await state.bounded(asyncio.get_running_loop().run_in_executor(state.search_pool, fetch),
                                   "document fetch")

    @app.post("/documents", status_code=201, response_model=AddDocumentsResponse, responses=_WRITE_ERRORS)
    async def add_documents(body: AddDocumentsRequest, state: Writer):
        """Add documents as one commit (a new segment), searchable when this returns. Needs the API key.

        409 if an id is already indexed (unless ``update`` is true), 423 while another process writes the index.
        """
        return await state.add_documents(body)

    @app.delete("/documents/{doc_id:path}", response_model=DeleteDocumentResponse, responses=_WRITE_ERRORS)
    async def delete_document(doc_id: str, state: Writer):
        """Delete a document (404 if unknown); gone from results when this returns. Needs the API key."""
        return await state.delete_document(doc_id)

    return app


def _jsonable_errors(errors) -> list[dict]:
    out = []
    for e in errors:
        item = {key: e[key] for key in ("type", "loc", "msg") if key in e}
        if "input" in e:
            value = e["input"]
            plain = isinstance(value, (str, int, bool, type(None))) or (isinstance(value, float) and np.isfinite(value))
            item["input"] = value if plain else _short(value)
        out.append(item)
    return out


def _short(value: Any, limit: int = 200) -> str:
    """A rejected input echoed in a 422: as text, cut to ``limit`` characters (a body may be megabytes)."""
    try:
        text = json.dumps(value, allow_nan=True, default=str)
    except (TypeError, ValueError):
        text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def app_from_env() -> FastAPI:
    """``uvicorn --factory server.app:app_from_env`` with LSR_INDEX (and LSR_MAX_BATCH, LSR_API_KEY,
    LSR_READ_API_KEY, LSR_TIMEOUT, LSR_QUERY_RUNTIME) in the environment."""
    timeout = os.environ.get("LSR_TIMEOUT")
    return create_app(os.environ.get("LSR_INDEX", "lsr_index"), max_batch=int(os.environ.get("LSR_MAX_BATCH", "32")),
                      timeout_s=float(timeout) if timeout else DEFAULT_TIMEOUT_S,
                      query_runtime=os.environ.get("LSR_QUERY_RUNTIME"))


def serve(index_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, *, max_batch: int = 32,
          search_threads: int | None = None, encode_threads: int = 1, log_level: str = "info",
          **options: Any) -> None:
    """Run the server with uvicorn (blocking); ``options`` go to :func:`create_app` (keys, limits, timeout)."""
    import uvicorn

    app = create_app(index_dir, max_batch=max_batch, search_threads=search_threads, encode_threads=encode_threads,
                     **options)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
