"""Who may use the query API: bearer tokens with the `read` or `operate` role, fleet-wide
(QUERY_READ_TOKENS, QUERY_OPERATE_TOKENS) or kept in the store with a scope of devices
(query_tokens.py); and CORS."""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

import flask
import werkzeug

from .devices import bearer
from .errors import Forbidden, Unauthorized
from .query_tokens import OPERATE, READ, Grant, TokenBook
from .settings import Settings

CORS_METHODS: Final = "GET, POST, OPTIONS"
CORS_HEADERS: Final = "Authorization, Content-Type"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _known(token: str, tokens: tuple[str, ...]) -> bool:
    # Compare digests of equal length in constant time; check every token, found or not.
    digest = _digest(token)
    found = False
    for candidate in tokens:
        found |= hmac.compare_digest(digest, _digest(candidate))
    return found


def scope_of(token: str, settings: Settings) -> str | None:
    if _known(token, settings.operate_tokens):
        return OPERATE
    if _known(token, settings.read_tokens):
        return READ
    return None


#: What QUERY_AUTH=open allows any request.
OPEN_ACCESS: Final = Grant(OPERATE)


def authorize(request: werkzeug.Request, settings: Settings, needed: str,
              stored: TokenBook, operation: str = "acknowledge alerts") -> Grant:
    """The request's grant: 401 without a known token, 403 when its role is too small for
    `operation`."""
    if settings.query_auth == "open":
        return OPEN_ACCESS
    token = bearer(request.headers)
    if token is None:
        raise Unauthorized("a bearer token is required: Authorization: Bearer <token>")
    role = scope_of(token, settings)
    grant = Grant(role) if role is not None else stored.verify(token)
    if grant is None:
        raise Unauthorized("unknown token")
    if needed == OPERATE and grant.role != OPERATE:
        raise Forbidden(f"this token may read but not {operation} (needs `operate`)")
    return grant


def allowed_origin(request: flask.Request, settings: Settings) -> str | None:
    origin = request.headers.get("Origin")
    return origin if origin and origin in settings.cors_origins else None


def preflight(request: flask.Request, settings: Settings) -> flask.Response:
    """Answer a CORS preflight: allowed origins only; others get no CORS headers."""
    response = flask.Response(status=204)
    if allowed_origin(request, settings):
        response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
        response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
    return response


def add_cors(request: flask.Request, response: flask.Response, settings: Settings) -> None:
    """CORS headers on any answer, errors included: a browser hides an answer without them."""
    if settings.cors_origins:
        # Added to what the answer already varies on (`/` varies on Accept too), so a cache
        # never serves one origin's answer to another.
        response.vary.add("Origin")
    origin = allowed_origin(request, settings)
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
