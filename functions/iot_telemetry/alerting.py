"""Alert lifecycle: rule evaluation with hysteresis, and its atomic record in the store.

Per device one state document (`<device>|rules`) holds where evaluation of each of its
threshold rules stands. Handling an event: read the state (or take the one this process
wrote last), evaluate each rule on the readings not older than the last one it evaluated (a
reading at the same time counts unless this very event already gave one), then commit the
new states of every rule with one compare-and-swap on `rev`, together with the effects they
imply (raise, update, resolve an alert). Effects are applied after the commit and are
idempotent (deterministic alert ids, $max/$min/$setOnInsert, updates conditional on time);
the commit records them as unapplied, so after a crash in between whoever reads the state
next applies them. The state also remembers the raises and resolves of its last
RECENT_EVENTS events, so a redelivery of one of them re-applies them and answers the same
alert events even after later events moved the state on.

Store commands per event in the steady state: one (the compare-and-swap), plus one update
command carrying every raise, update and resolve of the event (while an alert is open), plus
a read of the raised or resolved alerts for their events.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from .errors import Conflict, DependencyUnavailable, NotFound
from .observability import ALERT_BATCH_EVENTS
from .rules import AlertRule
from .store import ALERT_STATE, ALERTS, Store, Update
from .telemetry import DataPoint, TelemetryEvent, format_time

log = logging.getLogger(__name__)

OPEN: Final = "open"
ACKNOWLEDGED: Final = "acknowledged"
RESOLVED: Final = "resolved"
_CAS_ATTEMPTS: Final = 20
#: Events whose raises and resolves are remembered per (device, rule) for redeliveries.
RECENT_EVENTS: Final = 32
#: Events remembered as evaluated at the newest reading time (ties), per (device, rule).
_TIED_EVENTS: Final = 100
#: Key of a cached state document (StateCache only) holding its rules' states as RuleStates.
_PARSED: Final = "\x00states"
#: Why an alert was resolved.
CLEARED: Final = "cleared"
RULE_REMOVED: Final = "rule_removed"
#: The rule is still configured but no longer applies to the device (scope or metadata changed).
RULE_OUT_OF_SCOPE: Final = "rule_out_of_scope"


@dataclass(frozen=True)
class RuleState:
    """Where evaluation of one rule for one device stands."""

    firing: bool = False
    streak: int = 0
    streak_since: datetime | None = None
    streak_peak: float | None = None
    last_time: datetime | None = None
    episode: int = 0
    count: int = 0
    peak: float | None = None
    #: Keys of the events whose readings at `last_time` were evaluated.
    last_events: tuple[str, ...] = ()

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> RuleState:
        if not doc:
            return cls()
        names = cls.__dataclass_fields__
        values: dict[str, Any] = {k: _utc(v) if isinstance(v, datetime) else v
                                  for k, v in doc.get("state", {}).items() if k in names}
        values["last_events"] = tuple(values.get("last_events") or ())
        return cls(**values)

    def to_doc(self) -> dict[str, Any]:
        return {**vars(self), "last_events": list(self.last_events)}


@dataclass(frozen=True)
class Effect:
    """A change to an alert document implied by evaluation."""

    kind: str  # raised | updated | resolved
    alert_id: str
    time: datetime
    value: float
    count: int
    peak: float
    first_seen: datetime | None = None
    #: The rule it belongs to (one state document holds every rule of a device).
    rule: str = ""

    def to_doc(self) -> dict[str, Any]:
        return dict(vars(self))  # flat: asdict's deep copy cost more than the evaluation

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Effect:
        values: dict[str, Any] = {k: _utc(v) if isinstance(v, datetime) else v
                                  for k, v in doc.items()}
        return cls(**values)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def device_state_id(device_id: str) -> str:
    """The state document of a device's threshold rules: `|` is in no device id or rule
    name, so it never meets the `<device>:<rule>` documents of offline rules."""
    return f"{device_id}|rules"


def alert_id(device_id: str, rule: AlertRule, episode: int) -> str:
    return f"{device_id}:{rule.name}:{episode}"


def evaluate(rule: AlertRule, device_id: str, state: RuleState,
             points: Sequence[DataPoint], event_key: str = "") -> tuple[RuleState, list[Effect]]:
    """Evaluate readings in time order; readings older than the last evaluated are skipped.

    Skipping them keeps a late reading from flipping the state. A reading at the same time
    as the last evaluated one (times have millisecond precision: fast sensors tie) is
    evaluated, unless `event_key` names an event already evaluated at that time, so a
    redelivered event counts nothing twice.
    """
    # Plain locals, one RuleState at the end: a dataclasses.replace per reading was a fifth
    # of alert's CPU per event (tests/benchmarks/function_cpu.py --profile).
    effects: list[Effect] = []
    newest, tied = state.last_time, state.last_events
    firing, streak, since, streak_peak = (state.firing, state.streak, state.streak_since,
                                          state.streak_peak)
    last_time, last_events = state.last_time, state.last_events
    episode, count, peak = state.episode, state.count, state.peak
    mine = [p for p in points if p.metric == rule.metric]
    mine.sort(key=lambda p: (p.time, p.value))
    for p in mine:
        if newest is not None and (p.time < newest or (p.time == newest and event_key in tied)):
            continue
        if last_time is None or p.time > last_time:
            last_time, last_events = p.time, (event_key,)
        elif event_key not in last_events:
            last_events = (*last_events, event_key)[-_TIED_EVENTS:]
        value = p.value
        if firing:
            if rule.clears(value):
                effects.append(Effect(RESOLVED, alert_id(device_id, rule, episode), p.time,
                                      value, count, peak if peak is not None else value,
                                      rule=rule.name))
                firing, streak, since, streak_peak, count, peak = (False, 0, None, None, 0,
                                                                   None)
            elif rule.violates(value):
                peak = value if peak is None else rule.worse(peak, value)
                count += 1
                effects.append(Effect("updated", alert_id(device_id, rule, episode), p.time,
                                      value, count, peak, rule=rule.name))
            continue
        if not rule.violates(value):
            streak, since, streak_peak = 0, None, None
            continue
        since = since or p.time
        streak_peak = value if streak_peak is None else rule.worse(streak_peak, value)
        streak += 1
        if streak >= rule.for_count and (p.time - since).total_seconds() >= rule.for_seconds:
            episode += 1
            effects.append(Effect("raised", alert_id(device_id, rule, episode), p.time,
                                  value, streak, streak_peak, first_seen=since,
                                  rule=rule.name))
            firing, count, peak = True, streak, streak_peak
            streak, since, streak_peak = 0, None, None
    return RuleState(firing=firing, streak=streak, streak_since=since, streak_peak=streak_peak,
                     last_time=last_time, episode=episode, count=count, peak=peak,
                     last_events=last_events), effects


def _newest_updates(effects: Sequence[Effect]) -> list[Effect]:
    """The effects with each run of updates of one alert cut to its newest.

    An update carries the alert's whole standing (count, peak, last value and its time), so
    the newest of a run says all the others do: one statement per alert and event to store
    and apply, not one per reading (an event holds ten readings of a metric).
    """
    out: list[Effect] = []
    for e in effects:
        if (e.kind == "updated" and out and out[-1].kind == "updated"
                and out[-1].alert_id == e.alert_id):
            out[-1] = e
        else:
            out.append(e)
    return out


def _as_transitions(effects: Sequence[Effect], alerts: Mapping[str, Mapping[str, Any]],
                    ) -> list[dict[str, Any]]:
    """The alert events of the raises and resolves among `effects`, from their documents."""
    return [{"transition": "raised" if e.kind == "raised" else RESOLVED,
             "alert": public(alerts[e.alert_id])}
            for e in effects if e.kind in ("raised", RESOLVED) and e.alert_id in alerts]


@dataclass
class Outcome:
    """What handling an event did: alert events to emit, and whether anything was new."""

    transitions: list[dict[str, Any]] = field(default_factory=list)
    changed: bool = False
    duplicate: bool = False


def _finished(outcome: Outcome, evaluated: bool) -> Outcome:
    """An event's outcome as answered: a duplicate when its rules moved nothing, each alert
    event once."""
    if evaluated:
        outcome.duplicate = not outcome.changed
    unique = {(t["transition"], t["alert"]["id"]): t for t in outcome.transitions}
    outcome.transitions = list(unique.values())
    return outcome


def _one(book: AlertBook, event: TelemetryEvent) -> Outcome | Exception:
    """One event the one-event way; what it raises is its own result, not the batch's."""
    try:
        return book.handle(event)
    except Exception as exc:  # a failure fails only its own delivery
        return exc


