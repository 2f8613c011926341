"""alert: telemetry events checked against the rules, sweeps for offline devices; alert
changes replied as events."""

from __future__ import annotations

import logging
import threading
import weakref
from datetime import UTC, datetime
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response

from .aggregate import decode_telemetry, on_threads
from .alertevents import alert_event, send_to_sink
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
from .asgi import serve
from .bookkeeping import Bookkeeping
from .events import RawEvent, is_ping, read_delivery, to_http
from .observability import ALERT_TRANSITIONS, DUPLICATES_SKIPPED, EVENTS_PROCESSED
from .offline import OfflineBook
from .rules import AlertRule, verdict
from .runtime import Runtime, get_runtime
from .service import Answer, Incoming
from .store import ALERTS
from .telemetry import TelemetryEvent, parse_time

log = logging.getLogger(__name__)
FUNCTION = "alert"
#: Runtimes (processes, and the local run's restarts) whose removed rules were dealt with.
_SWEPT: weakref.WeakSet[Runtime] = weakref.WeakSet()
_SWEEP_LOCK = threading.Lock()


async def handle(request: Request, runtime: Runtime | None = None) -> Response:
    rt = runtime or get_runtime()
    return await serve(FUNCTION, request, lambda r: on_threads(r, rt, _alert),
                       lambda: _ready(rt), rt.settings.threads)


def _ready(rt: Runtime) -> dict[str, bool]:
    return {"store": rt.store.ping()}


def _alert(request: Incoming, rt: Runtime) -> Answer:
    # 1. Decode; 2. evaluate rules atomically; 3. reply with the last alert event.
    if is_ping(request.headers, request.mimetype, request.body):
        return _sweep(read_delivery(request.headers, request.body), rt)
    event = decode_telemetry(request, FUNCTION)
    if event.points:  # a resend of an event without `time` is evaluated at the first time
        event = rt.event_times.settled(event)
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


def _sweep(raw: RawEvent, rt: Runtime) -> Answer:
    """A PingSource tick: raise offline alerts for devices silent past their window.

    "Now" is the tick's time (never later than the clock), so a redelivery sweeps with
    the same cutoff and finds what the first delivery did.
    """
    wall = datetime.now(UTC)
    ticked = parse_time(raw.attributes.get("time"))
    now = min(ticked, wall) if ticked is not None else wall
    key = f"{raw.attributes.get('source')}\x1f{raw.attributes.get('id')}"
    rt.store.ensure_indexes()  # the sweeps read alerts and devices through their indexes
    book = _book(rt)
    # Every tick, not once per process: an instance still running the old rules during a
    # rolling update may raise alerts of a removed rule after this process started.
    _resolve_unclosable(book, rt, book.orphans(REMOVED_PER_TICK), RULE_REMOVED)
    _sweep_out_of_scope(book, rt)
    outcome = _offline(rt).sweep(now, key, wall)
    return _reply(outcome, rt, str(raw.attributes.get("id")), None)


def _reply(outcome: Outcome, rt: Runtime, event_id: str, device_id: str | None,
           ) -> Answer:
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
        return Answer(204)
    # A reply carries one event; the others go to the Broker ingress (K_SINK) first, one
    # after the other, and the reply, which reaches the Broker only once this delivery is
    # answered, carries the last: so they reach iot.alerts in the order they happened.
    for attributes, data in events[:-1]:
        send_to_sink(rt.settings.alert_sink, attributes, data)
    headers, body = to_http(*events[-1])
    return Answer(200, body, headers)


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
#: The progress record of that check (bookkeeping.py).
OUT_OF_SCOPE: Final = "out-of-scope"
#: Alerts of removed rules one tick resolves (each with a POST to K_SINK, within the
#: Trigger's 30 s); the next tick resolves the next ones, until none is left.
REMOVED_PER_TICK: Final = 500


def _sweep_out_of_scope(book: AlertBook, rt: Runtime) -> None:
    """On a tick: resolve open alerts of scoped rules that no longer apply to their device,
    also of devices that send nothing (an offline alert, a device gone quiet)."""
    resolver = rt.rule_resolver
    rules = {r.name: r for r in resolver.rules if not r.scope.everything}
    if not rules:
        return
    query: dict[str, Any] = {"state": {"$in": [OPEN, ACKNOWLEDGED]},
                             "rule": {"$in": sorted(rules)}}
    # Where the last tick stopped, whichever instance ran it (in the store, not the process).
    books = Bookkeeping(rt.store)
    after = (books.read(OUT_OF_SCOPE) or {}).get("after")
    if after is not None:
        query["_id"] = {"$gt": after}
    with rt.store.guard():
        docs = list(rt.store.collection(ALERTS).find(query).sort("_id", 1).limit(
            SCOPE_CHECKS_PER_TICK))
    stopped = docs[-1]["_id"] if len(docs) == SCOPE_CHECKS_PER_TICK else None
    metadata = (resolver.metadata.get_many(d["device_id"] for d in docs)
                if resolver.needs_metadata else {})
    gone = [d for d in docs if not verdict(rules[d["rule"]], d["device_id"],
                                           metadata.get(d["device_id"], {})).applies]
    _resolve_unclosable(book, rt, gone, RULE_OUT_OF_SCOPE)
    if stopped != after:
        books.save(OUT_OF_SCOPE, {"$set": {"after": stopped}})


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
            send_to_sink(rt.settings.alert_sink, *alert_event(
                {"transition": RESOLVED, "alert": gone}))
        else:
            log.warning("alert resolved without an alert event: no K_SINK",
                        extra={"alert_id": doc["_id"]})
        book.resolve_orphan(doc, now, reason)
        ALERT_TRANSITIONS.labels(RESOLVED, doc["severity"]).inc()
        log.info("alert resolved: %s", reason, extra={
            "alert_id": doc["_id"], "rule": doc["rule"], "device_id": doc["device_id"]})
