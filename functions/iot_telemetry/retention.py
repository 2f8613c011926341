"""How long each rollup level is kept, and the daily sweep that compacts and expires them.

Three levels (the layout is in series.py), each with its own retention:

- minute slots, and the keys of the events counted: the hour document. Its `exp` (hour
  end + minute retention) is set when the document is created, in the same update that
  counts the event (rollup.py), so retention costs the write path no store call.
- hour totals: the day document. It gets its `exp` (day end + hour retention) only once
  the sweep has copied its day totals into the month document: a day that was never
  compacted has no expiry, so nothing can delete it before its totals are kept.
- day totals: the month document `<device>|<YYYY-MM>`, one snapshot string per metric and
  day (`d.<metric>.<DD>`), led by the day's version (the sum of its hours' versions, which
  only grows), written by `$max`: a re-run, or two sweeps at once, keep the newest. Kept
  forever, or with `exp` = month end + day retention (and `keep`, that retention in days).
  Each sweep brings every month to the day retention configured now, so a change of it
  applies to the months compacted before as well.

A TTL index on `exp` deletes what is due on MongoDB; the sweep deletes it as well, which
is what enforces retention on stores without TTL indexes (FerretDB 1.x) or whose TTL
indexes delete nothing (mongo-java-server 1.47).

Redelivery: once an hour document may be gone, so are the keys that recognise an event
already counted in it. aggregate therefore stops counting an hour `MARGIN` before its
document expires (`counts`), and a day is compacted only after every hour of it stopped
counting, plus the margin for writes in flight; ingest refuses readings that old first
(settings: INGEST_MAX_AGE_SECONDS below the minute retention minus the margin).

A change of the minute retention: an hour document keeps the expiry it was created with, so
an hour is judged by the shortest minute retention in effect since shortly before it began
(`retention_changes` records each value and since when; `with_history`). Otherwise, after
raising it, a late replay would recreate an hour whose document, keys included, was gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pymongo.errors import DuplicateKeyError

from .errors import DependencyUnavailable
from .series import Summary, month_id, month_start, next_month
from .settings import RETENTION_MARGIN_SECONDS, Settings
from .store import (
    EVENT_TIMES,
    RAW_READINGS,
    RETENTION_CHANGES,
    ROLLUP_DAYS,
    ROLLUP_HOURS,
    ROLLUP_MONTHS,
    Store,
    Update,
)

HOUR: Final = timedelta(hours=1)
DAY: Final = timedelta(days=1)
MARGIN: Final = timedelta(seconds=RETENTION_MARGIN_SECONDS)
#: Day documents compacted per round trip of the sweep (bounds its memory).
PAGE: Final = 500
#: How long before its hour an hour document may be created (a reading stamped ahead of
#: the clock: ingest allows minutes, INGEST_MAX_FUTURE_SECONDS), with room to spare.
CREATED_BEFORE: Final = timedelta(hours=1)
#: Collections whose documents carry `exp` and are deleted once it is past.
EXPIRING: Final = (ROLLUP_HOURS, ROLLUP_DAYS, ROLLUP_MONTHS, EVENT_TIMES, RAW_READINGS)


@dataclass(frozen=True)
class Retention:
    """The three retentions (day totals: None = forever) and that of raw readings (None =
    none kept); the settings' defaults."""

    minutes: timedelta = timedelta(days=Settings.rollup_minute_retention_days)
    hours: timedelta = timedelta(days=Settings.rollup_hour_retention_days)
    days: timedelta | None = None
    #: How long after its first copy a device may resend an event without `time`
    #: (INGEST_MAX_AGE_SECONDS: as old as a reading with a time may be).
    resend: timedelta = timedelta(seconds=Settings.ingest_max_age_seconds)
    #: Earlier minute retentions: (until when it was configured, the retention), from
    #: `with_history`.
    earlier: tuple[tuple[datetime, timedelta], ...] = ()
    raw: timedelta | None = timedelta(hours=Settings.raw_retention_hours)

    @classmethod
    def of(cls, settings: Settings) -> Retention:
        days = settings.rollup_day_retention_days
        raw = settings.raw_retention_hours
        return cls(timedelta(days=settings.rollup_minute_retention_days),
                   timedelta(days=settings.rollup_hour_retention_days),
                   None if days is None else timedelta(days=days),
                   timedelta(seconds=settings.ingest_max_age_seconds),
                   raw=timedelta(hours=raw) if raw else None)

    def hour_expiry(self, start: datetime) -> datetime:
        return start + HOUR + self.minutes

    def counts(self, start: datetime, now: datetime) -> bool:
        """Whether a reading of the hour starting at `start` may still be counted: its hour
        document, keys included, is there for at least MARGIN more, whichever minute
        retention it was created with."""
        return start + HOUR + self._minutes_since(start - CREATED_BEFORE) - MARGIN > now

    def _minutes_since(self, t: datetime) -> timedelta:
        """The shortest minute retention configured at any time since `t`."""
        return min([self.minutes, *(m for until, m in self.earlier if until > t)])

    def settled_expiry(self, first: datetime) -> datetime:
        """When the time settled for an event first stamped `first` may go (eventtime.py):
        never before its hour document, whose keys recognise the event, may go."""
        return first + HOUR + self.minutes

    def stamp_counts(self, stamp: datetime, now: datetime) -> bool:
        """Whether a copy of an event without `time`, stamped `stamp` by ingest, may still
        be counted: the time settled by any other copy (stamped at most `resend` away) is
        kept for MARGIN more. Later, a copy could be counted again at its own stamp."""
        minutes = self._minutes_since(stamp - self.resend)  # when the entry may have been made
        return stamp + minutes - self.resend - MARGIN > now

    def compactable_before(self, now: datetime) -> datetime:
        """Days starting before this are final: none of their hours counts any more, and
        writes in flight when the last one stopped counting had MARGIN to land."""
        return now - self.minutes - DAY

    def day_expiry(self, start: datetime) -> datetime:
        return start + DAY + self.hours

    def month_expiry(self, start: datetime) -> datetime | None:
        return None if self.days is None else next_month(start) + self.days


