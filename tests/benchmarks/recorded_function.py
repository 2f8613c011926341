"""aggregate and alert served as production serves them, their store calls recorded.

Figure 2 (bench_consumers) replays these calls with bare pymongo, so the reference makes
the round trips the served function made: the group commits it formed over HTTP, not the
larger ones three threads form in-process. `GET /recorded` answers the calls so far
(pickled), by the `ce-id` of the delivery whose thread made them; a group commit's calls
go with the delivery that ran the batch. In functions-framework's ASGI mode a delivery's
store calls run on the blocking threads (asgi.blocking): the recording follows it there.
"""

from __future__ import annotations

import importlib.util
import pickle
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from functions_framework import aio
from starlette.requests import Request
from starlette.responses import Response

from iot_telemetry import aggregate as _aggregate_library
from iot_telemetry import asgi
from iot_telemetry.runtime import get_runtime
from tests.benchmarks.store_recording import Op, Recorder, RecordingDatabase

FUNCTIONS_DIR = Path(__file__).resolve().parents[2] / "functions"


def _entry(function: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_served_{function}",
                                                  FUNCTIONS_DIR / f"{function}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, function)


_recorder = Recorder()
_calls: dict[str, list[Op]] = {}
_runtime = get_runtime()
_runtime.store.db = RecordingDatabase(_runtime.store.db, _recorder)  # type: ignore[assignment]


T = TypeVar("T")
_delivery: ContextVar[str] = ContextVar("delivery", default="")


async def _blocking(threads: int, call: Callable[[], T]) -> T:
    """asgi.blocking, recording the store calls `call` makes under its delivery's ce-id."""
    event_id = _delivery.get()

    def recorded() -> T:
        ops = _recorder.begin()
        try:
            return call()
        finally:
            _calls[event_id] = ops
            _recorder.local.ops = None

    return await asgi.blocking(threads, recorded)


# aggregate's and alert's deliveries reach their store calls through this name.
_aggregate_library.blocking = _blocking  # type: ignore[assignment]


async def _recorded(request: Request, handle: Any) -> Response:
    if request.url.path == "/recorded":
        return Response(pickle.dumps(dict(_calls)), media_type="application/octet-stream")
    _delivery.set(request.headers.get("ce-id", ""))
    response: Response = await handle(request)
    return response


_aggregate = _entry("aggregate")
_alert = _entry("alert")


@aio.http
async def aggregate(request: Request) -> Response:
    return await _recorded(request, _aggregate)


@aio.http
async def alert(request: Request) -> Response:
    return await _recorded(request, _alert)
