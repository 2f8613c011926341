"""The rollup layout (the bucket pattern) and reading series from it.

Three collections, one document per device and period, every metric in it:

- `rollup_hours`, `<device>|<YYYY-MM-DDTHH>`: the minute slots of every metric
  (`min.<metric>.<MM>`), the hour totals of every metric (`tot.<metric>`), the version `v`
  (one more for every event counted) and the keys of the events counted (`ids`, 64-bit
  hashes, never returned by a read).
- `rollup_days`, `<device>|<YYYY-MM-DD>`: a snapshot of each hour's totals per metric
  (`h.<metric>.<HH>`), a string that starts with the hour document's version, so `$max`
  keeps the newest snapshot whatever order the writes arrive in.
- `rollup_months`, `<device>|<YYYY-MM>`: each day's totals per metric (`d.<metric>.<DD>`),
  copied from the day documents by the retention sweep, which outlive them (retention.py).

A slot holds `c` (count), `s` (sum), `lo` (min), `hi` (max), `f` (first time) and `lv`
(last time and value); `f` and `lv` are order-preserving strings (see `time_key` and
`reading_key`), so `$min`/`$max` keep first and last exact in any arrival order without a
second write.

A series of 24 h at 1 m reads 25 hour documents, 30 d at 1 h reads 31 day documents, each
in one `find` by `_id` with a projection of the one metric asked for. `read_points` turns
them into the API's buckets straight from the stored strings and numbers: a datetime and a
Summary per bucket, and three `isoformat` calls, were most of a series request's time.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from operator import itemgetter
from typing import Any, Final

from .store import ROLLUP_DAYS, ROLLUP_HOURS, ROLLUP_MONTHS, Store

STEPS: Final = {"1m": timedelta(minutes=1), "1h": timedelta(hours=1), "1d": timedelta(days=1)}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: Origin of the time keys: every datetime is after it, so keys are non-negative.
_KEY_ORIGIN: Final = datetime(1, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
_TIME_DIGITS: Final = 15  # hex digits of microseconds since year 1 (year 9999 needs 15)
_FLOAT_DIGITS: Final = 16
_SIGN: Final = 1 << 63
_ALL: Final = (1 << 64) - 1
#: Hex digits of the version that leads a snapshot string.
_VERSION_DIGITS: Final = 12


def bucket_start(t: datetime, step: str) -> datetime:
    """Start of the bucket of width `step` holding `t` (event time, UTC)."""
    width = STEPS[step]
    return _EPOCH + ((t - _EPOCH) // width) * width


def hour_id(device_id: str, start: datetime) -> str:
    return f"{device_id}|{start.strftime('%Y-%m-%dT%H')}"


def day_id(device_id: str, start: datetime) -> str:
    return f"{device_id}|{start.strftime('%Y-%m-%d')}"


def month_id(device_id: str, start: datetime) -> str:
    return f"{device_id}|{start.strftime('%Y-%m')}"


def month_start(t: datetime) -> datetime:
    return bucket_start(t, "1d").replace(day=1)


def next_month(start: datetime) -> datetime:
    return (start.replace(day=1) + timedelta(days=32)).replace(day=1)


# --- order-preserving encodings ----------------------------------------------------------

def time_key(t: datetime) -> str:
    """`t` as fixed-width hex of microseconds: string order is time order."""
    return f"{(t - _KEY_ORIGIN) // _US:0{_TIME_DIGITS}x}"


def time_of(key: str) -> datetime:
    return _KEY_ORIGIN + int(key[:_TIME_DIGITS], 16) * _US


def _float_bits(x: float) -> int:
    # IEEE 754 bits, flipped so that unsigned order is numeric order: negatives inverted,
    # positives with the sign bit set.
    bits: int = struct.unpack(">Q", struct.pack(">d", x))[0]
    return bits ^ _ALL if bits & _SIGN else bits | _SIGN


def _float_of(bits: int) -> float:
    raw = bits ^ _SIGN if bits & _SIGN else bits ^ _ALL
    value: float = struct.unpack(">d", struct.pack(">Q", raw))[0]
    return value


def reading_key(t: datetime, value: float) -> str:
    """(time, value) as a string ordered like the pair: `$max` keeps the newest reading,
    and of readings with the same time the larger value, in any arrival order."""
    return f"{time_key(t)}{_float_bits(value):0{_FLOAT_DIGITS}x}"


def reading_of(key: str) -> tuple[datetime, float]:
    return time_of(key), _float_of(int(key[_TIME_DIGITS:], 16))


def add_reading(ops: Mapping[str, dict[str, Any]], paths: Iterable[str], t: datetime,
                value: float) -> None:
    """Add to `ops` ($inc, $min, $max) what `Summary.of([(t, value)]).increments(path)`
    holds for each of `paths`, its two keys encoded once: an event's lone reading of a
    metric (most events carry one) fills its hour total and its minute slot alike, and a
    Summary and two encodings per slot were most of aggregate's CPU per single-reading
    event outside the store round trips."""
    first = time_key(t)
    last = f"{first}{_float_bits(value):0{_FLOAT_DIGITS}x}"
    inc, low, high = ops["$inc"], ops["$min"], ops["$max"]
    for path in paths:
        inc[f"{path}.c"] = 1
        inc[f"{path}.s"] = value
        low[f"{path}.lo"] = value
        low[f"{path}.f"] = first
        high[f"{path}.hi"] = value
        high[f"{path}.lv"] = last


# --- times as the API writes them ---------------------------------------------------------

_MINUTE_US: Final = 60_000_000
_HOUR_US: Final = 60 * _MINUTE_US


def micros(t: datetime) -> int:
    """`t` as microseconds since year 1, the number a time key holds."""
    return (t - _KEY_ORIGIN) // _US


@lru_cache(maxsize=1 << 14)  # 11 days of minutes, about 2 MB: a few series' worth
def _minute_text(minute: int) -> str:
    t = _KEY_ORIGIN + timedelta(minutes=minute)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:"


_SECOND_TEXT: Final = tuple(f"{i:02d}" for i in range(60))
_MILLI_TEXT: Final = tuple(f".{i:03d}Z" for i in range(1000))


def micros_text(us: int) -> str:
    """What telemetry.format_time writes for that instant (UTC, milliseconds, Z), without
    making a datetime: a series' times share a few thousand minutes, whose text is cached,
    and the rest comes from two tables (5-10 times faster than format_time)."""
    minute, rest = divmod(us, _MINUTE_US)
    second, rest = divmod(rest, 1_000_000)
    return f"{_minute_text(minute)}{_SECOND_TEXT[second]}{_MILLI_TEXT[rest // 1000]}"


# --- summaries ---------------------------------------------------------------------------

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
    def of(cls, readings: Iterable[tuple[datetime, float]]) -> Summary:
        pts = sorted(readings)
        values = [v for _, v in pts]
        return cls(len(pts), sum(values), min(values), max(values), pts[0][0], pts[-1][0],
                   pts[-1][1])

    def merge(self, other: Summary) -> Summary:
        newer = other if (other.last, other.last_value) > (self.last, self.last_value) else self
        return Summary(self.count + other.count, self.sum + other.sum, min(self.min, other.min),
                       max(self.max, other.max), min(self.first, other.first),
                       newer.last, newer.last_value)

    @classmethod
    def merge_all(cls, parts: Iterable[Summary]) -> Summary | None:
        total: Summary | None = None
        for part in parts:
            total = part if total is None else total.merge(part)
        return total

    # A stored slot: what one event adds, and what the slot holds after the updates.

    def increments(self, path: str) -> dict[str, dict[str, Any]]:
        """The update operators that add these readings to the slot at `path`."""
        return {"$inc": {f"{path}.c": self.count, f"{path}.s": self.sum},
                "$min": {f"{path}.lo": self.min, f"{path}.f": time_key(self.first)},
                "$max": {f"{path}.hi": self.max,
                         f"{path}.lv": reading_key(self.last, self.last_value)}}

    @classmethod
    def from_slot(cls, slot: Mapping[str, Any]) -> Summary | None:
        if not slot.get("c"):
            return None
        last, last_value = reading_of(slot["lv"])
        return cls(int(slot["c"]), float(slot["s"]), float(slot["lo"]), float(slot["hi"]),
                   time_of(slot["f"]), last, last_value)

    def snapshot(self, version: int) -> str:
        """These totals as of `version`, as a string whose order is the version's."""
        return "|".join((f"{version:0{_VERSION_DIGITS}x}", str(self.count), repr(self.sum),
                         repr(self.min), repr(self.max), time_key(self.first),
                         reading_key(self.last, self.last_value)))

    @staticmethod
    def version_of(text: str) -> int:
        return int(text.split("|", 1)[0], 16)

    @staticmethod
    def slot_snapshot(slot: Mapping[str, Any], version: int) -> str | None:
        """`Summary.from_slot(slot).snapshot(version)` (None for an empty slot), taken from
        the slot's stored fields as they are: its first and last keys are what `snapshot`
        writes, so decoding them into times and encoding them again is skipped (a day
        snapshot per metric on every event of aggregate)."""
        if not slot.get("c"):
            return None
        return "|".join((f"{version:0{_VERSION_DIGITS}x}", str(int(slot["c"])),
                         repr(float(slot["s"])), repr(float(slot["lo"])),
                         repr(float(slot["hi"])), slot["f"], slot["lv"]))

    @classmethod
    def from_snapshot(cls, text: str) -> Summary:
        _, count, total, low, high, first, last = text.split("|")
        when, value = reading_of(last)
        return cls(int(count), float(total), float(low), float(high), time_of(first), when,
                   value)


