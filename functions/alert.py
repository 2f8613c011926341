"""The `alert` function (functions-framework target `alert`)."""

import flask

from iot_telemetry import alert as _alert
from iot_telemetry.runtime import get_runtime
from iot_telemetry.service import use_json_errors

# Read settings at start so a bad variable stops the process with its name.
get_runtime()
use_json_errors()


def alert(request: flask.Request) -> flask.Response:
    return _alert.handle(request)