def with_history(store: Store, retention: Retention, now: datetime) -> Retention:
    """`retention` with the earlier minute retentions recorded in the store, after
    recording its own if it is not the last one configured (once per process)."""
    changes = store.collection(RETENTION_CHANGES)
    with store.guard():
        records = sorted(changes.find({}), key=lambda r: (_utc(r["since"]), r["_id"]))
        seconds = int(retention.minutes.total_seconds())
        if not records or records[-1]["seconds"] != seconds:
            mine = {"_id": f"{now.isoformat()}/{seconds}", "seconds": seconds, "since": now}
            with contextlib.suppress(DuplicateKeyError):  # the same, by another process
                changes.insert_one(mine)
            records.append(mine)
    # Each value was configured until the next one was.
    earlier = tuple((_utc(after["since"]), timedelta(seconds=before["seconds"]))
                    for before, after in itertools.pairwise(records))
    return dataclasses.replace(retention, earlier=earlier)


@dataclass
class SweepOutcome:
    """What one sweep did: days compacted, documents deleted per collection, hour documents
    from before retention given their expiry."""

    compacted: int = 0
    deleted: dict[str, int] = field(default_factory=dict)
    dated: int = 0
    redated: int = 0


def sweep(store: Store, retention: Retention, now: datetime, page: int = PAGE) -> SweepOutcome:
    """Compact the final days into month documents, then delete what is past its `exp`.

    Idempotent and safe with several sweeps at once: month snapshots are `$max` over a
    version that only grows, a day's `exp` is the same whoever sets it.
    """
    outcome = SweepOutcome()
    outcome.dated = _date_old_hours(store, retention, page)
    outcome.redated = _redate_months(store, retention, page)
    cutoff = retention.compactable_before(now)
    while True:
        # No sort: a page is whichever days the `exp` index yields first (a sort would
        # hold every uncompacted day in memory); a compacted day has `exp`, so the next
        # page is other days.
        with store.guard():
            days = list(store.collection(ROLLUP_DAYS).find(
                {"exp": {"$exists": False}, "t": {"$lt": cutoff}}).limit(page))
        if not days:
            break
        _compact(store, retention, days)
        outcome.compacted += len(days)
    for name in EXPIRING:
        with store.guard():
            outcome.deleted[name] = store.collection(name).delete_many(
                {"exp": {"$lte": now}}).deleted_count
    return outcome


