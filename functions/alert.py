"""The `alert` function (functions-framework target `alert`; an `aio` function, which
functions-framework serves in its ASGI mode)."""

from functions_framework import aio
from starlette.requests import Request
from starlette.responses import Response

from iot_telemetry import alert as _alert
from iot_telemetry.asgi import use_json_errors
from iot_telemetry.runtime import get_runtime

# Read settings at start so a bad variable stops the process with its name.
get_runtime()
use_json_errors()


@aio.http
async def alert(request: Request) -> Response:
    return await _alert.handle(request)
