"""The event-path functions (ingest, aggregate, alert) as functions-framework serves them in
its ASGI mode: their entry modules are `functions_framework.aio` functions, which its one
command serves with gunicorn and one uvicorn worker (httptools and uvloop).

A request is read and answered on the event loop; the library's blocking calls (pymongo,
a store lookup to authenticate) run on a pool of THREADS threads of the process, so as many
requests as the Knative Service's containerConcurrency can wait on the store at once and
share its group commits. An `async def` function costs 217-223 us of CPU per request on
this mode against 570-677 us on the default gunicorn gthread mode (BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from .errors import NotFound, PayloadTooLarge
from .observability import PROCESSING_SECONDS, Timer
from .service import Answer, Incoming, error_answer, probe_answer, unexpected_answer

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def blocking_pool(threads: int) -> ThreadPoolExecutor:
    """The process's threads for blocking library calls (created once, THREADS of them)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="blocking")
        return _pool


async def blocking(threads: int, call: Callable[[], T]) -> T:
    """Run `call` on the blocking pool, with the caller's context (log fields)."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    return await loop.run_in_executor(blocking_pool(threads), context.run, call)


def head(request: Request) -> Incoming:
    """The request without its body (enough to route it)."""
    return Incoming(request.method, request.scope["path"], request.headers, b"")


async def read(request: Request, limit: int | None = None) -> Incoming:
    """The request with its body; past `limit` bytes, 413 without reading the rest."""
    if limit is None:
        body = await request.body()
    else:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body exceeds {limit} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
    client = request.scope.get("client")
    return Incoming(request.method, request.scope["path"], request.headers, body,
                    client[0] if client else None)


def response(answer: Answer) -> Response:
    return Response(answer.body, answer.status, dict(answer.headers), answer.media_type)


async def serve(function: str, request: Request,
                handle: Callable[[Request], Awaitable[Answer]],
                ready: Callable[[], dict[str, bool]], threads: int) -> Response:
    """Answer /healthz, /readyz and /metrics; hand everything else to `handle`.

    An error `handle` raises becomes its JSON answer (TelemetryError) or a JSON 500.
    """
    path = request.scope["path"]
    if path.startswith(("/healthz", "/readyz", "/metrics")):
        if path.rstrip("/") == "/healthz":  # no dependency: answered on the loop
            probe = probe_answer(function, request.method, path, ready)
        else:  # /readyz pings the store, /metrics renders every family: off the loop
            probe = await blocking(threads, functools.partial(
                probe_answer, function, request.method, path, ready))
        if probe is not None:
            return response(probe)
    timer = Timer()
    try:
        answer = await handle(request)
    except Exception as exc:
        answer = unexpected_answer(function, exc, request.headers.get("ce-id"))
    finally:
        PROCESSING_SECONDS.labels(function).observe(timer.elapsed())
    return response(answer)


def use_json_errors() -> None:
    """Make the framework's own errors (GET /robots.txt, /favicon.ico) JSON like ours.

    functions-framework's ASGI app answers those two paths with a 404 handler of its own,
    looked up when the app is built, after the function's module is imported: replacing it
    from the entry module makes them JSON (tests/unit/test_asgi.py checks they are).
    """
    from functions_framework import aio

    if hasattr(aio, "_handle_not_found"):
        aio._handle_not_found = _not_found


async def _not_found(request: Request) -> Response:
    return response(error_answer(NotFound(f"no route {request.scope['path']}")))
