"""A heartbeat, `{"samples": []}`: no data points, but the device was heard from."""

import json
from datetime import UTC, datetime, timedelta

from iot_telemetry import events
from tests.conftest import record, telemetry


def heartbeat(apps, sink, device: str, event_id: str, at: datetime | None = None):
    attributes, _ = telemetry(device, at or datetime.now(UTC), {}, event_id)
    response = apps.ingest.post("/", data=json.dumps({**attributes, "data": {"samples": []}}),
                                headers={"Content-Type": events.STRUCTURED})
    assert response.status_code == 202, response.get_json()
    assert response.get_json() == {"accepted": 1, "points": 0}
    return sink.records[-1]


def test_a_heartbeat_makes_a_device_appear_as_seen(apps, sink) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    record = heartbeat(apps, sink, "quiet-1", "hb-1")
    assert apps.deliver("aggregate", record).status_code < 300
    assert apps.deliver("aggregate", record).status_code < 300  # a redelivery changes nothing
    assert apps.deliver("alert", record).status_code < 300
    [device] = apps.query.get("/devices").get_json()["devices"]
    assert device["id"] == "quiet-1"
    assert device["metrics"] == {}
    assert device["stale"] is False
    assert datetime.fromisoformat(device["last_seen"]) >= before
    assert apps.query.get("/devices/quiet-1").status_code == 200


def test_a_heartbeat_after_readings_keeps_the_latest_values_and_moves_last_seen(apps,
                                                                               sink) -> None:
    # Delivered without an `ingesttime`: seen at its event time, ten minutes ago.
    at = datetime.now(UTC) - timedelta(minutes=10)
    assert apps.deliver("aggregate", record("dev-1", at, {"temperature": 21.5}, "r-1")
                        ).status_code < 300
    first = apps.query.get("/devices/dev-1").get_json()
    assert first["stale"] is True
    assert apps.deliver("aggregate", heartbeat(apps, sink, "dev-1", "hb-2")).status_code < 300
    after = apps.query.get("/devices/dev-1").get_json()
    assert after["metrics"] == first["metrics"]
    assert after["metrics"]["temperature"]["value"] == 21.5
    assert after["last_seen"] > first["last_seen"]
    assert after["stale"] is False
    assert after["first_seen"] == first["first_seen"]
