"""The time of an event that came without one, settled once per event of a device.

Ingest stamps such an event with its time of receipt (and `timesource: ingest`). When the
device resends it (say ingest answered 503 although Kafka had stored the record), the copy
gets another time, possibly in another minute or hour, where no per-bucket dedup would see
the first copy. So the first time stamped for an event is kept in `event_times` (insert if
absent, then read) and every copy, and every consumer, uses that one.

An entry is keyed by the event's device as well as its (`source`, `id`): `source` is
whatever the device writes, so keyed by (`source`, `id`) alone one device could settle the
time of another device's next event (issue 20). How long an entry lives, and which copies
are still counted, is retention's (`Retention.settled_expiry`, `Retention.stamp_counts`).

Upgrading: earlier versions keyed entries by (`source`, `id`) only. For as long as such an
entry can still exist (its 7 days, counted from the first start of this version) a first
copy looks it up too, so a resend settled before the upgrade keeps its time and counts once.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from .errors import DependencyUnavailable
from .retention import Retention
from .store import EVENT_TIMES, Store
from .telemetry import TelemetryEvent

#: How long earlier versions kept an entry keyed by (`source`, `id`) only.
LEGACY_KEEP: Final = timedelta(days=7)
#: The record of when this layout was first used: until `legacy_until` earlier entries may
#: still be there. Entry ids are hex digests, so no entry can take this id.
LAYOUT_ID: Final = "layout:keyed-by-device"


def entry_id(event: TelemetryEvent) -> str:
    """The entry of an event: its device, `source` and `id` (lengths first: no separator in
    a device-controlled string can make two events meet)."""
    parts = (event.device_id, event.source, event.id)
    text = "".join(f"{len(p)}:{p}" for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def legacy_entry_id(event: TelemetryEvent) -> str:
    """The entry an earlier version made for the event: (`source`, `id`) only."""
    return hashlib.blake2b(event.key.encode(), digest_size=16).hexdigest()


class EventTimes:
    """Settles receipt-stamped events' times (one per process: it remembers the layout)."""

    def __init__(self, store: Store, retention: Retention | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.retention = retention or Retention()
        self.clock = clock
        self._legacy_until: datetime | None = None
        self._lock = threading.Lock()

    def settled(self, event: TelemetryEvent) -> TelemetryEvent:
        """`event` stamped with the first time any copy of it got (itself if not
        receipt-stamped)."""
        if not event.receipt_stamped:
            return event
        first = event.time
        if self.clock() < self._legacy_window():
            with self.store.guard():
                old = self.store.collection(EVENT_TIMES).find_one(
                    {"_id": legacy_entry_id(event)}, {"t": 1})
            if old is not None:
                first = _utc(old["t"])
        doc = self._settle(entry_id(event), first)
        first = _utc(doc["t"])
        return event if first == event.time else event.with_time(first)

    def _settle(self, key: str, first: datetime) -> dict[str, Any]:
        collection = self.store.collection(EVENT_TIMES)
        for attempt in range(2):
            try:
                with self.store.guard():
                    doc = collection.find_one_and_update(
                        {"_id": key},
                        {"$setOnInsert": {"t": first,
                                          "exp": self.retention.settled_expiry(first)}},
                        upsert=True, return_document=ReturnDocument.AFTER)
                break
            except DuplicateKeyError:  # another consumer inserted it first: read it now
                if attempt:
                    raise DependencyUnavailable("event time: insert race repeated", 1) from None
        if doc is None:  # an upsert returns the document; a store that does not is broken
            raise DependencyUnavailable("event time: the store returned no document", 1)
        return doc

    def _legacy_window(self) -> datetime:
        """Until when entries of earlier versions may exist (read once per process)."""
        if self._legacy_until is not None:
            return self._legacy_until
        with self._lock, self.store.guard():
            collection = self.store.collection(EVENT_TIMES)
            layout = collection.find_one({"_id": LAYOUT_ID})
            if layout is None:
                # Whatever is there now was written by an earlier version (or by another
                # instance of this one a moment ago: then the window is only longer).
                earlier = collection.find_one({"_id": {"$ne": LAYOUT_ID}}, {"_id": 1})
                now = self.clock()
                until = now + LEGACY_KEEP if earlier is not None else now
                with contextlib.suppress(DuplicateKeyError):  # another instance was first
                    collection.insert_one({"_id": LAYOUT_ID, "legacy_until": until})
                layout = collection.find_one({"_id": LAYOUT_ID})
            if layout is None:
                raise DependencyUnavailable("event time: the layout record is missing", 1)
            self._legacy_until = _utc(layout["legacy_until"])
        return self._legacy_until


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
