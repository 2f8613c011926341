"""aggregate: telemetry events delivered by the Broker, rolled up in the store; the daily
retention sweep (a PingSource tick)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from .asgi import blocking, head, read, serve
from .errors import BadRequest
from .events import is_ping, read_delivery
from .observability import (
    DUPLICATES_SKIPPED,
    EVENTS_PROCESSED,
    POINTS_AGGREGATED,
    RETENTION_SWEPT,
)
from .retention import sweep
from .runtime import Runtime, get_runtime
from .service import Answer, Incoming, require
from .telemetry import TelemetryEvent, parse_time, validate

log = logging.getLogger(__name__)
FUNCTION = "aggregate"


async def handle(request: Request, runtime: Runtime | None = None) -> Response:
    rt = runtime or get_runtime()
    return await serve(FUNCTION, request, lambda r: on_threads(r, rt, _aggregate),
                       lambda: _ready(rt), rt.settings.threads)


async def on_threads(request: Request, rt: Runtime,
                     work: Callable[[Incoming, Runtime], Answer]) -> Answer:
    """Read a delivery on the event loop; handle it on the blocking threads (store calls)."""
    require(head(request), "/", "POST")
    incoming = await read(request)
    return await blocking(rt.settings.threads, functools.partial(work, incoming, rt))


def _ready(rt: Runtime) -> dict[str, bool]:
    return {"store": rt.store.ping()}


def decode_telemetry(request: Incoming, function: str) -> TelemetryEvent:
    """Decode a delivered telemetry event; malformed ones are 400 (dead-lettered)."""
    raw = read_delivery(request.headers, request.body)
    result = validate(raw, datetime.now(UTC), limits=None)
    if isinstance(result, list):
        EVENTS_PROCESSED.labels(function, "invalid").inc()
        log.warning("invalid event", extra={"event_id": raw.attributes.get("id"),
                                            "problems": result})
        raise BadRequest(result)
    return result


def _aggregate(request: Incoming, rt: Runtime) -> Answer:
    # 1. Decode; 2. apply idempotently; 3. answer 204 (nothing to reply).
    if is_ping(request.headers, request.mimetype, request.body):
        return _sweep(request, rt)
    event = decode_telemetry(request, FUNCTION)
    rt.store.ensure_indexes()
    expired = rt.rollups.expired(event, rt.rollups.clock())
    fresh = rt.rollups.apply(event)
    if fresh:
        POINTS_AGGREGATED.inc(len(event.points) - expired)
        EVENTS_PROCESSED.labels(FUNCTION, "applied").inc()
    elif expired and expired == len(event.points):
        EVENTS_PROCESSED.labels(FUNCTION, "expired").inc()
    else:
        DUPLICATES_SKIPPED.labels(FUNCTION).inc()
        EVENTS_PROCESSED.labels(FUNCTION, "duplicate").inc()
    # DEBUG: a JSON line per event cost as much CPU as the rest of the library's work on a
    # single-reading event; what went wrong (invalid, refused, unavailable) stays at INFO
    # and above, and iot_events_processed_total counts every outcome.
    if log.isEnabledFor(logging.DEBUG):
        log.debug("aggregated" if fresh else "duplicate", extra={
            "event_id": event.id, "source": event.source, "device_id": event.device_id,
            "points": len(event.points)})
    return Answer(204)


def _sweep(request: Incoming, rt: Runtime) -> Answer:
    """A tick of the rollup-retention PingSource: compact final days, delete expired ones.

    "Now" is the tick's time (never later than the clock), so a redelivery sweeps with the
    same cutoffs; the sweep is idempotent either way.
    """
    raw = read_delivery(request.headers, request.body)
    wall = rt.rollups.clock()
    ticked = parse_time(raw.attributes.get("time"))
    now = min(ticked, wall) if ticked is not None else wall
    rt.store.ensure_indexes()
    outcome = sweep(rt.store, rt.retention, now)
    RETENTION_SWEPT.labels("compacted", "rollup_days").inc(outcome.compacted)
    RETENTION_SWEPT.labels("dated", "rollup_hours").inc(outcome.dated)
    for name, count in outcome.deleted.items():
        RETENTION_SWEPT.labels("deleted", name).inc(count)
    EVENTS_PROCESSED.labels(FUNCTION, "swept").inc()
    log.info("retention sweep", extra={"event_id": raw.attributes.get("id"),
                                       "compacted_days": outcome.compacted,
                                       "dated_hours": outcome.dated,
                                       "deleted": outcome.deleted})
    return Answer(204)
