"""query through its real app: typed parameters, pagination, caps, no operator injection."""

from datetime import timedelta

import pytest

from iot_telemetry.store import ALERTS
from tests.conftest import iso, record


@pytest.fixture
def seeded(apps, runtime, now):
    for d in range(5):
        apps.deliver("aggregate", record(f"dev-{d}", now + timedelta(minutes=d),
                                         {"temperature": 20.0 + d}, f"e{d}"))
    alerts = runtime.store.collection(ALERTS)
    for i in range(7):
        alerts.insert_one({"_id": f"dev-{i % 2}:rule:{i}", "device_id": f"dev-{i % 2}",
                           "metric": "temperature", "rule": "rule", "count": 1,
                           "severity": "critical" if i % 3 == 0 else "warning",
                           "state": "resolved" if i < 3 else "open",
                           "raised_at": now + timedelta(minutes=i // 2)})
    return apps


def test_devices_with_latest_values_and_paging(seeded) -> None:
    first = seeded.query.get("/devices?limit=2").get_json()
    assert [d["id"] for d in first["devices"]] == ["dev-0", "dev-1"]
    assert first["devices"][1]["metrics"]["temperature"]["value"] == 21.0
    assert first["devices"][0]["open_alerts"] == 2
    second = seeded.query.get(f"/devices?limit=2&cursor={first['next_cursor']}").get_json()
    assert [d["id"] for d in second["devices"]] == ["dev-2", "dev-3"]
    rest = seeded.query.get(f"/devices?limit=2&cursor={second['next_cursor']}").get_json()
    assert [d["id"] for d in rest["devices"]] == ["dev-4"] and rest["next_cursor"] is None
    assert seeded.query.get("/devices?prefix=dev-3").get_json()["devices"][0]["id"] == "dev-3"


def test_alerts_newest_first_with_a_cursor_and_filters(seeded) -> None:
    seen, cursor = [], None
    while True:
        url = "/alerts?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = seeded.query.get(url).get_json()
        seen += page["alerts"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 7 and len({a["id"] for a in seen}) == 7
    times = [a["raised_at"] for a in seen]
    assert times == sorted(times, reverse=True)
    open_critical = seeded.query.get("/alerts?state=open&severity=critical").get_json()
    assert {a["id"] for a in open_critical["alerts"]} == {"dev-1:rule:3", "dev-0:rule:6"}
    assert all(a["device_id"] == "dev-1" for a in
               seeded.query.get("/alerts?device_id=dev-1").get_json()["alerts"])


@pytest.mark.parametrize("url", [
    "/devices?device_id[$ne]=x",
    "/alerts?device_id[$ne]=x",
    "/alerts?state[$ne]=open",
    "/alerts?device_id=$where",
    "/alerts?state=closed",
    "/alerts?severity=fatal",
    "/alerts?limit=0",
    "/alerts?limit=100000",
    "/alerts?limit=-1",
    "/alerts?cursor=garbage",
    "/alerts?state=open&state=resolved",
    "/devices/dev-1/series",
    "/devices/dev-1/series?metric=Temperature",
    "/devices/dev-1/series?metric=temperature&step=5m",
    "/devices/dev-1/series?metric=temperature&from=yesterday",
    "/devices/dev-1/series?metric=temperature&from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
    "/devices/bad%20id",
])
def test_bad_parameters_are_400_with_a_reason(seeded, url) -> None:
    response = seeded.query.get(url)
    assert response.status_code == 400
    assert response.get_json()["message"]


def test_series_caps_the_number_of_buckets(seeded, now) -> None:
    url = (f"/devices/dev-1/series?metric=temperature&step=1m&from={iso(now - timedelta(days=3))}"
           f"&to={iso(now)}")
    response = seeded.query.get(url)
    assert response.status_code == 400
    assert "at most 2000" in response.get_json()["message"]


def test_series_picks_a_step_from_the_range(seeded, now) -> None:
    url = (f"/devices/dev-1/series?metric=temperature&from={iso(now - timedelta(days=20))}"
           f"&to={iso(now + timedelta(hours=1))}")
    body = seeded.query.get(url).get_json()
    assert body["step"] == "1h"
    assert [b["count"] for b in body["buckets"]] == [1]
    assert body["buckets"][0]["avg"] == 21.0


def test_unknown_things(seeded) -> None:
    assert seeded.query.get("/devices/nobody").status_code == 404
    assert seeded.query.get("/alerts/nobody").status_code == 404
    assert seeded.query.get("/nowhere").status_code == 404
    assert seeded.query.delete("/devices").status_code == 405


def test_openapi_documents_every_route(seeded) -> None:
    from iot_telemetry.query import ROUTES

    doc = seeded.query.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    documented = set(doc["paths"])
    for rule in ROUTES.iter_rules():
        path = rule.rule.replace("<", "{").replace(">", "}")
        assert path == "/" or path in documented, path


def test_query_latency_is_measured_by_route(seeded) -> None:
    from prometheus_client import REGISTRY

    seeded.query.get("/devices/dev-1")
    count = REGISTRY.get_sample_value(
        "iot_query_seconds_count", {"route": "/devices/<device_id>", "status": "200"})
    assert count and count >= 1


@pytest.mark.parametrize(("days", "step"), [(3, "1d"), (300, "1d"), (20, "1h")])
def test_series_long_ranges_read_by_id_or_by_range(seeded, now, days, step) -> None:
    url = (f"/devices/dev-1/series?metric=temperature&step={step}"
           f"&from={iso(now - timedelta(days=days))}&to={iso(now + timedelta(days=1))}")
    body = seeded.query.get(url).get_json()
    assert [(b["count"], b["avg"]) for b in body["buckets"]] == [(1, 21.0)]


def test_a_path_the_router_would_redirect_is_a_404_not_a_500(apps) -> None:
    """Found by the fuzzer: werkzeug answers a doubled slash with a redirect exception."""
    for path in ("/devices//dev-1", "/devices/dev-1//series?metric=t"):
        response = apps.query.get(path)
        assert response.status_code == 404, path
        assert response.get_json()["error"] == "not_found"


@pytest.mark.parametrize("step", ["1m", "1h", "1d"])
def test_sums_and_averages_without_float_noise(apps, now, step) -> None:
    """Issue 23: 0.1 + 0.2 answered 0.30000000000000004; 12 significant digits (README)."""
    for i, value in enumerate((0.1, 0.2, 0.4)):
        apps.deliver("aggregate", record("noisy", now + timedelta(seconds=i), {"x": value},
                                         f"n{i}"))
    span = {"1m": timedelta(minutes=30), "1h": timedelta(days=1), "1d": timedelta(days=30)}[step]
    url = (f"/devices/noisy/series?metric=x&step={step}&from={iso(now - span)}"
           f"&to={iso(now + span)}")
    response = apps.query.get(url)
    [bucket] = response.get_json()["buckets"]
    assert (bucket["sum"], bucket["avg"]) == (0.7, 0.233333333333)
    csv = apps.query.get(url + "&format=csv").get_data(as_text=True)
    assert ",0.233333333333,0.7," in csv and "0000000" not in csv


def test_json_answers_end_with_a_newline(seeded, sink) -> None:
    """So that `curl` in a terminal leaves the next prompt on a line of its own (issue 23)."""
    for url in ("/fleet", "/devices?limit=1", "/alerts?limit=1", "/devices?limit=0"):
        assert seeded.query.get(url).get_data(as_text=True).endswith("}\n"), url
    accepted = seeded.ingest.post("/", json={"metrics": {"t": 1}}, headers={
        "ce-specversion": "1.0", "ce-type": "iot.telemetry.v1", "ce-source": "/d/nl",
        "ce-id": "nl-1", "ce-subject": "nl"})
    assert accepted.status_code == 202 and accepted.get_data(as_text=True).endswith("}\n")
