"""Writing rollups and latest values: exact under redelivery, crashes, concurrent instances
and any arrival order, in a fixed number of store round trips per batch of events.

How an event counts exactly once without transactions (the layout is in series.py):
1. Its readings of one hour go into that hour's document in one atomic update; the filter
   `ids: {$ne: key}` turns a second delivery into a duplicate-key refusal of the upsert,
   and the update pushes the key. Every field is commutative (`$inc`; `$min`/`$max`, over
   order-preserving strings for first and last), so arrival order does not matter and
   nothing needs a second write.
2. The day document takes a snapshot of the hour's totals by `$max` over a string that
   starts with the hour document's version: redoing this step after a crash, or two
   instances doing it at once, keeps the newest.
3. The device's latest value of each metric is `$max` over (time, value) strings; last
   seen `$max`, first seen `$min`.
A redelivery redoes steps 2 and 3, so a crash anywhere is finished by the retry. An event
without `time` first gets the time settled for it (eventtime.py); a copy of one stamped too
long ago to be recognised by that time any more is not counted (`Retention.stamp_counts`).

Retention (retention.py): the hour document gets its expiry in step 1's update. Readings of
an hour whose document, keys included, may be gone soon are skipped (counted in
iot_points_expired_total), never counted again in a recreated document.

Group commit: the events one process has in flight go through these steps together, each
step one bulk command, so a batch costs 4 round trips whatever its size; a write refused
for one event fails only that event.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure

from .errors import BadRequest, DependencyUnavailable
from .eventtime import EventTimes
from .groupcommit import GroupCommit
from .observability import AGGREGATE_BATCH_EVENTS, POINTS_EXPIRED, RAW_DROPPED
from .raw import RawWrite
from .raw import updates as raw_updates
from .retention import Retention, with_history
from .series import Summary, add_reading, bucket_start, day_id, hour_id, reading_key
from .store import (
    DEVICES,
    NOT_IMPLEMENTED,
    RAW_READINGS,
    ROLLUP_DAYS,
    ROLLUP_HOURS,
    Store,
    Update,
)
from .telemetry import DataPoint, TelemetryEvent, parse_time

log = logging.getLogger(__name__)

#: Most events one hour document of one device counts. Each costs 8 bytes of key plus its
#: array index in `ids`: 200,000 keep a document under 4 MiB with dozens of metrics, well
#: under MongoDB's 16 MiB; that is 55 events/s sustained for the whole hour, above the
#: default per-device rate limit (50/s). Past it an event is refused (400, dead-lettered)
#: instead of failing every later write of that hour.
MAX_EVENTS_PER_HOUR: Final = 200_000
#: What the hour documents' read-back returns: never the keys or the minute slots.
_TOTALS: Final = {"v": 1, "tot": 1}
#: Server codes of a document that would grow past the size limit.
_TOO_LARGE: Final = frozenset({10334, 17419, 17420})


def event_hash(key: str) -> int:
    """64-bit key of an event in an hour document (collision odds ~1e-9 at the cap)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big",
                          signed=True)


@dataclass
class _HourWrite:
    """One event's readings of one hour, as one update of that hour's document."""

    owner: int
    device_id: str
    start: datetime
    key: int
    metrics: tuple[str, ...]
    update: Update

    @property
    def id(self) -> str:
        return hour_id(self.device_id, self.start)


@dataclass
class _Merged:
    """Updates of one document merged over a batch, and the events they belong to."""

    device_id: str
    start: datetime | None
    low: dict[str, Any] = field(default_factory=dict)
    high: dict[str, Any] = field(default_factory=dict)
    owners: set[int] = field(default_factory=set)

    def lower(self, path: str, value: Any) -> None:
        if path not in self.low or value < self.low[path]:
            self.low[path] = value

    def raise_(self, path: str, value: Any) -> None:
        if path not in self.high or value > self.high[path]:
            self.high[path] = value


