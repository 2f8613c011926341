"""aggregate: telemetry events delivered by the Broker, rolled up in the store; the daily
retention sweep (a PingSource tick)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import flask

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
from .service import require, serve
from .telemetry import TelemetryEvent, parse_time, validate

log = logging.getLogger(__name__)
FUNCTION = "aggregate"


def handle(request: flask.Request, runtime: Runtime | None = None) -> flask.Response:
    rt = runtime or get_runtime()
    return serve(FUNCTION, request, lambda r: _aggregate(r, rt), lambda: _ready(rt))


def _ready(rt: Runtime) -> dict[str, bool]:
    return {"store": rt.store.ping()}


def decode_telemetry(request: flask.Request, function: str) -> TelemetryEvent:
    """Decode a delivered telemetry event; malformed ones are 400 (dead-lettered)."""
    require(request, "/", "POST")
    raw = read_delivery(request.headers, request.get_data())
    result = validate(raw, datetime.now(UTC), limits=None)
    if isinstance(result, list):
        EVENTS_PROCESSED.labels(function, "invalid").inc()
        log.warning("invalid event", extra={"event_id": raw.attributes.get("id"),
                                            "problems": result})
        raise BadRequest(result)
    return result


def _aggregate(request: flask.Request, rt: Runtime) -> flask.Response:
    # 1. Decode; 2. apply idempotently; 3. answer 204 (nothing to reply).
    require(request, "/", "POST")
    if is_ping(request.headers, request.mimetype, request.get_data()):
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
    return flask.Response(status=204)


def _sweep(request: flask.Request, rt: Runtime) -> flask.Response:
    """A tick of the rollup-retention PingSource: compact final days, delete expired ones.

    "Now" is the tick's time (never later than the clock), so a redelivery sweeps with the
    same cutoffs; the sweep is idempotent either way.
    """
    raw = read_delivery(request.headers, request.get_data())
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
    return flask.Response(status=204)
