"""Times in the eventing/ manifests: ISO-8601 durations (delivery backoff) and cron schedules
(PingSource)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

# --- ISO-8601 durations ---------------------------------------------------------------------

_DURATION = re.compile(
    r"^P(?!$)(?:(?P<weeks>\d+(?:[.,]\d+)?)W)?(?:(?P<days>\d+(?:[.,]\d+)?)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+(?:[.,]\d+)?)H)?(?:(?P<minutes>\d+(?:[.,]\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:[.,]\d+)?)S)?)?$"
)
_UNIT_SECONDS: Final = {"weeks": 604800.0, "days": 86400.0, "hours": 3600.0, "minutes": 60.0,
                        "seconds": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in an ISO-8601 duration such as PT0.2S, PT1M30S or P1D (years and months refused)."""
    match = _DURATION.match(text.strip().upper()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"{text!r} is not an ISO-8601 duration of weeks, days, hours, minutes and seconds "
            "(e.g. PT0.2S, PT30S, PT1M)")
    return sum(float(value.replace(",", ".")) * _UNIT_SECONDS[unit]
               for unit, value in match.groupdict().items() if value is not None)


# --- cron schedules -------------------------------------------------------------------------

#: The five fields of a cron schedule and the values each takes (day of week: 0 or 7 = Sunday).
_CRON_FIELDS: Final = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31),
                       ("month", 1, 12), ("day of week", 0, 7))
_CRON_ITEM: Final = re.compile(r"^(?:(\*)|(\d+)(?:-(\d+))?)(?:/(\d+))?$")
#: How far ahead a schedule is searched for its next time (a Feb 29 schedule: 4 years).
_CRON_HORIZON: Final = timedelta(days=4 * 366 + 1)


@dataclass(frozen=True)
class Cron:
    """A five-field cron schedule in UTC: `*`, `*/N`, `A`, `A-B`, `A-B/N` and comma lists.

    As in cron (and the robfig/cron parser PingSource uses): when both day of month and day
    of week are restricted, a day matching either one matches.
    """

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, text: str) -> Cron:
        """Parse a schedule; ValueError names what the local runner does not play."""
        parts = text.split() if isinstance(text, str) else []
        if len(parts) != 5:
            raise ValueError(f"{text!r}: the local runner plays five-field cron schedules "
                             "(minute hour day-of-month month day-of-week), no @macros or "
                             "TZ= prefixes")
        values = [_cron_field(part, name, low, high)
                  for part, (name, low, high) in zip(parts, _CRON_FIELDS, strict=True)]
        weekdays = frozenset(0 if d == 7 else d for d in values[4])
        return cls(text, values[0], values[1], values[2], values[3], weekdays,
                   parts[2] == "*", parts[4] == "*")

    def matches(self, t: datetime) -> bool:
        """Whether the minute of `t` (UTC) is one the schedule fires at."""
        t = t.astimezone(UTC)
        return (t.minute in self.minutes and t.hour in self.hours and self._on_day(t))

    def _on_day(self, t: datetime) -> bool:
        day = t.day in self.days
        weekday = (t.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return t.month in self.months and day and weekday
        return t.month in self.months and (day or weekday)

    def next_after(self, t: datetime) -> datetime:
        """The first time the schedule fires strictly after `t` (whole minutes, UTC)."""
        candidate = t.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        end = candidate + _CRON_HORIZON
        while candidate < end:
            if not self._on_day(candidate):
                candidate = candidate.replace(hour=0, minute=0) + timedelta(days=1)
            elif candidate.hour not in self.hours:
                candidate = candidate.replace(minute=0) + timedelta(hours=1)
            elif candidate.minute in self.minutes:
                return candidate
            else:
                candidate += timedelta(minutes=1)
        raise ValueError(f"{self.text!r} never fires")


def _cron_field(part: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for item in part.split(","):
        match = _CRON_ITEM.match(item)
        if match is None:
            raise ValueError(f"cron {name} {item!r}: the local runner plays `*`, `*/N`, `A`, "
                             "`A-B` and `A-B/N` (and comma lists of them)")
        star, first, last, step = match.groups()
        start, stop = (low, high) if star else (int(first), int(last or first))
        if step is not None and not star and last is None:
            stop = high  # `A/N`: from A to the end, as robfig/cron reads it
        every = int(step) if step is not None else 1
        if not (low <= start <= stop <= high) or every < 1:
            raise ValueError(f"cron {name} {item!r}: values must be within {low}-{high}")
        values.update(range(start, stop + 1, every))
    return frozenset(values)