# --- reading -----------------------------------------------------------------------------

def read_series(store: Store, device_id: str, metric: str, step: str, *, first: datetime,
                to: datetime, compacted_before: datetime | None = None,
                ) -> list[tuple[datetime, Summary]]:
    """Buckets of `step` in [first, to): minutes from hour documents, hours and days from
    day documents, one `find` by `_id` for the whole range; days before
    `compacted_before` (retention.py) also from month documents, in a second `find`."""
    docs, field = _documents(store, device_id, metric, step, first=first, to=to)
    out: list[tuple[datetime, Summary]] = []
    for doc in docs:
        start = _utc(doc["t"])
        slots: Mapping[str, Any] = (doc.get(field) or {}).get(metric) or {}
        if step == "1m":
            parts = ((start + int(k) * STEPS["1m"], Summary.from_slot(v))
                     for k, v in slots.items())
            out += [(t, s) for t, s in parts if s is not None and first <= t < to]
        elif step == "1h":
            out += [(t, Summary.from_snapshot(v)) for k, v in slots.items()
                    if first <= (t := start + int(k) * STEPS["1h"]) < to]
        else:
            total = Summary.merge_all(Summary.from_snapshot(v) for v in slots.values())
            if total is not None and first <= start < to:
                out.append((start, total))
    if step == "1d" and compacted_before is not None and first < to and (
            bucket_start(first, "1d") < compacted_before):
        out = _with_compacted(store, device_id, metric, docs, out, first=first,
                              to=min(to, compacted_before))
    out.sort(key=lambda pair: pair[0])
    return out


