"""The MongoDB-API store: one client per process, collections, indexes, outage mapping."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import pymongo
from pymongo import ASCENDING, DESCENDING, monitoring
from pymongo.collection import Collection
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    DuplicateKeyError,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from .errors import DependencyUnavailable
from .observability import STORE_COMMANDS
from .settings import Settings

log = logging.getLogger(__name__)

DUPLICATE_KEY: Final = 11000
NOT_IMPLEMENTED: Final = 238
#: Collections, by what they hold (the rollup layout is described in series.py).
ROLLUP_HOURS: Final = "rollup_hours"
ROLLUP_DAYS: Final = "rollup_days"
ROLLUP_MONTHS: Final = "rollup_months"
#: Raw readings of a recent window, a document per device and ten minutes (raw.py).
RAW_READINGS: Final = "raw_readings"
#: The time ingest gave each event that came without one, by event key (see rollup.py).
EVENT_TIMES: Final = "event_times"
#: The minute retentions configured over time (retention.py): an hour is judged by the
#: shortest its document may have been created with.
RETENTION_CHANGES: Final = "retention_changes"
DEVICES: Final = "devices"
ALERTS: Final = "alerts"
ALERT_STATE: Final = "alert_state"
#: The sweeps' and cleanups' own bookkeeping (bookkeeping.py), apart from every
#: collection keyed by device ids.
SWEEPS: Final = "sweeps"
#: Query API tokens managed with `iot-telemetry tokens` (query_tokens.py), by name.
QUERY_TOKENS: Final = "query_tokens"
#: notify's bookkeeping: each alert event's delivery to each channel, and each channel's
#: minutes (flood slots and summaries; see notifications.py).
NOTIFY_DELIVERIES: Final = "notify_deliveries"
NOTIFY_MINUTES: Final = "notify_minutes"

class _CommandCounter(monitoring.CommandListener):
    """Counts every command sent to the store: the round trips a design costs, which carry
    over to any MongoDB server (iot_store_commands_total)."""

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        STORE_COMMANDS.labels(event.command_name).inc()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


_embedded_lock = threading.RLock()
_embedded_client: Any = None


def _embedded() -> Any:
    """The process-wide in-process store of the local run (mongomock; not persistent)."""
    global _embedded_client
    with _embedded_lock:
        if _embedded_client is None:
            import mongomock

            _embedded_client = mongomock.MongoClient(tz_aware=True)
        return _embedded_client


def reset_embedded() -> None:
    """Forget the in-process store (tests)."""
    global _embedded_client
    with _embedded_lock:
        _embedded_client = None


@dataclass(frozen=True)
class Update:
    """One update of a bulk write; kept apart from pymongo so the in-process store can run it."""

    filter: dict[str, Any]
    update: dict[str, Any]
    upsert: bool = False


@dataclass
class BulkOutcome:
    """What a bulk write did: indexes of ops refused as duplicate keys, other refusals by
    index (code, message), and matched count."""

    duplicates: list[int] = field(default_factory=list)
    failed: dict[int, tuple[int, str]] = field(default_factory=dict)
    matched: int = 0
    upserted: int = 0


class Store:
    """Collections of the telemetry database, shared by every thread of the process."""

    def __init__(self, settings: Settings, command_timeout_ms: int | None = None) -> None:
        """`command_timeout_ms`: how long one command may take, if longer than
        MONGO_TIMEOUT_MS (a bulk import's thousand-row writes; the server is still found or
        given up on within MONGO_TIMEOUT_MS)."""
        self.embedded = settings.embedded_store
        self._retry_after = settings.ingest_retry_after_seconds
        if self.embedded:
            self.client = _embedded()
        else:
            self.client = pymongo.MongoClient(
                settings.mongo_url,
                serverSelectionTimeoutMS=settings.mongo_timeout_ms,
                connectTimeoutMS=settings.mongo_timeout_ms,
                socketTimeoutMS=max(settings.mongo_timeout_ms, command_timeout_ms or 0),
                tz_aware=True,
                appname="iot-telemetry",
                retryWrites=False,  # FerretDB 1.x has no sessions; our writes are idempotent
                event_listeners=[_CommandCounter()],
            )
        self.db = self.client[settings.mongo_db]
        self._indexed = False
        self._index_lock = threading.Lock()
        self._ferretdb: bool | None = None
        self._collections: dict[str, Collection[dict[str, Any]]] = {}

    def collection(self, name: str) -> Collection[dict[str, Any]]:
        # pymongo builds a Collection (and its codec options) on every db[name]: a few
        # percent of a function's CPU per event when done per call. They are immutable and
        # thread-safe, so one per name is kept.
        collection = self._collections.get(name)
        if collection is None:
            collection = self._collections.setdefault(name, self.db[name])
        return collection

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Run store calls; an unreachable store becomes DependencyUnavailable (503, retried)."""
        lock = _embedded_lock if self.embedded else contextlib.nullcontext()
        try:
            with lock:
                yield
        except (AutoReconnect, ConnectionFailure, NetworkTimeout,
                ServerSelectionTimeoutError) as exc:
            raise DependencyUnavailable(f"store unreachable: {exc}", self._retry_after) from None
        except OperationFailure as exc:
            if exc.code == DUPLICATE_KEY:
                raise
            raise DependencyUnavailable(f"store refused: {exc}", self._retry_after) from None

    def ensure_indexes(self) -> None:
        """Create the indexes once per process (idempotent on the server)."""
        if self._indexed:
            return
        with self._index_lock, self.guard():
            # Rollups are read by _id; `exp` is when a document is past its retention
            # (retention.py). The daily sweep finds what is due through this index too, and
            # deletes it where the store has no TTL indexes.
            for name in (EVENT_TIMES, ROLLUP_HOURS, ROLLUP_DAYS, ROLLUP_MONTHS, RAW_READINGS):
                try:
                    self.db[name].create_index("exp", name="expiry", expireAfterSeconds=0)
                except OperationFailure as exc:
                    if exc.code != NOT_IMPLEMENTED:
                        raise
                    log.warning("store: no TTL indexes (FerretDB 1.x); the daily retention "
                                "sweep deletes expired %s", name)
                    self.db[name].create_index("exp", name="expiry")
            self.db[ALERTS].create_index(
                [("raised_at", DESCENDING), ("_id", DESCENDING)], name="newest")
            self.db[ALERTS].create_index(
                [("device_id", ASCENDING), ("raised_at", DESCENDING)], name="by_device")
            # The sweeps' look at the open alerts of each offline rule (offline.py).
            self.db[ALERTS].create_index([("state", ASCENDING), ("rule", ASCENDING)],
                                         name="open_by_rule")
            self.db[DEVICES].create_index([("last_seen", DESCENDING)], name="recent")
            # The offline sweep's look at devices the registry changed (re-enabled, metadata).
            self.db[DEVICES].create_index([("changed_at", ASCENDING)], name="registry_changes")
            # The expiry of tick journals (bookkeeping.py).
            self.db[SWEEPS].create_index([("kind", ASCENDING), ("at", ASCENDING)],
                                         name="journal_age")
            self._indexed = True

    def ping(self) -> bool:
        try:
            with self.guard():
                self.client.admin.command("ping")
            return True
        except DependencyUnavailable:
            return False

    def bulk(self, name: str, ops: Sequence[Update], ordered: bool = False, *,
             tolerate: bool = False) -> BulkOutcome:
        """Run updates in one round trip; duplicate-key refusals are reported, not raised.

        Other refusals of single ops raise DependencyUnavailable, or with `tolerate` are
        reported in `failed` so the caller can fail only what they belong to.
        """
        outcome = BulkOutcome()
        if not ops:
            return outcome
        collection = self.collection(name)
        with self.guard():
            if self.embedded:  # mongomock's bulk_write lags pymongo's; run them one by one
                for i, op in enumerate(ops):
                    try:
                        result = collection.update_one(op.filter, op.update, upsert=op.upsert)
                    except DuplicateKeyError:
                        outcome.duplicates.append(i)
                        if ordered:
                            break
                        continue
                    except OperationFailure as exc:
                        if not tolerate:
                            raise
                        outcome.failed[i] = (exc.code or 0, str(exc))
                        if ordered:
                            break
                        continue
                    outcome.matched += result.matched_count
                    outcome.upserted += 1 if result.upserted_id is not None else 0
                return outcome
            # The update command itself rather than bulk_write: FerretDB 1.x leaves `n` and
            # `nModified` out of a reply that has writeErrors, and pymongo's bulk_write then
            # raises KeyError('nModified') instead of reporting the duplicate keys, so every
            # redelivery of an already-counted event failed with 500 until dead-lettered.
            reply = self._update_command(collection.name, ops, ordered)
            errors = reply.get("writeErrors") or []
            other = [e for e in errors if e.get("code") != DUPLICATE_KEY]
            if other and not tolerate:
                raise DependencyUnavailable(
                    f"store refused a write: {other[0].get('errmsg')}", self._retry_after)
            outcome.failed = {int(e["index"]): (int(e.get("code", 0)), str(e.get("errmsg")))
                              for e in other}
            if reply.get("writeConcernError"):
                raise DependencyUnavailable(
                    f"store write concern failed: {reply['writeConcernError']}",
                    self._retry_after)
            outcome.duplicates = sorted(int(e["index"]) for e in errors
                                        if e.get("code") == DUPLICATE_KEY)
            outcome.upserted = len(reply.get("upserted") or [])
            outcome.matched = max(0, int(reply.get("n", 0)) - outcome.upserted)
        return outcome

    def _update_command(self, name: str, ops: Sequence[Update], ordered: bool,
                        ) -> dict[str, Any]:
        statements = [{"q": op.filter, "u": op.update, "upsert": op.upsert} for op in ops]
        if not self._stops_at_first_write_error():
            reply: dict[str, Any] = self.db.command(
                {"update": name, "updates": statements, "ordered": ordered})
            return reply
        # FerretDB 1.x stops an update command at its first write error, ordered or not, and
        # reports it as statement 0 whichever it was: the statements after it are neither
        # applied nor reported. So it gets one statement per command.
        merged: dict[str, Any] = {"n": 0, "upserted": [], "writeErrors": []}
        for i, statement in enumerate(statements):
            one = self.db.command({"update": name, "updates": [statement], "ordered": True})
            merged["n"] += int(one.get("n", 0))
            merged["upserted"] += [{**u, "index": i} for u in one.get("upserted") or []]
            errors = [{**e, "index": i} for e in one.get("writeErrors") or []]
            merged["writeErrors"] += errors
            if one.get("writeConcernError"):
                merged["writeConcernError"] = one["writeConcernError"]
            if errors and ordered:
                break
        return merged

    def _stops_at_first_write_error(self) -> bool:
        if self._ferretdb is None:
            self._ferretdb = "ferretdbVersion" in self.client.admin.command("buildInfo")
        return self._ferretdb

    def close(self) -> None:
        if not self.embedded:
            self.client.close()
