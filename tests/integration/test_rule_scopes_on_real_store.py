"""Rules per device group on mongo-java-server: group thresholds, a device's override, a
scope change resolving the open alert with its event; and no store command per event to
learn a device's metadata."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from iot_telemetry.devices import Registry
from iot_telemetry.observability import STORE_COMMANDS
from iot_telemetry.runtime import Runtime
from tests.conftest import Apps
from tests.integration.test_core_on_real_services import real_runtime
from tests.unit.test_alerting import SinkServer
from tests.unit.test_rule_scopes import GROUPS, reading, rules_per_device_group

pytestmark = pytest.mark.integration


def test_rules_per_device_group_on_the_real_store(mongo_url, mongo_db) -> None:
    sink = SinkServer()
    try:
        rules_per_device_group(lambda **env: real_runtime(mongo_url, mongo_db, **env), sink)
    finally:
        sink.server.shutdown()


def _commands() -> float:
    return sum(s.value for m in STORE_COMMANDS.collect() for s in m.samples
               if s.name.endswith("_total"))


def _steady(rt: Runtime, device: str, start: datetime) -> float:
    """Store commands of a device's second event (the first one reads what it needs)."""
    apps = Apps()
    reading(apps, device, 20, start, f"{device}-0")
    before = _commands()
    reading(apps, device, 20, start + timedelta(seconds=1), f"{device}-1")
    return _commands() - before


def test_scoped_rules_cost_no_store_command_per_event_in_steady_state(
        mongo_url, mongo_db) -> None:
    start = datetime.now(UTC) - timedelta(minutes=30)
    # the rule that applies to a device of greenhouse B, as the only rule and unscoped
    plain = [{k: v for k, v in GROUPS[1].items() if k != "scope"}]
    rt = real_runtime(mongo_url, mongo_db, ALERT_RULES=json.dumps(plain))
    Registry(rt.store).add("p-1", metadata={"location": "greenhouse-b"})
    unscoped = _steady(rt, "p-1", start)
    rt = real_runtime(mongo_url, mongo_db, ALERT_RULES=json.dumps(GROUPS))
    Registry(rt.store).add("s-1", metadata={"location": "greenhouse-b"})
    scoped = _steady(rt, "s-1", start)
    # The same rule evaluated, and nothing else: no read of the device's metadata, nor of
    # alerts of the rule that does not apply to it (both were read by the first event).
    assert scoped == unscoped
