"""alert's group commit on a store that keeps MongoDB's per-document atomicity."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from iot_telemetry.alerting import AlertBook, StateCache
from iot_telemetry.observability import STORE_COMMANDS
from iot_telemetry.rules import AlertRule
from iot_telemetry.settings import Settings
from iot_telemetry.telemetry import TelemetryEvent
from tests.conftest import record
from tests.integration.test_core_on_real_services import real_runtime
from tests.unit.test_alerting import _validated

pytestmark = pytest.mark.integration


def commands() -> float:
    return sum(sample.value for metric in STORE_COMMANDS.collect() for sample in metric.samples
               if sample.name.endswith("_total"))


def _events(devices: int, step: int, value: float, now: datetime) -> list[TelemetryEvent]:
    return [_validated(record(f"dev-g{d}", now + timedelta(seconds=10 * step),
                              {"temperature": value, "humidity": 50.0}, f"g{d}-{step}"))
            for d in range(devices)]


def test_a_batch_of_raises_costs_the_round_trips_of_one_event(mongo_url, mongo_db) -> None:
    """Six devices raise in one batch: one update command for the six compare-and-swaps,
    one for the six raises, one find for their alert events (the states are cached)."""
    rt = real_runtime(mongo_url, mongo_db)
    rules = [r for r in Settings.from_environ({}).rules if isinstance(r, AlertRule)]
    book = AlertBook(rt.store, rules, cache=StateCache())
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    for step, value in enumerate([31.0, 32.0]):
        book.handle_batch([(book, e) for e in _events(6, step, value, now)])
    before = commands()
    results = book.handle_batch([(book, e) for e in _events(6, 2, 33.0, now)])
    assert commands() - before == 3
    assert [[t["transition"] for t in r.transitions] for r in results] == [["raised"]] * 6


def test_concurrent_instances_batching_stay_exact(mongo_url, mongo_db) -> None:
    """Three instances, each on its own connection pool, each handling the whole stream in
    batches from several threads: the alerts are those of one instance, one event at a
    time, and every delivery succeeds or is refused for a retry."""
    rules = [r for r in Settings.from_environ({}).rules if isinstance(r, AlertRule)]
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    values = [31.0, 32.0, 33.0, 35.0, 41.0, 27.0, 20.0, 31.0, 32.0, 33.0]
    stream = [_events(4, step, v, now) for step, v in enumerate(values)]
    runtimes = [real_runtime(mongo_url, mongo_db) for _ in range(3)]
    books = [AlertBook(r.store, rules, cache=StateCache()) for r in runtimes]
    errors: list[Exception] = []

    def instance(book: AlertBook) -> None:
        for batch in stream:  # every event delivered to every instance: duplicates
            pending = [(book, e) for e in batch]
            for _ in range(20):
                results = book.handle_batch(pending)
                pending = [p for p, r in zip(pending, results, strict=True)
                           if isinstance(r, Exception)]
                if not pending:
                    break
            errors.extend(r for r in results if isinstance(r, Exception))

    threads = [threading.Thread(target=instance, args=(b,)) for b in books]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    got = {d["_id"]: (d["state"], d["count"], d["peak"])
           for d in runtimes[0].store.collection("alerts").find({})}

    single_rt = real_runtime(mongo_url, mongo_db + "_single")
    single = AlertBook(single_rt.store, rules)
    for batch in stream:
        for e in batch:
            single.handle(e)
    want = {d["_id"]: (d["state"], d["count"], d["peak"])
            for d in single_rt.store.collection("alerts").find({})}
    single_rt.store.client.drop_database(mongo_db + "_single")
    assert got == want and want
