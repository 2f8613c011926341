"""What every function's HTTP app shares: health, readiness, metrics, error responses."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
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


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None,
                  ) -> flask.Response:
    # A newline at the end, as curl users expect: the next prompt starts on its own line.
    return flask.Response(json.dumps(body, default=str) + "\n", status=status,
                          headers=headers or {}, mimetype="application/json")


def error_response(exc: TelemetryError) -> flask.Response:
    headers = {}
    if isinstance(exc, DependencyUnavailable | TooManyRequests):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, MethodNotAllowed) and exc.allowed:
        headers["Allow"] = ", ".join(exc.allowed)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="iot-telemetry"'

    return json_response(exc.payload(), exc.status, headers)


def serve(function: str, request: flask.Request, handle: Handler,
          ready: Callable[[], dict[str, bool]],
          finish: Callable[[flask.Request, flask.Response], None] | None = None,
          ) -> flask.Response:
    """Answer /healthz, /readyz and /metrics; hand everything else to `handle`.

    `finish` sees every answer of `handle`, errors included (CORS headers, say).
    """
    path = request.path.rstrip("/") or "/"
    if path in ("/healthz", "/readyz", "/metrics") and request.method not in ("GET", "HEAD"):
        return error_response(MethodNotAllowed(f"{path} answers GET only", ("GET", "HEAD")))
    if path == "/healthz":
        return json_response({"status": "ok", "function": function})
    if path == "/readyz":
        checks = ready()
        ok = all(checks.values())
        return json_response({"ready": ok, "checks": checks}, 200 if ok else 503)
    if path == "/metrics":
        body, ctype = metrics_body(function)
        return flask.Response(body, mimetype=ctype.split(";")[0], content_type=ctype)
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
    except DependencyUnavailable as exc:
        DEPENDENCY_ERRORS.labels(function).inc()
        log.warning("dependency unavailable: %s", exc, extra={"function": function,
                                                                 "event_id": _event_id(request)})
        return error_response(exc)
    except TelemetryError as exc:
        return error_response(exc)
    except Exception:
        log.exception("unhandled error", extra={"function": function,
                                                "event_id": _event_id(request)})
        return json_response({"error": "internal", "message": "internal error"}, 500)


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


def require(request: flask.Request, path: str, method: str) -> None:
    """Allow one route only: other paths are 404, other methods 405."""
    if (request.path.rstrip("/") or "/") != path:
        raise NotFound(f"no route {request.path}")
    if request.method != method:
        raise MethodNotAllowed(f"{path} answers {method} only", (method,))
