"""The `aggregate` function (functions-framework target `aggregate`)."""

import flask

from iot_telemetry import aggregate as _aggregate
from iot_telemetry.runtime import get_runtime
from iot_telemetry.service import use_json_errors

# Read settings at start so a bad variable stops the process with its name.
get_runtime()
use_json_errors()


def aggregate(request: flask.Request) -> flask.Response:
    return _aggregate.handle(request)
