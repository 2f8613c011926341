"""The time of an event that came without one, settled once per event key.

Ingest stamps such an event with its time of receipt (and `timesource: ingest`). When the
device resends it (say ingest answered 503 although Kafka had stored the record), the copy
gets another time, possibly in another minute or hour, where no per-bucket dedup would see
the first copy. So the first time stamped for a key is kept in `event_times` (insert if
absent, then read) and every copy, and every consumer, uses that one.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, timedelta
from typing import Final

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from .errors import DependencyUnavailable
from .store import EVENT_TIMES, Store
from .telemetry import TelemetryEvent

#: How long a settled time is kept: resends come within minutes, redeliveries carry the
#: time already settled; a week covers a device that was offline and retries for days.
KEEP: Final = timedelta(days=7)


def settled(store: Store, event: TelemetryEvent) -> TelemetryEvent:
    """`event` stamped with the first time any copy of it got (itself if not receipt-stamped)."""
    if not event.receipt_stamped:
        return event
    key = hashlib.blake2b(event.key.encode(), digest_size=16).hexdigest()
    collection = store.collection(EVENT_TIMES)
    for attempt in range(2):
        try:
            with store.guard():
                doc = collection.find_one_and_update(
                    {"_id": key}, {"$setOnInsert": {"t": event.time, "exp": event.time + KEEP}},
                    upsert=True, return_document=ReturnDocument.AFTER)
            break
        except DuplicateKeyError:  # another consumer inserted it first: read it now
            if attempt:
                raise DependencyUnavailable("event time: insert race repeated", 1) from None
    if doc is None:  # an upsert returns the document; a store that does not is broken
        raise DependencyUnavailable("event time: the store returned no document", 1)
    first = doc["t"]
    first = first.replace(tzinfo=UTC) if first.tzinfo is None else first.astimezone(UTC)
    return event if first == event.time else event.with_time(first)
