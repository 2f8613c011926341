"""Raw readings: every reading as it was sent, kept for a recent window next to the rollups.

One document per device and ten minutes, `raw_readings`, `<device>|<YYYY-MM-DDTHH:M0>`:

- `r.<metric>.<key>`: the value of one reading, where the key is the reading's millisecond
  within the window (six digits, so key order is time order), the event's 64-bit key (the
  one that deduplicates it in the hour document, rollup.py) and the reading's place in its
  event. A second delivery of an event `$set`s the same fields to the same values: exact under
  redelivery, crashes and concurrent instances without a filter or a second write.
- `e.<event key>`: the event's `id`, once per event and document, so a reading can name it.
- `b`: about how many bytes the document holds (`$inc` by each write, redeliveries included,
  so it can only overstate). A write whose document is past `MAX_BYTES` is refused by its
  filter: the document stays bounded whatever a device sends, the readings refused are
  counted (iot_raw_readings_dropped_total) and the rollups still count them; a read of such
  a window says its readings are incomplete.
- `exp`: the window's end plus RAW_RETENTION_HOURS, set when the document is created; a TTL
  index and the retention sweep delete it (retention.py).

The writes of a batch of events are one update command (rollup.py calls `updates`); a read
of an hour's readings is one `find` over a range of `_id`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from .errors import BadRequest
from .store import RAW_READINGS, Store, Update
from .telemetry import TelemetryEvent, format_time

#: The `step` of the series route that answers readings rather than buckets.
STEP: Final = "raw"
DEFAULT_LIMIT: Final = 1000
MAX_LIMIT: Final = 10_000
WINDOW: Final = timedelta(minutes=10)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
#: Bytes past which a document takes no more readings. One update adds at most what one
#: event carries (INGEST_MAX_BODY_BYTES, 1 MiB of JSON: at most ~100,000 readings of ~33
#: bytes), so no document gets near MongoDB's 16 MiB. One event a second of three metrics
#: fills ten minutes with ~90 KiB; the per-device rate limit (50 events/s) with ~4.7 MiB.
MAX_BYTES: Final = 6 * 1024 * 1024
#: Stored bytes of one reading: element type, a key of 6 + 16 + up to 4 characters, its
#: terminator and a double.
READING_BYTES: Final = 1 + 26 + 1 + 8
#: Stored bytes of an event's id entry, besides the id itself.
EVENT_BYTES: Final = 1 + 16 + 1 + 4 + 1


def window_start(t: datetime) -> datetime:
    return _EPOCH + ((t - _EPOCH) // WINDOW) * WINDOW


def window_id(device_id: str, start: datetime) -> str:
    return f"{device_id}|{start.strftime('%Y-%m-%dT%H:%M')}"


def _hex(key: int) -> str:
    return f"{key & 0xFFFF_FFFF_FFFF_FFFF:016x}"


@dataclass(frozen=True)
class RawWrite:
    """One event's readings of one window, as one update of that window's document."""

    owner: int
    points: int
    update: Update


def updates(owner: int, event: TelemetryEvent, key: int, retention: timedelta,
            now: datetime) -> list[RawWrite]:
    """The updates that keep `event`'s readings (those still inside the retention)."""
    keep_from = now - retention
    by_window: dict[datetime, list[tuple[int, Any]]] = defaultdict(list)
    for index, p in enumerate(event.points):
        if p.time >= keep_from:
            by_window[window_start(p.time)].append((index, p))
    event_key = _hex(key)
    out = []
    for start, points in sorted(by_window.items()):
        values = {f"r.{p.metric}.{(p.time - start) // _MS:06d}{event_key}{index:x}": p.value
                  for index, p in points}
        size = len(values) * READING_BYTES + EVENT_BYTES + len(event.id.encode())
        out.append(RawWrite(owner, len(values), Update(
            {"_id": window_id(event.device_id, start), "b": {"$lt": MAX_BYTES}},
            {"$set": {**values, f"e.{event_key}": event.id},
             "$inc": {"b": size},
             "$setOnInsert": {"device_id": event.device_id, "t": start,
                              "exp": start + WINDOW + retention}},
            upsert=True)))
    return out


@dataclass(frozen=True)
class Reading:
    """One raw reading as the API answers it."""

    t: datetime
    value: float
    event_id: str
    position: str  # where it is in the stored order: what a cursor resumes after

    def public(self) -> dict[str, Any]:
        return {"t": format_time(self.t), "value": self.value, "event_id": self.event_id}


@dataclass
class Page:
    readings: list[Reading]
    more: bool
    complete: bool


def position(start: datetime, key: str) -> str:
    """A reading's place in time order over all windows: its window, then its key."""
    return f"{start.strftime('%Y-%m-%dT%H:%M')}|{key}"


def read(store: Store, device_id: str, metric: str, *, start: datetime, to: datetime,
         after: str | None, limit: int) -> Page:
    """Up to `limit` readings of `metric` in [start, to), in time order, after the
    position `after`; whether more follow, and whether every window read was complete."""
    readings: list[Reading] = []
    complete = True
    for doc in _windows(store, device_id, metric, start, to, after=after):
        begin = _utc(doc["t"])
        complete = complete and int(doc.get("b", 0)) < MAX_BYTES
        events: Mapping[str, str] = doc.get("e") or {}
        for key, value in sorted(((doc.get("r") or {}).get(metric) or {}).items()):
            t = begin + int(key[:6]) * _MS
            here = position(begin, key)
            if not start <= t < to or (after is not None and here <= after):
                continue
            if len(readings) == limit:
                return Page(readings, True, complete)
            readings.append(Reading(t, float(value), events.get(key[6:22], ""), here))
    return Page(readings, False, complete)


def pages(store: Store, device_id: str, metric: str, span: tuple[datetime, datetime], *,
          after: str | None, rows: int) -> Iterator[list[Reading]]:
    """Up to `rows` readings of [span), a page (MAX_LIMIT) per read, each page starting
    where a cursor of the one before would: what a CSV download streams."""
    while True:
        size = min(rows, MAX_LIMIT)
        page = read(store, device_id, metric, start=span[0], to=span[1], after=after,
                    limit=size)
        yield page.readings
        rows -= len(page.readings)
        if not page.more or rows <= 0:
            return
        after = page.readings[-1].position


#: A reading's position (`position`): its window, then its key in the window.
_POSITION: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-5]0\|[0-9]{6}[0-9a-f]{17,20}")


def encode_cursor(here: str) -> str:
    return base64.urlsafe_b64encode(here.encode()).decode().rstrip("=")


def decode_cursor(value: str) -> str:
    try:
        here = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
    except (ValueError, binascii.Error):
        here = ""
    if not _POSITION.fullmatch(here):
        raise BadRequest("cursor: not a cursor this API returned")
    return here


def _windows(store: Store, device_id: str, metric: str, start: datetime, to: datetime, *,
             after: str | None) -> Iterator[Mapping[str, Any]]:
    """The window documents of [start, to) from the cursor's window on, oldest first, a few
    at a time (each holds at most MAX_BYTES; the projection keeps one metric)."""
    low = window_id(device_id, window_start(start))
    if after is not None:
        low = max(low, f"{device_id}|{after.split('|', 1)[0]}")
    high = window_id(device_id, window_start(to - _MS))
    with store.guard():
        cursor = store.collection(RAW_READINGS).find(
            {"_id": {"$gte": low, "$lte": high}},
            {"t": 1, "b": 1, "e": 1, f"r.{metric}": 1}).sort("_id", 1).batch_size(4)
        yield from cursor


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

