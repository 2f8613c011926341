"""Writes the seed corpus of fuzz_ingest.py: one readable request per file.

    python tests/fuzz/corpus_seeds.py tests/fuzz/corpus
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STRUCTURED, BATCH, JSON, QUERY = 1, 2, 0, 5
HEADERS = (b"specversion: 1.0\ntype: iot.telemetry.v1\nsource: /d\nid: 1\nsubject: d\n"
           b"time: 2026-11-26T10:00:00Z\n")
DATA = {"metrics": {"temperature": 21.5}}
EVENT = {"specversion": "1.0", "type": "iot.telemetry.v1", "source": "/d", "id": "1",
         "subject": "d", "time": "2026-11-26T10:00:00Z", "data": DATA}


def ingest(ctype: int, body: object, headers: bytes | None = None) -> bytes:
    text = body if isinstance(body, bytes) else json.dumps(body).encode()
    return bytes([ctype]) + (headers + b"\n" if headers is not None else b"") + text


def query(url: str) -> bytes:
    return bytes([QUERY]) + url.encode()


SEEDS = {
    "binary": ingest(JSON, DATA, HEADERS),
    "structured": ingest(STRUCTURED, EVENT),
    "batch": ingest(BATCH, [EVENT, {**EVENT, "id": "2", "data": {"samples": [
        {"time": "2026-11-26T10:00:01.5+01:00", "metrics": {"humidity": 40}}]}}]),
    "heartbeat": ingest(STRUCTURED, {**EVENT, "data": {"samples": []}}),
    # Times whose conversion to UTC overflows, in every place a time goes.
    "time-year-1": ingest(STRUCTURED, {**EVENT, "time": "0001-01-01T00:30:00+01:00"}),
    "time-year-9999": ingest(BATCH, [{**EVENT, "time": "9999-12-31T23:30:00-01:00"}]),
    "ce-time-year-1": ingest(JSON, DATA, HEADERS.replace(b"2026-11-26T10:00:00Z",
                                                         b"0001-01-01T00:00:00+00:01")),
    "sample-time": ingest(STRUCTURED, {**EVENT, "data": {"samples": [
        {"time": "0001-01-01T00:00:00+00:01", "metrics": {"t": 1}}]}}),
    "leap-second": ingest(STRUCTURED, {**EVENT, "time": "2016-12-31T23:59:60z"}),
    "not-rfc3339": ingest(STRUCTURED, {**EVENT, "time": "20261126T100000+01"}),
    # Extension values of every JSON type, and names CloudEvents does not allow.
    "extensions": ingest(STRUCTURED, {**EVENT, "seq": 42, "ok": True, "obj": {"a": 1},
                                      "list": [1], "frac": 1.5, "null": None}),
    "extension-names": ingest(JSON, DATA, HEADERS + b"site-id: x\nSite: y\n"),
    "duplicate-keys": ingest(STRUCTURED, b'{"id": "1", "id": "2", "data": {"metrics": '
                                         b'{"t": 1, "t": 2}}}'),
    "trailing-newline": ingest(JSON, {"metrics": {"temperature\n": 1}},
                               HEADERS.replace(b"subject: d", b"subject: dev-2%0A")),
    "series-year-1": query("devices/d/series?metric=temperature&to=0001-01-01T00:30:00Z"),
    "cursor-year-1": query("alerts?cursor=WyIwMDAxLTAxLTAxVDAwOjMwOjAwKzAxOjAwIiwgIngiXQ"),
    "limit-superscript": query("devices?limit=%C2%B2"),
    "device-newline": query("alerts?device_id=dev-1%0A&limit=3"),
}


def main(directory: str) -> None:
    target = Path(directory)
    for old in target.glob("*.bin"):
        old.unlink()
    for name, data in SEEDS.items():
        (target / f"{name}.bin").write_bytes(data)


if __name__ == "__main__":
    main(sys.argv[1])
