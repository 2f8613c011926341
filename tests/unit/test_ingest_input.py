"""ingest and odd but possible input: a clear 400 for what can never be written, 202 for
what CloudEvents allows, never a 5xx and never a retryable answer for bad input."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from iot_telemetry import events
from iot_telemetry.publisher import record_size
from iot_telemetry.runtime import set_runtime
from iot_telemetry.telemetry import validate_all
from tests.conftest import Apps, iso, make_runtime, telemetry


def event(i: int = 0, device: str = "dev-1", **attributes):
    attrs, data = telemetry(device, datetime.now(UTC) - timedelta(seconds=5), {"temperature": 21.5},
                            f"e-{i}")
    return {**attrs, **attributes}, data


def structured(apps, attributes, data):
    body = json.dumps({**attributes, "data": data})
    return apps.ingest.post("/", data=body, headers={"Content-Type": events.STRUCTURED})


def batch(apps, items):
    return apps.ingest.post("/", data=events.to_batch(items),
                            headers={"Content-Type": events.BATCH})


def binary(apps, attributes, data, **headers):
    http_headers, body = events.to_http(attributes, data)
    return apps.ingest.post("/", data=body, headers={**http_headers, **headers})


def refused(response, *words):
    assert response.status_code == 400, response.get_json()
    message = response.get_json()["message"]
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize("time", [
    "0001-01-01T00:30:00+01:00", "0001-01-01T00:00:00+00:01", "9999-12-31T23:30:00-01:00"])
def test_a_time_outside_utc_is_400_in_every_place_a_time_goes(apps, sink, time) -> None:
    attributes, data = event()
    refused(structured(apps, {**attributes, "time": time}, data), "time", "years 0001 to 9999")
    refused(binary(apps, attributes, data, **{"ce-time": time}), "time", "years 0001 to 9999")
    samples = {"samples": [{"time": time, "metrics": {"temperature": 1}}]}
    refused(structured(apps, attributes, samples), "data.samples[0].time")
    assert sink.records == []


@pytest.mark.parametrize(("value", "kind"), [({"a": 1}, "an object"), ([1, 2], "a list"),
                                             ([], "a list"), ({}, "an object")])
def test_an_extension_that_is_an_object_or_list_is_400(apps, sink, value, kind) -> None:
    attributes, data = event()
    refused(structured(apps, {**attributes, "site": value}, data), "site", kind)
    refused(batch(apps, [event(0), ({**event(1)[0], "site": value}, data)]), "event[1].site")
    assert sink.records == []


def test_integer_and_boolean_extensions_reach_kafka_in_their_string_form(apps, sink) -> None:
    # CloudEvents' Kafka binding carries every attribute as a string header.
    attributes, data = event()
    extensions = {"seq": 42, "low": -(2**31), "whole": 7.0, "retained": True, "lost": False,
                  "firmware": "1.2.3"}
    response = structured(apps, {**attributes, **extensions}, data)
    assert response.status_code == 202, response.get_json()
    [rec] = sink.records
    headers = dict(rec.headers)
    assert headers["ce_seq"] == b"42"
    assert headers["ce_low"] == b"-2147483648"
    assert headers["ce_whole"] == b"7"
    assert headers["ce_retained"] == b"true"
    assert headers["ce_lost"] == b"false"
    assert headers["ce_firmware"] == b"1.2.3"
    # ... and on to the consumers over HTTP.
    assert apps.deliver("aggregate", rec).status_code < 300
    assert apps.deliver("aggregate", rec, structured=True).status_code < 300


@pytest.mark.parametrize("value", [1.5, 2**31, -(2**31) - 1, 10**30, 1e300])
def test_a_number_that_is_no_cloudevents_integer_is_400(apps, sink, value) -> None:
    attributes, data = event()
    refused(structured(apps, {**attributes, "seq": value}, data), "seq", "Integer")


def test_a_null_attribute_is_an_unset_one(apps, sink) -> None:
    attributes, data = event()
    response = structured(apps, {**attributes, "dataschema": None, "site": None}, data)
    assert response.status_code == 202, response.get_json()
    headers = dict(sink.records[0].headers)
    assert "ce_site" not in headers and "ce_dataschema" not in headers


@pytest.mark.parametrize(("change", "problem"), [
    ({"datacontenttype": 5}, "datacontenttype: must be a string"),
    ({"dataschema": True}, "dataschema: must be a string"),
    ({"Site": "x"}, "attribute 'Site'"),
    ({"site_id": "x"}, "attribute 'site_id'"),
    ({"id": "e\ud800"}, "id: holds a control character or a lone surrogate"),
    ({"source": "/devices/a\n"}, "source: holds a control character"),
    ({"firmware": "1.2\x00"}, "firmware: holds a control character"),
])
def test_attributes_outside_the_cloudevents_type_system_are_400(apps, sink, change,
                                                                problem) -> None:
    attributes, data = event()
    refused(structured(apps, {**attributes, **change}, data), problem)
    assert sink.records == []


@pytest.mark.parametrize(("header", "value", "problem"), [
    ("ce-site-id", "x", "attribute 'site-id'"),
    ("ce-id", "e%0A", "id: holds a control character"),
    ("ce-subject", "dev-2%0A", "subject"),
    ("ce-time", "2026-11-26T10:00:00+01", "time"),
])
def test_binary_mode_headers_follow_the_same_rules(apps, sink, header, value,
                                                   problem) -> None:
    attributes, data = event()
    refused(binary(apps, attributes, data, **{header: value}), problem)
    assert sink.records == []


@pytest.mark.parametrize("body", [
    '{"specversion": "1.0", "type": "iot.telemetry.v1", "source": "/d", "id": "1", '
    '"id": "2", "subject": "d", "data": {"metrics": {"t": 1}}}',
    '{"specversion": "1.0", "type": "iot.telemetry.v1", "source": "/d", "id": "1", '
    '"subject": "d", "data": {"metrics": {"t": 1, "t": 2}}}',
    '{"specversion": "1.0", "type": "iot.telemetry.v1", "source": "/d", "id": "1", '
    '"subject": "d", "data": {"metrics": {"t": 1}, "metrics": {"t": 2}}}',
])
def test_a_repeated_json_key_is_400_not_the_last_one_silently(apps, sink, body) -> None:
    for ctype, payload in ((events.STRUCTURED, body), (events.BATCH, f"[{body}]")):
        response = apps.ingest.post("/", data=payload, headers={"Content-Type": ctype})
        refused(response, "appears twice")
    attributes, _ = event()
    headers, _ = events.to_http(attributes, None)
    refused(apps.ingest.post("/", data=b'{"metrics": {"temperature": 1, "temperature": 2}}',
                             headers=headers), "'temperature' appears twice")
    samples = (b'{"samples": [{"time": "%s", "time": "%s", "metrics": {"t": 1}}]}'
               % (iso(datetime.now(UTC)).encode(), iso(datetime.now(UTC)).encode()))
    refused(apps.ingest.post("/", data=samples, headers=headers), "'time' appears twice")
    assert sink.records == []


@pytest.mark.parametrize("time", ["+01", "basic", "week", "no offset", "space"])
def test_times_that_are_not_rfc_3339_are_400(apps, sink, time) -> None:
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    text = {"+01": at.strftime("%Y-%m-%dT%H:%M:%S+00"),
            "basic": at.strftime("%Y%m%dT%H%M%SZ"),
            "week": at.strftime("%G-W%V-%uT%H:%M:%SZ"),
            "no offset": at.strftime("%Y-%m-%dT%H:%M:%S"),
            "space": at.strftime("%Y-%m-%d %H:%M:%SZ")}[time]
    attributes, data = event()
    refused(structured(apps, {**attributes, "time": text}, data), "not an RFC 3339 time")
    assert sink.records == []


def test_lowercase_t_and_z_and_long_fractions_are_rfc_3339(apps, sink) -> None:
    at = datetime.now(UTC).replace(microsecond=123456) - timedelta(minutes=1)
    attributes, data = event(time=at.strftime("%Y-%m-%dt%H:%M:%S.%f789z"))
    response = structured(apps, attributes, data)
    assert response.status_code == 202, response.get_json()
    assert dict(sink.records[0].headers)["ce_time"] == iso(at.replace(microsecond=123000)).encode()


def test_one_leap_second_is_a_reading_not_a_rejected_batch() -> None:
    # Accepted as 23:59:59.999: the last instant of the minute it belongs to.
    now = datetime(2017, 1, 1, 0, 0, 30, tzinfo=UTC)
    raws = [events.RawEvent(*telemetry("dev-1", now - timedelta(seconds=40), {"t": 1}, "a")),
            events.RawEvent({**telemetry("dev-1", now, {"t": 2}, "b")[0],
                             "time": "2016-12-31T23:59:60Z"}, {"metrics": {"t": 2}})]
    ok = validate_all(raws, now, limits=None)
    assert ok[1].time == datetime(2016, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)


def test_an_empty_samples_list_is_a_heartbeat_with_no_points(apps, sink) -> None:
    attributes, _ = event()
    response = structured(apps, attributes, {"samples": []})
    assert response.status_code == 202, response.get_json()
    assert response.get_json() == {"accepted": 1, "points": 0}
    assert len(sink.records) == 1


# --- rate limits: a request is accepted or refused whole, tokens included -----------------

def limited_apps(burst: int) -> Apps:
    set_runtime(make_runtime(INGEST_RATE_BURST=str(burst), INGEST_RATE_LIMIT="0.0001"))
    return Apps()


def test_a_batch_refused_for_one_device_spends_nothing_of_the_others(runtime, sink) -> None:
    apps = limited_apps(burst=3)
    greedy = [event(i, device="dev-b") for i in range(4)]
    response = batch(apps, [event(0, device="dev-a"), *greedy])
    assert response.status_code == 429
    assert "dev-b" in response.get_json()["message"]
    # dev-a's three tokens are all still there.
    assert batch(apps, [event(i, device="dev-a") for i in range(1, 4)]).status_code == 202


def test_a_write_kafka_did_not_take_gives_the_tokens_back(runtime, sink) -> None:
    apps = limited_apps(burst=3)
    three = [event(i, device="dev-a") for i in range(3)]
    sink.fail = True
    assert batch(apps, three).status_code == 503
    assert batch(apps, three).status_code == 503
    sink.fail = False
    assert batch(apps, three).status_code == 202
    assert batch(apps, [event(9, device="dev-a")]).status_code == 429


# --- records Kafka would refuse: 413, never 503 ---------------------------------------------

def sized_event(i: int, pad: int):
    attributes, data = event(i)
    return {**attributes, "pad": "x" * pad}, data


def test_a_record_over_kafka_max_record_bytes_is_413_at_the_exact_boundary(runtime,
                                                                          sink) -> None:
    # Measure one record as ingest writes it, then set the limit to a known distance above.
    assert structured(Apps(), *sized_event(0, 200)).status_code == 202
    limit = record_size(sink.records[0]) + 50
    sink.records.clear()
    set_runtime(make_runtime(KAFKA_MAX_RECORD_BYTES=str(limit)))
    apps = Apps()
    assert structured(apps, *sized_event(1, 250)).status_code == 202
    assert record_size(sink.records[0]) == limit
    response = structured(apps, *sized_event(2, 251))
    assert response.status_code == 413
    assert response.get_json()["message"] == (
        f"{limit + 1} bytes as a Kafka record, more than KAFKA_MAX_RECORD_BYTES ({limit})")
    response = batch(apps, [sized_event(3, 10), sized_event(4, 251)])
    assert response.status_code == 413
    assert response.get_json()["message"].startswith(f"event[1]: {limit + 1} bytes")
    assert len(sink.records) == 1


def test_a_body_under_the_body_limit_that_grows_past_the_record_limit_is_413(runtime,
                                                                            sink) -> None:
    # 1e15 is 4 bytes in the body and 18 (1000000000000000.0) in the record.
    attributes, _ = event()
    headers, _ = events.to_http(attributes, None)
    metrics = ",".join(f'"m{i}":1e15' for i in range(20_000))
    body = f'{{"metrics":{{{metrics}}}}}'.encode()
    set_runtime(make_runtime(INGEST_MAX_BODY_BYTES=str(len(body)),
                             KAFKA_MAX_RECORD_BYTES=str(len(body) * 2)))
    response = Apps().ingest.post("/", data=body, headers=headers)
    assert response.status_code == 413, response.get_json()
    assert "KAFKA_MAX_RECORD_BYTES" in response.get_json()["message"]
    assert sink.records == []


def test_the_cheap_record_size_bound_is_never_below_the_producers_count() -> None:
    # Below the limit ingest trusts the bound alone, so it must never undercount.
    for pad in (0, 1, 100, 127, 128, 16_383, 16_384, 70_000):
        attributes, data = sized_event(0, pad)
        record = events.to_kafka("t", {**attributes, "partitionkey": "dev-1", "flag": True,
                                       "ünïcode": "é" * pad}, data)
        exact = record_size(record)
        assert record_size(record, limit=10**9) >= exact
        assert record_size(record, limit=exact) == exact