#: Significant digits of the sums and averages the API answers (README, Query API).
SHOWN_DIGITS: Final = 12


def shown(value: float) -> float:
    """`value` to SHOWN_DIGITS significant digits: a sum or an average of readings without
    the noise of binary fractions (488.5, not 488.5000000000001); readings have far fewer."""
    return float(f"{value:.{SHOWN_DIGITS}g}")


def read_points(store: Store, device_id: str, metric: str, step: str, *, first: datetime,
                to: datetime, compacted_before: datetime | None = None,
                ) -> list[dict[str, Any]]:
    """The buckets of `read_series` as the API answers them (`t`, `count`, `min`, `max`,
    `avg`, `sum`, `first`, `last`, `last_value`; times as telemetry.format_time writes
    them), decoded from the stored slots and snapshots directly."""
    if step == "1d":
        return [_point(micros(t), s) for t, s in read_series(
            store, device_id, metric, step, first=first, to=to,
            compacted_before=compacted_before)]
    docs, field = _documents(store, device_id, metric, step, first=first, to=to)
    low, high = micros(first), micros(to)
    width = _MINUTE_US if step == "1m" else _HOUR_US
    out: list[dict[str, Any]] = []
    for doc in docs:
        start = micros(_utc(doc["t"]))
        slots: Mapping[str, Any] = (doc.get(field) or {}).get(metric) or {}
        for k, v in slots.items():
            t_us = start + int(k) * width
            if not low <= t_us < high:
                continue
            if step == "1m":
                if not v.get("c"):
                    continue
                count, total, lo, hi, f, lv = (int(v["c"]), float(v["s"]), float(v["lo"]),
                                               float(v["hi"]), v["f"], v["lv"])
            else:
                _, c, sum_, min_, max_, f, lv = v.split("|")  # Summary.snapshot's fields
                count, total, lo, hi = int(c), float(sum_), float(min_), float(max_)
            out.append({"t": micros_text(t_us), "count": count, "min": lo, "max": hi,
                        "avg": shown(total / count), "sum": shown(total),
                        "first": micros_text(int(f[:_TIME_DIGITS], 16)),
                        "last": micros_text(int(lv[:_TIME_DIGITS], 16)),
                        "last_value": _float_of(int(lv[_TIME_DIGITS:], 16))})
    # Zero-padded four-digit years: text order is time order.
    out.sort(key=itemgetter("t"))
    return out


