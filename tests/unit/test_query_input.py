"""query and odd but possible parameters: a 400 naming the parameter, never a 5xx."""

import base64
import json
from datetime import timedelta

import pytest

from iot_telemetry.store import ALERTS
from tests.conftest import iso, record


@pytest.fixture
def seeded(apps, runtime, now):
    apps.deliver("aggregate", record("dev-1", now, {"temperature": 20.0}, "e0"))
    runtime.store.collection(ALERTS).insert_one(
        {"_id": "dev-1:rule:1", "device_id": "dev-1", "metric": "temperature", "rule": "rule",
         "count": 1, "severity": "warning", "state": "open", "raised_at": now})
    return apps


def cursor(time: str, alert_id: str = "dev-1:rule:1") -> str:
    return base64.urlsafe_b64encode(json.dumps([time, alert_id]).encode()).decode().rstrip("=")


def refused(response, name):
    assert response.status_code == 400, (response.status_code, response.data[:300])
    assert response.get_json()["message"].startswith(f"{name}:"), response.get_json()
    return response.get_json()["message"]


@pytest.mark.parametrize(("name", "value"), [
    ("to", "0001-01-01T00:30:00Z"),  # the default `from`, an hour before, is before year 1
    ("to", "0001-01-01T00:30:00+01:00"),
    ("from", "0001-01-01T00:00:00+00:01"),
    ("to", "9999-12-31T23:30:00-01:00"),
    ("to", "9999-12-31T23:59:59Z"),
    ("from", "2026-11-26T10:00:00+01"),
    ("from", "20261126T100000Z"),
    ("from", "2026-W48-4T10:00:00Z"),
    ("to", "2026-11-26T10:00:00Z\n"),
])
def test_series_times_outside_the_range_or_rfc_3339_are_400(seeded, name, value) -> None:
    from urllib.parse import quote

    refused(seeded.query.get(f"/devices/dev-1/series?metric=temperature&{name}="
                             f"{quote(value)}"), name)


def test_series_accepts_the_edges_of_its_range_and_lowercase_t_z(seeded, now) -> None:
    base = "/devices/dev-1/series?metric=temperature&step=1d"
    assert seeded.query.get(f"{base}&from=0001-01-02T00:00:00Z&to=0001-01-03T00:00:00Z"
                            ).status_code == 200
    assert seeded.query.get(f"{base}&from=9999-12-29T00:00:00Z&to=9999-12-30T00:00:00Z"
                            ).status_code == 200
    lower = iso(now - timedelta(hours=1)).replace("T", "t").replace("Z", "z")
    body = seeded.query.get(f"/devices/dev-1/series?metric=temperature&from={lower}").get_json()
    assert body["from"] == iso(now - timedelta(hours=1))


@pytest.mark.parametrize("time", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00",
                                  "2026-11-26T10:00:00+01", "not a time"])
def test_an_alerts_cursor_with_a_time_outside_utc_is_400(seeded, time) -> None:
    refused(seeded.query.get(f"/alerts?cursor={cursor(time)}"), "cursor")


def test_an_alerts_cursor_with_a_year_1_time_pages_to_nothing(seeded) -> None:
    body = seeded.query.get(f"/alerts?cursor={cursor('0001-01-01T00:00:00Z')}").get_json()
    assert body == {"alerts": [], "next_cursor": None}


@pytest.mark.parametrize("limit", ["%C2%B2", "%D9%A3", "%EF%BC%93", "3%0A", "+3", "3.0",
                                   "1" * 40, "%20"])
def test_a_limit_is_ascii_digits_only(seeded, limit) -> None:
    refused(seeded.query.get(f"/devices?limit={limit}"), "limit")
    refused(seeded.query.get(f"/alerts?limit={limit}"), "limit")


def test_a_json_ack_body_with_a_repeated_key_is_400(seeded) -> None:
    response = seeded.query.post("/alerts/dev-1:rule:1/ack", data=b'{"by": "ann", "by": "bob"}',
                                 headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "'by' appears twice" in response.get_json()["message"]
    assert seeded.query.get("/alerts/dev-1:rule:1").get_json()["state"] == "open"
