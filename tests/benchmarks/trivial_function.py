"""The reference of figure 1: a functions-framework HTTP function that does nothing useful.

It reads the body and answers 202 with a small JSON body, as ingest does, so the two differ
only by what ingest does in between (decode, validate, encode, write to Kafka).
"""

import flask
from functions_framework import aio
from starlette.requests import Request
from starlette.responses import Response


def trivial(request: flask.Request) -> flask.Response:
    body = request.get_data()
    return flask.Response(b'{"accepted": 1, "bytes": %d}' % len(body), status=202,
                          mimetype="application/json")


@aio.http
async def trivial_async(request: Request) -> Response:
    """The same in functions-framework's ASGI mode (an `aio` function), the mode ingest,
    aggregate and alert are served in."""
    body = await request.body()
    return Response(b'{"accepted": 1, "bytes": %d}' % len(body), status_code=202,
                    media_type="application/json")