def _date_old_hours(store: Store, retention: Retention, page: int) -> int:
    """Hour documents written before retention existed have no `exp`: give them theirs,
    so a store upgraded in place expires its old minute slots too (once; later ones are
    created with it)."""
    dated = 0
    while True:
        with store.guard():
            hours = list(store.collection(ROLLUP_HOURS).find(
                {"exp": {"$exists": False}}, {"t": 1}).limit(page))
        if not hours:
            return dated
        _write(store, ROLLUP_HOURS, [
            Update({"_id": h["_id"]}, {"$set": {"exp": retention.hour_expiry(_utc(h["t"]))}})
            for h in hours])
        dated += len(hours)


def _redate_months(store: Store, retention: Retention, page: int) -> int:
    """Months compacted under another day retention: give them the expiry of this one
    (none when it is `forever`), before anything is deleted by it."""
    months = store.collection(ROLLUP_MONTHS)
    if retention.days is None:
        with store.guard():
            return months.update_many({"exp": {"$exists": True}},
                                      {"$unset": {"exp": "", "keep": ""}}).modified_count
    keep = retention.days.days
    redated = 0
    while True:
        with store.guard():
            docs = list(months.find({"keep": {"$ne": keep}}, {"t": 1}).limit(page))
        if not docs:
            return redated
        _write(store, ROLLUP_MONTHS, [
            Update({"_id": d["_id"]}, {"$set": {"exp": retention.month_expiry(_utc(d["t"])),
                                                "keep": keep}})
            for d in docs])
        redated += len(docs)


def _compact(store: Store, retention: Retention, days: Sequence[Mapping[str, Any]]) -> None:
    months: dict[str, dict[str, Any]] = {}
    for doc in days:
        start = _utc(doc["t"])
        first = month_start(start)
        month = months.setdefault(month_id(doc["device_id"], first), {
            "$setOnInsert": {"device_id": doc["device_id"], "t": first}, "$max": {}})
        expiry = retention.month_expiry(first)
        if expiry is not None and retention.days is not None:
            month["$set"] = {"exp": expiry, "keep": retention.days.days}
        for metric, hours in (doc.get("h") or {}).items():
            snapshots = list(hours.values())
            total = Summary.merge_all(Summary.from_snapshot(s) for s in snapshots)
            if total is None:
                continue
            path = f"d.{metric}.{start.day:02d}"
            text = total.snapshot(sum(Summary.version_of(s) for s in snapshots))
            month["$max"][path] = max(text, month["$max"].get(path, text))
    _write(store, ROLLUP_MONTHS, [Update({"_id": _id}, update, upsert=True)
                                  for _id, update in sorted(months.items())])
    # Only now, with the totals kept, may the day expire.
    _write(store, ROLLUP_DAYS, [Update({"_id": doc["_id"]},
                                       {"$set": {"exp": retention.day_expiry(_utc(doc["t"]))}})
                                for doc in days])


def _write(store: Store, name: str, ops: list[Update]) -> None:
    pending = ops
    for _ in range(2):  # a refusal is a lost insert race (two sweeps): the second round applies
        outcome = store.bulk(name, pending)
        pending = [pending[i] for i in outcome.duplicates]
        if not pending:
            return
    raise DependencyUnavailable(f"{name}: upserts kept colliding", 1)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
