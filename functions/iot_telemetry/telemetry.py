"""Telemetry events checked against the event contract, as data points ready to store."""

from __future__ import annotations

import calendar
import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

from .errors import BadRequest
from .events import JSON, SPECVERSION, TELEMETRY_TYPE, RawEvent

DEVICE_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
METRIC_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_ID_LENGTH: Final = 256
MAX_SOURCE_LENGTH: Final = 1024
#: Extension ingest adds to an event that came without `time` (value TIME_SOURCE_INGEST).
TIME_SOURCE: Final = "timesource"
TIME_SOURCE_INGEST: Final = "ingest"
# Largest magnitude kept: stored as a double and summed, so stay clear of overflow.
MAX_ABS_VALUE: Final = 1e300


@dataclass(frozen=True)
class Limits:
    """What ingest accepts; consumers check structure only (limits=None)."""

    max_age: timedelta = timedelta(days=7)
    max_future: timedelta = timedelta(minutes=5)
    max_samples: int = 1000


@dataclass(frozen=True, slots=True)
class DataPoint:
    """One reading: a metric's value at a time (UTC, millisecond precision)."""

    metric: str
    time: datetime
    value: float


@dataclass(frozen=True)
class TelemetryEvent:
    """A valid `iot.telemetry.v1` event and the data points it carries."""

    source: str
    id: str
    device_id: str
    time: datetime
    points: tuple[DataPoint, ...]
    attributes: dict[str, Any]
    data: dict[str, Any]

    @property
    def key(self) -> str:
        """Identity for deduplication: (source, id)."""
        return f"{self.source}\x1f{self.id}"

    @property
    def receipt_stamped(self) -> bool:
        """The device sent no `time`: ingest stamped the time of receipt (a resend of the
        same event gets another one)."""
        return self.attributes.get(TIME_SOURCE) == TIME_SOURCE_INGEST

    def with_time(self, t: datetime) -> TelemetryEvent:
        """The same event stamped `t`: its `metrics` move to `t`, its samples keep theirs."""
        top = len(self.data.get("metrics") or {})
        points = tuple(DataPoint(p.metric, t, p.value) for p in self.points[:top])
        return dataclasses.replace(self, time=t, points=points + self.points[top:],
                                   attributes={**self.attributes, "time": format_time(t)})


# RFC 3339 section 5.6, and nothing else ISO 8601 allows (basic format, week or ordinal
# dates, hour-only offsets): re.ASCII keeps \d to 0-9, fullmatch refuses a trailing newline.
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:[Zz]|([+-])(\d{2}):(\d{2}))", re.ASCII)
RFC3339_EXAMPLE: Final = "2026-11-26T10:00:00Z"


def read_time(value: Any) -> datetime:
    """RFC 3339 with an offset, as UTC truncated to milliseconds (what BSON keeps).

    Raises ValueError saying what is wrong. A leap second (23:59:60 UTC on a month's last
    day) is read as 23:59:59.999: Python has no second 60, and it keeps the reading in its
    own minute and before every reading of the next one.
    """
    if not isinstance(value, str):
        raise ValueError(f"must be an RFC 3339 time string, e.g. {RFC3339_EXAMPLE}")
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise ValueError(f"{_shown(value)} is not an RFC 3339 time with an offset, e.g. "
                         f"{RFC3339_EXAMPLE} or 2026-11-26T11:00:00.250+01:00")
    sign, off_hours, off_minutes = match.group(8, 9, 10)
    if match.group(6) != "60" and (sign is None or (off_hours < "24" and off_minutes < "60")):
        # The common case, in C: the text is known to be RFC 3339, which fromisoformat reads.
        try:
            local = datetime.fromisoformat(value.upper())
        except ValueError:
            pass  # a day or hour out of range: _read_fields says which
        else:
            return _utc(local, value)
    return _read_fields(match, value)


def _read_fields(match: re.Match[str], value: str) -> datetime:
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    fraction, sign, off_hours, off_minutes = match.group(7, 8, 9, 10)
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    offset = timedelta()
    if sign is not None:
        if int(off_hours) > 23 or int(off_minutes) > 59:
            raise ValueError(f"{_shown(value)}: the UTC offset must be from -23:59 to +23:59")
        offset = timedelta(hours=int(off_hours), minutes=int(off_minutes))
        offset = -offset if sign == "-" else offset
    leap = second == 60
    if leap:
        second, micros = 59, 999_999
    try:
        local = datetime(year, month, day, hour, minute, second, micros,
                         tzinfo=timezone(offset))
    except ValueError as exc:
        raise ValueError(f"{_shown(value)}: {exc}") from None
    utc = _utc(local, value)
    month_end = calendar.monthrange(utc.year, utc.month)[1]
    if leap and (utc.day, utc.hour, utc.minute) != (month_end, 23, 59):
        raise ValueError(f"{_shown(value)}: second 60 is a leap second, only at 23:59:60 UTC "
                         "on the last day of a month")
    return utc


def _utc(local: datetime, value: str) -> datetime:
    try:
        utc = local.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{_shown(value)} is outside the years 0001 to 9999 in UTC") from None
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000) if utc.microsecond else utc


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 64 else repr(value[:60]) + "..."


def parse_time(value: Any) -> datetime | None:
    """read_time, or None where it raises."""
    try:
        return read_time(value)
    except ValueError:
        return None


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and Z."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    if not math.isfinite(number) or abs(number) > MAX_ABS_VALUE:
        return None
    return number


