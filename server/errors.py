"""Every error answer is JSON ``{"detail": ...}``: bad input (:class:`UserError`), validation, HTTP errors, crashes."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

log = logging.getLogger("lsr.server")


class UserError(Exception):
    """Bad input: answered with ``status`` and a JSON ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def install_error_handlers(app: FastAPI, count_error: Callable[[], None], api_routes: Sequence[BaseRoute]) -> None:
    """JSON bodies for every error; ``count_error`` is called for each request refused as bad input. A 405 lists
    in ``Allow`` the methods of every route of the path, the app's own and ``api_routes`` (an included router's)."""

    @app.exception_handler(UserError)
    async def _user_error(request: Request, err: UserError):
        count_error()
        return JSONResponse({"detail": err.detail}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        count_error()
        return JSONResponse({"detail": jsonable_errors(err.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        headers = dict(err.headers or {})
        if err.status_code == 405:  # Allow: every method of the path, not just the first route's
            routes = [*request.app.router.routes, *api_routes]
            allowed = {m for route in routes if route.matches(request.scope)[0] != Match.NONE
                       for m in (getattr(route, "methods", None) or ())}
            headers["Allow"] = ", ".join(sorted(allowed))
        return JSONResponse({"detail": err.detail}, status_code=err.status_code, headers=headers or None)

    @app.exception_handler(Exception)
    async def _crash(request: Request, err: Exception):  # a bug, never user input: keep the body JSON
        log.exception("internal error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(err).__name__}"}, status_code=500)


def jsonable_errors(errors) -> list[dict]:
    """Pydantic's validation errors as JSON: type, location, message and the (shortened) rejected input."""
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
