"""The rollup write path on the real MongoDB-API server (TEST_MONGO_URL): store commands per
event, and every field exact with several instances, each with its own connection pool."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

import pytest

from iot_telemetry.observability import STORE_COMMANDS
from iot_telemetry.retention import Retention
from iot_telemetry.rollup import RollupWriter
from iot_telemetry.series import STEPS
from iot_telemetry.settings import Settings
from iot_telemetry.store import DEVICES, Store
from tests.unit.test_rollup_exact import (
    event_of,
    raw_stored,
    raw_truth,
    same,
    stored,
    truth,
)

pytestmark = pytest.mark.integration


def store_of(mongo_url: str, db: str) -> Store:
    settings = Settings.from_environ({}, {"MONGO_URL": mongo_url, "MONGO_DB": db,
                                          "KAFKA_BOOTSTRAP_SERVERS": "memory://"})
    store = Store(settings)
    store.ensure_indexes()
    return store


def commands() -> float:
    return sum(sample.value for metric in STORE_COMMANDS.collect() for sample in metric.samples
               if sample.name.endswith("_total"))


@pytest.mark.parametrize(("metrics", "raw", "most"), [
    (1, True, 4), (5, True, 4), (20, True, 4), (5, False, 3)])
def test_at_most_four_store_commands_per_event_whatever_its_metrics(mongo_url, mongo_db,
                                                                    metrics, raw, most) -> None:
    """Three for the rollups and latest values, one for the raw readings (when kept)."""
    store = store_of(mongo_url, mongo_db)
    writer = RollupWriter(store, retention=Retention() if raw else Retention(raw=None))
    t = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    writer.apply(event_of("warm", t, {"x": 1.0}, "warm"))  # server discovery, first calls
    if not writer._projected_find_and_modify:
        pytest.fail("this store has no projection in findAndModify: it is not the atomic "
                    "store the tests need (FerretDB?)")
    values = {f"m{k}": float(k) for k in range(metrics)}
    before = commands()
    for i in range(10):
        assert writer.apply(event_of(f"d{i}", t + timedelta(seconds=i), values, f"e{i}"))
    assert (commands() - before) / 10 <= most
    store.close()


def test_every_field_exact_with_instances_on_their_own_connections(mongo_url, mongo_db) -> None:
    """Three instances (own Store, own pool), four threads each, every event delivered two or
    three times in random order: every field of every step, and latest values, exact."""
    base = datetime.now(UTC).replace(minute=58, second=0, microsecond=0) - timedelta(hours=3)
    rng = random.Random(11)
    evs = []
    for i in range(150):
        t = base + timedelta(seconds=rng.randint(0, 3 * 3600))
        samples = [(t - timedelta(seconds=rng.randint(1, 900)), {"x": rng.choice([1.0, 2.5])})]
        evs.append(event_of(f"dev-{i % 3}", t, {"x": rng.uniform(-5, 5), "y": rng.randint(0, 9)},
                            f"e{i}", samples if i % 4 == 0 else None))
    work = evs * 2 + evs[::3]
    rng.shuffle(work)
    instances = [RollupWriter(store_of(mongo_url, mongo_db)) for _ in range(3)]
    errors: list[BaseException] = []

    def deliver(writer: RollupWriter, chunk: list) -> None:
        for event in chunk:
            for _ in range(10):  # retried as the Broker does
                try:
                    writer.apply(event)
                    break
                except Exception as exc:
                    errors.append(exc)
            else:
                raise AssertionError("never applied")

    threads = [threading.Thread(target=deliver, args=(instances[k % 3], work[k::12]))
               for k in range(12)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not [e for e in errors if not isinstance(e, Exception)]
    store = instances[0].store
    points = [(e.device_id, p.metric, p.time, p.value) for e in evs for p in e.points]
    for step in STEPS:
        want = truth(points, step)
        got = {(d, m, t): s for d in ("dev-0", "dev-1", "dev-2") for m in ("x", "y")
               for t, s in stored(store, d, m, step, base).items()}
        assert got.keys() == want.keys(), step
        bad = [k for k in want if not same(got[k], want[k])]
        assert not bad, (step, bad[:3])
    for device in ("dev-0", "dev-1", "dev-2"):
        with store.guard():
            doc = store.collection(DEVICES).find_one({"_id": device})
        assert doc is not None and set(doc["latest"]) == {"x", "y"}
        for metric in ("x", "y"):  # raw readings: each once
            assert sorted(raw_stored(store, device, metric, base)) == raw_truth(
                evs, device, metric)
    for writer in instances:
        writer.store.close()
