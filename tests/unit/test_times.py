"""RFC 3339 times, as ingest and query read them: exactly the RFC's grammar, as UTC."""

from datetime import UTC, datetime

import pytest

from iot_telemetry.telemetry import parse_time, read_time


@pytest.mark.parametrize(("text", "utc"), [
    ("2026-11-26T10:00:00Z", datetime(2026, 11, 26, 10, tzinfo=UTC)),
    ("2026-11-26t10:00:00z", datetime(2026, 11, 26, 10, tzinfo=UTC)),
    ("2026-11-26T11:30:00+01:30", datetime(2026, 11, 26, 10, tzinfo=UTC)),
    ("2026-11-26T00:00:00-23:59", datetime(2026, 11, 26, 23, 59, tzinfo=UTC)),
    ("2026-11-26T10:00:00.5Z", datetime(2026, 11, 26, 10, 0, 0, 500_000, tzinfo=UTC)),
    # Any number of fraction digits; kept to the millisecond, as BSON stores it.
    ("2026-11-26T10:00:00.123456789123Z", datetime(2026, 11, 26, 10, 0, 0, 123_000, tzinfo=UTC)),
    ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
    ("0001-01-01T00:30:00+00:30", datetime(1, 1, 1, tzinfo=UTC)),
    ("9999-12-31T23:59:59.999Z", datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)),
    # A leap second is the last instant of its minute.
    ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)),
    ("2017-01-01T00:59:60.5+01:00", datetime(2016, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)),
    ("2015-06-30T23:59:60Z", datetime(2015, 6, 30, 23, 59, 59, 999_000, tzinfo=UTC)),
])
def test_rfc_3339_times_are_read_as_utc(text, utc) -> None:
    assert read_time(text) == utc


@pytest.mark.parametrize(("text", "why"), [
    ("2026-11-26T10:00:00+01", "not an RFC 3339 time"),  # hour-only offset (ISO 8601)
    ("2026-11-26T10:00:00+0100", "not an RFC 3339 time"),
    ("20261128T101010Z", "not an RFC 3339 time"),  # basic format
    ("2026-W48-6T10:00:00Z", "not an RFC 3339 time"),  # week date
    ("2026-330T10:00:00Z", "not an RFC 3339 time"),  # ordinal date
    ("2026-11-26T10:00Z", "not an RFC 3339 time"),
    ("2026-11-26T10:00:00", "not an RFC 3339 time"),  # no offset: local time of where?
    ("2026-11-26 10:00:00Z", "not an RFC 3339 time"),
    ("2026-11-26T10:00:00.Z", "not an RFC 3339 time"),
    ("2026-11-26T10:00:00Z\n", "not an RFC 3339 time"),
    ("\u0662026-11-26T10:00:00Z", "not an RFC 3339 time"),  # an Arabic-Indic digit
    ("\uff12\uff10\uff12\uff16-11-26T10:00:00Z", "not an RFC 3339 time"),  # fullwidth
    ("2026-11-26T10:00:00+24:00", "offset"),
    ("2026-11-26T10:00:00+01:60", "offset"),
    ("2026-02-30T10:00:00Z", "day is out of range"),
    ("2026-11-26T24:00:00Z", "hour must be"),
    ("0000-01-01T00:00:00Z", "year 0 is out of range"),
    ("0001-01-01T00:30:00+01:00", "outside the years 0001 to 9999"),
    ("0001-01-01T00:00:00+00:01", "outside the years 0001 to 9999"),
    ("9999-12-31T23:30:00-01:00", "outside the years 0001 to 9999"),
    ("2026-11-26T12:00:60Z", "leap second"),
    ("2016-12-30T23:59:60Z", "leap second"),
])
def test_anything_else_is_refused_saying_why(text, why) -> None:
    with pytest.raises(ValueError, match=why):
        read_time(text)
    assert parse_time(text) is None


@pytest.mark.parametrize("value", [None, 1764151200, 1.5, ["2026-11-26T10:00:00Z"]])
def test_only_strings_are_times(value) -> None:
    with pytest.raises(ValueError, match="string"):
        read_time(value)


def test_a_long_bad_value_is_not_echoed_whole() -> None:
    with pytest.raises(ValueError) as caught:
        read_time("x" * 100_000)
    assert len(str(caught.value)) < 200