@dataclass
class _Plan:
    """The new state of a device's rules after an event, and the write that records it."""

    device_id: str
    event_key: str
    rev: int
    whole: dict[str, Any]
    moved: tuple[str, ...]
    effects: list[Effect]
    recent: list[Any]
    recent_changed: bool
    #: Every rule's state as this write leaves it, as objects (see `cached`).
    states: dict[str, RuleState] = field(default_factory=dict)

    @classmethod
    def of(cls, doc: Mapping[str, Any], rules: Sequence[AlertRule],
           event: TelemetryEvent) -> _Plan | None:
        """Evaluate `rules` on the event from the state in `doc`; None if nothing moved."""
        saved = doc.get("rules") or {}
        parsed: Mapping[str, RuleState] = doc.get(_PARSED) or {}
        states = dict(parsed)
        moved: dict[str, RuleState] = {}
        effects: list[Effect] = []
        for rule in rules:
            state = parsed.get(rule.name) or RuleState.from_doc(saved.get(rule.name))
            new_state, done = evaluate(rule, event.device_id, state, event.points, event.key)
            states[rule.name] = new_state
            if new_state != state:
                moved[rule.name] = new_state
                effects += _newest_updates(done)
        if not moved:
            return None
        recent = list(doc.get("recent") or [])
        changes = [e.to_doc() for e in effects if e.kind != "updated"]
        if changes:
            recent = [*recent, {"event": event.key, "effects": changes}][-RECENT_EVENTS:]
        whole = {**saved, **{name: {"state": st.to_doc()} for name, st in moved.items()}}
        return cls(event.device_id, event.key, int(doc.get("rev", 0)), whole, tuple(moved),
                   effects, recent, bool(changes), states)

    def body(self) -> dict[str, Any]:
        # Effects are marked unapplied in the commit and never marked applied after: the
        # next event's commit replaces them, and a reader that finds them unapplied applies
        # them again, which is harmless (they are idempotent). That saves a store command
        # on every event that changes an alert.
        return {"effects": [e.to_doc() for e in self.effects], "event": self.event_key,
                "applied": not self.effects, "rev": self.rev + 1}

    def new_document(self) -> dict[str, Any]:
        return {"_id": device_state_id(self.device_id), "device_id": self.device_id,
                "rules": self.whole, **self.body(), "recent": self.recent}

    def compare_and_swap(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Filter and update of the write, valid only while the state is at `rev`."""
        # `recent` (up to RECENT_EVENTS events' effects, kilobytes) is written only when it
        # changed: most events move a streak or a time, not an alert.
        changed = {"recent": self.recent} if self.recent_changed else {}
        return ({"_id": device_state_id(self.device_id), "rev": self.rev},
                {"$set": {**{f"rules.{name}": self.whole[name] for name in self.moved},
                          **self.body(), **changed}})

    def cached(self) -> dict[str, Any]:
        """The document as this write leaves it, its effects applied; with its rules' states
        as objects too, so the device's next event here does not decode them again (a
        fifth of alert's library CPU on a single-reading event). Never written to the store."""
        return {**self.new_document(), "applied": True, _PARSED: self.states}


class StateCache:
    """The device state documents this process wrote last, so the next event of that device
    skips reading its document back: the compare-and-swap on `rev` still guards every
    write, and a refused one reads the store again. With ordered delivery each device's
    events reach one pod at a time, so almost every read is saved (one store command per
    event)."""

    def __init__(self, size: int = 50_000) -> None:
        self._docs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, state_id: str) -> dict[str, Any] | None:
        with self._lock:
            doc = self._docs.get(state_id)
            if doc is not None:
                self._docs.move_to_end(state_id)
            return doc

    def put(self, state_id: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._docs[state_id] = doc
            self._docs.move_to_end(state_id)
            while len(self._docs) > self._size:
                self._docs.popitem(last=False)

    def drop(self, state_id: str) -> None:
        with self._lock:
            self._docs.pop(state_id, None)


class AlertBook:
    """Alert state and documents in the store, safe with several instances at once.

    One state document per device (`<device>|rules`) holds the evaluation state of every
    threshold rule, so an event costs one compare-and-swap whatever the number of rules its
    readings touch (it was one per rule: 4 with the default rules), and an event's effects on
    all rules are committed together: a redelivery finds them in one place.
    """

    def __init__(self, store: Store, rules: Sequence[AlertRule],
                 other_rules: Sequence[str] = (), cache: StateCache | None = None,
                 rules_for: Callable[[str], Sequence[AlertRule]] | None = None) -> None:
        self.store = store
        self.cache = cache or StateCache(0)
        self.rules = tuple(rules)
        #: Names of the other rules configured (offline rules): their alerts are no orphans.
        self.other_rules = tuple(other_rules)
        #: The rules that apply to a device, with its values (applicability.RuleResolver).
        self.rules_for = rules_for or (lambda _device: self.rules)

    def applicable(self, event: TelemetryEvent) -> list[AlertRule]:
        """The rules the event's readings can move: those of its metrics that apply to its
        device, with the device's values."""
        metrics = {p.metric for p in event.points}
        return [r for r in self.rules_for(event.device_id) if r.metric in metrics]

    def handle(self, event: TelemetryEvent) -> Outcome:
        outcome = Outcome()
        rules = self.applicable(event)
        if rules:
            self._handle(rules, event, outcome)
        return _finished(outcome, bool(rules))

    def _handle(self, rules: Sequence[AlertRule], event: TelemetryEvent,
                outcome: Outcome) -> None:
        states = self.store.collection(ALERT_STATE)
        _id = device_state_id(event.device_id)
        for attempt in range(_CAS_ATTEMPTS):
            doc = self.cache.get(_id) if attempt == 0 else None
            if doc is None:
                with self.store.guard():
                    doc = states.find_one({"_id": _id}) or self._legacy(event.device_id)
            if not doc.get("applied", True):
                # The last writer crashed between its commit and its effects: apply them
                # (idempotent) before moving on.
                self._apply(event.device_id, [Effect.from_doc(e) for e in doc["effects"]])
            earlier = _earlier_effects(doc, event.key)
            if earlier is not None:
                # A redelivery of an event that changed alerts (its reply may have been lost):
                # apply its effects again (idempotent) and answer the same alert events.
                # Applying again also repairs a write that FerretDB on SQLite lost to a
                # concurrent update (BENCHMARKS.md).
                self._apply(event.device_id, earlier)
                outcome.transitions += self._transitions(earlier)
                return
            plan = _Plan.of(doc, rules, event)
            if plan is None:
                return
            self.cache.drop(_id)  # until this write is known to have landed
            with self.store.guard():
                if plan.rev == 0:
                    try:
                        states.insert_one(plan.new_document())
                    except DuplicateKeyError:
                        continue
                elif states.update_one(*plan.compare_and_swap()).matched_count == 0:
                    continue
            outcome.changed = True
            if plan.effects:
                self._apply(event.device_id, plan.effects)
                outcome.transitions += self._transitions(plan.effects)
            self.cache.put(_id, plan.cached())
            return
        raise RuntimeError(f"alert state {_id}: too many concurrent updates")

    def handle_batch(self, items: Sequence[tuple[AlertBook, TelemetryEvent]],
                     ) -> list[Outcome | Exception]:
        """Group commit: handle the events of concurrent deliveries with shared round trips.

        Per round, one event per device (a device's events keep their order): one `find` for
        the states this process has not cached, one update command carrying every
        compare-and-swap, one for every alert change, one `find` for the alert events. An
        event whose compare-and-swap is refused (another instance wrote its device's state
        meanwhile), a device without a state document, a redelivery and a crash recovery go
        the one-event way, `handle`. `items` pair each event with the book of its device's
        rules; the books share this one's store and cache.
        """
        ALERT_BATCH_EVENTS.observe(len(items))
        results: list[Outcome | Exception] = [Outcome() for _ in items]
        pending = list(range(len(items)))
        while pending:
            devices: set[str] = set()
            first: list[int] = []
            later: list[int] = []
            for i in pending:
                device = items[i][1].device_id
                (later if device in devices else first).append(i)
                devices.add(device)
            self._round(items, first, results)
            pending = later
        return results

    def _round(self, items: Sequence[tuple[AlertBook, TelemetryEvent]], indexes: list[int],
               results: list[Outcome | Exception]) -> None:
        ids = {i: device_state_id(items[i][1].device_id) for i in indexes}
        docs = {i: self.cache.get(ids[i]) for i in indexes}
        unread = [ids[i] for i in indexes if docs[i] is None]
        if unread:
            with self.store.guard():
                found = {d["_id"]: d for d in self.store.collection(ALERT_STATE).find(
                    {"_id": {"$in": unread}})}
            docs.update((i, found.get(ids[i])) for i in indexes if docs[i] is None)
        plans: dict[int, _Plan] = {}
        for i in indexes:
            book, event = items[i]
            rules = book.applicable(event)
            doc = docs[i]
            if not rules:
                results[i] = _finished(Outcome(), False)
            elif (doc is None or not doc.get("applied", True)
                  or _earlier_effects(doc, event.key) is not None):
                results[i] = _one(book, event)
            elif (plan := _Plan.of(doc, rules, event)) is None:
                results[i] = _finished(Outcome(), True)
            else:
                plans[i] = plan
        if not plans:
            return
        for i in plans:
            self.cache.drop(ids[i])  # until its write is known to have landed
        swaps = [Update(*plans[i].compare_and_swap()) for i in plans]
        outcome = self.store.bulk(ALERT_STATE, swaps, tolerate=True)
        landed = set(plans)
        if outcome.matched < len(swaps):
            # The command tells how many matched, not which: read back who wrote each state.
            with self.store.guard():
                written = {d["_id"]: d for d in self.store.collection(ALERT_STATE).find(
                    {"_id": {"$in": [ids[i] for i in plans]}}, {"rev": 1, "event": 1})}
            landed = {i for i in plans
                      if (written.get(ids[i]) or {}).get("rev") == plans[i].rev + 1
                      and written[ids[i]].get("event") == items[i][1].key}
        for i in plans:
            if i not in landed:
                results[i] = _one(items[i][0], items[i][1])  # refused: the one-event way
        done = [i for i in plans if i in landed]
        broken = self._write_effects([(i, op) for i in done for op in items[i][0]._effect_ops(
            items[i][1].device_id, plans[i].effects)])
        for i, exc in broken.items():
            # Committed but not all applied: the state says so (`applied` false), so whoever
            # reads it next, the redelivery of this event included, applies them.
            results[i] = exc
        done = [i for i in done if i not in broken]
        changes = [e for i in done for e in plans[i].effects if e.kind in ("raised", RESOLVED)]
        alerts = self._alerts([e.alert_id for e in changes])
        for i in done:
            result = Outcome(changed=True,
                             transitions=_as_transitions(plans[i].effects, alerts))
            results[i] = _finished(result, True)
            self.cache.put(ids[i], plans[i].cached())

    def _legacy(self, device_id: str) -> dict[str, Any]:
        """A device with no state document yet: its state from the per-rule documents that
        earlier versions kept (`<device>:<rule>`), so an upgrade neither loses a firing
        state nor opens a second alert for it; empty for a new device."""
        with self.store.guard():
            docs = list(self.store.collection(ALERT_STATE).find(
                {"_id": {"$in": [f"{device_id}:{r.name}" for r in self.rules]}}))
        doc: dict[str, Any] = {"rules": {}, "recent": [], "rev": 0}
        for old in docs:
            doc["rules"][old["rule"]] = {"state": old.get("state", {})}
            doc["recent"] += [{"event": r["event"], "effects": [
                {**e, "rule": old["rule"]} for e in r.get("effects", [])]}
                for r in old.get("recent") or []]
            if not old.get("applied", True):
                self._apply(device_id, [Effect.from_doc({**e, "rule": old["rule"]})
                                        for e in old.get("effects", [])])
        doc["recent"] = doc["recent"][-RECENT_EVENTS:]
        return doc

    def _rule(self, name: str, device_id: str) -> AlertRule | None:
        """The rule as it applies to the device (its values); None if gone or not applying."""
        return next((r for r in self.rules_for(device_id) if r.name == name), None)

    def _apply(self, device_id: str, effects: Sequence[Effect]) -> None:
        """Apply effects to the alert documents: one ordered update command for all of them.

        Every statement is idempotent ($setOnInsert, $max/$min, sets conditional on time or
        state), so the command can run again whole: that is what a lost insert race (another
        instance raised the same alert first: a duplicate key, which stops an ordered command)
        does, and what a redelivery or a crash recovery does.
        """
        failed = self._write_effects([(0, op) for op in self._effect_ops(device_id, effects)])
        if failed:
            raise failed[0]

    def _write_effects(self, owned: Sequence[tuple[int, Update]]) -> dict[int, Exception]:
        """Apply alert changes (each with the event it belongs to) in one ordered command;
        return the events whose changes could not all be applied, with why.

        In order: an update and the resolve of one alert in one event must land in that
        order. An ordered command stops at its first refusal. A duplicate key (another
        instance raised the same alert first) is run again from there: the raise now finds
        the document, so every round gets further. Any other refusal fails the event it
        belongs to, and the changes of the other events go on.
        """
        failed: dict[int, Exception] = {}
        pending = list(owned)
        for _ in range(len(owned) + 1):
            pending = [(owner, op) for owner, op in pending if owner not in failed]
            if not pending:
                return failed
            outcome = self.store.bulk(ALERTS, [op for _, op in pending], ordered=True,
                                      tolerate=True)
            stops = sorted([*outcome.duplicates, *outcome.failed])
            if not stops:
                return failed
            stop = stops[0]
            if stop in outcome.failed:
                failed[pending[stop][0]] = DependencyUnavailable(
                    f"store refused an alert change: {outcome.failed[stop][1]}", 1)
            pending = pending[stop:]
        for owner, _ in pending:
            failed.setdefault(owner, DependencyUnavailable("alert changes kept colliding", 1))
        return failed

    def _effect_ops(self, device_id: str, effects: Sequence[Effect]) -> list[Update]:
        """The statements that apply `effects` to the alert documents, in order."""
        ops: list[Update] = []
        for e in effects:
            rule = self._rule(e.rule, device_id)
            if e.kind == "raised":
                if rule is None:
                    continue  # its rule is gone: nothing to raise (orphans are resolved)
                # Applied late (a crash, a redelivery, another instance), a raise must not
                # undo newer updates: the peak only moves to the violating side, the last
                # value only while no newer reading was recorded (the second statement: a
                # no-op right after the insert, which set both).
                extreme: dict[str, Any] = {"last_seen": e.time, "count": e.count}
                peak = {"peak": e.peak}
                ops.append(Update({"_id": e.alert_id}, {
                    "$setOnInsert": {
                        "device_id": device_id, "metric": rule.metric, "rule": rule.name,
                        "severity": rule.severity, "condition": rule.condition,
                        "threshold": rule.threshold, "clear_threshold": rule.clear_threshold,
                        "state": OPEN, "raised_at": e.time, "first_seen": e.first_seen,
                        "last_value": e.value, "acknowledged_at": None,
                        "acknowledged_by": None, "resolved_at": None,
                        "resolved_value": None, "resolved_reason": None},
                    **({"$max": {**extreme, **peak}} if rule.rising
                       else {"$max": extreme, "$min": peak}),
                }, upsert=True))
                ops.append(Update({"_id": e.alert_id, "last_seen": e.time},
                                  {"$set": {"last_value": e.value}}))
            elif e.kind == "updated":
                ops.append(Update({"_id": e.alert_id, "last_seen": {"$lte": e.time}},
                                  {"$set": {"last_value": e.value, "peak": e.peak,
                                            "last_seen": e.time, "count": e.count}}))
            else:
                ops.append(Update(
                    {"_id": e.alert_id, "state": {"$in": [OPEN, ACKNOWLEDGED]}},
                    {"$set": {"state": RESOLVED, "resolved_at": e.time,
                              "resolved_value": e.value, "resolved_reason": CLEARED}}))
        return ops

    def _transitions(self, effects: Sequence[Effect]) -> list[dict[str, Any]]:
        alerts = self._alerts([e.alert_id for e in effects if e.kind in ("raised", RESOLVED)])
        return _as_transitions(effects, alerts)

    def _alerts(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        with self.store.guard():
            return {d["_id"]: d for d in self.store.collection(ALERTS).find(
                {"_id": {"$in": sorted(set(ids))}})}

    def orphans(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Open or acknowledged alerts whose rule is no longer configured (removed, renamed)."""
        with self.store.guard():
            return list(self.store.collection(ALERTS).find(
                {"state": {"$in": [OPEN, ACKNOWLEDGED]},
                 "rule": {"$nin": [r.name for r in self.rules] + list(self.other_rules)}},
            ).limit(limit))

    def resolve_orphan(self, doc: Mapping[str, Any], now: datetime,
                       reason: str = RULE_REMOVED) -> None:
        """Resolve an alert no rule can close any more (a removed rule, or one that no longer
        applies to the device) with that reason, and stop its evaluation state.

        The state stops firing but keeps its episode count, so if a rule of that name comes
        back, its next raise opens a new alert instead of updating the resolved one.
        """
        with self.store.guard():
            self.store.collection(ALERTS).update_one(
                {"_id": doc["_id"], "state": {"$in": [OPEN, ACKNOWLEDGED]}},
                {"$set": {"state": RESOLVED, "resolved_at": now, "resolved_value": None,
                          "resolved_reason": reason}})
            # This process's copy of the state is stale from here on.
            self.cache.drop(device_state_id(doc["device_id"]))
            stopped = {"firing": False, "streak": 0, "streak_since": None,
                       "streak_peak": None, "count": 0, "peak": None}
            at = f"rules.{doc['rule']}.state"
            # Pending effects stay: those of other rules still apply, and a raise of a rule
            # that is gone is skipped when applied.
            self.store.collection(ALERT_STATE).update_one(
                {"_id": device_state_id(doc["device_id"]), f"{at}.firing": True},
                {"$set": {f"{at}.{k}": v for k, v in stopped.items()}, "$inc": {"rev": 1}})
            # A device not seen since an upgrade still has its state per rule.
            self.store.collection(ALERT_STATE).update_one(
                {"_id": f"{doc['device_id']}:{doc['rule']}", "state.firing": True},
                {"$set": {**{f"state.{k}": v for k, v in stopped.items()},
                          "effects": [], "applied": True},
                 "$inc": {"rev": 1}})

    def acknowledge(self, alert_id: str, by: str, now: datetime,
                    devices: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], bool]:
        """open -> acknowledged; repeating it is harmless; a resolved alert is a conflict.

        `devices`: a filter on the alert's device (a token's scope); an alert outside it is
        not found. Returns the alert and whether this call acknowledged it.
        """
        def within(filt: dict[str, Any]) -> dict[str, Any]:
            return {"$and": [filt, dict(devices)]} if devices else filt

        with self.store.guard():
            doc = self.store.collection(ALERTS).find_one_and_update(
                within({"_id": alert_id, "state": OPEN}),
                {"$set": {"state": ACKNOWLEDGED, "acknowledged_at": now, "acknowledged_by": by}},
                return_document=ReturnDocument.AFTER)
            changed = doc is not None
            if doc is None:
                doc = self.store.collection(ALERTS).find_one(within({"_id": alert_id}))
        if doc is None:
            raise NotFound(f"alert {alert_id!r} not found")
        if doc["state"] == RESOLVED:
            raise Conflict(f"alert {alert_id!r} is already resolved")
        return public(doc), changed


def _earlier_effects(doc: Mapping[str, Any] | None, event_key: str) -> list[Effect] | None:
    """The effects an event already had on this state, or None if it had none remembered."""
    if not doc:
        return None
    if doc.get("event") == event_key and doc.get("effects"):
        return [Effect.from_doc(e) for e in doc["effects"]]
    for entry in reversed(doc.get("recent") or []):
        if entry.get("event") == event_key:
            return [Effect.from_doc(e) for e in entry.get("effects", [])]
    return None


#: Fields every alert shows, null until they apply (FerretDB drops nulls set on insert);
#: `metric` is null for offline alerts.
_OPTIONAL: Final = ("metric", "acknowledged_at", "acknowledged_by", "resolved_at", "resolved_value",
                    "resolved_reason")


def public(doc: Mapping[str, Any]) -> dict[str, Any]:
    """An alert document as the API and alert events show it (times as RFC 3339)."""
    out: dict[str, Any] = {"id": doc["_id"], **dict.fromkeys(_OPTIONAL)}
    for key, value in doc.items():
        if key != "_id":
            out[key] = format_time(value) if isinstance(value, datetime) else value
    return out
