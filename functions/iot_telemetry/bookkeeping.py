"""The functions' own bookkeeping: where each sweep and cleanup got to, and what each tick did.

It lives in its own collection (`sweeps`), never among device-keyed records: a device id is
free text (`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`), so any id built from a reserved word in a
device-keyed collection (the sweep's progress was `sweep:<rule>` in `alert_state`, beside
the offline states `<device>:<rule>`) is also the id of some device's record. Here every id
is the functions' own: `offline:<rule>:<window>` (an offline sweep's progress),
`reported:<rule>` (the fix-up of wrongly raised offline alerts), `tick:<source>\\x1f<id>` (a
tick's journal).

A tick's journal lists the alert changes the tick made, written before the progress that
skips past them is saved, so a redelivered tick (its reply or a K_SINK post failed, or it
timed out) answers every alert event its first delivery raised, even those of devices its
saved progress no longer revisits; a tick whose first delivery finished answers from the
journal alone. Journals are deleted after JOURNAL_DAYS, well past the Broker's retries
(about 7 minutes: eventing/triggers.yaml).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from pymongo.errors import DuplicateKeyError

from .store import SWEEPS, Store

#: How long a tick's journal is kept for its redeliveries.
JOURNAL_DAYS: Final = 2
TICK: Final = "tick"
PROGRESS: Final = "progress"


class Bookkeeping:
    """Progress records and tick journals in the `sweeps` collection."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def read(self, name: str) -> dict[str, Any] | None:
        with self.store.guard():
            return self.store.collection(SWEEPS).find_one({"_id": name})

    def save(self, name: str, update: Mapping[str, Any]) -> None:
        """Upsert a progress record (an update document: $set, $max...)."""
        update = {**update, "$set": {**update.get("$set", {}), "kind": PROGRESS}}
        with self.store.guard():
            try:
                self.store.collection(SWEEPS).update_one({"_id": name}, update, upsert=True)
            except DuplicateKeyError:  # two upserts at once: the record exists now
                self.store.collection(SWEEPS).update_one({"_id": name}, update)


class TickJournal:
    """What one tick (identified by its event key) changed, for its redeliveries."""

    def __init__(self, store: Store, key: str, wall: datetime) -> None:
        self.store = store
        self.id = f"{TICK}:{key}"
        self.wall = wall

    def read(self) -> tuple[list[dict[str, Any]], bool]:
        """The changes recorded so far (kind, alert_id) and whether the tick finished."""
        with self.store.guard():
            doc = self.store.collection(SWEEPS).find_one({"_id": self.id}) or {}
        return list(doc.get("changes") or []), bool(doc.get("done"))

    def record(self, changes: Sequence[Mapping[str, Any]], *, done: bool = False) -> None:
        """Add changes (before the progress that skips past them is saved); `done`: the
        tick finished its work, so a redelivery only answers."""
        if not changes and not done:
            return
        update: dict[str, Any] = {"$setOnInsert": {"kind": TICK, "at": self.wall}}
        if changes:
            update["$push"] = {"changes": {"$each": [dict(c) for c in changes]}}
        if done:
            update["$set"] = {"done": True}
        with self.store.guard():
            try:
                self.store.collection(SWEEPS).update_one({"_id": self.id}, update, upsert=True)
            except DuplicateKeyError:
                self.store.collection(SWEEPS).update_one({"_id": self.id}, update)

    def expire(self) -> None:
        """Delete the journals of ticks older than JOURNAL_DAYS (one command per tick)."""
        with self.store.guard():
            self.store.collection(SWEEPS).delete_many(
                {"kind": TICK, "at": {"$lt": self.wall - timedelta(days=JOURNAL_DAYS)}})
