"""alert: telemetry events checked against the rules, sweeps for offline devices; alert
changes replied as events."""

from __future__ import annotations

import http.client
import logging
import threading
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import flask

from .aggregate import decode_telemetry
from .alerting import (
    ACKNOWLEDGED,
    OPEN,
    RESOLVED,
    RULE_OUT_OF_SCOPE,
    RULE_REMOVED,
    AlertBook,
    Outcome,
    public,
)
from .errors import DependencyUnavailable
from .events import ALERT_TYPE, SPECVERSION, RawEvent, is_ping, read_delivery, to_http
from .eventtime import settled
from .httpsession import HttpSession
from .observability import ALERT_TRANSITIONS, DUPLICATES_SKIPPED, EVENTS_PROCESSED
from .offline import OfflineBook
from .rules import AlertRule, verdict
from .runtime import Runtime, get_runtime
from .service import require, serve
from .store import ALERTS
from .telemetry import TelemetryEvent, parse_time

log = logging.getLogger(__name__)
FUNCTION = "alert"
SOURCE = "/iot/alert"
#: Runtimes (processes, and the local run's restarts) whose removed rules were dealt with.
_SWEPT: weakref.WeakSet[Runtime] = weakref.WeakSet()
_SWEEP_LOCK = threading.Lock()
#: Each serving thread's keep-alive connection to the Broker ingress: a connection per post
#: cost a TCP handshake on both sides for every second alert event of a delivery.
_SINK_SESSIONS = threading.local()


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
    return _reply(evaluate(event, rt), rt, event.id, event.device_id)


def evaluate(event: TelemetryEvent, rt: Runtime) -> Outcome:
    """The alert changes one telemetry event makes: the device's rules, its offline alerts."""
    # Decided once per event: with rules scoped by metadata, that is one metadata lookup.
    verdicts = rt.rule_resolver.verdicts(event.device_id)
    book = _book(rt, None if verdicts is None else rt.rule_resolver.threshold_rules_for(verdicts))
    _resolve_removed_rules(book, rt)
    _resolve_out_of_scope(book, rt, event.device_id, rt.rule_resolver.not_applying(verdicts))
    outcome = rt.alert_commit.submit((book, event))
    back = _offline(rt).handle(event, fresh=outcome.changed)
    outcome.transitions += back.transitions
    outcome.changed = outcome.changed or back.changed
    outcome.duplicate = outcome.duplicate and not back.changed
    return outcome


def _book(rt: Runtime, device_rules: tuple[AlertRule, ...] | None = None) -> AlertBook:
    """The alert book; with `device_rules`, for one device's event: the rules applying to it."""
    if device_rules is None:
        return _books(rt)[0]
    return AlertBook(rt.store, rt.settings.rules, [r.name for r in rt.settings.offline_rules],
                     rt.alert_states, lambda _device: device_rules)


def _offline(rt: Runtime) -> OfflineBook:
    return _books(rt)[1]


#: Per runtime, the books that depend on nothing but its settings: built once, not per event
#: (building them, and the offline rules' shortest window, was a tenth of alert's own CPU on
#: a single-reading event). They hold no state of their own, so threads share them.
_BOOKS: weakref.WeakKeyDictionary[Runtime, tuple[AlertBook, OfflineBook]] = (
    weakref.WeakKeyDictionary())


def _books(rt: Runtime) -> tuple[AlertBook, OfflineBook]:
    books = _BOOKS.get(rt)
    if books is None:
        offline = rt.settings.offline_rules
        books = _BOOKS.setdefault(rt, (
            AlertBook(rt.store, rt.settings.rules, [r.name for r in offline], rt.alert_states),
            OfflineBook(rt.store, offline, rt.settings.device_stale_seconds,
                        rt.offline_reports)))
    return books


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
    _sweep_out_of_scope(book, rt)
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
    """Once per process (the rules are read at start): resolve alerts of rules now gone."""
    if rt in _SWEPT:
        return
    with _SWEEP_LOCK:
        if rt in _SWEPT:
            return
        _resolve_unclosable(book, rt, book.orphans(), RULE_REMOVED)
        _SWEPT.add(rt)


