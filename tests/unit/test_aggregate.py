"""aggregate through its real app: rollups exact under redelivery, crashes and concurrency."""

import random
import threading
from datetime import timedelta

import pytest

from iot_telemetry import events
from iot_telemetry.rollup import RollupWriter
from iot_telemetry.series import bucket_start
from tests.conftest import iso, record, telemetry
from tests.truth import close, expected, observed, points_of


def fleet(now, n_events=60, devices=3, seed=1):
    rng = random.Random(seed)
    recs, sent = [], []
    for i in range(n_events):
        device = f"dev-{i % devices}"
        t = now + timedelta(seconds=37 * i + rng.randint(0, 5))
        metrics = {"temperature": round(rng.uniform(15, 30), 2), "humidity": rng.randint(30, 60)}
        samples = None
        if i % 10 == 0:
            samples = [(t - timedelta(seconds=s * 20), {"temperature": rng.uniform(10, 20)})
                       for s in range(1, 4)]
        attributes, data = telemetry(device, t, metrics, f"ev-{i}", samples)
        sent += points_of(attributes, data)
        recs.append(events.to_kafka("iot.telemetry", attributes, data))
    return recs, sent


def series(apps, device, metric, step, now):
    span = {"1m": timedelta(hours=12), "1h": timedelta(days=2), "1d": timedelta(days=4)}[step]
    url = (f"/devices/{device}/series?metric={metric}&step={step}"
           f"&from={(now - span).isoformat().replace('+00:00', 'Z')}"
           f"&to={(now + span).isoformat().replace('+00:00', 'Z')}")
    response = apps.query.get(url)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["buckets"]


def check_exact(apps, sent, now):
    for step in ("1m", "1h", "1d"):
        want = expected(sent, step)
        got = {}
        for device in {p[0] for p in sent}:
            for metric in {p[1] for p in sent}:
                got.update(observed(series(apps, device, metric, step, now), device, metric))
        assert close(got, want), step


def test_rollups_equal_the_readings_sent(apps, now) -> None:
    recs, sent = fleet(now)
    for i, rec in enumerate(recs):
        assert apps.deliver("aggregate", rec, structured=i % 2 == 1).status_code == 204
    check_exact(apps, sent, now)


def test_redelivery_changes_nothing(apps, now) -> None:
    recs, sent = fleet(now)
    for rec in recs + recs[::-1] + recs[::3]:
        assert apps.deliver("aggregate", rec).status_code == 204
    check_exact(apps, sent, now)


@pytest.mark.parametrize("crash_at", ["_snapshot_days", "_latest"])
def test_a_crash_halfway_then_redelivery_counts_once(apps, now, monkeypatch, crash_at) -> None:
    """Killed after the hour documents took the event (before the day snapshots, or before
    the latest values): the redelivery finishes the work without counting twice."""
    recs, sent = fleet(now, n_events=20)
    crashes = {"left": 0}
    original = getattr(RollupWriter, crash_at)

    def crash_once(self, *args):
        if crashes["left"] > 0:
            crashes["left"] -= 1
            raise RuntimeError(f"killed before {crash_at}")
        return original(self, *args)

    monkeypatch.setattr(RollupWriter, crash_at, crash_once)
    for rec in recs:
        crashes["left"] = 1
        assert apps.deliver("aggregate", rec).status_code == 500  # retried by the Broker
        assert apps.deliver("aggregate", rec).status_code == 204
    check_exact(apps, sent, now)
    check_last_values(apps, sent, now)


