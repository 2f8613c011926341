"""alert: telemetry events checked against the rules, sweeps for offline devices; alert
changes replied as events."""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import flask

from .aggregate import decode_telemetry
from .alerting import RESOLVED, RULE_REMOVED, AlertBook, Outcome, public
from .errors import DependencyUnavailable
from .events import ALERT_TYPE, SPECVERSION, RawEvent, is_ping, read_delivery, to_http
from .eventtime import settled
from .observability import ALERT_TRANSITIONS, DUPLICATES_SKIPPED, EVENTS_PROCESSED
from .offline import OfflineBook
from .runtime import Runtime, get_runtime
from .service import require, serve
from .telemetry import parse_time

log = logging.getLogger(__name__)
FUNCTION = "alert"
SOURCE = "/iot/alert"
#: Runtimes (processes, and the local run's restarts) whose removed rules were dealt with.
_SWEPT: weakref.WeakSet[Runtime] = weakref.WeakSet()
_SWEEP_LOCK = threading.Lock()


def handle(request: flask.Request, runtime: Runtime | None = None) -> flask.Response:
    rt = runtime or get_runtime()
    return serve(FUNCTION, request, lambda r: _alert(r, rt), lambda: _ready(rt))


def _ready(rt: Runtime) -> dict[str, bool]:
    return {"store": rt.store.ping()}


def alert_event(transition: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """The `iot.alert.v1` event of a raise or resolve: id is stable across redeliveries."""
    alert = transition["alert"]
    state = transition["transition"]
    attributes = {
        "specversion": SPECVERSION, "type": ALERT_TYPE, "source": SOURCE,
        "id": f"{alert['id']}/{state}", "subject": alert["device_id"],
        "time": (alert.get("resolved_at") or alert["raised_at"]) if state == "resolved"
        else alert["raised_at"],
        "datacontenttype": "application/json", "partitionkey": alert["device_id"],
    }
    return attributes, {**alert, "state": state, "lifecycle": alert["state"]}


def _alert(request: flask.Request, rt: Runtime) -> flask.Response:
    # 1. Decode; 2. evaluate rules atomically; 3. reply with the first alert event.
    require(request, "/", "POST")
    if is_ping(request.headers, request.mimetype, request.get_data()):
        return _sweep(read_delivery(request.headers, request.get_data()), rt)
    event = decode_telemetry(request, FUNCTION)
    if event.points:  # a resend of an event without `time` is evaluated at the first time
        event = settled(rt.store, event)
    book = _book(rt)
    _resolve_removed_rules(book, rt)
    outcome = book.handle(event)
    back = _offline(rt).handle(event, fresh=outcome.changed)
    outcome.transitions += back.transitions
    outcome.changed = outcome.changed or back.changed
    outcome.duplicate = outcome.duplicate and not back.changed
    return _reply(outcome, rt, event.id, event.device_id)


def _book(rt: Runtime) -> AlertBook:
    return AlertBook(rt.store, rt.settings.rules, [r.name for r in rt.settings.offline_rules],
                     rt.alert_states)


def _offline(rt: Runtime) -> OfflineBook:
    return OfflineBook(rt.store, rt.settings.offline_rules, rt.settings.device_stale_seconds,
                       rt.offline_reports)


def _sweep(raw: RawEvent, rt: Runtime) -> flask.Response:
    """A PingSource tick: raise offline alerts for devices silent past their window.

    "Now" is the tick's time (never later than the clock), so a redelivery sweeps with
    the same cutoff and finds what the first delivery did.
    """
    wall = datetime.now(UTC)
    ticked = parse_time(raw.attributes.get("time"))
    now = min(ticked, wall) if ticked is not None else wall
    key = f"{raw.attributes.get('source')}\x1f{raw.attributes.get('id')}"
    book = _book(rt)
    _resolve_removed_rules(book, rt)
    rt.store.ensure_indexes()  # the sweep reads devices through the `recent` index
    outcome = _offline(rt).sweep(now, key)
    return _reply(outcome, rt, str(raw.attributes.get("id")), None)


def _reply(outcome: Outcome, rt: Runtime, event_id: str, device_id: str | None,
           ) -> flask.Response:
    EVENTS_PROCESSED.labels(FUNCTION, "duplicate" if outcome.duplicate else "applied").inc()
    if outcome.duplicate:
        DUPLICATES_SKIPPED.labels(FUNCTION).inc()
    events = [alert_event(t) for t in outcome.transitions]
    for t in outcome.transitions:
        ALERT_TRANSITIONS.labels(t["transition"], t["alert"]["severity"]).inc()
        log.info("alert %s", t["transition"], extra={
            "event_id": event_id, "alert_id": t["alert"]["id"],
            "device_id": device_id or t["alert"]["device_id"]})
    if not events:
        return flask.Response(status=204)
    # A reply carries one event; further ones go to the Broker ingress (K_SINK).
    for attributes, data in events[1:]:
        _send_to_sink(rt.settings.alert_sink, attributes, data)
    headers, body = to_http(*events[0])
    return flask.Response(body, status=200, headers=headers)


def _resolve_removed_rules(book: AlertBook, rt: Runtime) -> None:
    """Once per process (the rules are read at start): resolve alerts of rules now gone.

    Each one's `resolved` event is sent to the Broker before the alert is resolved, so a
    crash or an unreachable Broker in between sends it again on the next try, never loses it.
    """
    if rt in _SWEPT:
        return
    with _SWEEP_LOCK:
        if rt in _SWEPT:
            return
        now = datetime.now(UTC)
        for doc in book.orphans():
            gone = public({**doc, "state": RESOLVED, "resolved_at": now, "resolved_value": None,
                           "resolved_reason": RULE_REMOVED})
            if rt.settings.alert_sink:
                _send_to_sink(rt.settings.alert_sink, *alert_event(
                    {"transition": RESOLVED, "alert": gone}))
            else:
                log.warning("alert resolved without an alert event: no K_SINK",
                            extra={"alert_id": doc["_id"]})
            book.resolve_orphan(doc, now)
            ALERT_TRANSITIONS.labels(RESOLVED, doc["severity"]).inc()
            log.info("alert resolved: its rule was removed", extra={
                "alert_id": doc["_id"], "rule": doc["rule"], "device_id": doc["device_id"]})
        _SWEPT.add(rt)


def _send_to_sink(sink: str, attributes: dict[str, str], data: dict[str, Any]) -> None:
    # Failing the delivery (503: retried, then dead-lettered) loses nothing: a redelivery
    # answers the same alert events again. Dropping the event would lose it for good.
    if not sink:
        raise DependencyUnavailable(
            "a second alert event has nowhere to go: K_SINK is not set (the SinkBinding "
            "of eventing/sink-binding.yaml injects it)")
    headers, body = to_http(attributes, data)
    req = urllib.request.Request(sink, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise DependencyUnavailable(f"the Broker (K_SINK) did not take an alert event: {exc}",
                                    ) from None