def _documents(store: Store, device_id: str, metric: str, step: str, *, first: datetime,
               to: datetime) -> tuple[list[Mapping[str, Any]], str]:
    """The documents holding the buckets of `step` in [first, to), with `t` and the one
    metric's slots only; and the field those are under."""
    parent = "1h" if step == "1m" else "1d"
    starts: list[datetime] = []
    t = bucket_start(first, parent)
    while t < to:
        starts.append(t)
        t += STEPS[parent]
    if parent == "1h":
        name, ids, field = ROLLUP_HOURS, [hour_id(device_id, s) for s in starts], "min"
    else:
        name, ids, field = ROLLUP_DAYS, [day_id(device_id, s) for s in starts], "h"
    if not ids:
        return [], field
    with store.guard():
        return list(store.collection(name).find(
            {"_id": {"$in": ids}}, {"t": 1, f"{field}.{metric}": 1})), field


def _point(t_us: int, s: Summary) -> dict[str, Any]:
    return {"t": micros_text(t_us), "count": s.count, "min": s.min, "max": s.max,
            "avg": shown(s.avg), "sum": shown(s.sum), "first": micros_text(micros(s.first)),
            "last": micros_text(micros(s.last)), "last_value": s.last_value}


def _with_compacted(store: Store, device_id: str, metric: str, days: list[Mapping[str, Any]],
                    out: list[tuple[datetime, Summary]], *, first: datetime, to: datetime,
                    ) -> list[tuple[datetime, Summary]]:
    """Day totals of month documents merged in; a day in both is taken at the higher
    version (the day document until the sweep copied its last change)."""
    version = {_utc(d["t"]): sum(Summary.version_of(v) for v in
                                  ((d.get("h") or {}).get(metric) or {}).values())
               for d in days}
    ids = []
    t = month_start(first)
    while t < to:
        ids.append(month_id(device_id, t))
        t = next_month(t)
    with store.guard():
        months = list(store.collection(ROLLUP_MONTHS).find(
            {"_id": {"$in": ids}}, {"t": 1, f"d.{metric}": 1}))
    best = {t: (version.get(t, 0), s) for t, s in out}
    for doc in months:
        start = _utc(doc["t"])
        for day, text in ((doc.get("d") or {}).get(metric) or {}).items():
            t = start.replace(day=int(day))
            if first <= t < to and Summary.version_of(text) > best.get(t, (0, None))[0]:
                best[t] = (Summary.version_of(text), Summary.from_snapshot(text))
    return [(t, s) for t, (_, s) in best.items() if s is not None]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
