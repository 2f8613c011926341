"""The `ingest` function (functions-framework target `ingest`)."""

import flask

from iot_telemetry import ingest as _ingest
from iot_telemetry.runtime import get_runtime
from iot_telemetry.service import use_json_errors

# Read settings at start so a bad variable stops the process with its name.
get_runtime()
use_json_errors()


def ingest(request: flask.Request) -> flask.Response:
    return _ingest.handle(request)
