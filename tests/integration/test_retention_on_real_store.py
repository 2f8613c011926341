"""Retention on the real MongoDB-API server (TEST_MONGO_URL), on a fake clock: expired minute
slots go, hour and day totals stay as configured, two sweeps at once compact each day once,
an expired redelivery counts nothing, and series at 1d read across the compaction boundary.

mongo-java-server accepts TTL indexes but deletes nothing by them; the sweep's deletes are
what this checks (on MongoDB the TTL monitor would race them, to the same end).
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest

from iot_telemetry.retention import Retention, SweepOutcome, sweep
from iot_telemetry.rollup import RollupWriter
from iot_telemetry.store import ROLLUP_DAYS, ROLLUP_HOURS, ROLLUP_MONTHS
from tests.integration.conftest import require_server
from tests.integration.test_rollup_on_real_store import store_of
from tests.integration.test_store_compat import FERRETDB
from tests.unit.test_retention import D1, Clock, same_series, scenario, series

pytestmark = pytest.mark.integration

RETENTION = Retention()


def test_retention_end_to_end_with_two_sweeps_at_once(mongo_url, mongo_db) -> None:
    store = store_of(mongo_url, mongo_db)
    clock = Clock(D1 + timedelta(hours=2))
    writer = RollupWriter(store, retention=RETENTION, clock=clock)
    for event in scenario():
        assert writer.apply(event)
    before = {step: series(store, step) for step in ("1m", "1h", "1d")}

    # 31 days after day 0: two instances sweep at once, a page of one day at a time so
    # their month writes interleave.
    now = D1 + timedelta(days=31)
    stores = [store_of(mongo_url, mongo_db) for _ in range(2)]
    start = threading.Barrier(2)
    outcomes: list[SweepOutcome | BaseException] = []

    def run(k: int) -> None:
        start.wait()
        try:
            outcomes.append(sweep(stores[k], RETENTION, now, page=1))
        except BaseException as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(isinstance(o, SweepOutcome) for o in outcomes), outcomes
    months = list(store.collection(ROLLUP_MONTHS).find({}).sort("_id", 1))
    assert len(months) == 2
    # Every minute slot is past its 30 days (day 1's only hour too); hour and day totals
    # are all there.
    assert before["1m"] and series(store, "1m") == {}
    assert same_series(series(store, "1h"), before["1h"])
    assert same_series(series(store, "1d", now=now), before["1d"])
    # A redelivery of day 0's events counts nothing: their hours' keys are gone.
    clock.now = now
    for event in scenario()[:4]:
        assert not writer.apply(event)
    assert store.collection(ROLLUP_HOURS).count_documents({"t": {"$lt": D1}}) == 0
    # A re-run changes nothing.
    assert sweep(store, RETENTION, now).compacted == 0
    assert list(store.collection(ROLLUP_MONTHS).find({}).sort("_id", 1)) == months

    # 13 months on: day 0's hour totals are gone, its day totals are read from the month
    # document, day 1's still from its day document.
    now = D1 + timedelta(days=396)
    sweep(store, RETENTION, now)
    assert store.collection(ROLLUP_DAYS).count_documents({"t": {"$lt": D1}}) == 0
    assert all(t >= D1 for t in series(store, "1h"))
    assert same_series(series(store, "1d", now=now), before["1d"])
    for s in [store, *stores]:
        s.close()


@pytest.mark.ferretdb
def test_retention_holds_on_ferretdb_through_the_sweep() -> None:
    """FerretDB 1.24 refuses TTL indexes (ensure_indexes makes plain ones): the sweep alone
    deletes what is past its retention there. One sweep at a time: FerretDB 1.x loses
    concurrent updates of one document (see README, MongoDB servers)."""
    url = require_server(FERRETDB, "FerretDB")
    db = f"iot_test_{uuid.uuid4().hex[:12]}"
    store = store_of(url, db)
    try:
        assert "expireAfterSeconds" not in store.collection(ROLLUP_HOURS).index_information()[
            "expiry"]
        writer = RollupWriter(store, retention=RETENTION, clock=Clock(D1 + timedelta(hours=2)))
        for event in scenario():
            assert writer.apply(event)
        before = {step: series(store, step) for step in ("1h", "1d")}
        now = D1 + timedelta(days=31)
        assert sweep(store, RETENTION, now).compacted == 2
        assert store.collection(ROLLUP_HOURS).count_documents({}) == 0
        assert same_series(series(store, "1h"), before["1h"])
        now = D1 + timedelta(days=396)
        sweep(store, RETENTION, now)
        assert store.collection(ROLLUP_DAYS).count_documents({"t": {"$lt": D1}}) == 0
        assert same_series(series(store, "1d", now=now), before["1d"])
    finally:
        store.client.drop_database(db)
        store.close()
