"""The embedded local run end to end: simulator -> ingest -> in-process broker -> store -> query."""

import json
from datetime import timedelta

import pytest

from iot_telemetry.local.embedded import EmbeddedPipeline
from iot_telemetry.local.simulator import SimulatorOptions, simulate
from tests.truth import close, expected, observed, points_of


@pytest.fixture
def pipeline():
    ports = dict.fromkeys(("ingest", "query", "aggregate", "alert", "notify"), 0)
    with EmbeddedPipeline(ports=ports, broker_port=0, environ={"LOG_LEVEL": "WARNING"}) as p:
        yield p


def get(url: str):
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_simulated_fleet_is_rolled_up_exactly(pipeline, tmp_path) -> None:
    recorded = tmp_path / "sent.jsonl"
    result = simulate(SimulatorOptions(
        url=pipeline.url("ingest"), devices=4, rate=0, events=120, mode="batch", batch_size=10,
        samples=2, anomaly_rate=0.3, duplicate_rate=0.2, seed=11, progress=False,
        record=str(recorded)))
    assert result.accepted_events == 120 and result.rejected_events == 0
    assert pipeline.wait_idle(60)
    sent = [json.loads(line) for line in recorded.read_text().splitlines()]
    points = [p for e in sent for p in points_of(e["attributes"], e["data"])]
    query = pipeline.url("query")
    start = min(p[2] for p in points) - timedelta(minutes=1)
    end = max(p[2] for p in points) + timedelta(minutes=1)

    def iso(t):
        return t.isoformat().replace("+00:00", "Z")

    for step in ("1m", "1h", "1d"):
        got = {}
        for device in {p[0] for p in points}:
            for metric in {p[1] for p in points if p[0] == device}:
                body = get(f"{query}devices/{device}/series?metric={metric}&step={step}"
                           f"&from={iso(start)}&to={iso(end)}")
                got.update(observed(body["buckets"], device, metric))
        assert close(got, expected(points, step)), step
    devices = get(f"{query}devices")["devices"]
    assert {d["id"] for d in devices} == {p[0] for p in points}
    for d in devices:
        newest = max((p for p in points if p[0] == d["id"] and p[1] == "temperature"),
                     key=lambda p: (p[2], p[3]))
        assert d["metrics"]["temperature"]["value"] == newest[3]
    stats = pipeline.stats()
    assert stats, "the in-process broker reports its triggers"



def test_every_alert_transition_of_one_event_reaches_the_alerts_topic(pipeline) -> None:
    import urllib.request
    from datetime import UTC, datetime

    # Default rules: 31, 32, 41 raise temperature-high (3 readings over 30) and, with the
    # same reading, temperature-critical (>= 40): two transitions from one event, one reply.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    for i, value in enumerate([31, 32, 41]):
        body = json.dumps({"metrics": {"temperature": value}}).encode()
        request = urllib.request.Request(pipeline.url("ingest"), data=body, method="POST", headers={
            "Content-Type": "application/json", "ce-specversion": "1.0",
            "ce-type": "iot.telemetry.v1", "ce-source": "/devices/sink-1", "ce-id": f"s{i}",
            "ce-subject": "sink-1",
            "ce-time": (start + timedelta(seconds=10 * i)).isoformat().replace("+00:00", "Z")})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
    assert pipeline.wait_idle(60)
    published = {(dict(r.headers)["ce_id"].decode()) for r in
                 pipeline.broker.sink_records("iot-alerts")}
    assert published == {"sink-1:temperature-high:1/raised",
                         "sink-1:temperature-critical:1/raised"}


def test_alert_events_of_one_alert_reach_the_alerts_topic_in_order(pipeline) -> None:
    """Issue 20 item 5, locally: samples 41 then 30 in one event raise and resolve
    temperature-critical; `raised` must come first on iot.alerts (the reply used to carry
    it, and reach the broker after the `resolved` posted to K_SINK)."""
    import urllib.request
    from datetime import UTC, datetime

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    body = json.dumps({"metrics": {"temperature": 41}, "samples": [{
        "time": (start + timedelta(seconds=10)).isoformat().replace("+00:00", "Z"),
        "metrics": {"temperature": 30}}]}).encode()
    request = urllib.request.Request(pipeline.url("ingest"), data=body, method="POST", headers={
        "Content-Type": "application/json", "ce-specversion": "1.0",
        "ce-type": "iot.telemetry.v1", "ce-source": "/devices/order-1", "ce-id": "o1",
        "ce-subject": "order-1", "ce-time": start.isoformat().replace("+00:00", "Z")})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
    assert pipeline.wait_idle(60)
    published = [dict(r.headers)["ce_id"].decode()
                 for r in pipeline.broker.sink_records("iot-alerts")]
    # A retried delivery (a slow machine) sends its events again, in the same order.
    assert list(dict.fromkeys(published)) == ["order-1:temperature-critical:1/raised",
                                              "order-1:temperature-critical:1/resolved"]


def text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_each_port_shows_its_own_functions_metrics(pipeline) -> None:
    result = simulate(SimulatorOptions(url=pipeline.url("ingest"), devices=2, rate=0, events=5,
                                       progress=False))
    assert result.accepted_events == 5
    assert pipeline.wait_idle(60)
    ingest = text(pipeline.url("ingest") + "metrics")
    aggregate = text(pipeline.url("aggregate") + "metrics")
    query = text(pipeline.url("query") + "metrics")
    assert "iot_events_accepted_total{" in ingest and "iot_points_aggregated" not in ingest
    assert 'iot_processing_seconds_count{function="ingest"}' in ingest
    assert 'function="aggregate"' not in ingest
    assert "iot_points_aggregated_total" in aggregate and "iot_events_accepted" not in aggregate
    assert 'iot_events_processed_total{function="aggregate",outcome="applied"}' in aggregate
    assert 'function="alert"' not in aggregate and 'function="ingest"' not in aggregate
    assert "iot_query_seconds" in query and "iot_events_accepted" not in query
