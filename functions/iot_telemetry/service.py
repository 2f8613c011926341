"""What every function's HTTP app shares: health, readiness, metrics, error responses."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import flask

from .errors import (
    DependencyUnavailable,
    MethodNotAllowed,
    NotFound,
    TelemetryError,
    TooManyRequests,
    Unauthorized,
)
from .observability import DEPENDENCY_ERRORS, PROCESSING_SECONDS, Timer, metrics_body

log = logging.getLogger(__name__)

Handler = Callable[[flask.Request], flask.Response]
JSON_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class Incoming:
    """What an event-path function reads of a request, whichever server received it."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    remote_addr: str | None = None

    @property
    def mimetype(self) -> str:
        return (self.headers.get("content-type") or "").split(";", 1)[0].strip().lower()


@dataclass(frozen=True, slots=True)
class Answer:
    """A response as the library builds it; the serving mode turns it into its own."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    media_type: str | None = None


def json_answer(body: Any, status: int = 200, headers: Mapping[str, str] | None = None,
                ) -> Answer:
    # A newline at the end, as curl users expect: the next prompt starts on its own line.
    return Answer(status, (json.dumps(body, default=str) + "\n").encode(), headers or {},
                  JSON_TYPE)


def error_answer(exc: TelemetryError) -> Answer:
    headers = {}
    if isinstance(exc, DependencyUnavailable | TooManyRequests):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, MethodNotAllowed) and exc.allowed:
        headers["Allow"] = ", ".join(exc.allowed)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="iot-telemetry"'
    return json_answer(exc.payload(), exc.status, headers)


def unexpected_answer(function: str, exc: Exception, event_id: str | None) -> Answer:
    """The answer to an exception a handler raised: its error, or 500 for a bug."""
    if isinstance(exc, DependencyUnavailable):
        DEPENDENCY_ERRORS.labels(function).inc()
        log.warning("dependency unavailable: %s", exc, extra={"function": function,
                                                                 "event_id": event_id})
    if isinstance(exc, TelemetryError):
        return error_answer(exc)
    log.error("unhandled error", exc_info=exc, extra={"function": function,
                                                      "event_id": event_id})
    return json_answer({"error": "internal", "message": "internal error"}, 500)


def probe_answer(function: str, method: str, path: str,
                 ready: Callable[[], dict[str, bool]]) -> Answer | None:
    """The answer of /healthz, /readyz and /metrics; None for any other path."""
    path = path.rstrip("/") or "/"
    if path not in ("/healthz", "/readyz", "/metrics"):
        return None
    if method not in ("GET", "HEAD"):
        return error_answer(MethodNotAllowed(f"{path} answers GET only", ("GET", "HEAD")))
    if path == "/healthz":
        return json_answer({"status": "ok", "function": function})
    if path == "/readyz":
        checks = ready()
        ok = all(checks.values())
        return json_answer({"ready": ok, "checks": checks}, 200 if ok else 503)
    body, ctype = metrics_body(function)
    return Answer(200, body, {"Content-Type": ctype}, None)


def to_flask(answer: Answer) -> flask.Response:
    response = flask.Response(answer.body, status=answer.status, headers=dict(answer.headers))
    if answer.media_type is not None:
        response.mimetype = answer.media_type
    return response


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None,
                  ) -> flask.Response:
    return to_flask(json_answer(body, status, headers))


def error_response(exc: TelemetryError) -> flask.Response:
    return to_flask(error_answer(exc))


def serve(function: str, request: flask.Request, handle: Handler,
          ready: Callable[[], dict[str, bool]],
          finish: Callable[[flask.Request, flask.Response], None] | None = None,
          ) -> flask.Response:
    """Answer /healthz, /readyz and /metrics; hand everything else to `handle`.

    `finish` sees every answer of `handle`, errors included (CORS headers, say).
    """
    probe = probe_answer(function, request.method, request.path, ready)
    if probe is not None:
        return to_flask(probe)
    timer = Timer()
    try:
        response = _answer(function, request, handle)
        if finish is not None:
            finish(request, response)
        return response
    finally:
        PROCESSING_SECONDS.labels(function).observe(timer.elapsed())


def _answer(function: str, request: flask.Request, handle: Handler) -> flask.Response:
    try:
        return handle(request)
    except Exception as exc:
        return to_flask(unexpected_answer(function, exc, _event_id(request)))


def use_json_errors() -> None:
    """Make the framework's own errors (a path no route takes, say) JSON like ours.

    Call from a function's entry module: functions-framework exposes its app's
    `errorhandler` while it imports that module.
    """
    import functions_framework
    from werkzeug.exceptions import HTTPException

    register = getattr(functions_framework, "errorhandler", None)
    if register is None:  # imported outside functions-framework (tests of the library)
        return

    def as_json(exc: HTTPException) -> flask.Response:
        code = exc.code or 500
        return json_response({"error": (exc.name or "error").lower().replace(" ", "_"),
                              "message": exc.description or exc.name}, code)

    register(HTTPException)(as_json)


def _event_id(request: flask.Request) -> str | None:
    return request.headers.get("ce-id")


def require(request: flask.Request | Incoming, path: str, method: str) -> None:
    """Allow one route only: other paths are 404, other methods 405."""
    if (request.path.rstrip("/") or "/") != path:
        raise NotFound(f"no route {request.path}")
    if request.method != method:
        raise MethodNotAllowed(f"{path} answers {method} only", (method,))
