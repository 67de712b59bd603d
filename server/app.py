"""The HTTP face of an index: FastAPI app with sparse, dense and hybrid search, documents, stats and a web page.

Run it with ``lsr serve --index DIR`` (or ``uvicorn`` on :func:`create_app`). The index is loaded in a
background thread at start-up; until it is ready every endpoint that needs it answers 503. All ranking happens
in the library (:mod:`lsr.fusion`, :mod:`lsr.explain`); this module validates requests, micro-batches query
encoding (:mod:`server.batching`) and runs searches on a thread pool so the event loop never blocks (the Numba
kernels, faiss and numpy release the GIL).
"""

from __future__ import annotations

import asyncio
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
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from lsr import __version__
from server.batching import MicroBatcher
from server.schemas import (
    DEFAULT_FIELDS, MAX_QUERY_CHARS, BatchSearchRequest, BatchSearchResponse, DocumentResponse, ErrorBody, Health,
    SearchHit, SearchOptions, SearchRequest, SearchResponse, Stats,
)

log = logging.getLogger("lsr.server")
STATIC_DIR = Path(__file__).parent / "static"
EXPLAIN_TERMS = 10
HIGHLIGHT_TERMS = 32
SNIPPET_WORDS = 40


class UserError(Exception):
    """Bad input: answered with ``status`` and a JSON ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class ServerState:
    """What every request shares: the engine, the encoder batchers, the thread pools and the counters."""

    def __init__(self, index_dir: str | os.PathLike, *, max_batch: int = 32, search_threads: int | None = None,
                 encode_threads: int = 1, warmup: bool = True) -> None:
        self.index_dir = Path(index_dir)
        self.max_batch = max_batch
        self.warmup = warmup
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

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        """Open the index, load its encoders and warm the kernels up; sets ``ready`` (or ``error``)."""
        from lsr.engine import Engine
        from lsr.sharding import index_size_bytes, is_sharded, open_engine  # a sharded index: lsr.distributed

        try:
            started = time.time()
            _single_threaded_blas()
            engine = open_engine(self.index_dir) if is_sharded(self.index_dir) else Engine.open(self.index_dir)
            engine.encoder  # noqa: B018 - load the sparse model now, not on the first request
            if engine.dense is not None:
                engine.dense_encoder  # noqa: B018
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
        batch = self.engine.encoder.encode_queries(texts, batch_size=max(len(texts), 1))
        return [tuple(np.array(a) for a in batch.row(i)) for i in range(len(texts))]

    def _encode_dense(self, texts: list[str]) -> np.ndarray:
        return self.engine.dense_encoder.encode_queries(texts, batch_size=max(len(texts), 1))

    # ------------------------------------------------------------------ searching
    def record(self, seconds: float, queries: int = 1) -> None:
        with self._lock:
            self.queries += queries
            self.latencies.append(seconds * 1000.0)

    async def search(self, q: str, opts: SearchOptions) -> SearchResponse:
        """One query: encode (micro-batched), search on the pool, render."""
        started = time.perf_counter()
        q = check_query(q)
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
        queries = [check_query(q) for q in body.queries]
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
        from index.storage import IndexFormatError
        from lsr import fusion

        try:
            ranked = fusion.search_many(
                self.engine, queries, opts.k, mode=opts.mode, retriever=opts.retriever, fusion=opts.fusion,
                alpha=opts.alpha, normalization=opts.normalization, depth=opts.depth, rrf_k=opts.rrf_k,
                filter=opts.filter, sparse_vectors=sparse_vecs, dense_vectors=dense_vecs, threads=1,
                params=opts.params or {},
            )
        except (ValueError, TypeError, IndexFormatError) as err:  # bad mode knobs, mode without its structure
            raise UserError(422, str(err)) from err
        return [self._render(q, hits, opts, None if sparse_vecs is None else sparse_vecs[i])
                for i, (q, hits) in enumerate(zip(queries, ranked))]

    def _render(self, q: str, hits, opts: SearchOptions, sparse_vec) -> list[dict]:
        from lsr.explain import explain, query_token_ids, snippet

        engine = self.engine
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
        )


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
    from index.structures import MODES

    have = set(engine.manifest.get("structures", {}))
    return [mode for mode, needs in MODES.items() if needs is None or needs in have]


def check_query(q: Optional[str]) -> str:
    """400 for an empty or over-long query."""
    if q is None or not q.strip():
        raise UserError(400, "empty query: give some text in q")
    if len(q) > MAX_QUERY_CHARS:
        raise UserError(400, f"query too long: {len(q)} characters, at most {MAX_QUERY_CHARS}")
    return q.strip()


# ---------------------------------------------------------------------- dependencies
def get_state(request: Request) -> ServerState:
    return request.app.state.lsr


def ready_state(state: Annotated[ServerState, Depends(get_state)]) -> ServerState:
    """The shared state once the index is loaded; 503 before."""
    if not state.ready:
        detail = f"index failed to load: {state.error}" if state.error else "index is loading, retry shortly"
        raise HTTPException(503, detail, headers={"Retry-After": "1"})
    return state


Ready = Annotated[ServerState, Depends(ready_state)]
_ERRORS = {400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody},
           503: {"model": ErrorBody}}


# ---------------------------------------------------------------------- the app
def create_app(index_dir: str | os.PathLike = "lsr_index", *, max_batch: int = 32, search_threads: int | None = None,
               encode_threads: int = 1, load: str = "background", warmup: bool = True) -> FastAPI:
    """The FastAPI app serving ``index_dir``; ``load`` is ``background`` (default), ``now`` or ``never``.

    ``max_batch=1`` turns micro-batching off (each query is encoded alone).
    """
    state = ServerState(index_dir, max_batch=max_batch, search_threads=search_threads,
                        encode_threads=encode_threads, warmup=warmup)
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
                  description="Learned sparse retrieval with dense and hybrid search.")
    app.state.lsr = state

    @app.exception_handler(UserError)
    async def _user_error(request: Request, err: UserError):
        state.errors += 1
        return JSONResponse({"detail": err.detail}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        state.errors += 1
        return JSONResponse({"detail": _jsonable_errors(err.errors())}, status_code=422)

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
        retriever: str = "sparse",
        query_encoder: str = "model",
        fusion: Optional[str] = None,
        alpha: Annotated[Optional[float], Query(ge=0.0, le=1.0)] = None,
        normalization: Optional[str] = None,
        depth: Optional[int] = None,
        rrf_k: Optional[int] = None,
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
        return await state.search(q, opts)

    @app.post("/search", response_model=SearchResponse, response_model_exclude_none=True, responses=_ERRORS)
    async def search_post(body: SearchRequest, state: Ready):
        """Search with a JSON body: the GET parameters plus ``explain``, ``fields``, ``filter`` and mode ``params``."""
        return await state.search(body.q, body)

    @app.post("/search/batch", response_model=BatchSearchResponse, response_model_exclude_none=True,
              responses=_ERRORS)
    async def search_batch(body: BatchSearchRequest, state: Ready):
        """Several queries with shared options, encoded and searched together."""
        return await state.search_batch(body)

    @app.get("/documents/{doc_id:path}", response_model=DocumentResponse, response_model_exclude_none=True,
             responses=_ERRORS)
    async def document(doc_id: str, state: Ready,
                       terms: Annotated[int, Query(ge=0, le=1000, description="Also return the top indexed terms.")] = 0):
        """A stored document by id (404 if unknown); ``terms=N`` adds its N heaviest indexed terms."""
        def fetch():
            try:
                doc = state.engine.document(doc_id)
            except KeyError:
                raise UserError(404, f"no document with id {doc_id!r}") from None
            vector = state.engine.document_vector(doc_id, top=terms) if terms else None
            return DocumentResponse(id=doc.id, title=doc.title, text=doc.text, metadata=doc.metadata, terms=vector)

        return await asyncio.get_running_loop().run_in_executor(state.search_pool, fetch)

    return app


def _jsonable_errors(errors) -> list[dict]:
    out = []
    for e in errors:
        item = {key: e[key] for key in ("type", "loc", "msg") if key in e}
        if "input" in e:
            item["input"] = e["input"] if isinstance(e["input"], (str, int, float, bool, type(None))) else str(e["input"])
        out.append(item)
    return out


def app_from_env() -> FastAPI:
    """``uvicorn --factory server.app:app_from_env`` with LSR_INDEX (and LSR_MAX_BATCH) in the environment."""
    return create_app(os.environ.get("LSR_INDEX", "lsr_index"), max_batch=int(os.environ.get("LSR_MAX_BATCH", "32")))


def serve(index_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, *, max_batch: int = 32,
          search_threads: int | None = None, encode_threads: int = 1, log_level: str = "info") -> None:
    """Run the server with uvicorn (blocking)."""
    import uvicorn

    app = create_app(index_dir, max_batch=max_batch, search_threads=search_threads, encode_threads=encode_threads)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