def _resolve_out_of_scope(book: AlertBook, rt: Runtime, device_id: str,
                          names: frozenset[str]) -> None:
    """On a device's event: resolve its open alerts of rules that no longer apply to it.

    The store is asked only when the set of rules not applying to the device differs from
    the one this process last checked for it (its first event here, a scope or metadata
    change), so steady traffic costs no store command. An alert another instance opened
    meanwhile (it still had the old metadata) is found by the sweep of each tick.
    """
    resolver = rt.rule_resolver
    if not resolver.needs_check(device_id, names):
        return
    with rt.store.guard():
        docs = list(rt.store.collection(ALERTS).find(
            {"device_id": device_id, "state": {"$in": [OPEN, ACKNOWLEDGED]},
             "rule": {"$in": sorted(names)}}))
    _resolve_unclosable(book, rt, docs, RULE_OUT_OF_SCOPE)
    resolver.checked(device_id, names)


#: Open alerts of scoped rules one tick checks; the next tick goes on after the last one.
SCOPE_CHECKS_PER_TICK: Final = 1000


def _sweep_out_of_scope(book: AlertBook, rt: Runtime) -> None:
    """On a tick: resolve open alerts of scoped rules that no longer apply to their device,
    also of devices that send nothing (an offline alert, a device gone quiet)."""
    resolver = rt.rule_resolver
    rules = {r.name: r for r in resolver.rules if not r.scope.everything}
    if not rules:
        return
    query: dict[str, Any] = {"state": {"$in": [OPEN, ACKNOWLEDGED]},
                             "rule": {"$in": sorted(rules)}}
    if resolver.sweep_after is not None:
        query["_id"] = {"$gt": resolver.sweep_after}
    with rt.store.guard():
        docs = list(rt.store.collection(ALERTS).find(query).sort("_id", 1).limit(
            SCOPE_CHECKS_PER_TICK))
    resolver.sweep_after = docs[-1]["_id"] if len(docs) == SCOPE_CHECKS_PER_TICK else None
    metadata = (resolver.metadata.get_many(d["device_id"] for d in docs)
                if resolver.needs_metadata else {})
    gone = [d for d in docs if not verdict(rules[d["rule"]], d["device_id"],
                                           metadata.get(d["device_id"], {})).applies]
    _resolve_unclosable(book, rt, gone, RULE_OUT_OF_SCOPE)


def _resolve_unclosable(book: AlertBook, rt: Runtime, docs: list[dict[str, Any]],
                        reason: str) -> None:
    """Resolve alerts no rule can close any more, each with its `resolved` event.

    Each one's `resolved` event is sent to the Broker before the alert is resolved, so a
    crash or an unreachable Broker in between sends it again on the next try, never loses it.
    """
    now = datetime.now(UTC)
    for doc in docs:
        gone = public({**doc, "state": RESOLVED, "resolved_at": now, "resolved_value": None,
                       "resolved_reason": reason})
        if rt.settings.alert_sink:
            _send_to_sink(rt.settings.alert_sink, *alert_event(
                {"transition": RESOLVED, "alert": gone}))
        else:
            log.warning("alert resolved without an alert event: no K_SINK",
                        extra={"alert_id": doc["_id"]})
        book.resolve_orphan(doc, now, reason)
        ALERT_TRANSITIONS.labels(RESOLVED, doc["severity"]).inc()
        log.info("alert resolved: %s", reason, extra={
            "alert_id": doc["_id"], "rule": doc["rule"], "device_id": doc["device_id"]})


def _send_to_sink(sink: str, attributes: dict[str, str], data: dict[str, Any]) -> None:
    # Failing the delivery (503: retried, then dead-lettered) loses nothing: a redelivery
    # answers the same alert events again. Dropping the event would lose it for good.
    if not sink:
        raise DependencyUnavailable(
            "a second alert event has nowhere to go: K_SINK is not set (the SinkBinding "
            "of eventing/sink-binding.yaml injects it)")
    headers, body = to_http(attributes, data)
    session = getattr(_SINK_SESSIONS, "session", None)
    if session is None:
        session = _SINK_SESSIONS.session = HttpSession()
    try:
        answer = session.post(sink, headers, body, timeout=10)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DependencyUnavailable(f"the Broker (K_SINK) did not take an alert event: {exc}",
                                    ) from None
    if not 200 <= answer.status < 300:
        raise DependencyUnavailable(
            "the Broker (K_SINK) did not take an alert event: "
            f"HTTP Error {answer.status}: {answer.reason}")
