"""Bad input tried by machine: every request gets 202 or a 4xx with a reason, never a 5xx,
and nothing of a rejected request reaches Kafka."""

import calendar
import json
import math
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from iot_telemetry import events
from iot_telemetry.telemetry import read_time
from tests.conftest import Apps, iso
from tests.strategies import (
    EXTENSION_NAMES,
    EXTENSION_VALUES,
    TIMES,
    UNICODE_DIGITS,
    almost,
    rfc3339,
)

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)
EDGE_NUMBERS = st.sampled_from([0, -0.0, 1e308, -1e308, 1e300, 1e301, 2**63, -(2**63), 10**400,
                                5e-324, math.nan, math.inf, -math.inf, True, None, "1", "\u00b2"])
METRIC_NAMES = st.one_of(almost(st.from_regex(r"[a-z][a-z0-9_]{0,63}", fullmatch=True)),
                         st.text(max_size=70))
DEVICE_IDS = st.one_of(almost(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", fullmatch=True)),
                       st.text(max_size=140))
@settings(max_examples=300, deadline=None)
@given(text=rfc3339())
@example(text="9999-12-31T00:00:60-23:59")  # the last leap second datetime can hold
def test_any_rfc_3339_text_is_its_utc_instant_or_a_reason(text) -> None:
    try:
        parsed: datetime | ValueError = read_time(text)
    except ValueError as exc:
        parsed = exc
    if text[17:19] == "60":  # a leap second: the last instant of a month's last UTC minute
        # The month's last day from the calendar: adding a minute to 9999-12-31T23:59:59.999
        # (a valid leap second: -23:59 puts 00:00:60 there) is past datetime's range.
        assert isinstance(parsed, ValueError) or (
            (parsed.hour, parsed.minute, parsed.second, parsed.microsecond) ==
            (23, 59, 59, 999_000)
            and parsed.day == calendar.monthrange(parsed.year, parsed.month)[1])
        return
    try:  # the standard library, where it can represent the instant
        expected = datetime.fromisoformat(text.upper()).astimezone(UTC)
    except OverflowError:
        assert isinstance(parsed, ValueError) and "years 0001 to 9999" in str(parsed)
        return
    assert parsed == expected.replace(microsecond=expected.microsecond // 1000 * 1000)


@settings(max_examples=100, deadline=None)
@given(text=rfc3339(), digit=UNICODE_DIGITS, where=st.integers(0, 30),
       tail=st.sampled_from(["\n", "\r\n", " ", ""]))
def test_rfc_3339_with_a_foreign_digit_or_a_trailing_newline_is_refused(text, digit, where,
                                                                      tail) -> None:
    digits = [i for i, c in enumerate(text) if c.isdigit()]
    mangled = text[:digits[where % len(digits)]] + digit + text[digits[where % len(digits)] + 1:]
    with pytest.raises(ValueError):
        read_time(mangled + tail)
    if tail:
        with pytest.raises(ValueError):
            read_time(text + tail)


VALID_METRICS = st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
                                st.floats(-1e6, 1e6) | st.integers(-1000, 1000),
                                min_size=1, max_size=3)
# Each part of an event: valid (so the event gets as far as Kafka), or drawn from anything.
PARTS = {
    "source": (st.just("/devices/a"), st.sampled_from(["", "x" * 2000, "/a\n", 5])),
    "id": (st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True), st.text(max_size=300)),
    "subject": (st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True), DEVICE_IDS),
    "time": (rfc3339(near_now=True), TIMES),
    "metrics": (VALID_METRICS, st.dictionaries(METRIC_NAMES, st.one_of(EDGE_NUMBERS, JSON_VALUES),
                                               max_size=5)),
}


@st.composite
def events_(draw):
    """A valid event with at most two parts drawn from anything, missing attributes and
    extensions of every type: most requests get as far as the Kafka record."""
    wild = draw(st.sets(st.sampled_from(list(PARTS)), max_size=2))
    part = {name: draw(strategies[name in wild]) for name, strategies in PARTS.items()}
    attributes = {"specversion": "1.0", "type": "iot.telemetry.v1", "source": part["source"],
                  "id": part["id"], "subject": part["subject"], "time": part["time"]}
    for key in draw(st.sets(st.sampled_from(list(attributes)), max_size=1)):
        attributes.pop(key)
    attributes.update(draw(st.dictionaries(EXTENSION_NAMES, EXTENSION_VALUES, max_size=3)))
    metrics = part["metrics"]
    data = draw(st.sampled_from(["metrics", "samples", "both", "heartbeat", "junk"]))
    body: object = {"metrics": metrics}
    if data in ("samples", "both"):
        sample = st.fixed_dictionaries({"time": st.one_of(rfc3339(near_now=True), TIMES),
                                        "metrics": st.just(metrics)})
        samples = draw(st.lists(sample, max_size=3))
        body = {"samples": samples} if data == "samples" else {**body, "samples": samples}
    elif data == "heartbeat":
        body = {"samples": []}
    elif data == "junk":
        body = draw(JSON_VALUES)
    return attributes, body


