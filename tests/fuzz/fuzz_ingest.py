"""Coverage-guided fuzzing of ingest's HTTP app with atheris.

    python tests/fuzz/fuzz_ingest.py -max_total_time=60 [corpus_dir]

A finding is any response other than 202 or a 4xx with a JSON reason, or an exception.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from functions_framework import create_app

    from iot_telemetry import publisher
    from iot_telemetry.runtime import Runtime, set_runtime
    from iot_telemetry.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CONTENT_TYPES = ["application/json", "application/cloudevents+json",
                 "application/cloudevents-batch+json", "text/plain", ""]
ATTRIBUTES = ["specversion", "type", "source", "id", "subject", "time", "datacontenttype"]


class _Sink:
    def __init__(self) -> None:
        self.records = 0

    def send(self, records: object, timeout: float) -> None:
        self.records += len(records)  # type: ignore[arg-type]

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        return None


set_runtime(Runtime(Settings.from_environ({}, {
    "MONGO_URL": "memory://", "KAFKA_BOOTSTRAP_SERVERS": "memory://", "LOG_LEVEL": "ERROR"})))
publisher.set_memory_sink(_Sink())
CLIENT = create_app("ingest", str(REPO / "functions" / "ingest.py"), "http").test_client()


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    ctype = CONTENT_TYPES[fdp.ConsumeIntInRange(0, len(CONTENT_TYPES) - 1)]
    headers = {"Content-Type": ctype}
    if fdp.ConsumeBool():
        for name in ATTRIBUTES:
            if fdp.ConsumeBool():
                # HTTP cannot carry CR/LF in a header value, so neither does the fuzzer.
                value = fdp.ConsumeUnicodeNoSurrogates(40).replace("\r", "").replace("\n", "")
                headers[f"ce-{name}"] = value.encode("utf-8", "replace").decode("latin-1")
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    response = CLIENT.post("/", data=body, headers=headers)
    if response.status_code != 202:
        payload = response.get_json(silent=True)
        if not (400 <= response.status_code < 500 and payload and payload.get("message")):
            raise AssertionError(f"{response.status_code}: {response.data[:200]!r}")


def main() -> None:
    os.environ.setdefault("PYTHONHASHSEED", "0")
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
