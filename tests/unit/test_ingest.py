"""ingest through its real functions-framework app, in binary, structured and batch mode."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from iot_telemetry import events
from tests.conftest import iso, telemetry


def now_event(i: int = 0, device: str = "dev-1", **metrics: float):
    return telemetry(device, datetime.now(UTC) - timedelta(seconds=10 - i),
                     metrics or {"temperature": 21.5, "humidity": 40.0}, f"e-{i}")


def binary(attributes, data):
    headers, body = events.to_http(attributes, data)
    return {"data": body, "headers": headers}


def test_binary_mode_is_written_to_kafka_binding(apps, sink) -> None:
    attributes, data = now_event()
    response = apps.ingest.post("/", **binary(attributes, data))
    assert response.status_code == 202
    assert response.get_json() == {"accepted": 1, "points": 2}
    [rec] = sink.records
    headers = dict(rec.headers)
    assert rec.topic == "iot.telemetry"
    assert rec.key == b"dev-1"
    assert headers["ce_id"] == b"e-0"
    assert headers["ce_type"] == b"iot.telemetry.v1"
    assert headers["ce_subject"] == b"dev-1"
    assert headers["ce_partitionkey"] == b"dev-1"
    assert headers["content-type"] == b"application/json"
    assert "ce_ingesttime" in headers
    assert json.loads(rec.value) == data


def test_structured_mode(apps, sink) -> None:
    attributes, data = now_event()
    response = apps.ingest.post("/", data=json.dumps({**attributes, "data": data}),
                                headers={"Content-Type": events.STRUCTURED})
    assert response.status_code == 202
    assert events.from_kafka(sink.records[0].key, sink.records[0].headers,
                             sink.records[0].value).data == data


def test_batch_mode_keeps_each_device_as_key(apps, sink) -> None:
    batch = [now_event(i, device=f"dev-{i % 2}") for i in range(4)]
    response = apps.ingest.post("/", data=events.to_batch(batch),
                                headers={"Content-Type": events.BATCH})
    assert response.status_code == 202
    assert response.get_json() == {"accepted": 4, "points": 8}
    assert [r.key for r in sink.records] == [b"dev-0", b"dev-1", b"dev-0", b"dev-1"]


def test_samples_count_as_points(apps, sink) -> None:
    t = datetime.now(UTC) - timedelta(minutes=1)
    attributes, data = telemetry("dev-1", t, {}, "s-1",
                                 samples=[(t + timedelta(seconds=i), {"temperature": 20 + i})
                                          for i in range(5)])
    response = apps.ingest.post("/", **binary(attributes, data))
    assert response.status_code == 202
    assert response.get_json()["points"] == 5


def test_a_batch_with_one_bad_event_is_rejected_whole_listing_every_problem(apps, sink) -> None:
    good = now_event(0)
    bad_attrs, _ = now_event(1)
    bad_attrs = {**bad_attrs, "subject": "bad device!", "time": "yesterday"}
    bad_data = {"metrics": {"Temperature": 1, "humidity": "wet", "pressure": float("nan")}}
    response = apps.ingest.post("/", data=events.to_batch([good, (bad_attrs, bad_data)]),
                                headers={"Content-Type": events.BATCH})
    assert response.status_code == 400
    problems = response.get_json()["problems"]
    assert any(p.startswith("event[1].subject") for p in problems)
    assert any(p.startswith("event[1].time") for p in problems)
    assert any(p.startswith("event[1].data.metrics.Temperature") for p in problems)
    assert any(p.startswith("event[1].data.metrics.humidity") for p in problems)
    assert any(p.startswith("event[1].data.metrics.pressure") for p in problems)
    assert not any(p.startswith("event[0]") for p in problems)
    assert sink.records == []


@pytest.mark.parametrize(("change", "problem"), [
    ({"time": "OLD"}, "older than"),
    ({"time": "FUTURE"}, "in the future"),
    ({"type": "iot.other"}, "type"),
    ({"id": ""}, "id"),
    ({"subject": None}, "subject"),
    ({"specversion": "0.3"}, "specversion"),
])
def test_attribute_rules(apps, sink, change, problem) -> None:
    attributes, data = now_event()
    if change.get("time") == "OLD":
        change = {"time": iso(datetime.now(UTC) - timedelta(days=8))}
    if change.get("time") == "FUTURE":
        change = {"time": iso(datetime.now(UTC) + timedelta(minutes=6))}
    attributes = {k: v for k, v in {**attributes, **change}.items() if v is not None}
    response = apps.ingest.post("/", data=json.dumps({**attributes, "data": data}),
                                headers={"Content-Type": events.STRUCTURED})
    assert response.status_code == 400
    assert problem in response.get_json()["message"]
    assert sink.records == []


def test_age_limit_is_said_in_days(apps, sink) -> None:
    attributes, data = now_event()
    attributes["time"] = old = iso(datetime.now(UTC) - timedelta(days=8))
    response = apps.ingest.post("/", data=json.dumps({**attributes, "data": data}),
                                headers={"Content-Type": events.STRUCTURED})
    assert response.get_json()["problems"] == [f"time: {old} is older than 7 days"]


@pytest.mark.parametrize("body", [
    b'{"metrics": {"temperature": NaN}}',
    b'{"metrics": {"temperature": Infinity}}',
    b'{"metrics": {"temperature": -Infinity}}',
    b'{"metrics": {"temperature": 1e400}}',
    b'{"metrics": {"temperature": true}}',
    b'{"metrics": {}}',
    b'{"samples": "no"}',
    b'{"metrics": {"t": 1}, "extra": 2}',
    b'{}',
    b'[1, 2]',
    b'{"metrics": ',
])
def test_bad_data_is_400_with_a_reason(apps, sink, body) -> None:
    attributes, _ = now_event()
    headers, _ = events.to_http(attributes, None)
    response = apps.ingest.post("/", data=body, headers=headers)
    assert response.status_code == 400
    assert response.get_json()["message"]
    assert sink.records == []


def test_too_many_samples(apps, sink) -> None:
    t = datetime.now(UTC) - timedelta(minutes=30)
    samples = [(t + timedelta(seconds=i), {"temperature": 1.0}) for i in range(1001)]
    attributes, data = telemetry("dev-1", t, {}, "big", samples)
    response = apps.ingest.post("/", **binary(attributes, data))
    assert response.status_code == 400
    assert "at most 1000" in response.get_json()["message"]


def test_duplicate_ids_within_a_batch(apps, sink) -> None:
    event = now_event(0)
    response = apps.ingest.post("/", data=events.to_batch([event, event]),
                                headers={"Content-Type": events.BATCH})
    assert response.status_code == 400
    assert "duplicate" in response.get_json()["message"]


def test_oversize_body_is_413(runtime, sink) -> None:
    from iot_telemetry.runtime import set_runtime
    from tests.conftest import Apps, make_runtime

    set_runtime(make_runtime(INGEST_MAX_BODY_BYTES="200"))
    attributes, data = now_event()
    data["metrics"].update({f"m{i}": float(i) for i in range(30)})
    response = Apps().ingest.post("/", **binary(attributes, data))
    assert response.status_code == 413
    assert sink.records == []


@pytest.mark.parametrize("ctype", ["text/plain", "application/xml", ""])
def test_unknown_content_type_is_415(apps, sink, ctype) -> None:
    response = apps.ingest.post("/", data=b"temperature=20", headers={"Content-Type": ctype})
    assert response.status_code == 415


def test_plain_json_without_ce_headers_says_what_is_missing(apps, sink) -> None:
    response = apps.ingest.post("/", data=b'{"metrics": {"t": 1}}',
                                headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "ce-specversion" in response.get_json()["message"]


def test_broker_down_is_503_with_retry_after_and_nothing_claimed(apps, sink) -> None:
    sink.fail = True
    response = apps.ingest.post("/", **binary(*now_event()))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"
    assert apps.ingest.get("/readyz").status_code == 503


def test_routes(apps, sink) -> None:
    assert apps.ingest.get("/").status_code == 405
    assert apps.ingest.post("/elsewhere", data=b"{}").status_code == 404
    assert apps.ingest.get("/healthz").status_code == 200
    assert apps.ingest.get("/readyz").status_code == 200
    metrics = apps.ingest.get("/metrics")
    assert metrics.status_code == 200
    assert b"iot_events_accepted_total" in metrics.data


def test_accepted_and_rejected_are_counted(apps, sink) -> None:
    from prometheus_client import REGISTRY

    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before_ok = value("iot_events_accepted_total", mode="binary")
    before_bad = value("iot_events_rejected_total", reason="unsupported_media_type")
    apps.ingest.post("/", **binary(*now_event()))
    apps.ingest.post("/", data=b"x", headers={"Content-Type": "text/plain"})
    assert value("iot_events_accepted_total", mode="binary") == before_ok + 1
    assert value("iot_events_rejected_total", reason="unsupported_media_type") == before_bad + 1