def check(response, sink, before):
    assert response.status_code == 202 or 400 <= response.status_code < 500, response.data
    if response.status_code != 202:
        assert response.get_json()["message"]
        assert len(sink.records) == before
    else:
        assert len(sink.records) > before


SET_BY_INGEST = {"partitionkey", "ingesttime", "time", "datacontenttype"}


def extensions_survive(batch, records) -> None:
    """An accepted extension reaches Kafka as its string form (CloudEvents Kafka binding)."""
    for (attributes, _), record in zip(batch, records, strict=True):
        headers = dict(record.headers)
        for name, value in attributes.items():
            if name in SET_BY_INGEST or value is None:
                continue
            text = ("true" if value else "false") if isinstance(value, bool) else (
                str(int(value)) if isinstance(value, float) else str(value))
            assert headers[f"ce_{name}"] == text.encode(), (name, value)


FIXTURES_OK = [HealthCheck.function_scoped_fixture]  # apps and sink are reset by check()


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES_OK)
@given(batch=st.lists(events_(), min_size=1, max_size=4),
       mode=st.sampled_from(["binary", "structured", "batch"]))
def test_any_event_gets_an_answer_and_rejects_store_nothing(apps: Apps, sink, batch, mode) -> None:
    before = len(sink.records)
    if mode == "batch":
        body = json.dumps([{**a, "data": d} for a, d in batch], default=str)
        response = apps.ingest.post("/", data=body, headers={"Content-Type": events.BATCH})
        if response.status_code == 202:
            extensions_survive(batch, sink.records[before:])
    elif mode == "structured":
        attributes, data = batch[0]
        body = json.dumps({**attributes, "data": data}, default=str)
        response = apps.ingest.post("/", data=body, headers={"Content-Type": events.STRUCTURED})
        if response.status_code == 202:
            extensions_survive(batch[:1], sink.records[before:])
    else:
        attributes, data = batch[0]
        # HTTP cannot carry CR/LF in a header value, so neither does the test.
        headers = {f"ce-{k}": str(v).replace("\r", "").replace("\n", "")
                   .encode("utf-8", "replace").decode("latin-1", "replace")
                   for k, v in attributes.items()}
        headers["Content-Type"] = "application/json"
        response = apps.ingest.post("/", data=json.dumps(data, default=str), headers=headers)
    check(response, sink, before)


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURES_OK)
@given(body=st.binary(max_size=300), ctype=st.sampled_from([
    "application/json", events.STRUCTURED, events.BATCH, "text/plain", "", "application/json; x"]))
def test_arbitrary_bytes_never_crash_ingest(apps: Apps, sink, body, ctype) -> None:
    before = len(sink.records)
    headers = {"Content-Type": ctype, "ce-specversion": "1.0", "ce-type": "iot.telemetry.v1",
               "ce-source": "/d", "ce-id": "1", "ce-subject": "d"}
    check(apps.ingest.post("/", data=body, headers=headers), sink, before)


@settings(max_examples=20, deadline=None, suppress_health_check=FIXTURES_OK)
@given(size=st.sampled_from([1, 499, 500, 501, 1000]))
def test_batch_sizes_at_and_past_the_limit(apps: Apps, sink, size) -> None:
    before = len(sink.records)
    now = datetime.now(UTC)
    batch = [{"specversion": "1.0", "type": "iot.telemetry.v1", "source": "/d", "id": f"{i}",
              "subject": "d", "time": iso(now), "data": {"metrics": {"t": 1}}}
             for i in range(size)]
    response = apps.ingest.post("/", data=json.dumps(batch),
                                headers={"Content-Type": events.BATCH})
    check(response, sink, before)
    assert (response.status_code == 202) == (size <= 500)
