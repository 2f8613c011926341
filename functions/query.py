"""The `query` function (functions-framework target `query`)."""

import flask

from iot_telemetry import query as _query
from iot_telemetry.runtime import get_runtime
from iot_telemetry.service import use_json_errors

# Read settings at start so a bad variable stops the process with its name.
get_runtime()
use_json_errors()


def query(request: flask.Request) -> flask.Response:
    return _query.handle(request)
