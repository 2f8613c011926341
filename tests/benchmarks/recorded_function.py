"""aggregate and alert served as production serves them, their store calls recorded.

Figure 2 (bench_consumers) replays these calls with bare pymongo, so the reference makes
the round trips the served function made: the group commits it formed over HTTP, not the
larger ones three threads form in-process. `GET /recorded` answers the calls so far
(pickled), by the `ce-id` of the delivery whose thread made them; a group commit's calls
go with the delivery that ran the batch.
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path
from typing import Any

import flask

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


def _recorded(request: flask.Request, handle: Any) -> flask.Response:
    if request.path == "/recorded":
        return flask.Response(pickle.dumps(dict(_calls)), mimetype="application/octet-stream")
    ops = _recorder.begin()
    try:
        response: flask.Response = handle(request)
        return response
    finally:
        _calls[request.headers.get("ce-id", "")] = ops
        _recorder.local.ops = None


_aggregate = _entry("aggregate")
_alert = _entry("alert")


def aggregate(request: flask.Request) -> flask.Response:
    return _recorded(request, _aggregate)


def alert(request: flask.Request) -> flask.Response:
    return _recorded(request, _alert)
