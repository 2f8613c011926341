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

Bounded work, paged: a sweep reads, over the `recent` index, only devices whose last report
fell between where the previous sweeps got to (less LATE_GRACE, for reports aggregate
records late) and this sweep's cutoff, and devices the registry changed since (`changed_at`:
re-enabled, moved into a scope or to another window), in pages of PAGE_SIZE, at most
MAX_DEVICES and MAX_RAISES; where it stopped is kept (in the `sweeps` collection, with each
tick's journal: bookkeeping.py) and the next sweep goes on from there. A rule whose scope,
overrides or window changed walks every silent device again. A rule's scope and overrides
are decided from the metadata each device page carries.

State ids are `<device>:<rule>`: a rule name has no `:` (RULE_NAME), so the last `:` splits
any id one way, and nothing but devices' states lives among them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from .alerting import ACKNOWLEDGED, CLEARED, OPEN, RECENT_EVENTS, RESOLVED, Outcome, public
from .bookkeeping import Bookkeeping, TickJournal
from .devices import CHANGED_AT
from .rules import OFFLINE, OfflineRule, verdict
from .store import ALERT_STATE, ALERTS, DEVICES, Store, Update
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
#: How far before the last pass the walk of registry changes looks again: the clocks of
#: whoever changed the registry and of this pod may differ, and a change stamped before a
#: pass may land after it.
CHANGE_GRACE: Final = timedelta(minutes=5)
#: Open alerts of a rule one tick checks for devices that reported since (the fix-up of
#: wrongly raised alerts); the next tick goes on after the last one checked.
FIXUP_CHECKS: Final = 2000
_CAS_ATTEMPTS: Final = 20
RAISED: Final = "raised"


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _time(value: Any) -> datetime | None:
    return _utc(value) if isinstance(value, datetime) else None


class ReportCache:
    """Per device whose offline states this process checked (LRUs, one per process): the
    newest report time, so steady reporters are not checked on every event, and the newest
    `heard` this process wrote, so it is written only every so often."""

    def __init__(self, size: int = 100_000) -> None:
        self._times: OrderedDict[str, datetime] = OrderedDict()
        self._written: OrderedDict[str, datetime] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def newest(self, device_id: str) -> datetime | None:
        with self._lock:
            return self._times.get(device_id)

    def heard(self, device_id: str, at: datetime) -> None:
        self._raise(self._times, device_id, at)

    def written(self, device_id: str) -> datetime | None:
        with self._lock:
            return self._written.get(device_id)

    def wrote(self, device_id: str, at: datetime) -> None:
        self._raise(self._written, device_id, at)

    def _raise(self, times: OrderedDict[str, datetime], device_id: str, at: datetime) -> None:
        with self._lock:
            old = times.get(device_id)
            times[device_id] = _utc(at) if old is None else max(old, _utc(at))
            times.move_to_end(device_id)
            while len(times) > self._size:
                times.popitem(last=False)


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


@dataclass
class _Tick:
    """One delivery of a sweep tick: its time, what it changed so far, and its journal."""

    now: datetime
    key: str
    journal: TickJournal
    outcome: Outcome = field(default_factory=Outcome)
    journaled: int = 0

    @property
    def full(self) -> bool:
        """This tick raised its share: the next one goes on."""
        return len(self.outcome.transitions) >= MAX_RAISES

    def flush(self, *, done: bool = False) -> None:
        """Journal the changes made since the last flush: before saving any progress that
        skips past them, so a redelivery answers them."""
        new = self.outcome.transitions[self.journaled:]
        self.journal.record([{"kind": t["transition"], "alert_id": t["alert"]["id"]}
                             for t in new], done=done)
        self.journaled = len(self.outcome.transitions)


def _fingerprint(rule: OfflineRule) -> str:
    """What decides which devices a pass of the rule alerts: a change starts a full pass."""
    return json.dumps(rule.describe(), sort_keys=True, default=str)


class OfflineBook:
    """Offline alerts in the store, safe with several instances and sweeps at once."""

    def __init__(self, store: Store, rules: Sequence[OfflineRule], default_window: float,
                 reports: ReportCache | None = None) -> None:
        self.store = store
        self.rules = tuple(rules)
        self.default_window = default_window
        self.reports = reports
        self.books = Bookkeeping(store)
        #: The shortest window any rule gives any device (None without rules).
        self.shortest = min((w for r in self.rules for w in windows(r, default_window)),
                            default=None)

    # --- sweeps -----------------------------------------------------------------------------

    def sweep(self, now: datetime, event_key: str, wall: datetime | None = None) -> Outcome:
        """Raise an offline alert for every enabled device silent past a rule's window.

        `now` is the tick's time (the cutoffs), `wall` this clock (the journal's age). A
        redelivery of a tick that finished answers what it changed and changes nothing; one
        of a tick that stopped halfway goes on and answers both.
        """
        journal = TickJournal(self.store, event_key, wall or datetime.now(UTC))
        earlier, done = journal.read()
        if done:
            return Outcome(transitions=self._transitions(earlier), duplicate=True)
        tick = _Tick(now, event_key, journal)
        for rule in self.rules:
            self._resolve_reported(rule, tick)
            base = rule.window(self.default_window)
            for window in (base, *sorted(set(windows(rule, self.default_window)) - {base})):
                self._sweep_rule(rule, window, tick, legacy=f"sweep:{rule.name}"
                                 if window == base else f"sweep:{rule.name}:{window:g}s")
        tick.flush(done=True)
        journal.expire()
        outcome = tick.outcome
        outcome.duplicate = not outcome.changed
        if earlier:
            unique = {(t["transition"], t["alert"]["id"]): t
                      for t in [*self._transitions(earlier), *outcome.transitions]}
            outcome.transitions = list(unique.values())
        return outcome

    def _resolve_reported(self, rule: OfflineRule, tick: _Tick) -> None:
        """Resolve the rule's open alerts of devices that reported after their silence.

        A report resolves its device's alert when alert handles it; this catches the ones it
        could not: a raise that landed after alert skipped the check for a device it had
        just heard from (OfflineBook.handle), when aggregate recorded the report late. It
        pages through every open alert of the rule in id order, at most FIXUP_CHECKS a
        tick, and the next tick goes on after the last one checked; at the end it starts
        over.
        """
        name = f"reported:{rule.name}"
        saved = self.books.read(name) or {}
        after, checked = saved.get("after"), 0
        alerts = self.store.collection(ALERTS)
        while True:
            query: dict[str, Any] = {"state": {"$in": [OPEN, ACKNOWLEDGED]}, "rule": rule.name}
            if after is not None:
                query["_id"] = {"$gt": after}
            with self.store.guard():
                page = list(alerts.find(query, {"device_id": 1, "last_seen": 1})
                            .sort("_id", 1).limit(PAGE_SIZE))
            self._resolve_page(rule, page, tick)
            checked += len(page)
            if len(page) < PAGE_SIZE:
                after = None  # every open alert checked: the next tick starts over
                break
            after = page[-1]["_id"]
            if checked >= FIXUP_CHECKS or tick.full:
                break
        tick.flush()
        if after != saved.get("after"):
            self.books.save(name, {"$set": {"after": after}})

    def _resolve_page(self, rule: OfflineRule, page: list[dict[str, Any]], tick: _Tick) -> None:
        if not page:
            return
        with self.store.guard():
            seen = {d["_id"]: _time(d.get("last_seen")) for d in self.store.collection(
                DEVICES).find({"_id": {"$in": sorted({a["device_id"] for a in page})}},
                              {"last_seen": 1})}
        # An alert's last_seen is the report its silence began with: only a device that
        # reported after it may have been raised on wrongly.
        later = sorted({a["device_id"] for a in page
                        if (at := seen.get(a["device_id"])) is not None
                        and (since := _time(a.get("last_seen"))) is not None and at > since})
        if not later:
            return
        with self.store.guard():
            docs = {d["_id"]: d for d in self.store.collection(ALERT_STATE).find(
                {"_id": {"$in": [state_id(i, rule) for i in later]}})}
        for device in later:
            doc, last_seen = docs.get(state_id(device, rule)), seen[device]
            report = OfflineState.from_doc(doc).last_report
            if doc and last_seen and report and last_seen > report:
                self._transition(rule, device, doc, tick.key, tick.outcome,
                                 resolve_at=last_seen)

    def _sweep_rule(self, rule: OfflineRule, window: float, tick: _Tick, *, legacy: str,
                    ) -> None:
        """One pass over the devices silent past `window`, raising for those whose window
        it is: a rule whose overrides give some devices other windows makes one pass per
        window, each with its own progress, so a long window is not skipped past by the
        progress of a short one.

        Two walks: the devices whose last report fell since the previous pass (less
        LATE_GRACE), and the devices the registry changed since (re-enabled, moved into the
        rule's scope or to this window), however long they have been silent. A pass that
        is new, or whose rule changed (scope, overrides), walks every silent device.
        """
        if tick.full:
            return  # this tick raised enough: the next one sweeps this rule
        name, fingerprint = f"offline:{rule.name}:{window:g}", _fingerprint(rule)
        saved = self.books.read(name)
        if saved is None:
            self._retire_legacy(legacy)
            saved = {}
        if saved.get("rule") != fingerprint:
            saved = {}  # the rule changed: who is in its scope, with which window
        cutoff = tick.now - timedelta(seconds=window)
        silent = {"last_seen": {"$lt": cutoff}}
        through, resume = _time(saved.get("through")), _time(saved.get("resume"))
        stopped = self._walk(rule, window, tick, "last_seen", silent=silent,
                             low=resume or (through - LATE_GRACE if through else None))
        # Progress only ever saves work: a sweep that starts earlier than it could redoes
        # devices it then finds firing, so racing sweeps need no coordination here.
        update: dict[str, Any] = {"$set": {"rule": fingerprint, "resume": stopped}}
        changes = _time(saved.get("changes_through"))
        if changes is None:
            # Changes before a full walk are found by it, however silent the device.
            update["$set"]["changes_through"] = changes = tick.journal.wall
        if stopped is None:
            update["$max"] = {"through": cutoff}
            low = _time(saved.get("changes_resume")) or changes - CHANGE_GRACE
            changed = self._walk(rule, window, tick, CHANGED_AT, silent=silent, low=low)
            update["$set"]["changes_resume"] = changed
            if changed is None and "changes_through" not in update["$set"]:
                update["$max"]["changes_through"] = tick.journal.wall
        self.books.save(name, update)

    def _retire_legacy(self, legacy: str) -> None:
        """An upgrade: the progress earlier versions kept in alert_state (`sweep:<rule>`,
        the id of device `sweep`'s state) leaves it. It is not carried over: the pass
        starts with a walk over every silent device, which also alerts the devices those
        versions missed (eligible again after more than LATE_GRACE of silence)."""
        states = self.store.collection(ALERT_STATE)
        with self.store.guard():
            old = states.find_one({"_id": legacy}, {"rev": 1, "through": 1, "resume": 1})
            if old is None or ("through" not in old and "resume" not in old):
                return  # none, or a device's state
            if "rev" in old:  # a device's state that the progress was written into
                states.update_one({"_id": legacy}, {"$unset": {"through": "", "resume": ""}})
            else:
                states.delete_one({"_id": legacy, "rev": {"$exists": False}})

    def _walk(self, rule: OfflineRule, window: float, tick: _Tick, order: str, *,
              silent: Mapping[str, Any], low: datetime | None) -> datetime | None:
        """Raise for silent devices in the order of `order` from `low`, a page at a time, at
        most MAX_DEVICES; None if it got to the end, else where the next walk goes on."""
        done_at_low: list[str] = []
        examined = 0
        while examined < MAX_DEVICES:
            query: dict[str, Any] = {**silent}
            if low is not None:
                query[order] = {**query.get(order, {}), "$gte": low}
            elif order != "last_seen":
                query[order] = {"$exists": True}
            if done_at_low:
                query["_id"] = {"$nin": done_at_low}
            with self.store.guard():
                page = list(self.store.collection(DEVICES).find(
                    query, {"last_seen": 1, "enabled": 1, "metadata": 1, order: 1},
                ).sort(order, 1).limit(PAGE_SIZE))
            self._raise_page(rule, window, page, tick)
            examined += len(page)
            if len(page) < PAGE_SIZE:
                tick.flush()
                return None
            last = _utc(page[-1][order])
            if last != low:
                done_at_low = []
            low = last
            done_at_low += [d["_id"] for d in page if _utc(d[order]) == last]
            if tick.full:
                break
        tick.flush()
        return low

    def _raise_page(self, rule: OfflineRule, window: float, page: list[dict[str, Any]],
                    tick: _Tick) -> None:
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
            self._transition(rule, device["_id"], docs.get(sid), tick.key, tick.outcome,
                             raise_at=(tick.now, _utc(device["last_seen"]), window))

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
        shortest = min(w for r in self.rules for w in windows(r, self.default_window))
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
        written = self.reports.written(event.device_id) if self.reports is not None else None
        # alert's own knowledge of the device's reports, `heard`, is written at most every
        # quarter of the shortest window (see _heard_update).
        due = written is None or (heard - written).total_seconds() >= shortest / 4
        states = self.store.collection(ALERT_STATE)
        with self.store.guard():
            if due and len(ids) == 1:
                # One offline rule (the defaults): read and write in one command. The state
                # comes back with `heard` and its new `rev`, ready for a resolve.
                doc = self._record_heard(event.device_id, self.rules[0], heard)
                docs = {} if doc is None else {ids[0]: doc}
            else:
                docs = {d["_id"]: d for d in states.find({"_id": {"$in": ids}})}
        for rule, sid in zip(self.rules, ids, strict=True):
            if sid in docs:
                self._transition(rule, event.device_id, docs[sid], event.key, outcome,
                                 resolve_at=_utc(seen))
        if due and len(ids) > 1:
            # A duplicate key (another instance inserted the state first) leaves its `heard`.
            self.store.bulk(ALERT_STATE, [Update({"_id": sid}, _heard_update(
                event.device_id, rule, heard), upsert=True)
                for rule, sid in zip(self.rules, ids, strict=True)])
        if self.reports is not None:
            self.reports.heard(event.device_id, heard)
            if due:
                self.reports.wrote(event.device_id, heard)
        return outcome

    def _record_heard(self, device_id: str, rule: OfflineRule, heard: datetime,
                      ) -> dict[str, Any] | None:
        """Write `heard` into the device's state of `rule`; the state after."""
        update, sid = _heard_update(device_id, rule, heard), state_id(device_id, rule)
        states = self.store.collection(ALERT_STATE)
        try:
            doc = states.find_one_and_update({"_id": sid}, update, upsert=True,
                                             return_document=ReturnDocument.AFTER)
        except DuplicateKeyError:  # another instance inserted it first: update it
            doc = states.find_one_and_update({"_id": sid}, update,
                                             return_document=ReturnDocument.AFTER)
        return doc

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
            # A state that older versions merged with their sweep progress has no rev.
            held = doc.get("rev") if doc else None
            rev = int(held or 0)
            if doc and not doc.get("applied", True):
                self._apply(rule, device_id, doc.get("effects") or [])
                self._mark_applied(sid, rev)
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
                # aggregate's last_seen may lag (a backlog): alert's own `heard` may be newer.
                silent_since = max(last_seen, state.last_report or last_seen,
                                   _time((doc or {}).get("heard")) or last_seen)
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
                elif states.update_one({"_id": sid, "rev": held},
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


def _heard_update(device_id: str, rule: OfflineRule, heard: datetime) -> dict[str, Any]:
    """Record in a device's offline state the newest report alert handled (`heard`).

    A sweep judges silence by aggregate's `last_seen`; while aggregate lags by more than a
    window (a backlog), a device that reports would be raised on, resolved by its next
    report, raised again a window later, and so on. A sweep raises only for a device silent
    by both. The write moves `rev`: a sweep that read the state before it fails its
    compare-and-swap, reads again and finds `heard`.
    """
    return {"$max": {"heard": heard}, "$inc": {"rev": 1},
            "$setOnInsert": {"device_id": device_id, "rule": rule.name}}


def _earlier_effects(doc: Mapping[str, Any] | None, key: str) -> list[dict[str, Any]] | None:
    """The effects an event already had on this state, or None if it had none remembered."""
    for entry in reversed((doc or {}).get("recent") or []):
        if entry.get("event") == key:
            return list(entry.get("effects") or [])
    return None