def check_last_values(apps, sent, now):
    """Every bucket's last value (every step) and each device's latest value is the reading
    with the newest time, ties broken by the larger value."""
    for step in ("1m", "1h", "1d"):
        for device in {p[0] for p in sent}:
            for metric in {p[1] for p in sent if p[0] == device}:
                for bucket in series(apps, device, metric, step, now):
                    newest = max((p for p in sent if p[0] == device and p[1] == metric
                                  and iso(bucket_start(p[2], step)) == bucket["t"]),
                                 key=lambda p: (p[2], p[3]))
                    assert bucket["last_value"] == newest[3], (step, bucket)
                    assert bucket["last"] == iso(newest[2])
    for device in {p[0] for p in sent}:
        view = apps.query.get(f"/devices/{device}").get_json()
        for metric, latest in view["metrics"].items():
            newest = max((p for p in sent if p[0] == device and p[1] == metric),
                         key=lambda p: (p[2], p[3]))
            assert (latest["value"], latest["time"]) == (newest[3], iso(newest[2]))


def test_concurrent_instances_with_duplicates(apps, now) -> None:
    recs, sent = fleet(now, n_events=40, devices=2)
    work = recs * 3
    random.Random(7).shuffle(work)
    errors = []

    def worker(chunk):
        for rec in chunk:
            code = apps.deliver("aggregate", rec).status_code
            if code != 204:
                errors.append(code)

    threads = [threading.Thread(target=worker, args=(work[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    check_exact(apps, sent, now)


def test_latest_value_follows_event_time_not_arrival(apps, now) -> None:
    newer = record("dev-9", now + timedelta(minutes=5), {"temperature": 30.0}, "new")
    older = record("dev-9", now + timedelta(minutes=1), {"temperature": 10.0, "humidity": 50},
                   "old")
    apps.deliver("aggregate", newer)
    apps.deliver("aggregate", older)
    device = apps.query.get("/devices/dev-9").get_json()
    assert device["metrics"]["temperature"]["value"] == 30.0
    assert device["metrics"]["humidity"]["value"] == 50.0
    assert device["last_event_time"].startswith(
        (now + timedelta(minutes=5)).isoformat()[:19])


def test_bucket_last_value_is_the_newest_reading(apps, now) -> None:
    apps.deliver("aggregate", record("dev-1", now + timedelta(seconds=30), {"t": 3.0}, "b"))
    apps.deliver("aggregate", record("dev-1", now + timedelta(seconds=10), {"t": 1.0}, "a"))
    [bucket] = series(apps, "dev-1", "t", "1m", now)
    assert bucket["last_value"] == 3.0
    assert bucket["first"].startswith((now + timedelta(seconds=10)).isoformat()[:19])


def test_invalid_delivery_is_400_not_retried(apps) -> None:
    response = apps.aggregate.post("/", data=b'{"metrics": {"t": "x"}}', headers={
        "ce-specversion": "1.0", "ce-type": "iot.telemetry.v1", "ce-source": "/d",
        "ce-id": "1", "ce-subject": "d", "Content-Type": "application/json"})
    assert response.status_code == 400
    assert apps.aggregate.post("/", data=b"junk").status_code == 400


def test_store_outage_is_503(apps, now, monkeypatch) -> None:
    from pymongo.errors import ServerSelectionTimeoutError

    def down(*args, **kwargs):
        raise ServerSelectionTimeoutError("no servers")

    import mongomock.collection

    monkeypatch.setattr(mongomock.collection.Collection, "update_one", down)
    response = apps.deliver("aggregate", record("dev-1", now, {"t": 1.0}, "x"))
    assert response.status_code == 503
    assert "Retry-After" in response.headers


@pytest.mark.parametrize(("step", "minute"), [("1m", 17), ("1h", 0), ("1d", 0)])
def test_bucket_start(now, step, minute) -> None:
    t = now.replace(hour=13, minute=17, second=42)
    start = bucket_start(t, step)
    assert start.minute == minute and start.second == 0
    assert start <= t


def test_first_seen_is_lowered_by_an_older_reading_arriving_later(apps, now) -> None:
    apps.deliver("aggregate", record("dev-f", now + timedelta(minutes=9), {"t": 1.0}, "new"))
    apps.deliver("aggregate", record("dev-f", now + timedelta(minutes=2), {"t": 2.0}, "old"))
    device = apps.query.get("/devices/dev-f").get_json()
    assert device["first_seen"] == iso(now + timedelta(minutes=2))
