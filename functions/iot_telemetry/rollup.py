"""Rollups per device, metric and bucket (1 minute, 1 hour, 1 day), exact under redelivery.

How a reading is counted exactly once without transactions:
1. The minute bucket takes an event's readings of that minute in one atomic update that
   also adds the event's key to the bucket's `ids`; the filter `ids: {$ne: key}` makes a
   second delivery a no-op (or a duplicate-key refusal of its upsert).
2. Hour buckets hold a snapshot of each of their minutes (`m.<MM>`) and day buckets a
   snapshot of each of their hours (`h.<HH>`), each stamped with its source's version
   `v`; a snapshot replaces an older one only. Re-running this step is harmless, so a
   redelivery after a crash between the steps finishes the work without counting twice,
   and concurrent instances converge on the newest snapshot.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from .store import DEVICES, ROLLUP_COLLECTIONS, Store, Update
from .telemetry import DataPoint, TelemetryEvent, parse_time

STEPS: Final = {"1m": timedelta(minutes=1), "1h": timedelta(hours=1), "1d": timedelta(days=1)}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: Most parent buckets a series reads one by one by _id (beyond: one range query).
_MAX_ID_READS: Final = 100
#: Rounds of re-running an idempotent bulk when concurrent upserts of one bucket collide.
_RETRIES: Final = 5


def bucket_start(t: datetime, step: str) -> datetime:
    """Start of the bucket of width `step` holding `t` (event time, UTC)."""
    width = STEPS[step]
    return _EPOCH + ((t - _EPOCH) // width) * width


def bucket_id(device_id: str, metric: str, start: datetime) -> str:
    return f"{device_id}|{metric}|{start.strftime('%Y-%m-%dT%H:%M')}"


@dataclass(frozen=True)
class Summary:
    """count, sum, min, max, first and last time and last value of some readings."""

    count: int
    sum: float
    min: float
    max: float
    first: datetime
    last: datetime
    last_value: float

    @property
    def avg(self) -> float:
        return self.sum / self.count

    @classmethod
    def of(cls, points: Iterable[DataPoint]) -> Summary:
        pts = sorted(points, key=lambda p: (p.time, p.value))
        values = [p.value for p in pts]
        return cls(len(pts), sum(values), min(values), max(values), pts[0].time,
                   pts[-1].time, pts[-1].value)

    def merge(self, other: Summary) -> Summary:
        newer = other if (other.last, other.last_value) > (self.last, self.last_value) else self
        return Summary(self.count + other.count, self.sum + other.sum, min(self.min, other.min),
                       max(self.max, other.max), min(self.first, other.first),
                       newer.last, newer.last_value)

    def to_doc(self) -> dict[str, Any]:
        return {"count": self.count, "sum": self.sum, "min": self.min, "max": self.max,
                "first": self.first, "last": self.last, "last_value": self.last_value}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Summary:
        return cls(int(doc["count"]), float(doc["sum"]), float(doc["min"]), float(doc["max"]),
                   _utc(doc["first"]), _utc(doc["last"]), float(doc["last_value"]))

    @classmethod
    def merge_all(cls, parts: Iterable[Summary]) -> Summary | None:
        total: Summary | None = None
        for part in parts:
            total = part if total is None else total.merge(part)
        return total


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def summarize(doc: Mapping[str, Any], step: str) -> Summary | None:
    """The totals of a stored bucket of any step."""
    if step == "1m":
        return Summary.from_doc(doc) if doc.get("count") else None
    parts = doc.get("m" if step == "1h" else "h") or {}
    return Summary.merge_all(Summary.from_doc(p) for p in parts.values() if p.get("count"))


def read_series(store: Store, device_id: str, metric: str, step: str, *, first: datetime,
                to: datetime) -> list[tuple[datetime, Summary]]:
    """Buckets of `step` in [first, to), read from the parent buckets' snapshots.

    An hour document holds its minutes and a day document its hours, so a day of minutes
    is 24 reads instead of 1440 (and 30 days of hours 30 instead of 720).
    """
    if step == "1d":
        parent_step, slot_field, width = "1d", "", STEPS["1d"]
    else:
        parent_step = "1h" if step == "1m" else "1d"
        slot_field, width = ("m", STEPS["1m"]) if step == "1m" else ("h", STEPS["1h"])
    collection = store.collection(ROLLUP_COLLECTIONS[parent_step])
    starts: list[datetime] = []
    t = bucket_start(first, parent_step)
    while t < to and len(starts) <= _MAX_ID_READS:
        starts.append(t)
        t += STEPS[parent_step]
    with store.guard():
        if len(starts) <= _MAX_ID_READS:
            # Exact _id reads: the one filter FerretDB hands to its backend's primary key
            # (a range on other fields scans the collection; see BENCHMARKS.md).
            found = (collection.find_one({"_id": bucket_id(device_id, metric, s)}, {"ids": 0})
                     for s in starts)
            docs = [d for d in found if d is not None]
        else:
            docs = list(collection.find(
                {"device_id": device_id, "metric": metric,
                 "t": {"$gte": starts[0], "$lt": to}}, {"ids": 0}).sort("t", 1))
    out: list[tuple[datetime, Summary]] = []
    for doc in docs:
        start = _utc(doc["t"])
        if not slot_field:
            total = summarize(doc, "1d")
            if total is not None:
                out.append((start, total))
            continue
        for slot, part in sorted((doc.get(slot_field) or {}).items()):
            t = start + int(slot) * width
            if first <= t < to and part.get("count"):
                out.append((t, Summary.from_doc(part)))
    return out


class RollupWriter:
    """Applies events to the rollups and to each device's latest values."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def apply(self, event: TelemetryEvent) -> bool:
        """Apply one event; return False when every part of it had been applied before."""
        if not event.points:
            return False
        fresh, minutes = self._minutes(event)
        hours = self._propagate("1h", minutes)
        self._propagate("1d", hours)
        self._latest(event)
        return fresh

    def _minutes(self, event: TelemetryEvent) -> tuple[bool, list[dict[str, Any]]]:
        """Count the event into its minute buckets; return (any news, the buckets now)."""
        groups: dict[tuple[str, datetime], list[DataPoint]] = defaultdict(list)
        for p in event.points:
            groups[(p.metric, bucket_start(p.time, "1m"))].append(p)
        collection = self.store.collection(ROLLUP_COLLECTIONS["1m"])
        docs: list[dict[str, Any]] = []
        lasts: list[Update] = []
        fresh = False
        for (metric, start), points in sorted(groups.items()):
            s = Summary.of(points)
            _id = bucket_id(event.device_id, metric, start)
            # One round trip counts the readings and returns the bucket as it is after.
            doc = self._upsert_returning(collection, {"_id": _id, "ids": {"$ne": event.key}}, {
                "$setOnInsert": {"device_id": event.device_id, "metric": metric, "t": start},
                "$inc": {"count": s.count, "sum": s.sum, "v": 1},
                "$min": {"min": s.min, "first": s.first},
                "$max": {"max": s.max, "last": s.last},
                "$push": {"ids": event.key}})
            if doc is None:  # counted before: a redelivery; finish the rest of the work
                with self.store.guard():
                    doc = collection.find_one({"_id": _id}, {"ids": 0})
                if doc is None:
                    continue
            else:
                fresh = True
            # After the $max above, `last` equals ours only if ours is the newest reading;
            # then the bucket's last value is ours (ties: the larger value, so the outcome
            # does not depend on arrival order). Idempotent, so run on every delivery.
            lasts.append(Update(
                {"_id": _id, "last": s.last, "$or": [
                    {"last_at": {"$lt": s.last}}, {"last_at": {"$exists": False}},
                    {"last_at": s.last, "last_value": {"$lt": s.last_value}}]},
                {"$set": {"last_value": s.last_value, "last_at": s.last}}))
            # The same condition on our copy, so it need not be read again.
            at = doc.get("last_at")
            if _utc(doc["last"]) == s.last and (
                    at is None or _utc(at) < s.last
                    or (_utc(at) == s.last and doc["last_value"] < s.last_value)):
                doc.update(last_value=s.last_value, last_at=s.last)
            docs.append(doc)
        self.store.bulk(ROLLUP_COLLECTIONS["1m"], lasts)
        return fresh, docs

    def _upsert_returning(self, collection: Any, filter: dict[str, Any],
                          update: dict[str, Any]) -> dict[str, Any] | None:
        """Conditional upsert returning the document after it; None when the filter's
        condition is false on the existing document.

        An upsert whose condition is false on an existing document is refused as a
        duplicate key; so is one that lost the race to insert a new document. The second
        attempt tells them apart: by then the document exists, so a refusal means the
        condition.
        """
        for attempt in range(2):
            try:
                with self.store.guard():
                    # No projection: FerretDB 1.x refuses one in findAndModify.
                    doc: dict[str, Any] | None = collection.find_one_and_update(
                        filter, update, upsert=True, return_document=ReturnDocument.AFTER)
                return doc
            except DuplicateKeyError:
                if attempt:
                    return None
        return None

    def _propagate(self, step: str, sources: Sequence[dict[str, Any]],
                   ) -> list[dict[str, Any]]:
        """Copy each source bucket's snapshot into its parent bucket, newer versions only.

        Returns the parent buckets as they are after it (for hours, to propagate further).
        """
        child_step = "1m" if step == "1h" else "1h"
        slot_field = "m" if step == "1h" else "h"
        collection = self.store.collection(ROLLUP_COLLECTIONS[step])
        parents: dict[str, dict[str, Any]] = {}
        ops: list[Update] = []
        for doc in sources:
            summary = summarize(doc, child_step)
            if summary is None:
                continue
            start = _utc(doc["t"])
            parent = bucket_start(start, step)
            slot = f"{slot_field}.{start.strftime('%M' if step == '1h' else '%H')}"
            _id = bucket_id(doc["device_id"], doc["metric"], parent)
            snapshot = {**summary.to_doc(), "v": int(doc["v"])}
            op = Update(
                {"_id": _id, "$or": [{f"{slot}.v": {"$lt": snapshot["v"]}},
                                     {slot: {"$exists": False}}]},
                {"$setOnInsert": {"device_id": doc["device_id"], "metric": doc["metric"],
                                  "t": parent},
                 "$set": {slot: snapshot}, "$inc": {"v": 1}},
                upsert=True)
            if step == "1d":  # the top: nothing reads the day bucket back
                ops.append(op)
                continue
            found = self._upsert_returning(collection, op.filter, op.update)
            if found is None:  # holds this snapshot or a newer one already
                with self.store.guard():
                    found = collection.find_one({"_id": _id}, {"ids": 0})
            if found is not None:
                parents[_id] = found  # the latest state, when two minutes share an hour
        if ops:
            # A refusal is a lost insert race (run again) or an older snapshot (leave it).
            retry = [ops[i] for i in self.store.bulk(ROLLUP_COLLECTIONS[step], ops).duplicates]
            self.store.bulk(ROLLUP_COLLECTIONS[step], retry)
        return list(parents.values())

    def _bulk_until_done(self, name: str, ops: Sequence[Update]) -> None:
        # Two instances upserting the same new document: one gets a duplicate-key refusal.
        # Every op here is idempotent, so running the whole bulk again settles it.
        for _ in range(_RETRIES):
            if not self.store.bulk(name, ops, ordered=True).duplicates:
                return
        raise RuntimeError(f"{name}: upserts kept colliding")

    def _latest(self, event: TelemetryEvent) -> None:
        """Each metric's latest value by event time; a late, older reading never wins."""
        newest: dict[str, DataPoint] = {}
        for p in event.points:
            cur = newest.get(p.metric)
            if cur is None or (p.time, p.value) > (cur.time, cur.value):
                newest[p.metric] = p
        received = event.attributes.get("ingesttime")
        seen = parse_time(received) or event.time
        ops = [Update(
            {"_id": event.device_id},
            {"$setOnInsert": {"first_seen": seen},
             "$max": {"last_seen": seen, "last_event_time": max(p.time for p in event.points)}},
            upsert=True)]
        for metric, p in sorted(newest.items()):
            path = f"metrics.{metric}"
            ops.append(Update(
                {"_id": event.device_id,
                 "$or": [{f"{path}.time": {"$lt": p.time}}, {path: {"$exists": False}},
                         {f"{path}.time": p.time, f"{path}.value": {"$lt": p.value}}]},
                {"$set": {path: {"value": p.value, "time": p.time}}}))
        self._bulk_until_done(DEVICES, ops)

