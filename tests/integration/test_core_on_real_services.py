"""The functions against the real Kafka broker and the real MongoDB-API server."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from kafka import KafkaConsumer

from iot_telemetry import events
from iot_telemetry.runtime import Runtime, set_runtime
from iot_telemetry.settings import Settings
from tests.conftest import Apps, telemetry
from tests.truth import close, expected, observed
from tests.unit.test_aggregate import fleet, series

pytestmark = pytest.mark.integration


def real_runtime(mongo_url: str, mongo_db: str, kafka: str = "memory://", **env: str) -> Runtime:
    rt = Runtime(Settings.from_environ({}, {"MONGO_URL": mongo_url, "MONGO_DB": mongo_db,
                                            "KAFKA_BOOTSTRAP_SERVERS": kafka, **env}))
    set_runtime(rt)
    return rt


@pytest.fixture
def now() -> datetime:
    return (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)


def test_ingest_writes_the_kafka_binding_and_waits_for_acks(kafka_bootstrap, topic, mongo_url,
                                                          mongo_db) -> None:
    real_runtime(mongo_url, mongo_db, kafka_bootstrap, KAFKA_TOPIC=topic)
    apps = Apps()
    now = datetime.now(UTC)
    batch = [telemetry(f"dev-{i % 4}", now - timedelta(seconds=60 - i), {"temperature": i},
                       f"k-{i}") for i in range(40)]
    response = apps.ingest.post("/", data=events.to_batch(batch),
                                headers={"Content-Type": events.BATCH})
    assert response.status_code == 202, response.get_json()
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    got = [m for m in consumer]
    consumer.close()
    assert len(got) == 40
    by_key: dict[bytes, list[int]] = {}
    partitions: dict[bytes, set[int]] = {}
    for m in got:
        raw = events.from_kafka(m.key, m.headers, m.value)
        assert raw.attributes["subject"].encode() == m.key
        by_key.setdefault(m.key, []).append(int(raw.data["metrics"]["temperature"]))
        partitions.setdefault(m.key, set()).add(m.partition)
    assert all(len(p) == 1 for p in partitions.values())  # one device, one partition
    assert all(v == sorted(v) for v in by_key.values())  # in order per device
    assert apps.ingest.get("/readyz").status_code == 200


def test_ingest_answers_503_when_kafka_cannot_take_the_write(mongo_url, mongo_db) -> None:
    # Nothing listens on port 1: the producer cannot connect within the send timeout.
    real_runtime(mongo_url, mongo_db, "127.0.0.1:1", KAFKA_SEND_TIMEOUT_SECONDS="2")
    apps = Apps()
    attributes, data = telemetry("dev-1", datetime.now(UTC), {"temperature": 1}, "x")
    headers, body = events.to_http(attributes, data)
    started = time.monotonic()
    response = apps.ingest.post("/", data=body, headers=headers)
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert time.monotonic() - started < 30
    assert apps.ingest.get("/readyz").status_code == 503


def test_rollups_exact_with_concurrent_instances_and_duplicates(mongo_url, mongo_db,
                                                                now) -> None:
    # The instances share the runtime's pool, so their concurrent updates reach the store on
    # separate connections, as those of separate instances do (the store must keep
    # single-document atomicity: tests/run.sh probes it first).
    real_runtime(mongo_url, mongo_db)
    apps = Apps()
    recs, sent = fleet(now, n_events=48, devices=2, seed=3)
    work = recs * 3
    random.Random(5).shuffle(work)
    failures: list[int] = []

    def instance(chunk: list[events.KafkaRecord]) -> None:
        for rec in chunk:
            # a 503/500 is retried by the Broker: do the same here
            for _ in range(10):
                code = apps.deliver("aggregate", rec).status_code
                if code == 204:
                    break
            else:
                failures.append(code)

    threads = [threading.Thread(target=instance, args=(work[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    for step in ("1m", "1h", "1d"):
        got = {}
        for device in ("dev-0", "dev-1"):
            for metric in ("temperature", "humidity"):
                got.update(observed(series(apps, device, metric, step, now), device, metric))
        assert close(got, expected(sent, step)), step


def test_alerts_atomic_with_concurrent_instances(mongo_url, mongo_db, now) -> None:
    real_runtime(mongo_url, mongo_db)
    apps = Apps()
    values = [31, 32, 33, 34, 35, 20, 21, 31, 32, 33]
    recs = [events.to_kafka("t", *telemetry("dev-7", now + timedelta(seconds=10 * i),
                                            {"temperature": v}, f"a{i}"))
            for i, v in enumerate(values)]
    replies: list[str] = []
    lock = threading.Lock()

    statuses: list[int] = []

    def instance(order: list[events.KafkaRecord]) -> None:
        for rec in order:
            for _ in range(10):  # a 5xx is retried by the Broker: do the same here
                response = apps.deliver("alert", rec)
                with lock:
                    statuses.append(response.status_code)
                if response.status_code < 500:
                    break
            if response.status_code == 200:
                with lock:
                    replies.append(response.headers["ce-id"])

    # each instance sees the whole stream in order, as duplicate deliveries
    threads = [threading.Thread(target=instance, args=(recs,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s in (200, 204, 503) for s in statuses), statuses
    alerts = apps.query.get("/alerts?device_id=dev-7").get_json()["alerts"]
    high = sorted((a["id"], a["state"]) for a in alerts if a["rule"] == "temperature-high")
    assert high == [("dev-7:temperature-high:1", "resolved"),
                    ("dev-7:temperature-high:2", "open")]
    assert {"dev-7:temperature-high:1/raised", "dev-7:temperature-high:1/resolved",
            "dev-7:temperature-high:2/raised"} <= set(replies)


def test_offline_sweeps_atomic_with_concurrent_instances(mongo_url, mongo_db) -> None:
    """Several alert instances sweep at once on the real store (pages of 4), while the
    devices' next reports resolve what they raised: one alert per device and episode, each
    raised and resolved once."""
    from iot_telemetry import offline
    from tests.unit.test_alerting import SinkServer
    from tests.unit.test_offline_alerts import report, sweep

    sink = SinkServer()
    rules = '[{"name": "offline", "condition": "offline"}]'
    real_runtime(mongo_url, mongo_db, ALERT_RULES=rules, K_SINK=sink.url)
    apps = Apps()
    devices = [f"quiet-{i}" for i in range(10)]
    for i, device in enumerate(devices):
        assert report(apps, device, 600 + i, f"q{i}").status_code == 204
    original, offline.PAGE_SIZE = offline.PAGE_SIZE, 4
    replies: list[str] = []
    lock = threading.Lock()

    def instance(n: int) -> None:
        for attempt in range(10):  # a 5xx is retried by the Broker: do the same here
            response = sweep(apps, f"tick-{n}")
            if response.status_code < 500:
                break
        assert response.status_code in (200, 204), (attempt, response.get_json())
        if response.status_code == 200:
            with lock:
                replies.append(response.headers["ce-id"])

    try:
        threads = [threading.Thread(target=instance, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        offline.PAGE_SIZE = original
        sink.server.shutdown()
    alerts = apps.query.get("/alerts?limit=100").get_json()["alerts"]
    assert sorted(a["id"] for a in alerts) == sorted(f"{d}:offline:1" for d in devices)
    announced = replies + [h["ce-id"] for h, _ in sink.received]
    assert sorted(announced) == sorted(f"{d}:offline:1/raised" for d in devices)
    for i, device in enumerate(devices):  # they report again, twice each (a redelivery)
        for _ in range(2):
            back = report(apps, device, 0, f"r{i}", function="alert")
            assert back.headers["ce-id"] == f"{device}:offline:1/resolved"
    states = {a["state"] for a in apps.query.get("/alerts?limit=100").get_json()["alerts"]}
    assert states == {"resolved"}


def test_query_pages_and_acks_on_the_real_store(mongo_url, mongo_db, now) -> None:
    real_runtime(mongo_url, mongo_db)
    apps = Apps()
    for d in range(4):
        for i, v in enumerate([31, 32, 33]):
            apps.deliver("alert", events.to_kafka("t", *telemetry(
                f"dev-{d}", now + timedelta(minutes=d, seconds=10 * i), {"temperature": v},
                f"q{d}-{i}")))
            apps.deliver("aggregate", events.to_kafka("t", *telemetry(
                f"dev-{d}", now + timedelta(minutes=d, seconds=10 * i), {"temperature": v},
                f"q{d}-{i}")))
    ids, cursor = [], None
    while True:
        page = apps.query.get("/alerts?limit=3" + (f"&cursor={cursor}" if cursor else ""))
        body = page.get_json()
        ids += [a["id"] for a in body["alerts"]]
        if not (cursor := body["next_cursor"]):
            break
    assert ids == [f"dev-{d}:temperature-high:1" for d in (3, 2, 1, 0)]
    assert apps.query.post(f"/alerts/{ids[0]}/ack", json={"by": "ops"}).status_code == 200
    assert apps.query.get("/alerts?state=acknowledged").get_json()["alerts"][0]["id"] == ids[0]
    devices = apps.query.get("/devices?limit=10").get_json()["devices"]
    assert [d["id"] for d in devices] == ["dev-0", "dev-1", "dev-2", "dev-3"]
    # a prefix and a cursor together: both conditions on _id hold on every server
    first = apps.query.get("/devices?prefix=dev-&limit=2").get_json()
    second = apps.query.get(f"/devices?prefix=dev-&limit=2&cursor={first['next_cursor']}")
    assert [d["id"] for d in second.get_json()["devices"]] == ["dev-2", "dev-3"]
    assert devices[0]["metrics"]["temperature"]["value"] == 33.0
    assert devices[0]["open_alerts"] == 1
    assert apps.query.get("/devices?device_id[$ne]=x").status_code == 400
