"""What the server accepts: request body size (an ASGI middleware), query length, queries and documents per
request, and the per-request timeout."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Optional, TypeVar

from fastapi.responses import JSONResponse

from lsr.server.errors import UserError
from lsr.server.schemas import (DEFAULT_TIMEOUT_S, MAX_BATCH_QUERIES, MAX_BODY_BYTES, MAX_DOCUMENTS_PER_REQUEST,
                                MAX_QUERY_CHARS, Limits)

T = TypeVar("T")


@dataclass(frozen=True)
class RequestLimits:
    """The configured limits; they can be lowered from the defaults, not raised."""

    timeout_s: Optional[float] = DEFAULT_TIMEOUT_S
    max_body_bytes: int = MAX_BODY_BYTES
    max_query_chars: int = MAX_QUERY_CHARS
    max_batch_queries: int = MAX_BATCH_QUERIES
    max_documents: int = MAX_DOCUMENTS_PER_REQUEST

    def __post_init__(self) -> None:
        for name, value, ceiling in (("max_query_chars", self.max_query_chars, MAX_QUERY_CHARS),
                                     ("max_batch_queries", self.max_batch_queries, MAX_BATCH_QUERIES),
                                     ("max_documents", self.max_documents, MAX_DOCUMENTS_PER_REQUEST),
                                     ("max_body_bytes", self.max_body_bytes, None)):
            if value < 1 or (ceiling is not None and value > ceiling):
                raise ValueError(f"{name} must be in 1..{ceiling or 'any'}, got {value}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 (or None for no timeout), got {self.timeout_s}")

    def describe(self, *, read_only: bool, read_key_required: bool) -> Limits:
        """GET /limits."""
        return Limits(read_only=read_only, read_key_required=read_key_required, max_body_bytes=self.max_body_bytes,
                      max_query_chars=self.max_query_chars, max_batch_queries=self.max_batch_queries,
                      max_documents_per_request=self.max_documents, timeout_s=self.timeout_s)

    def check_query(self, q: Optional[str]) -> str:
        """The stripped query; 400 for an empty or over-long one."""
        if q is None or not q.strip():
            raise UserError(400, "empty query: give some text in q")
        if len(q) > self.max_query_chars:
            raise UserError(400, f"query too long: {len(q)} characters, at most {self.max_query_chars}")
        return q.strip()

    def check_batch(self, count: int) -> None:
        if count > self.max_batch_queries:
            raise UserError(422, f"too many queries: {count}, at most {self.max_batch_queries} per batch (server "
                                 "limit --max-batch-queries)")

    def check_documents(self, count: int) -> None:
        if count > self.max_documents:
            raise UserError(422, f"too many documents: {count}, at most {self.max_documents} per request (server "
                                 "limit --max-documents)")

    async def bounded(self, work: Awaitable[T], what: str = "search") -> T:
        """Await ``work`` under the per-request timeout: 504 when it runs out."""
        if self.timeout_s is None:
            return await work
        try:
            return await asyncio.wait_for(work, self.timeout_s)
        except asyncio.TimeoutError:
            raise UserError(504, f"{what} timed out after {self.timeout_s:g} s") from None


class BodyLimit:
    """ASGI middleware: 413 (JSON) for a request body over the limit, by Content-Length or by the bytes streamed.

    The body is read here (it is read whole by the JSON endpoints anyway) and handed on to the app.
    """

    def __init__(self, app, limits: RequestLimits) -> None:
        self.app = app
        self.limit = limits.max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = JSONResponse({"detail": f"request body too large: at most {self.limit} bytes"}, status_code=413,
                                 headers={"Connection": "close"})
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    bad = JSONResponse({"detail": "invalid Content-Length header"}, status_code=400)
                    await bad(scope, receive, send)
                    return
                if length > self.limit:
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
            if size > self.limit:
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
