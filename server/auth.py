"""API keys: the write key enables POST/DELETE /documents; an optional read key guards searches, documents and
stats. Keys are sent as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` and compared in constant time."""

from __future__ import annotations

import hmac
import os
from typing import Annotated, Any, Optional

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

READ_ONLY_DETAIL = "server is read-only: start it with --api-key or LSR_API_KEY to enable writes"
FROM_ENV: Any = object()  # create_app's default for the keys: read them from the environment
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="lsr"'}


def key_from(value: Any, env: str) -> Optional[str]:
    """A configured key (:data:`FROM_ENV`: the variable ``env``); empty means none."""
    if value is FROM_ENV:
        value = os.environ.get(env)
    return value or None


class ApiKeys:
    """The server's write key (None: read-only) and read key (None: reads are open)."""

    def __init__(self, write_key: Optional[str], read_key: Optional[str]) -> None:
        # As bytes: hmac.compare_digest on str accepts ASCII only, and a client may send any header bytes.
        self._write = write_key.encode("utf-8") if write_key else None
        self._read = read_key.encode("utf-8") if read_key else None

    @property
    def read_only(self) -> bool:
        return self._write is None

    @property
    def read_key_required(self) -> bool:
        return self._read is not None

    def allows(self, presented: Optional[str], *, write: bool) -> bool:
        """Whether ``presented`` is the write key (or, for reads, the read key); constant-time comparisons."""
        if presented is None:
            return False
        raw = presented.encode("latin-1", "replace")  # the header's bytes (Starlette decodes them as latin-1)
        ok = self._write is not None and hmac.compare_digest(raw, self._write)
        if not write and self._read is not None:
            ok = hmac.compare_digest(raw, self._read) or ok
        return ok

    def authorize_read(self, request: Request) -> None:
        """Reads are open unless there is a read key; then the read key or the write key (401 otherwise)."""
        if self.read_key_required:
            self._check(request, write=False)

    def authorize_write(self, request: Request) -> None:
        """403 on a read-only server, 401 for a missing or wrong key."""
        if self.read_only:
            raise HTTPException(403, READ_ONLY_DETAIL)
        self._check(request, write=True)

    def _check(self, request: Request, *, write: bool) -> None:
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
        if not all([self.allows(key, write=write) for key in presented]):  # a list: compare every one
            raise HTTPException(401, "invalid API key", headers=_CHALLENGE)


# The two schemes are declared (OpenAPI, /docs "Authorize"); the headers themselves are read by ApiKeys._check.
_bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                     description="The API key as a bearer token: `Authorization: Bearer <key>`.")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey",
                               description="The API key in a header: `X-API-Key: <key>`.")
BearerScheme = Annotated[Optional[HTTPAuthorizationCredentials], Security(_bearer)]
ApiKeyScheme = Annotated[Optional[str], Security(_api_key_header)]
