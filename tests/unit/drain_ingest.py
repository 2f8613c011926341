"""ingest as functions-framework serves it (an `aio` function in its ASGI mode), with a
broker that takes DRAIN_SECONDS to acknowledge each write and notes what it took in
DRAIN_RECORDS: what test_asgi's shutdown test sends SIGTERM into the middle of."""

import os
import time
from collections.abc import Sequence

from functions_framework import aio
from starlette.requests import Request
from starlette.responses import Response

from iot_telemetry import ingest as _ingest
from iot_telemetry import publisher
from iot_telemetry.events import KafkaRecord
from iot_telemetry.runtime import get_runtime


class SlowSink:
    def send(self, records: Sequence[KafkaRecord], timeout: float) -> None:
        time.sleep(float(os.environ["DRAIN_SECONDS"]))
        with open(os.environ["DRAIN_RECORDS"], "a") as out:
            out.writelines(f"{dict(r.headers)['ce_id'].decode()}\n" for r in records)

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        return None


get_runtime()
publisher.set_memory_sink(SlowSink())


@aio.http
async def ingest(request: Request) -> Response:
    return await _ingest.handle(request)