class _Check:
    """Collects every problem of one event, each prefixed with where it is."""

    def __init__(self, where: str, now: datetime, limits: Limits | None) -> None:
        self.where, self.now, self.limits = where, now, limits
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{self.where}{path}: {message}")

    def time(self, path: str, value: Any) -> datetime | None:
        try:
            parsed = read_time(value)
        except ValueError as exc:
            self.fail(path, str(exc))
            return None
        if self.limits is not None:
            if parsed < self.now - self.limits.max_age:
                self.fail(path, f"{value} is older than {_span(self.limits.max_age)}")
                return None
            if parsed > self.now + self.limits.max_future:
                self.fail(path, f"{value} is more than {self.limits.max_future} in the future")
                return None
        return parsed

    def metrics(self, path: str, value: Any, at: datetime | None) -> list[DataPoint]:
        if not isinstance(value, dict):
            self.fail(path, "must be an object of metric name to number")
            return []
        if not value:
            self.fail(path, "must name at least one metric")
        points = []
        for name, raw in value.items():
            if not isinstance(name, str) or not METRIC_NAME.fullmatch(name):
                self.fail(f"{path}.{name}", f"metric name must match {METRIC_NAME.pattern}")
                continue
            number = _finite(raw)
            if number is None:
                self.fail(f"{path}.{name}", f"{raw!r} is not a finite number")
                continue
            if at is not None:
                points.append(DataPoint(name, at, number))
        return points


def validate(raw: RawEvent, now: datetime, limits: Limits | None, where: str = "") -> (
    TelemetryEvent | list[str]
):
    """Check one event; return it, or every problem found."""
    check = _Check(where, now, limits)
    check.problems += [f"{where}{p}" for p in raw.problems]
    attrs = raw.attributes
    if attrs.get("specversion") != SPECVERSION:
        check.fail("specversion", f"must be {SPECVERSION!r}")
    if attrs.get("type") != TELEMETRY_TYPE:
        check.fail("type", f"must be {TELEMETRY_TYPE!r}, got {attrs.get('type')!r}")
    source, event_id, subject = attrs.get("source"), attrs.get("id"), attrs.get("subject")
    if not isinstance(source, str) or not source or len(source) > MAX_SOURCE_LENGTH:
        check.fail("source", f"required, a URI-reference of at most {MAX_SOURCE_LENGTH} chars")
    if not isinstance(event_id, str) or not event_id or len(event_id) > MAX_ID_LENGTH:
        check.fail("id", f"required, a non-empty string of at most {MAX_ID_LENGTH} chars")
    if not isinstance(subject, str) or not DEVICE_ID.fullmatch(subject):
        check.fail("subject", f"the device id is required and must match {DEVICE_ID.pattern}")
    ctype = attrs.get("datacontenttype", JSON)
    if not isinstance(ctype, str) or ctype.split(";")[0].strip().lower() != JSON:
        check.fail("datacontenttype", f"must be {JSON}")
    event_time = check.time("time", attrs["time"]) if "time" in attrs else now
    points = _points(check, raw.data, event_time)
    if check.problems:
        return check.problems
    assert event_time is not None
    attributes = {**attrs, "time": format_time(event_time), "datacontenttype": JSON}
    if "time" not in attrs:  # consumers settle a resend's time by its key (rollup.py)
        attributes[TIME_SOURCE] = TIME_SOURCE_INGEST
    return TelemetryEvent(str(source), str(event_id), str(subject), event_time,
                          tuple(points), attributes, dict(raw.data))


def _points(check: _Check, data: Any, event_time: datetime | None) -> list[DataPoint]:
    if not isinstance(data, dict):
        check.fail("data", "must be an object with `metrics` and/or `samples`")
        return []
    unknown = sorted(set(data) - {"metrics", "samples"})
    if unknown:
        check.fail("data", f"unknown fields {', '.join(unknown)}")
    if "metrics" not in data and "samples" not in data:
        check.fail("data", "needs `metrics` or `samples`")
    points: list[DataPoint] = []
    if "metrics" in data:
        points += check.metrics("data.metrics", data["metrics"], event_time)
    samples = data.get("samples", [])
    limit = check.limits.max_samples if check.limits else None
    if not isinstance(samples, list):
        check.fail("data.samples", "must be a list")
    elif limit is not None and len(samples) > limit:
        check.fail("data.samples", f"{len(samples)} samples, at most {limit} per event")
    else:
        for i, sample in enumerate(samples):
            path = f"data.samples[{i}]"
            if not isinstance(sample, dict) or set(sample) != {"time", "metrics"}:
                check.fail(path, "must be an object with exactly `time` and `metrics`")
                continue
            at = check.time(f"{path}.time", sample["time"])
            points += check.metrics(f"{path}.metrics", sample["metrics"], at)
    return points


def validate_all(raws: Sequence[RawEvent], now: datetime, limits: Limits | None) -> (
    list[TelemetryEvent]
):
    """Check a request's events; raise BadRequest naming every problem of every event."""
    events: list[TelemetryEvent] = []
    problems: list[str] = []
    seen: set[str] = set()
    for i, raw in enumerate(raws):
        where = f"event[{i}]." if len(raws) > 1 else ""
        result = validate(raw, now, limits, where)
        if isinstance(result, list):
            problems += result
            continue
        if result.key in seen:
            problems.append(f"{where}id: duplicate (source, id) within the request")
        seen.add(result.key)
        events.append(result)
    if problems:
        raise BadRequest(problems)
    return events


def _span(delta: timedelta) -> str:
    """A limit as people say it ("7 days", "1 hour", "90 seconds"), not str(timedelta)."""
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'' if n == 1 else 's'}"
    return f"{seconds} second{'' if seconds == 1 else 's'}"
