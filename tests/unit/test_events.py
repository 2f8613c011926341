"""Decoding a delivery: the binary-mode fast path decodes as the cloudevents SDK does."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iot_telemetry import events
from iot_telemetry.errors import BadRequest

TYPICAL = {"ce-specversion": "1.0", "ce-type": "iot.telemetry.v1", "ce-source": "/devices/d0",
           "ce-id": "e0", "ce-subject": "d0", "ce-time": "2026-11-28T10:00:00Z",
           "ce-ingesttime": "2026-11-28T10:00:01Z", "ce-partitionkey": "d0",
           "Content-Type": "application/json"}
BODY = json.dumps({"metrics": {"temperature": 21.5}, "samples": []}).encode()

NAMES = ("specversion", "id", "source", "type", "time", "subject", "dataschema",
         "datacontenttype", "data", "extensions", "ingesttime", "partitionkey", "traceparent")
VALUES = ("1.0", "0.3", "2.0", "", "e1", "/devices/d%201", "2026-11-28T10:00:00Z", "bogus")
CONTENT_TYPES = (None, "application/json", "Application/JSON; charset=utf-8", "text/plain",
                 "application/cloudevents+json")
BODIES = (BODY, b"", b"{}", b"[1, 2]", b'"text"', b"null", b'{"a": 1, "a": 2}',
          b'{"v": NaN}', b"{not json", b"\xff\xfe", b"[" * 5000 + b"]" * 5000,
          json.dumps({"specversion": "1.0", "id": "s", "source": "/s", "type": "t",
                      "data": {"metrics": {}}}).encode())


def outcome(decode: Any, headers: dict[str, str], body: bytes) -> tuple[Any, ...]:
    try:
        raw = decode(headers, body)
    except BadRequest as exc:
        return ("refused", str(exc))
    attributes = dict(raw.attributes)
    if attributes.get("time") not in (*VALUES, TYPICAL["ce-time"]):
        attributes.pop("time", None)  # none was given: the SDK stamps the time of the call
    return ("decoded", list(attributes.items()), json.dumps(raw.data), raw.problems)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    """Mostly the Broker's usual delivery with a few changes, so both paths are taken."""
    headers = dict(TYPICAL) if draw(st.booleans()) else {}
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=2, unique=True)):
        header = "".join(c.upper() if draw(st.booleans()) else c for c in f"ce-{name}")
        headers.pop(f"ce-{name}", None)
        if draw(st.integers(0, 3)):  # else: the attribute is left out
            headers[header] = draw(st.sampled_from(VALUES))
    if draw(st.integers(0, 2)) == 0:
        headers.pop("Content-Type", None)
        content_type = draw(st.sampled_from(CONTENT_TYPES))
        if content_type is not None:
            headers["Content-Type"] = content_type
    return headers, BODY if draw(st.booleans()) else draw(st.sampled_from(BODIES))


@settings(max_examples=600, deadline=None)
@given(deliveries())
def test_a_delivery_decodes_as_the_cloudevents_sdk_decodes_it(
        delivery: tuple[dict[str, str], bytes]) -> None:
    headers, body = delivery
    assert outcome(events.read_delivery, headers, body) == outcome(
        events._sdk_delivery, headers, body)


def test_the_brokers_usual_delivery_is_decoded_without_the_sdk(
        monkeypatch: pytest.MonkeyPatch) -> None:
    expected = events._sdk_delivery(TYPICAL, BODY)

    def no_sdk(*_args: Any) -> Any:
        raise AssertionError("the SDK decoded a binary-mode delivery")

    monkeypatch.setattr(events, "_sdk_from_http", no_sdk)
    raw = events.read_delivery(TYPICAL, BODY)
    assert list(raw.attributes.items()) == list(expected.attributes.items())
    assert raw.data == expected.data


# --- encoding a Kafka record: the fast path encodes as the SDK's Kafka binding does --------

ATTRIBUTE_NAMES = ("specversion", "id", "source", "type", "time", "subject", "dataschema",
                   "datacontenttype", "ingesttime", "partitionkey", "traceparent", "data",
                   "seq", "flag")
ATTRIBUTE_VALUES = st.one_of(
    st.sampled_from(("1.0", "0.3", "2.0", "", "e1", "/devices/d 1", "2026-11-28T10:00:00Z",
                     "application/json", "text/plain", "dev-1", "héllo ✓")),
    st.integers(-(2**31), 2**31 - 1), st.booleans(), st.none())


def record_outcome(encode: Any) -> tuple[Any, ...]:
    try:
        record = encode()
    except Exception as exc:
        return ("refused", type(exc).__name__)
    return ("encoded", record.topic, record.key, list(record.headers), record.value)


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(st.sampled_from(ATTRIBUTE_NAMES), ATTRIBUTE_VALUES, max_size=10),
       st.booleans(), st.sampled_from([{"metrics": {"t": 1.5}}, None, {"a": [1, "é"]}]))
def test_a_record_encodes_as_the_sdk_encodes_it(attributes: dict[str, Any], typical: bool,
                                                data: Any) -> None:
    if typical:  # mostly ingest's usual event, so the fast path is taken
        attributes = {"specversion": "1.0", "id": "e1", "source": "/devices/d1",
                      "type": "iot.telemetry.v1", "subject": "d1",
                      "time": "2026-11-28T10:00:00Z", **attributes}
    attrs = {"datacontenttype": events.JSON,
             **{k: events.attribute_text(v) for k, v in attributes.items() if v is not None}}
    key = str(attrs.get("partitionkey") or attrs.get("subject") or "")
    attrs["partitionkey"] = key
    if not (attrs.get("time") and attrs.get("id")):
        return  # the SDK stamps the time of the call, a random id: both take its path
    assert record_outcome(lambda: events.to_kafka("t", attributes, data)) == record_outcome(
        lambda: events.sdk_to_kafka("t", attrs, data, key))


def test_ingests_usual_record_is_encoded_without_the_sdk(
        monkeypatch: pytest.MonkeyPatch) -> None:
    attributes = {"specversion": "1.0", "id": "e1", "source": "/devices/d1",
                  "type": "iot.telemetry.v1", "subject": "d1", "time": "2026-11-28T10:00:00Z",
                  "ingesttime": "2026-11-28T10:00:01Z"}
    expected = events.sdk_to_kafka("t", {"datacontenttype": events.JSON, **attributes,
                                         "partitionkey": "d1"}, {"metrics": {"t": 1}}, "d1")

    def no_sdk(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the SDK encoded ingest's usual record")

    monkeypatch.setattr(events, "_sdk_to_kafka", no_sdk)
    assert events.to_kafka("t", attributes, {"metrics": {"t": 1}}) == expected
    decoded = events.from_kafka(expected.key, expected.headers, expected.value)
    assert decoded.attributes["partitionkey"] == "d1" and decoded.data == {"metrics": {"t": 1}}
