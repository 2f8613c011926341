"""Device states and the fleet's counts on the real MongoDB-API server (TEST_MONGO_URL)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import pytest

from iot_telemetry import fleet
from iot_telemetry.observability import STORE_COMMANDS
from tests.integration.test_core_on_real_services import real_runtime
from tests.unit.test_alerting import sink_server  # noqa: F401 (fixture)
from tests.unit.test_fleet_states import COUNTS, EXPECTED, RULES, seed_fleet, states

pytestmark = pytest.mark.integration


def commands() -> float:
    """Every command the process has sent to the store (iot_store_commands_total)."""
    return sum(s.value for m in STORE_COMMANDS.collect() for s in m.samples
               if s.name.endswith("_total"))


def test_states_and_counts_on_the_real_store(mongo_url, mongo_db, sink_server) -> None:  # noqa: F811
    rt = real_runtime(mongo_url, mongo_db, K_SINK=sink_server.url,
                      ALERT_RULES=json.dumps(RULES))
    apps = seed_fleet()
    before = commands()
    assert states(apps) == EXPECTED
    # The states cost no store command of their own: the page's devices, their open alerts.
    assert commands() - before == 2
    assert apps.query.get("/fleet").get_json()["states"] == COUNTS
    # Batches of one and two (getMore on the real server): quiet's two alerts count once.
    for size in (1, 2):
        assert fleet.fleet_counts(rt.store, datetime.now(UTC), 300, size) == COUNTS


def test_fleet_counts_add_up_while_devices_register_and_report(mongo_url, mongo_db) -> None:
    """Issue 23: polled while new devices registered and reported, counts taken one state at
    a time went negative (`never_reported: -1`). One scan: never negative, always adding up
    to `devices`, which lies between the fleet's size before and after the answer."""
    rt = real_runtime(mongo_url, mongo_db)
    devices = rt.store.collection("devices")
    devices.insert_many([{"_id": f"old-{n:03d}", "last_seen": datetime.now(UTC)}
                         for n in range(50)])
    stop = threading.Event()
    started, done = [50], [50]  # inserts begun, inserts acknowledged

    def fleet_joins() -> None:
        n = 0
        while not stop.is_set():
            # Registered (never reported), then reporting, then one of them disabled.
            started[0] += 1
            devices.insert_one({"_id": f"new-{n:05d}"})
            done[0] += 1
            devices.update_one({"_id": f"new-{n:05d}"},
                               {"$set": {"last_seen": datetime.now(UTC)}})
            if n % 5 == 0:
                devices.update_one({"_id": f"new-{n:05d}"}, {"$set": {"enabled": False}})
            n += 1

    writers = [threading.Thread(target=fleet_joins)]
    writers[0].start()
    answers = []
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(answers) < 200:
            before = done[0]
            counts = fleet.fleet_counts(rt.store, datetime.now(UTC), 300, 7)
            answers.append((before, counts, started[0]))
    finally:
        stop.set()
        writers[0].join()
    assert done[0] > 100, "the writer hardly ran: the test proves nothing"
    bad = [(b, c, a) for b, c, a in answers
           if min(c.values()) < 0 or not b <= sum(c.values()) <= a]
    assert not bad, f"{len(bad)} of {len(answers)} answers do not add up, e.g. {bad[:3]}"
