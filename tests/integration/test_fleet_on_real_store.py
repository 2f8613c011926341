"""Device states and the fleet's counts on the real MongoDB-API server (TEST_MONGO_URL)."""

from __future__ import annotations

import json
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
