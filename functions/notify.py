"""The `notify` function (functions-framework target `notify`)."""

import flask

from iot_telemetry import notify as _notify
from iot_telemetry.runtime import get_runtime
from iot_telemetry.service import use_json_errors

# Read settings at start so a bad variable (a bad channel) stops the process with its name.
get_runtime()
use_json_errors()


def notify(request: flask.Request) -> flask.Response:
    return _notify.handle(request)
