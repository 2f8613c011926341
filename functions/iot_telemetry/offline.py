"""Offline alerts: devices silent for longer than a rule's window, found by periodic sweeps.

The PingSource of eventing/ sends a sweep event every minute; alert answers it by looking
for devices whose last report (`devices.last_seen`, the newest ingest time, kept by
aggregate) is older than each offline rule's window, and raises an `offline` alert for
each. The device's next telemetry event resolves it. A device that never reported has no
`last_seen` and is never offline; a disabled device is skipped.

Per (device, rule) a state document of the same kind as threshold rules' (alert_state)
holds whether the rule fires, its episode and the last report it knows of; every change is
a compare-and-swap on `rev`, so two sweeps at once raise one alert (the loser re-reads and
finds it firing). Effects are applied after the commit and are idempotent (deterministic
alert ids, upserts, updates conditional on the alert's state); a state whose effects were
not marked applied gets them applied by whoever reads it next, and a redelivered sweep or
telemetry event finds its own effects in the state and answers the same alert events again.

Bounded work: a sweep reads, over the `recent` index, only devices whose last report fell
between where the previous sweeps got to (less LATE_GRACE, for reports aggregate records
late) and this sweep's cutoff, in pages of PAGE_SIZE, at most MAX_DEVICES and MAX_RAISES;
where it stopped is kept (`sweep:<rule>` in alert_state; `sweep:<rule>:<window>s` for a
window an override gives some devices) and the next sweep goes on from there. A rule's scope
and overrides are decided from the metadata each device page carries.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pymongo.errors import DuplicateKeyError

from .alerting import ACKNOWLEDGED, CLEARED, OPEN, RECENT_EVENTS, RESOLVED, Outcome, public
from .rules import OFFLINE, OfflineRule, verdict
from .store import ALERT_STATE, ALERTS, DEVICES, Store
from .telemetry import TelemetryEvent, parse_time

log = logging.getLogger(__name__)

#: Devices read per store round trip of a sweep.
PAGE_SIZE: Final = 250
#: Most devices one sweep examines per rule; the next sweep goes on where it stopped.
MAX_DEVICES: Final = 20_000
#: Alerts one sweep raises before it stops after the page at hand (the next tick goes on):
#: each raise is about 4 store commands and, past the reply, one POST to the Broker, and the
#: whole sweep must answer well within the Trigger's timeout (PT30S), also when it is
#: redelivered and answers every one of its alert events again (1000 raises took 11 s on
#: mongo-java-server).
MAX_RAISES: Final = 500
#: How far before the last swept cutoff each sweep looks again: aggregate may record a
#: report after the sweep that should have seen it (a backlog), and a device whose
#: last_seen moved into an already swept range must not be missed.
LATE_GRACE: Final = timedelta(hours=1)
_CAS_ATTEMPTS: Final = 20
RAISED: Final = "raised"


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _time(value: Any) -> datetime | None:
    return _utc(value) if isinstance(value, datetime) else None


class ReportCache:
    """The newest report time of each device whose offline states this process checked
    (an LRU, one per process), so steady reporters are not checked on every event."""

    def __init__(self, size: int = 100_000) -> None:
        self._times: OrderedDict[str, datetime] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def newest(self, device_id: str) -> datetime | None:
        with self._lock:
            return self._times.get(device_id)

    def heard(self, device_id: str, at: datetime) -> None:
        with self._lock:
            old = self._times.get(device_id)
            self._times[device_id] = _utc(at) if old is None else max(old, _utc(at))
            self._times.move_to_end(device_id)
            while len(self._times) > self._size:
                self._times.popitem(last=False)


def windows(rule: OfflineRule, default: float) -> list[float]:
    """Every window the rule gives some device: its own and each override's."""
    return [rule.window(default), *(float(v) for o in rule.overrides for k, v in o.values
                                    if k == "for_seconds")]


def state_id(device_id: str, rule: OfflineRule) -> str:
    return f"{device_id}:{rule.name}"


def alert_id(device_id: str, rule: OfflineRule, episode: int) -> str:
    """Deterministic, like threshold alerts: every instance raising it writes the same one."""
    return f"{device_id}:{rule.name}:{episode}"


