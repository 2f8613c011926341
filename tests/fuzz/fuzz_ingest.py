"""Coverage-guided fuzzing of ingest's and query's HTTP apps with atheris.

    python tests/fuzz/fuzz_ingest.py -max_total_time=60 -dict=tests/fuzz/ingest.dict [corpus]

An input is one request (see `request`), so seeds are readable: `corpus_seeds.py` writes
them. A finding is any response other than a 2xx or a 4xx with a JSON reason, or an
exception.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import quote

import atheris

with atheris.instrument_imports():
    from functions_framework import create_app

    from iot_telemetry import publisher
    from iot_telemetry.runtime import Runtime, set_runtime
    from iot_telemetry.settings import Settings

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script: the test client lives in tests/
from tests.asgi_client import AsgiClient  # noqa: E402

CONTENT_TYPES = ["application/json", "application/cloudevents+json",
                 "application/cloudevents-batch+json", "text/plain", ""]
QUERY = len(CONTENT_TYPES)  # the first byte's value that means a query GET
_HEADER_NAME = bytes(range(256)).translate(None, b"abcdefghijklmnopqrstuvwxyz"
                                           b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


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
    "MONGO_URL": "memory://", "KAFKA_BOOTSTRAP_SERVERS": "memory://", "LOG_LEVEL": "ERROR",
    # Readings of any year since 1709 get as far as the Kafka record, where encoding bugs hide.
    "INGEST_MAX_AGE_SECONDS": str(10**10), "INGEST_MAX_FUTURE_SECONDS": str(10**10),
    # ... which the rollups' minute retention must outlast (settings refuse it otherwise).
    "ROLLUP_MINUTE_RETENTION_DAYS": "200000", "ROLLUP_HOUR_RETENTION_DAYS": "200000"})))
publisher.set_memory_sink(_Sink())
# ingest is served as an ASGI app (functions_framework.aio), query as a Flask app.
INGEST = AsgiClient(create_app("ingest", str(REPO / "functions" / "ingest.py"), "http"))
QUERY_APP = create_app("query", str(REPO / "functions" / "query.py"), "http").test_client()


def request(data: bytes) -> tuple[str, str, dict[str, str], bytes]:
    """(method, url, headers, body) of an input.

    Byte 0 picks a content type of an ingest POST, or QUERY for a query GET whose URL is
    the rest. For ingest, lines `name: value` up to a blank line become `ce-name` headers
    (none without a blank line) and the rest is the body.
    """
    if not data:
        return "POST", "/", {}, b""
    choice, rest = data[0] % (QUERY + 1), data[1:]
    if choice == QUERY:
        url = rest.decode("latin-1").replace("\r", "").replace("\n", "")
        return "GET", "/" + quote(url.lstrip("/"), safe="/?&=%:+,;@$!*'()~"), {}, b""
    headers = {"Content-Type": CONTENT_TYPES[choice]}
    head, blank, body = rest.partition(b"\n\n")
    if not blank:
        return "POST", "/", headers, rest
    for line in head.split(b"\n"):
        name, _, value = line.partition(b":")
        name = name.translate(None, _HEADER_NAME)
        if name:
            # HTTP cannot carry CR/LF in a header value, so neither does the fuzzer.
            headers[f"ce-{name.decode()}"] = value.strip().replace(b"\r", b"").decode("latin-1")
    return "POST", "/", headers, body


def one_input(data: bytes) -> None:
    method, url, headers, body = request(data)
    client = QUERY_APP if method == "GET" else INGEST
    response = client.open(url, method=method, headers=headers, data=body)
    if response.status_code >= 300:
        payload = response.get_json(silent=True)
        if not (400 <= response.status_code < 500 and payload and payload.get("message")):
            raise AssertionError(f"{method} {url[:200]}: {response.status_code}: "
                                 f"{response.data[:200]!r}")


def main() -> None:
    os.environ.setdefault("PYTHONHASHSEED", "0")
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
