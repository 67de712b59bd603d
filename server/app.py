"""The HTTP face of an index: FastAPI app with sparse, dense and hybrid search, documents, stats and a web page.

Run it with ``lsr serve --index DIR`` (or ``uvicorn`` on :func:`create_app`). The index is loaded in a
background thread at start-up; until it is ready every endpoint that needs it answers 503. The server goes through
the :class:`lsr.engine.Engine` only. Its parts: :mod:`.state` (the engine snapshot, loading, newer commits, pools,
counters), :mod:`.auth` (API keys), :mod:`.limits` (body, query, batch limits and timeouts), :mod:`.routes` (the
endpoints), :mod:`.operations` (what they do), :mod:`.rendering` (hits, snippets, the page), :mod:`.batching`
(micro-batched query encoding), :mod:`.workers` (worker threads whose jobs a timeout gives up) and :mod:`.errors`
(JSON error bodies).
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import asynccontextmanager
from typing import Any, Optional

from fastapi import FastAPI

from lsr.version import __version__
from lsr.server.auth import FROM_ENV, READ_ONLY_DETAIL, ApiKeys, key_from
from lsr.server.errors import install_error_handlers
from lsr.server.limits import BodyLimit, RequestLimits
from lsr.server.rendering import mount_page
from lsr.server.routes import patch_openapi, router
from lsr.server.schemas import (DEFAULT_TIMEOUT_S, MAX_BATCH_QUERIES, MAX_BODY_BYTES, MAX_DOCUMENTS_PER_REQUEST,
                                MAX_QUERY_CHARS)
from lsr.server.state import REFRESH_INTERVAL_S, ServerState

__all__ = ["READ_ONLY_DETAIL", "app_from_env", "create_app", "serve"]
log = logging.getLogger("lsr.server")
SERVE_OPTIONS_ENV = "LSR_SERVE_OPTIONS"


def create_app(index_dir: str | os.PathLike = "lsr_index", *, max_batch: int = 32, search_threads: int | None = None,
               encode_threads: int = 1, load: str = "background", warmup: bool = True,
               api_key: Optional[str] = FROM_ENV, read_api_key: Optional[str] = FROM_ENV,
               timeout_s: Optional[float] = DEFAULT_TIMEOUT_S, max_body_bytes: int = MAX_BODY_BYTES,
               max_query_chars: int = MAX_QUERY_CHARS, max_batch_queries: int = MAX_BATCH_QUERIES,
               max_documents: int = MAX_DOCUMENTS_PER_REQUEST,
               refresh_interval_s: Optional[float] = REFRESH_INTERVAL_S, query_runtime: Optional[str] = None,
               preload: bool = False) -> FastAPI:
    """The FastAPI app serving ``index_dir``; ``load`` is ``background`` (default), ``now`` or ``never``.

    ``max_batch=1`` turns micro-batching off (each query is encoded alone). ``api_key`` enables the write
    endpoints (default: ``LSR_API_KEY``; none: the server is read-only and writes answer 403); ``read_api_key``
    (default: ``LSR_READ_API_KEY``) makes searches, documents and stats require it or the write key. Limits:
    ``timeout_s`` per search or document fetch (504; None: none), ``max_body_bytes`` (413), ``max_query_chars``
    (400), ``max_batch_queries`` and ``max_documents`` per request (422); they can be lowered from the defaults,
    not raised. ``refresh_interval_s``: how often searches check for commits made by other processes.
    ``query_runtime``: what runs the models on queries (``auto``, ``torch``, ``onnx``, ``onnx-int8``; default ``auto``).
    ``preload``: copy the forward index (read at random by pruned search) into huge pages (:meth:`lsr.engine.Engine.open`).
    """
    keys = ApiKeys(key_from(api_key, "LSR_API_KEY"), key_from(read_api_key, "LSR_READ_API_KEY"))
    limits = RequestLimits(timeout_s=timeout_s, max_body_bytes=max_body_bytes, max_query_chars=max_query_chars,
                           max_batch_queries=max_batch_queries, max_documents=max_documents)
    state = ServerState(index_dir, keys=keys, limits=limits, max_batch=max_batch, search_threads=search_threads,
                        encode_threads=encode_threads, warmup=warmup, refresh_interval_s=refresh_interval_s,
                        query_runtime=query_runtime, preload=preload)
    if keys.read_only:
        log.warning("lsr server is read-only: no API key configured (start it with --api-key or LSR_API_KEY to "
                    "enable POST/DELETE /documents)")
    else:
        log.info("lsr server accepts writes with its API key%s", "; reads need a key too" if keys.read_key_required
                 else "")
    if load == "now":
        state.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load == "background" and not state.ready and state.error is None:
            state.load_in_background()
        yield
        await state.close()

    app = FastAPI(title="lsr", version=__version__, lifespan=lifespan,
                  description="Learned sparse retrieval with dense and hybrid search. Writes (POST and DELETE "
                              "/documents) need the server's API key, sent as `Authorization: Bearer <key>` or "
                              "`X-API-Key: <key>`; limits are listed at GET /limits.")
    app.state.lsr = state
    app.add_middleware(BodyLimit, limits=limits)
    install_error_handlers(app, state.count_error, router.routes)
    mount_page(app)
    app.include_router(router)
    generate_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = patch_openapi(generate_openapi(), state)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def app_from_env() -> FastAPI:
    """``uvicorn --factory lsr.server.app:app_from_env``: the app of LSR_INDEX, configured by LSR_MAX_BATCH,
    LSR_TIMEOUT, LSR_QUERY_RUNTIME, LSR_API_KEY, LSR_READ_API_KEY and LSR_SERVE_OPTIONS (JSON: :func:`create_app`'s keyword
    arguments; how ``lsr serve --workers N`` configures its worker processes)."""
    options = json.loads(os.environ.get(SERVE_OPTIONS_ENV) or "{}")
    options.setdefault("max_batch", int(os.environ.get("LSR_MAX_BATCH", "32")))
    timeout = os.environ.get("LSR_TIMEOUT")
    if timeout:
        options.setdefault("timeout_s", float(timeout))
    if os.environ.get("LSR_QUERY_RUNTIME"):
        options.setdefault("query_runtime", os.environ["LSR_QUERY_RUNTIME"])
    return create_app(os.environ.get("LSR_INDEX", "lsr_index"), **options)


def serve(index_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, *, workers: int = 1,
          log_level: str = "info", **options: Any) -> None:
    """Run the server with uvicorn (blocking); ``options`` go to :func:`create_app` (batching, threads, keys,
    limits, timeout).

    ``workers`` > 1 runs that many server processes on the one port (uvicorn's workers): each loads the models and
    memory-maps the index, whose pages the processes share through the operating system's page cache. A worker
    checks the commit file on every request (two ``stat`` calls), so a write through one worker is searchable on
    all of them once it returns; writes queue across the workers (see ``ServerState.serialized_writes``).
    """
    import uvicorn

    if workers == 1:
        uvicorn.run(create_app(index_dir, **options), host=host, port=port, log_level=log_level, access_log=False)
        return
    for name, env in (("api_key", "LSR_API_KEY"), ("read_api_key", "LSR_READ_API_KEY")):
        if name in options:  # keys go to the workers through their own variables, not in the options JSON
            os.environ[env] = options.pop(name) or ""
    options.setdefault("refresh_interval_s", 0.0)
    os.environ["LSR_INDEX"] = str(index_dir)
    os.environ[SERVE_OPTIONS_ENV] = json.dumps(options)
    uvicorn.run("lsr.server.app:app_from_env", factory=True, workers=workers, host=host, port=port,
                log_level=log_level, access_log=False)
