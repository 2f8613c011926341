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


def test_rules_check_reads_the_device_from_the_store_at_mongo_url(
        mongo_url, mongo_db, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from iot_telemetry.local.cli import main

    rt = real_runtime(mongo_url, mongo_db)
    Registry(rt.store).add("a-2", metadata={"location": "greenhouse-a"})
    for name, value in (("MONGO_URL", mongo_url), ("MONGO_DB", mongo_db),
                        ("ALERT_RULES", json.dumps(GROUPS))):
        monkeypatch.setenv(name, value)
    assert main(["rules", "check", "a-2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f'a-2: metadata {{"location": "greenhouse-a"}} (from the store at '
                          f"MONGO_URL={mongo_url})")
    assert "override #0 (device 'a-2'): threshold 30 -> 35, clear_threshold 28 -> 33" in out
    assert main(["devices", "set-metadata", "a-2", "location=greenhouse-b", "row=3"]) == 0
    assert main(["devices", "set-metadata", "a-2", "row="]) == 0
    capsys.readouterr()
    assert main(["rules", "check", "a-2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('a-2: metadata {"location": "greenhouse-b"}')
    assert "  warm-b                 temperature > 25 (clears at 24), warning" in out
    assert main(["rules", "check", "a-3"]) == 0
    assert "(not in the store at MONGO_URL=" in capsys.readouterr().out
