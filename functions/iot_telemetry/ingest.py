"""ingest: device CloudEvents in, validated, written to Kafka with acks=all."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime, timedelta

import flask

from .clients import client_address
from .devices import bearer
from .errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    TelemetryError,
    TooManyRequests,
    Unauthorized,
)
from .events import BATCH, STRUCTURED, media_type, read_http, to_kafka
from .observability import EVENTS_ACCEPTED, EVENTS_REJECTED, POINTS_ACCEPTED
from .publisher import record_size
from .runtime import Runtime, get_runtime
from .service import json_response, require, serve
from .telemetry import Limits, format_time, validate_all

log = logging.getLogger(__name__)
FUNCTION = "ingest"


def handle(request: flask.Request, runtime: Runtime | None = None) -> flask.Response:
    rt = runtime or get_runtime()
    return serve(FUNCTION, request, lambda r: _ingest(r, rt), lambda: _ready(rt))


def _ready(rt: Runtime) -> dict[str, bool]:
    checks = {"kafka": rt.sink.ready()}
    if rt.settings.ingest_auth == "registered":
        checks["store"] = rt.store.ping()
    return checks


def _mode(request: flask.Request) -> str:
    ctype = media_type(request.headers.get("Content-Type"))
    return {BATCH: "batch", STRUCTURED: "structured"}.get(ctype, "binary")


def _ingest(request: flask.Request, rt: Runtime) -> flask.Response:
    try:
        return _accept(request, rt)
    except TelemetryError as exc:
        if exc.status < 500:
            EVENTS_REJECTED.labels(exc.reason).inc()
            log.info("rejected: %s", exc, extra={"status": exc.status,
                                                 "event_id": request.headers.get("ce-id")})
        raise


def _authenticate(request: flask.Request, rt: Runtime) -> str:
    """The device writing; a client that failed too often is refused before any token work."""
    client = client_address(request.remote_addr, request.headers, rt.trusted_proxies)
    wait = rt.auth_failures.wait(client)
    if wait:
        raise TooManyRequests(f"too many failed authentications from {client}", wait)
    try:
        return rt.registry.authenticate(bearer(request.headers))
    except Unauthorized:
        rt.auth_failures.take(client, 1)
        raise


def _accept(request: flask.Request, rt: Runtime) -> flask.Response:
    s = rt.settings
    # 1. Route and size: nothing past the limit is read.
    require(request, "/", "POST")
    if (request.content_length or 0) > s.ingest_max_body_bytes:
        raise PayloadTooLarge(f"body exceeds {s.ingest_max_body_bytes} bytes")
    body = request.stream.read(s.ingest_max_body_bytes + 1)
    if len(body) > s.ingest_max_body_bytes:
        raise PayloadTooLarge(f"body exceeds {s.ingest_max_body_bytes} bytes")
    # Once per request, not per event: who is writing (registered mode only).
    writer = _authenticate(request, rt) if s.ingest_auth == "registered" else None
    # 2. Decode and validate every event; any problem rejects the whole request.
    raws = read_http(request.headers, body)
    if len(raws) > s.ingest_max_batch_events:
        raise BadRequest(f"batch of {len(raws)} events, at most {s.ingest_max_batch_events}")
    now = datetime.now(UTC)
    limits = Limits(timedelta(seconds=s.ingest_max_age_seconds),
                    timedelta(seconds=s.ingest_max_future_seconds), s.ingest_max_samples)
    events = validate_all(raws, now, limits)
    if writer is not None:
        others = [f"event[{i}]: device {writer!r} cannot write for {e.device_id!r}"
                  for i, e in enumerate(events) if e.device_id != writer]
        if others:
            raise Forbidden("; ".join(others))
    # 3. Encode, keyed by device: a record Kafka would refuse is a 413, not a 503 forever.
    received = format_time(now)
    records = [to_kafka(s.kafka_topic, {**e.attributes, "partitionkey": e.device_id,
                                        "ingesttime": received}, e.data) for e in events]
    oversize = [(i, size) for i, r in enumerate(records)
                if (size := record_size(r, s.kafka_max_record_bytes)) > s.kafka_max_record_bytes]
    if oversize:
        raise PayloadTooLarge("; ".join(
            f"{f'event[{i}]: ' if len(records) > 1 else ''}{size} bytes as a Kafka record, "
            f"more than KAFKA_MAX_RECORD_BYTES ({s.kafka_max_record_bytes})"
            for i, size in oversize))
    # 4. Spend rate-limit tokens for every device or none; give them back if not written.
    counts = Counter(e.device_id for e in events)
    device_id, wait = rt.rate_limiter.take_all(counts)
    if wait:
        raise TooManyRequests(f"device {device_id!r} exceeds {s.ingest_rate_limit:g} "
                              "events/s", wait)
    # 5. Write all of them and wait for the broker's acknowledgement.
    try:
        rt.sink.send(records, s.kafka_send_timeout_seconds)
    except Exception:
        rt.rate_limiter.refund(counts)
        raise
    points = sum(len(e.points) for e in events)
    EVENTS_ACCEPTED.labels(_mode(request)).inc(len(events))
    POINTS_ACCEPTED.inc(points)
    for e in events:
        log.debug("accepted", extra={"event_id": e.id, "source": e.source,
                                     "device_id": e.device_id, "points": len(e.points)})
    return json_response({"accepted": len(events), "points": points}, 202)
