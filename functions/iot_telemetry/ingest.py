"""ingest: device CloudEvents in, validated, written to Kafka with acks=all."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response

from .asgi import blocking, head, read, serve
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
from .events import BATCH, STRUCTURED, KafkaRecord, media_type, read_http, to_kafka
from .observability import EVENTS_ACCEPTED, EVENTS_REJECTED, POINTS_ACCEPTED
from .publisher import record_size
from .runtime import Runtime, get_runtime
from .service import Answer, Incoming, json_answer, require
from .telemetry import Limits, TelemetryEvent, format_time, validate_all

log = logging.getLogger(__name__)
FUNCTION = "ingest"


async def handle(request: Request, runtime: Runtime | None = None) -> Response:
    rt = runtime or get_runtime()
    return await serve(FUNCTION, request, lambda r: _ingest(r, rt), lambda: _ready(rt),
                       rt.settings.threads)


def _ready(rt: Runtime) -> dict[str, bool]:
    checks = {"kafka": rt.sink.ready()}
    if rt.settings.ingest_auth == "registered":
        checks["store"] = rt.store.ping()
    return checks


def _mode(request: Incoming) -> str:
    ctype = media_type(request.headers.get("Content-Type"))
    return {BATCH: "batch", STRUCTURED: "structured"}.get(ctype, "binary")


async def _ingest(request: Request, rt: Runtime) -> Answer:
    try:
        return await _accept(request, rt)
    except TelemetryError as exc:
        if exc.status < 500:
            EVENTS_REJECTED.labels(exc.reason).inc()
            log.info("rejected: %s", exc, extra={"status": exc.status,
                                                 "event_id": request.headers.get("ce-id")})
        raise


async def _authenticate(request: Incoming, rt: Runtime) -> str:
    """The device writing; a client that failed too often is refused before any token work.

    A token this process verified lately is answered from memory; otherwise the store is
    asked, on the blocking threads.
    """
    client = client_address(request.remote_addr, request.headers, rt.trusted_proxies)
    wait = rt.auth_failures.wait(client)
    if wait:
        raise TooManyRequests(f"too many failed authentications from {client}", wait)
    try:
        token = bearer(request.headers)
        device_id = rt.registry.cached(token)
        if device_id is None:
            device_id = await blocking(rt.settings.threads,
                                       functools.partial(rt.registry.authenticate, token))
        return device_id
    except Unauthorized:
        rt.auth_failures.take(client, 1)
        raise


async def _accept(request: Request, rt: Runtime) -> Answer:
    s = rt.settings
    # 1. Route and size: nothing past the limit is read.
    require(head(request), "/", "POST")
    incoming = await read(request, s.ingest_max_body_bytes)
    # Once per request, not per event: who is writing (registered mode only).
    writer = await _authenticate(incoming, rt) if s.ingest_auth == "registered" else None
    # 2.-3. Decode, validate and encode on the event loop: CPU only, no I/O.
    events, records = _records(incoming, rt, writer)
    # 4. Spend rate-limit tokens for every device or none; give them back if not written.
    counts = Counter(e.device_id for e in events)
    device_id, wait = rt.rate_limiter.take_all(counts)
    if wait:
        raise TooManyRequests(f"device {device_id!r} exceeds {s.ingest_rate_limit:g} "
                              "events/s", wait)
    # 5. Write all of them and wait for the broker's acknowledgement (acks=all).
    try:
        send_async = getattr(rt.sink, "send_async", None)
        if send_async is not None:
            await send_async(records, s.kafka_send_timeout_seconds,
                             functools.partial(blocking, s.threads))
        else:
            await blocking(s.threads, functools.partial(
                rt.sink.send, records, s.kafka_send_timeout_seconds))
    except Exception:
        rt.rate_limiter.refund(counts)
        raise
    points = sum(len(e.points) for e in events)
    EVENTS_ACCEPTED.labels(_mode(incoming)).inc(len(events))
    POINTS_ACCEPTED.inc(points)
    if log.isEnabledFor(logging.DEBUG):
        for e in events:
            log.debug("accepted", extra={"event_id": e.id, "source": e.source,
                                         "device_id": e.device_id, "points": len(e.points)})
    return json_answer({"accepted": len(events), "points": points}, 202)


def _records(request: Incoming, rt: Runtime, writer: str | None,
             ) -> tuple[list[TelemetryEvent], list[KafkaRecord]]:
    """The request's events, validated, and their Kafka records; any problem rejects all."""
    s = rt.settings
    # 2. Decode and validate every event; any problem rejects the whole request.
    raws = read_http(request.headers, request.body)
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
    return events, records
