"""notify's bookkeeping in the store: each alert event's delivery to each channel, and each
channel's minutes (flood slots, folded alerts, summaries).

Deliveries (NOTIFY_DELIVERIES), one document per (channel, event), are what keeps a retried
or redelivered event from reaching a channel twice: a channel that took it (`sent`),
refused it for good (`rejected`) or had it folded into a summary (`folded`, then
`summarized`) is skipped; a channel that failed (`retry`) is tried again. A delivery being
sent is `sending` under a lease, so two instances never send it at once; a lease past its
time (the instance died) may be taken over.

Minutes (NOTIFY_MINUTES), one document per (channel, minute), hold the flood slots: the
event keys of the first NOTIFY_MAX_PER_MINUTE alert messages of the minute, added with one
conditional $push, so the limit holds across instances and a redelivered event finds the
slot it had. An event that finds no slot is folded into the minute it is handled in; the
PingSource tick after that minute sends one summary per channel and minute, counting the
delivery documents it marks `summarized` under that summary's number (`seq`), so each
folded alert is in exactly one summary. A fold that lands after its minute's summary was
counted (a delivery stalled across the minute) bumps `folds`, and the next tick sends a
second summary of that minute for it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure

from .channels import LIFECYCLE, Channel, Summary, example
from .errors import DependencyUnavailable
from .store import NOT_IMPLEMENTED, NOTIFY_DELIVERIES, NOTIFY_MINUTES, Store

SENDING: Final = "sending"
RETRY: Final = "retry"
SENT: Final = "sent"
REJECTED: Final = "rejected"
FOLDED: Final = "folded"
SUMMARIZED: Final = "summarized"
#: States after which a channel is not sent the event again.
FINAL: Final = frozenset({SENT, REJECTED, FOLDED, SUMMARIZED})
#: Claim outcome: another instance is sending this event to this channel right now.
BUSY: Final = "busy"
CLAIMED: Final = "claimed"
#: How long delivery and minute documents are kept: longer than an event can come again
#: (the Trigger's retries take about 7 minutes, Kafka keeps the Broker topic 7 days).
KEEP: Final = timedelta(days=8)
#: Summaries one tick sends at most; the next tick goes on with the rest.
SUMMARIES_PER_TICK: Final = 100
#: Expired documents one tick deletes at most, per collection (stores without TTL indexes).
EXPIRED_PER_TICK: Final = 1000
#: Examples of folded alerts a summary names.
SUMMARY_EXAMPLES: Final = 5


def minute_of(now: datetime) -> str:
    """The minute `now` falls in, as its RFC 3339 start (`2026-12-07T10:42:00Z`)."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:00Z")


def _minute_start(minute: str) -> datetime:
    return datetime.strptime(minute, "%Y-%m-%dT%H:%M:00Z").replace(tzinfo=UTC)


def delivery_key(channel: str, attributes: Mapping[str, Any]) -> str:
    """The id of an event's delivery to a channel: (channel, device, source, id), as a JSON
    list so no value can run into another."""
    return json.dumps([channel, str(attributes.get("subject") or ""),
                       str(attributes.get("source")), str(attributes.get("id"))])


def _minute_key(channel: str, minute: str) -> str:
    return json.dumps([channel, minute])


@dataclass(frozen=True)
class Claim:
    """What `claim` found: CLAIMED (this call sends), BUSY, or the final state, and the doc."""

    outcome: str
    doc: dict[str, Any]


@dataclass(frozen=True)
class DueSummary:
    """A summary this tick claimed: what to send, and what to write once it was taken."""

    summary: Summary
    doc_id: str
    seq: int
    folds: int


