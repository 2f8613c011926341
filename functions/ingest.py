"""The `ingest` function (functions-framework target `ingest`; an `aio` function, which
functions-framework serves in its ASGI mode)."""

from functions_framework import aio
from starlette.requests import Request
from starlette.responses import Response

from iot_telemetry import ingest as _ingest
from iot_telemetry.asgi import use_json_errors
from iot_telemetry.runtime import get_runtime

# Read settings at start so a bad variable stops the process with its name.
get_runtime()
use_json_errors()


@aio.http
async def ingest(request: Request) -> Response:
    return await _ingest.handle(request)