@dataclass(frozen=True)
class OfflineState:
    """Where one offline rule stands for one device."""

    firing: bool = False
    episode: int = 0
    #: The newest report the rule knows of: the silence alerted on, or the reading that ended it.
    last_report: datetime | None = None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> OfflineState:
        state = (doc or {}).get("state") or {}
        return cls(bool(state.get("firing", False)), int(state.get("episode", 0)),
                   _time(state.get("last_report")))

    def to_doc(self) -> dict[str, Any]:
        return {"firing": self.firing, "episode": self.episode, "last_report": self.last_report}


class OfflineBook:
    """Offline alerts in the store, safe with several instances and sweeps at once."""

    def __init__(self, store: Store, rules: Sequence[OfflineRule], default_window: float,
                 reports: ReportCache | None = None) -> None:
        self.store = store
        self.rules = tuple(rules)
        self.default_window = default_window
        self.reports = reports
        #: The shortest window any rule gives any device (None without rules).
        self.shortest = min((w for r in self.rules for w in windows(r, default_window)),
                            default=None)

    # --- sweeps -----------------------------------------------------------------------------

    def sweep(self, now: datetime, event_key: str) -> Outcome:
        """Raise an offline alert for every enabled device silent past a rule's window."""
        outcome = Outcome()
        for rule in self.rules:
            self._resolve_reported(rule, event_key, outcome)
            base = rule.window(self.default_window)
            for window in (base, *sorted(set(windows(rule, self.default_window)) - {base})):
                self._sweep_rule(rule, window, now, event_key, outcome=outcome,
                                 progress=f"sweep:{rule.name}" if window == base
                                 else f"sweep:{rule.name}:{window:g}s")
        outcome.duplicate = not outcome.changed
        return outcome

    def _resolve_reported(self, rule: OfflineRule, key: str, outcome: Outcome) -> None:
        """Resolve the rule's open alerts of devices that reported after their silence.

        A report resolves its device's alert when alert handles it; this catches the ones it
        could not: a raise that landed after alert skipped the check for a device it had
        just heard from (OfflineBook.handle), when aggregate recorded the report late.
        """
        with self.store.guard():
            open_ = list(self.store.collection(ALERTS).find(
                {"state": {"$in": [OPEN, ACKNOWLEDGED]}, "rule": rule.name},
                {"device_id": 1}).limit(PAGE_SIZE))
            if not open_:
                return
            ids = sorted({a["device_id"] for a in open_})
            seen = {d["_id"]: d.get("last_seen") for d in self.store.collection(DEVICES).find(
                {"_id": {"$in": ids}}, {"last_seen": 1})}
            docs = {d["_id"]: d for d in self.store.collection(ALERT_STATE).find(
                {"_id": {"$in": [state_id(i, rule) for i in ids]}})}
        for device in ids:
            doc, last_seen = docs.get(state_id(device, rule)), _time(seen.get(device))
            report = OfflineState.from_doc(doc).last_report
            if doc and last_seen and report and last_seen > report:
                self._transition(rule, device, doc, key, outcome, resolve_at=last_seen)

    def _sweep_rule(self, rule: OfflineRule, window: float, now: datetime, key: str, *,
                    outcome: Outcome, progress: str) -> None:
        """One pass over the devices silent past `window`, raising for those whose window
        it is: a rule whose overrides give some devices other windows makes one pass per
        window, each with its own progress, so a long window is not skipped past by the
        progress of a short one."""
        if len(outcome.transitions) >= MAX_RAISES:
            return  # this tick raised enough: the next one sweeps this rule
        cutoff = now - timedelta(seconds=window)
        states = self.store.collection(ALERT_STATE)
        with self.store.guard():
            cursor = states.find_one({"_id": progress}) or {}
        through, resume = _time(cursor.get("through")), _time(cursor.get("resume"))
        low = resume or (through - LATE_GRACE if through else None)
        done_at_low: list[str] = []
        examined, finished = 0, False
        while examined < MAX_DEVICES:
            span: dict[str, Any] = {"$lt": cutoff}
            if low is not None:
                span["$gte"] = low
            query: dict[str, Any] = {"last_seen": span}
            if done_at_low:
                query["_id"] = {"$nin": done_at_low}
            with self.store.guard():
                page = list(self.store.collection(DEVICES).find(
                    query, {"last_seen": 1, "enabled": 1, "metadata": 1},
                ).sort("last_seen", 1).limit(PAGE_SIZE))
            self._raise_page(rule, window, page, now, key=key, outcome=outcome)
            examined += len(page)
            if len(page) < PAGE_SIZE:
                finished = True
                break
            last = _utc(page[-1]["last_seen"])
            if last != low:
                done_at_low = []
            low = last
            done_at_low += [d["_id"] for d in page if _utc(d["last_seen"]) == last]
            if len(outcome.transitions) >= MAX_RAISES:
                break
        # Progress only ever saves work: a sweep that starts earlier than it could redoes
        # devices it then finds firing, so racing sweeps need no coordination here.
        update: dict[str, Any] = (
            {"$max": {"through": cutoff}, "$set": {"resume": None}} if finished
            else {"$set": {"resume": low}})
        with self.store.guard():
            try:
                states.update_one({"_id": progress}, update, upsert=True)
            except DuplicateKeyError:
                states.update_one({"_id": progress}, update)

    def _raise_page(self, rule: OfflineRule, window: float, page: list[dict[str, Any]],
                    now: datetime, *, key: str, outcome: Outcome) -> None:
        ids = [state_id(d["_id"], rule) for d in page]
        with self.store.guard():
            docs = {d["_id"]: d for d in self.store.collection(ALERT_STATE).find(
                {"_id": {"$in": ids}})}
        for device, sid in zip(page, ids, strict=True):
            if device.get("enabled", True) is False:
                continue
            if not rule.scope.everything or rule.overrides:
                # The page carries the device's metadata: deciding the rule reads nothing more.
                decided = verdict(rule, device["_id"], device.get("metadata") or {})
                if not decided.applies or not isinstance(decided.rule, OfflineRule) or (
                        decided.rule.window(self.default_window) != window):
                    continue  # another rule's scope, or another window's pass
            self._transition(rule, device["_id"], docs.get(sid), key, outcome, raise_at=(
                now, _utc(device["last_seen"]), window))

    # --- telemetry --------------------------------------------------------------------------

    def handle(self, event: TelemetryEvent, fresh: bool = False) -> Outcome:
        """Resolve the offline alerts of a device that reported again.

        `fresh`: the event is known to be new (its readings just moved threshold rules), so
        it is no redelivery that must answer the alert events of its first delivery.
        """
        outcome = Outcome()
        if not self.rules:
            return outcome
        seen = parse_time(event.attributes.get("ingesttime")) or event.time
        # Never later than this clock: a device's own time (no ingesttime) may run ahead.
        heard = min(_utc(seen), datetime.now(UTC))
        if fresh and self.reports is not None:
            # A sweep raises only for a device whose last report is older than the window.
            # If this process handled a report of the device less than the shortest window
            # ago, no sweep since could have raised (once aggregate recorded that report), so
            # the read of the offline states is skipped; a raise made on a report aggregate
            # recorded late is resolved by the next sweep (_resolve_reported).
            previous = self.reports.newest(event.device_id)
            # Half the window: room for the clocks of ingest's and this pod to differ.
            if previous is not None and self.shortest is not None and (
                    datetime.now(UTC) - previous).total_seconds() < self.shortest / 2:
                self.reports.heard(event.device_id, heard)
                return outcome
        ids = [state_id(event.device_id, r) for r in self.rules]
        with self.store.guard():
            docs = {d["_id"]: d for d in self.store.collection(ALERT_STATE).find(
                {"_id": {"$in": ids}})}
        for rule, sid in zip(self.rules, ids, strict=True):
            if sid in docs:
                self._transition(rule, event.device_id, docs[sid], event.key, outcome,
                                 resolve_at=_utc(seen))
        if self.reports is not None:
            self.reports.heard(event.device_id, heard)
        return outcome

    # --- both -------------------------------------------------------------------------------

    def _transition(self, rule: OfflineRule, device_id: str, doc: dict[str, Any] | None,
                    key: str, outcome: Outcome, *,
                    raise_at: tuple[datetime, datetime, float] | None = None,
                    resolve_at: datetime | None = None) -> None:
        """Raise (a sweep) or resolve (a report) with a compare-and-swap on the state."""
        states = self.store.collection(ALERT_STATE)
        sid = state_id(device_id, rule)
        for attempt in range(_CAS_ATTEMPTS):
            if attempt:
                with self.store.guard():
                    doc = states.find_one({"_id": sid})
            if doc and not doc.get("applied", True):
                self._apply(rule, device_id, doc.get("effects") or [])
                self._mark_applied(sid, int(doc["rev"]))
            earlier = _earlier_effects(doc, key)
            if earlier is not None:
                # A redelivery (its reply may have been lost): apply again, answer the same.
                self._apply(rule, device_id, earlier)
                outcome.transitions += self._transitions(earlier)
                return
            state = OfflineState.from_doc(doc)
            effect: dict[str, Any]
            if raise_at is not None:
                now, last_seen, window = raise_at
                silent_since = max(last_seen, state.last_report or last_seen)
                if state.firing or silent_since >= now - timedelta(seconds=window):
                    return
                episode = state.episode + 1
                new = OfflineState(True, episode, silent_since)
                effect = {"kind": RAISED, "alert_id": alert_id(device_id, rule, episode),
                          "time": now, "silent_since": silent_since, "window": window}
            else:
                assert resolve_at is not None
                if not state.firing or (state.last_report and resolve_at <= state.last_report):
                    return
                new = OfflineState(False, state.episode, resolve_at)
                effect = {"kind": RESOLVED, "alert_id": alert_id(device_id, rule, state.episode),
                          "time": resolve_at}
            rev = int(doc["rev"]) if doc else 0
            recent = [*(doc.get("recent") or [] if doc else []),
                      {"event": key, "effects": [effect]}][-RECENT_EVENTS:]
            body = {"state": new.to_doc(), "effects": [effect], "event": key, "applied": False,
                    "rev": rev + 1, "device_id": device_id, "rule": rule.name,
                    "recent": recent}
            with self.store.guard():
                if doc is None:
                    try:
                        states.insert_one({"_id": sid, **body})
                    except DuplicateKeyError:
                        continue
                elif states.update_one({"_id": sid, "rev": rev},
                                       {"$set": body}).matched_count == 0:
                    continue
            outcome.changed = True
            self._apply(rule, device_id, [effect])
            self._mark_applied(sid, rev + 1)
            outcome.transitions += self._transitions([effect])
            return
        raise RuntimeError(f"alert state {sid}: too many concurrent updates")

    def _mark_applied(self, sid: str, rev: int) -> None:
        with self.store.guard():
            self.store.collection(ALERT_STATE).update_one(
                {"_id": sid, "rev": rev}, {"$set": {"applied": True}})

    def _apply(self, rule: OfflineRule, device_id: str, effects: Sequence[Mapping[str, Any]],
               ) -> None:
        alerts = self.store.collection(ALERTS)
        with self.store.guard():
            for e in effects:
                if e["kind"] == RAISED:
                    silent_since = _utc(e["silent_since"])
                    insert = {"$setOnInsert": {
                        "device_id": device_id, "metric": None, "rule": rule.name,
                        "severity": rule.severity, "condition": OFFLINE,
                        "window_seconds": e["window"], "state": OPEN, "raised_at": e["time"],
                        "first_seen": silent_since, "last_seen": silent_since, "count": 1,
                        "acknowledged_at": None, "acknowledged_by": None, "resolved_at": None,
                        "resolved_value": None, "resolved_reason": None}}
                    # Another instance inserting the same alert first leaves nothing to add.
                    with contextlib.suppress(DuplicateKeyError):
                        alerts.update_one({"_id": e["alert_id"]}, insert, upsert=True)
                else:
                    alerts.update_one(
                        {"_id": e["alert_id"], "state": {"$in": [OPEN, ACKNOWLEDGED]}},
                        {"$set": {"state": RESOLVED, "resolved_at": e["time"],
                                  "resolved_value": None, "resolved_reason": CLEARED}})

    def _transitions(self, effects: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if not effects:
            return []
        with self.store.guard():
            docs = {d["_id"]: d for d in self.store.collection(ALERTS).find(
                {"_id": {"$in": [e["alert_id"] for e in effects]}})}
        return [{"transition": e["kind"], "alert": public(docs[e["alert_id"]])}
                for e in effects if e["alert_id"] in docs]


def _earlier_effects(doc: Mapping[str, Any] | None, key: str) -> list[dict[str, Any]] | None:
    """The effects an event already had on this state, or None if it had none remembered."""
    for entry in reversed((doc or {}).get("recent") or []):
        if entry.get("event") == key:
            return list(entry.get("effects") or [])
    return None