class NotificationBook:
    """Deliveries and minutes of notify in the store (see the module docstring)."""

    def __init__(self, store: Store, max_per_minute: int, lease_seconds: float) -> None:
        self.store = store
        self.max_per_minute = max_per_minute
        self.lease_seconds = lease_seconds
        self.deliveries = store.collection(NOTIFY_DELIVERIES)
        self.minutes = store.collection(NOTIFY_MINUTES)

    def ensure_indexes(self) -> None:
        with self.store.guard():
            for collection in (self.deliveries, self.minutes):
                try:
                    collection.create_index("exp", name="expiry", expireAfterSeconds=0)
                except OperationFailure as exc:
                    if exc.code != NOT_IMPLEMENTED:
                        raise
                    collection.create_index("exp", name="expiry")  # the tick deletes
            # A summary marks and counts the alerts folded in its channel's minute.
            self.deliveries.create_index(
                [("channel", ASCENDING), ("fold_minute", ASCENDING), ("state", ASCENDING)],
                name="folded")
            self.minutes.create_index("due", name="due")

    # --- one event, one channel -----------------------------------------------------------

    def claim(self, channel: str, attributes: Mapping[str, Any], alert: Mapping[str, Any],
              now: datetime) -> Claim:
        """Take the event's delivery to `channel` for this call, unless it is final or being
        sent by another instance (its lease runs)."""
        key = delivery_key(channel, attributes)
        at = now.timestamp()
        lease = at + self.lease_seconds
        doc = {"_id": key, "channel": channel, "event": str(attributes.get("id")),
               "transition": alert.get("state"), "alert": example(alert),
               "minute": minute_of(now), "created": at, "state": SENDING, "lease": lease,
               "attempts": 1, "exp": now + KEEP}
        with self.store.guard():
            try:
                self.deliveries.insert_one(dict(doc))
                return Claim(CLAIMED, doc)
            except DuplicateKeyError:
                pass
            taken = self.deliveries.find_one_and_update(
                {"_id": key, "$or": [{"state": RETRY},
                                     {"state": SENDING, "lease": {"$lt": at}}]},
                {"$set": {"state": SENDING, "lease": lease}, "$inc": {"attempts": 1}},
                return_document=ReturnDocument.AFTER)
            if taken is not None:
                return Claim(CLAIMED, taken)
            found = self.deliveries.find_one({"_id": key})
        if found is None:  # expired between the two calls: a redelivery will insert it anew
            raise DependencyUnavailable("a notification delivery record vanished; retry", 1)
        return Claim(BUSY if found["state"] == SENDING else found["state"], found)

    def take_slot(self, channel: str, key: str, minute: str) -> bool:
        """Whether the event has one of the channel's message slots of `minute` (taking one if
        it had none and one is free)."""
        mid = _minute_key(channel, minute)
        wanted = {"_id": mid, "n": {"$lt": self.max_per_minute}, "slots": {"$ne": key}}
        update = {"$push": {"slots": key}, "$inc": {"n": 1},
                  "$setOnInsert": self._new_minute(channel, minute)}
        with self.store.guard():
            for upsert in (True, False):
                try:
                    result = self.minutes.update_one(wanted, update, upsert=upsert)
                except DuplicateKeyError:  # the minute exists: full, or ours already
                    continue
                if result.matched_count or result.upserted_id is not None:
                    return True
                break
            return self.minutes.find_one({"_id": mid, "slots": key}, {"_id": 1}) is not None

    def finish(self, key: str, state: str, status: int | None, now: datetime) -> None:
        """Record what the channel answered: SENT, REJECTED (final) or RETRY (lease freed)."""
        with self.store.guard():
            self.deliveries.update_one(
                {"_id": key, "state": SENDING},
                {"$set": {"state": state, "status": status, "lease": 0,
                          "answered_at": now}})

    def fold(self, key: str, channel: str, now: datetime) -> str:
        """Fold the event into the channel's summary of the minute it is handled in."""
        minute = minute_of(now)
        with self.store.guard():
            self.deliveries.update_one(
                {"_id": key, "state": SENDING},
                {"$set": {"state": FOLDED, "fold_minute": minute, "lease": 0}})
        self.summary_due(channel, minute)
        return minute

    def summary_due(self, channel: str, minute: str) -> None:
        """Mark the channel's minute as owing a summary (again, when called again: a fold of a
        redelivered event whose first delivery stopped right after folding)."""
        due = (_minute_start(minute) + timedelta(minutes=1)).timestamp()
        update = {"$set": {"due": due}, "$inc": {"folds": 1},
                  "$setOnInsert": self._new_minute(channel, minute, slots=True)}
        with self.store.guard():
            try:
                self.minutes.update_one({"_id": _minute_key(channel, minute)}, update,
                                        upsert=True)
            except DuplicateKeyError:
                self.minutes.update_one({"_id": _minute_key(channel, minute)}, update)

    def _new_minute(self, channel: str, minute: str, slots: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {"channel": channel, "minute": minute, "seq": 1, "lease": 0,
                               "exp": _minute_start(minute) + KEEP}
        if slots:  # $push and $inc of take_slot create these themselves
            doc.update(slots=[], n=0)
        return doc

    # --- summaries --------------------------------------------------------------------------

    def due_summaries(self, channels: Mapping[str, Channel], now: datetime,
                      ) -> list[DueSummary]:
        """Claim the summaries due by `now` (their minute is over) and mark what each holds."""
        at = now.timestamp()
        with self.store.guard():
            docs = list(self.minutes.find({"due": {"$lte": at}}, {"_id": 1, "channel": 1})
                        .sort("due", ASCENDING).limit(SUMMARIES_PER_TICK))
        out = []
        for doc in docs:
            if doc.get("channel") not in channels:  # channel removed from NOTIFY_CHANNELS
                with self.store.guard():
                    self.minutes.update_one({"_id": doc["_id"]}, {"$unset": {"due": ""}})
                continue
            claimed = self._claim_summary(doc["_id"], at)
            if claimed is not None:
                out.append(claimed)
        return out

    def _claim_summary(self, doc_id: str, at: float) -> DueSummary | None:
        with self.store.guard():
            doc = self.minutes.find_one_and_update(
                {"_id": doc_id, "due": {"$lte": at}, "lease": {"$lt": at}},
                {"$set": {"lease": at + self.lease_seconds}},
                return_document=ReturnDocument.AFTER)
            if doc is None:  # another instance is sending it
                return None
            channel, minute, seq = doc["channel"], doc["minute"], int(doc.get("seq", 1))
            scope = {"channel": channel, "fold_minute": minute}
            # Marked before counting, under this summary's number: a fold landing later is
            # left for the next summary, never counted in two.
            self.deliveries.update_many({**scope, "state": FOLDED},
                                        {"$set": {"state": SUMMARIZED, "summary": seq}})
            mine = {**scope, "state": SUMMARIZED, "summary": seq}
            by_transition = {t: n for t in LIFECYCLE
                             if (n := self.deliveries.count_documents({**mine, "transition": t}))}
            examples = tuple(d["alert"] for d in self.deliveries.find(mine, {"alert": 1}).sort(
                [("created", ASCENDING), ("_id", ASCENDING)]).limit(SUMMARY_EXAMPLES))
        summary = Summary(f"summary/{channel}/{minute}/{seq}", channel, minute,
                          sum(by_transition.values()), by_transition, examples)
        return DueSummary(summary, doc_id, seq, int(doc.get("folds", 0)))

    def summary_done(self, due: DueSummary) -> None:
        """After a summary was taken (or refused for good, or was empty): the minute owes no
        more, unless a fold came in meanwhile (`folds` moved): then the next tick sends it
        under the next number."""
        with self.store.guard():
            bump = {"$inc": {"seq": 1}} if due.summary.count else {}
            done = self.minutes.update_one(
                {"_id": due.doc_id, "seq": due.seq, "folds": due.folds},
                {"$unset": {"due": ""}, "$set": {"lease": 0}, **bump})
            if not done.matched_count:
                self.minutes.update_one({"_id": due.doc_id, "seq": due.seq},
                                        {"$set": {"lease": 0}, **bump})

    def summary_failed(self, due: DueSummary) -> None:
        """A summary the channel did not take for now: the next tick sends it again."""
        with self.store.guard():
            self.minutes.update_one({"_id": due.doc_id, "seq": due.seq}, {"$set": {"lease": 0}})

    def delete_expired(self, now: datetime) -> int:
        """Delete a page of expired documents (where the store has no TTL indexes)."""
        deleted = 0
        with self.store.guard():
            for collection in (self.deliveries, self.minutes):
                ids = [d["_id"] for d in collection.find({"exp": {"$lt": now}}, {"_id": 1})
                       .limit(EXPIRED_PER_TICK)]
                if ids:
                    deleted += collection.delete_many({"_id": {"$in": ids}}).deleted_count
        return deleted
