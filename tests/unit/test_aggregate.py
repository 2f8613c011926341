"""aggregate through its real app: rollups exact under redelivery, crashes and concurrency."""

import random
import threading
from datetime import timedelta

import pytest

from iot_telemetry import events
from iot_telemetry.rollup import RollupWriter, bucket_start
from iot_telemetry.store import ROLLUP_COLLECTIONS, Store
from tests.conftest import record, telemetry
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


@pytest.mark.parametrize("crash_at", ["last values", "1h", "1d"])
def test_a_crash_halfway_then_redelivery_counts_once(apps, now, monkeypatch, crash_at) -> None:
    """Killed after the minute buckets took the event (before their last values, before
    the hour buckets, or before the day buckets): the redelivery finishes the work."""
    recs, sent = fleet(now, n_events=20)
    crashes = {"left": 0}
    original_propagate = RollupWriter._propagate
    original_bulk = Store.bulk

    def crash_before_propagate(self, step, sources):
        if crashes["left"] > 0 and step == crash_at:
            crashes["left"] -= 1
            raise RuntimeError(f"killed before the {step} updates")
        return original_propagate(self, step, sources)

    def crash_before_lasts(self, name, ops, ordered=False):
        if crashes["left"] > 0 and name == ROLLUP_COLLECTIONS["1m"]:
            crashes["left"] -= 1
            raise RuntimeError("killed before the minute buckets' last values")
        return original_bulk(self, name, ops, ordered)

    if crash_at == "last values":
        monkeypatch.setattr(Store, "bulk", crash_before_lasts)
    else:
        monkeypatch.setattr(RollupWriter, "_propagate", crash_before_propagate)
    for rec in recs:
        crashes["left"] = 1
        assert apps.deliver("aggregate", rec).status_code == 500  # retried by the Broker
        assert apps.deliver("aggregate", rec).status_code == 204
    check_exact(apps, sent, now)
    if crash_at == "last values":  # each bucket's last value is still the newest reading
        for device in {p[0] for p in sent}:
            for bucket in series(apps, device, "temperature", "1m", now):
                newest = max((p for p in sent if p[0] == device and p[1] == "temperature"
                              and bucket_start(p[2], "1m").isoformat()[:16]
                              == bucket["t"][:16]), key=lambda p: (p[2], p[3]))
                assert bucket["last_value"] == pytest.approx(newest[3])


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


def test_lost_insert_race_is_retried_and_a_false_condition_is_not(apps, now) -> None:
    """Another instance inserts the bucket between our match and our insert: the refusal is
    retried against the now existing document, where it applies; a second refusal means
    the condition (already counted / older snapshot)."""
    from pymongo.errors import DuplicateKeyError

    from iot_telemetry.runtime import get_runtime

    writer = RollupWriter(get_runtime().store)

    class RaceOnce:
        def __init__(self, refusals):
            self.calls, self.refusals = 0, refusals

        def find_one_and_update(self, *args, **kwargs):
            self.calls += 1
            if self.calls <= self.refusals:
                raise DuplicateKeyError("E11000 duplicate key", 11000)
            return {"_id": "b", "count": 2}

    lost_race = RaceOnce(refusals=1)
    assert writer._upsert_returning(lost_race, {"_id": "b"}, {}) == {"_id": "b", "count": 2}
    assert lost_race.calls == 2
    condition_false = RaceOnce(refusals=5)
    assert writer._upsert_returning(condition_false, {"_id": "b"}, {}) is None
    assert condition_false.calls == 2