class RollupWriter:
    """Applies events to the rollups and each device's latest values (one per process)."""

    def __init__(self, store: Store, max_events_per_hour: int = MAX_EVENTS_PER_HOUR, *,
                 retention: Retention | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 event_times: EventTimes | None = None) -> None:
        self.store = store
        self.max_events_per_hour = max_events_per_hour
        self.retention = retention or Retention()
        self.clock = clock
        self.event_times = event_times or EventTimes(store, self.retention, clock)
        self._history_read = False
        self._commit: GroupCommit[TelemetryEvent, bool] = GroupCommit(self.apply_batch)
        # findAndModify with a projection: MongoDB has it, FerretDB 1.x answers 238.
        self._projected_find_and_modify = True

    def apply(self, event: TelemetryEvent) -> bool:
        """Apply one event, together with the others in flight; False when it had been
        counted before (a redelivery). Raises what failed for this event."""
        return self._commit.submit(event)

    def apply_batch(self, batch: Sequence[TelemetryEvent]) -> list[bool | Exception]:
        """Apply events together: four bulk round trips for the whole batch."""
        events = list(batch)
        AGGREGATE_BATCH_EVENTS.observe(len(events))
        failed: dict[int, Exception] = {}
        now = self.clock()
        self._read_history(now)
        stale: set[int] = set()
        for i, event in enumerate(events):
            if event.points and event.receipt_stamped:
                if not self.retention.stamp_counts(event.time, now):
                    stale.add(i)
                    POINTS_EXPIRED.inc(len(event.points))
                    log.warning("readings too old to count: stamped on receipt too long ago "
                                "to be told from a resend", extra={
                                    "event_id": event.id, "device_id": event.device_id,
                                    "points": len(event.points)})
                    continue
                try:
                    events[i] = self.event_times.settled(event)
                except DependencyUnavailable as exc:
                    failed[i] = exc
        writes = [w for i, e in enumerate(events) if i not in failed and i not in stale
                  for w in self._hour_writes(i, e, now)]
        hours: dict[str, dict[str, Any]] = {}
        if len(writes) == 1 and self._projected_find_and_modify:
            fresh, full = self._count_one(writes[0], hours, failed)
        else:
            fresh, full = self._count(writes, failed)
        # An event refused in a full hour is still counted consistently in its other hours:
        # their day snapshots and its latest values, without the refused hours' readings.
        refused = {id(w) for w in full}
        writes = [w for w in writes if w.owner not in failed and id(w) not in refused]
        self._snapshot_days(writes, hours, failed)
        kept = [(i, _without(e, {w.start for w in full if w.owner == i}))
                for i, e in enumerate(events) if i not in failed and i not in stale]
        self._latest(kept, failed)
        # Raw readings of what the rollups counted: not those of a refused (full) hour.
        self._keep_raw([(i, e) for i, e in kept if i not in failed], now, failed)
        for w in full:
            failed.setdefault(w.owner, BadRequest(
                f"device {w.device_id!r} sent more than {self.max_events_per_hour} events "
                f"stamped in the hour {w.start.isoformat()}; this event's readings of that "
                "hour are refused (those of its other hours are counted)"))
        return [failed.get(i, i in fresh or not e.points) for i, e in enumerate(events)]

    # 1. hours -----------------------------------------------------------------------------

    def _read_history(self, now: datetime) -> None:
        """Once per process: judge hours by the minute retentions configured before too."""
        if not self._history_read:
            self.retention = with_history(self.store, self.retention, now)
            self._history_read = True

    def expired(self, event: TelemetryEvent, now: datetime) -> int:
        """How many of the event's readings are too old to count (see retention.py)."""
        self._read_history(now)
        if event.receipt_stamped and not self.retention.stamp_counts(event.time, now):
            return len(event.points)
        return sum(1 for p in event.points
                   if not self.retention.counts(bucket_start(p.time, "1h"), now))

    def _hour_writes(self, owner: int, event: TelemetryEvent, now: datetime,
                     ) -> list[_HourWrite]:
        by_hour: dict[datetime, dict[str, list[DataPoint]]] = defaultdict(
            lambda: defaultdict(list))
        for p in event.points:
            by_hour[bucket_start(p.time, "1h")][p.metric].append(p)
        key = event_hash(event.key)
        writes = []
        for start, metrics in sorted(by_hour.items()):
            if not self.retention.counts(start, now):
                skipped = sum(len(points) for points in metrics.values())
                POINTS_EXPIRED.inc(skipped)
                log.warning("readings too old to count: their hour's event keys may be gone",
                            extra={"event_id": event.id, "device_id": event.device_id,
                                   "hour": start.isoformat(), "points": skipped})
                continue
            ops: dict[str, dict[str, Any]] = {
                "$setOnInsert": {"device_id": event.device_id, "t": start,
                                 "exp": self.retention.hour_expiry(start)},
                "$inc": {"v": 1}, "$min": {}, "$max": {}, "$push": {"ids": key}}
            for metric, points in metrics.items():
                if len(points) == 1:
                    t, value = points[0].time, points[0].value
                    add_reading(ops, (f"tot.{metric}", f"min.{metric}.{t.minute:02d}"), t, value)
                    continue
                slots = [(f"tot.{metric}", points)]
                by_minute: dict[int, list[DataPoint]] = defaultdict(list)
                for p in points:
                    by_minute[p.time.minute].append(p)
                slots += [(f"min.{metric}.{m:02d}", pts) for m, pts in by_minute.items()]
                for path, pts in slots:
                    for op, fields in Summary.of((p.time, p.value) for p in pts).increments(
                            path).items():
                        ops[op].update(fields)
            writes.append(_HourWrite(owner, event.device_id, start, key, tuple(metrics),
                                     Update({"_id": hour_id(event.device_id, start),
                                             "ids": {"$ne": key},
                                             "v": {"$lt": self.max_events_per_hour}},
                                            ops, upsert=True)))
        return writes

    def _count(self, writes: list[_HourWrite], failed: dict[int, Exception],
               ) -> tuple[set[int], list[_HourWrite]]:
        """Run the hour updates; return the events that added something (not duplicates),
        and the writes refused because their hour is full."""
        pending = list(range(len(writes)))
        # An upsert whose condition is false on an existing document is refused as a
        # duplicate key; so is one that lost the race to insert a new document. The second
        # round tells them apart: by then the document exists, a refusal is the condition.
        for _ in range(2):
            outcome = self.store.bulk(ROLLUP_HOURS, [writes[j].update for j in pending],
                                      tolerate=True)
            for index, (code, message) in outcome.failed.items():
                self._fail(failed, [writes[pending[index]].owner], code, message)
            pending = [pending[index] for index in outcome.duplicates]
            refused = set(pending)
            applied = {writes[j].owner for j in range(len(writes))
                       if j not in refused and writes[j].owner not in failed}
            if not pending:
                break
        return applied, self._full([writes[j] for j in pending])

    def _count_one(self, write: _HourWrite, hours: dict[str, dict[str, Any]],
                   failed: dict[int, Exception]) -> tuple[set[int], list[_HourWrite]]:
        """A lone hour update as findAndModify returning the totals: one round trip less."""
        collection = self.store.collection(ROLLUP_HOURS)
        for _ in range(2):  # the second round: as in _count
            try:
                with self.store.guard():
                    try:
                        doc = collection.find_one_and_update(
                            write.update.filter, write.update.update, upsert=True,
                            projection=_TOTALS, return_document=ReturnDocument.AFTER)
                    except DuplicateKeyError:
                        raise
                    except OperationFailure as exc:
                        if exc.code != NOT_IMPLEMENTED:
                            # Refused for this event alone (say, too large): as in _count,
                            # it fails only its own delivery, not the batch it is in.
                            self._fail(failed, [write.owner], exc.code or 0, str(exc))
                            return set(), []
                        self._projected_find_and_modify = False
                        log.info("store: no projection in findAndModify; using update + find")
                        return self._count([write], failed)
            except DuplicateKeyError:
                continue
            if doc is not None:
                hours[write.id] = doc
            return {write.owner}, []
        return set(), self._full([write])

    def _full(self, refused: list[_HourWrite]) -> list[_HourWrite]:
        """Of the writes refused twice (counted before, or the hour document is full), those
        refused because the hour is full and the event is not in it."""
        if not refused:
            return []
        with self.store.guard():
            full = {d["_id"] for d in self.store.collection(ROLLUP_HOURS).find(
                {"_id": {"$in": sorted({w.id for w in refused})},
                 "v": {"$gte": self.max_events_per_hour}}, {"_id": 1})}
            return [w for w in refused
                    if w.id in full and self.store.collection(ROLLUP_HOURS).find_one(
                        {"_id": w.id, "ids": w.key}, {"_id": 1}) is None]

    def _fail(self, failed: dict[int, Exception], owners: Iterable[int], code: int,
              message: str) -> None:
        error: Exception = (
            BadRequest(f"the rollup document would exceed the store's size limit: {message}")
            if code in _TOO_LARGE else
            DependencyUnavailable(f"store refused a rollup write: {message}", 1))
        for owner in owners:
            failed.setdefault(owner, error)

    # 2. days ------------------------------------------------------------------------------

    def _snapshot_days(self, writes: list[_HourWrite], hours: dict[str, dict[str, Any]],
                       failed: dict[int, Exception]) -> None:
        """Copy each hour's totals, as of its version, into its day document."""
        unread = sorted({w.id for w in writes} - set(hours))
        if unread:
            with self.store.guard():
                hours.update((d["_id"], d) for d in self.store.collection(ROLLUP_HOURS).find(
                    {"_id": {"$in": unread}}, _TOTALS))
        days: dict[str, _Merged] = {}
        for w in writes:
            doc = hours.get(w.id)
            if doc is None:
                continue
            start = bucket_start(w.start, "1d")
            day = days.setdefault(day_id(w.device_id, start), _Merged(w.device_id, start))
            day.owners.add(w.owner)
            for metric in w.metrics:
                total = Summary.slot_snapshot(doc["tot"][metric], int(doc["v"]))
                if total is not None:
                    day.raise_(f"h.{metric}.{w.start.hour:02d}", total)
        self._upsert_merged(ROLLUP_DAYS, days, failed)

    # 3. devices ---------------------------------------------------------------------------

    def _latest(self, events: list[tuple[int, TelemetryEvent]],
                failed: dict[int, Exception]) -> None:
        """Last seen, first seen, and each metric's newest reading by event time."""
        devices: dict[str, _Merged] = {}
        for owner, event in events:
            device = devices.setdefault(event.device_id, _Merged(event.device_id, None))
            device.owners.add(owner)
            # Last seen: when a reading last arrived (staleness). First seen: the oldest
            # reading's own time, so an older reading arriving later still lowers it.
            device.raise_("last_seen", parse_time(event.attributes.get("ingesttime"))
                          or event.time)
            device.lower("first_seen", min((p.time for p in event.points), default=event.time))
            # A key orders by time first, so only a metric's newest readings can hold its
            # largest: encode those (ties at that time go to the larger value), not all.
            newest: dict[str, datetime] = {}
            for p in event.points:
                if p.metric not in newest or p.time > newest[p.metric]:
                    newest[p.metric] = p.time
            for p in event.points:
                if p.time == newest[p.metric]:
                    device.raise_("last_event_time", p.time)
                    device.raise_(f"latest.{p.metric}", reading_key(p.time, p.value))
        self._upsert_merged(DEVICES, devices, failed)

    def _upsert_merged(self, name: str, docs: dict[str, _Merged],
                       failed: dict[int, Exception]) -> None:
        ids = sorted(docs)
        ops = []
        for _id in ids:
            doc = docs[_id]
            update: dict[str, Any] = {"$max": doc.high}
            if doc.low:
                update["$min"] = doc.low
            if doc.start is not None:
                update["$setOnInsert"] = {"device_id": doc.device_id, "t": doc.start}
            ops.append(Update({"_id": _id}, update, upsert=True))
        pending = list(range(len(ops)))
        for _ in range(2):  # a refusal here is a lost insert race: the second round applies
            outcome = self.store.bulk(name, [ops[j] for j in pending], tolerate=True)
            for index, (code, message) in outcome.failed.items():
                self._fail(failed, docs[ids[pending[index]]].owners, code, message)
            pending = [pending[index] for index in outcome.duplicates]
            if not pending:
                return
        for j in pending:
            self._fail(failed, docs[ids[j]].owners, 0, f"{name}: upserts kept colliding")

    # 4. raw readings (raw.py) -------------------------------------------------------------

    def _keep_raw(self, events: list[tuple[int, TelemetryEvent]], now: datetime,
                  failed: dict[int, Exception]) -> None:
        """Each reading as sent, in one update command for the batch; redone on redelivery
        like steps 2 and 3. Readings a full window refuses are dropped from the raw view only
        (the rollups counted them), and counted; another refusal fails the event (503)."""
        retention = self.retention.raw
        if retention is None:
            return
        writes: list[RawWrite] = [w for owner, e in events
                                  for w in raw_updates(owner, e, event_hash(e.key), retention,
                                                       now)]
        pending = list(range(len(writes)))
        for _ in range(2):  # the second round tells a lost insert race from a full window
            outcome = self.store.bulk(RAW_READINGS, [writes[j].update for j in pending],
                                      tolerate=True)
            for index, (code, message) in outcome.failed.items():
                write = writes[pending[index]]
                if code in _TOO_LARGE:
                    self._drop_raw(write, message)
                else:
                    self._fail(failed, [write.owner], code, message)
            pending = [pending[index] for index in outcome.duplicates]
            if not pending:
                return
        for j in pending:
            self._drop_raw(writes[j], "its ten-minute window is full")

    @staticmethod
    def _drop_raw(write: RawWrite, why: str) -> None:
        RAW_DROPPED.inc(write.points)
        log.warning("raw readings not kept: %s", why,
                    extra={"window": write.update.filter["_id"], "points": write.points})


def _without(event: TelemetryEvent, hours: set[datetime]) -> TelemetryEvent:
    """`event` without its readings of `hours` (those refused: their hours are full)."""
    if not hours:
        return event
    return dataclasses.replace(event, points=tuple(
        p for p in event.points if bucket_start(p.time, "1h") not in hours))
