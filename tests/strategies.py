"""Hypothesis strategies shared by the machine-made input of ingest and query."""

import base64
from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from tests.conftest import iso

# Almost valid: a trailing newline is what `$` lets through; other scripts' digits are what
# str.isdigit() and \d let through.
UNICODE_DIGITS = st.characters(categories=["Nd", "No"]).filter(lambda c: not "0" <= c <= "9")


def almost(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(valid, valid.map(lambda v: v + "\n"), valid.map(lambda v: v + "\r\n"),
                     st.tuples(valid, UNICODE_DIGITS).map(lambda t: t[0][:-1] + t[1]))


NOW = datetime.now(UTC)
TIME_OFFSETS = st.sampled_from([
    timedelta(0), -timedelta(days=7) + timedelta(minutes=1), -timedelta(days=7, seconds=1),
    timedelta(minutes=5) - timedelta(seconds=1), timedelta(minutes=5, seconds=1),
    -timedelta(days=3650), timedelta(days=3650)])


OFFSET_MINUTES = st.one_of(st.integers(-(24 * 60 - 1), 24 * 60 - 1),
                           st.sampled_from([0, 1, -1, 24 * 60 - 1, -(24 * 60 - 1)]))


@st.composite
def rfc3339(draw, near_now: bool = False) -> str:
    """RFC 3339 text over the whole datetime range and every offset to the minute, with t/T,
    z/Z, fractions of any length and leap seconds; some of them overflow converted to UTC."""
    minutes = draw(OFFSET_MINUTES)
    if near_now:  # the same instant as NOW + offset, written at that UTC offset
        local = (NOW + draw(TIME_OFFSETS) + timedelta(minutes=minutes)).replace(tzinfo=None)
    else:  # the edges of the range are where converting to UTC overflows
        local = draw(st.one_of(st.datetimes(), st.sampled_from([datetime.min, datetime.max]),
                               st.datetimes(max_value=datetime(1, 1, 2)),
                               st.datetimes(min_value=datetime(9999, 12, 30))))
    second = "60" if draw(st.integers(0, 30)) == 0 else f"{local.second:02d}"
    fraction = draw(st.one_of(st.just(""), st.from_regex(r"\.[0-9]{1,12}", fullmatch=True)))
    if minutes == 0 and draw(st.booleans()):
        zone = draw(st.sampled_from(["Z", "z"]))
    else:
        zone = f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    t = draw(st.sampled_from(["T", "t"]))
    return (f"{local.year:04d}-{local.month:02d}-{local.day:02d}{t}{local.hour:02d}:"
            f"{local.minute:02d}:{second}{fraction}{zone}")


NOT_RFC3339 = st.sampled_from([
    "2026-11-26T10:00:00", "2026-13-01T00:00:00Z", "now", "", "2026-11-26T10:00:00+01",
    "20261126T100000Z", "2026-W48-4T10:00:00Z", "2026-330T10:00:00Z", "2026-11-26 10:00:00Z",
    "2026-11-26T10:00:00+24:00", "0000-01-01T00:00:00Z", "2026-11-26T12:30:60Z"])
TIMES = st.one_of(TIME_OFFSETS.map(lambda d: iso(NOW + d)), almost(rfc3339(near_now=True)),
                  rfc3339(), st.text(max_size=30), NOT_RFC3339)
# Every CloudEvents type an extension can have (Boolean, Integer, String, Binary, URI,
# URI-reference, Timestamp), values just outside Integer, and JSON no attribute can be.
EXTENSION_VALUES = st.one_of(
    st.booleans(), st.integers(-(2**31), 2**31 - 1), st.integers(), st.text(max_size=20),
    st.binary(max_size=16).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from(["https://example.com/a?b=c#d", "urn:uuid:1", "/devices/a", "../x"]),
    rfc3339(), st.floats(), st.none(), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
EXTENSION_NAMES = st.one_of(st.sampled_from(["seq", "site", "firmware", "partitionkey",
                                             "ingesttime", "dataschema"]),
                            st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True),
                            st.text(min_size=1, max_size=8))
