"""Offline alerts: what they cost, in store commands (which carry over to MongoDB) and time.

    python -m tests.benchmarks.offline_sweep mongodb://127.0.0.1:27018 1000

1. Per telemetry event at alert: the default rules without and with `device-offline` (the
   report that may resolve an offline alert costs one find of its state documents).
2. Sweeps over N silent devices: tick after tick until one finds nothing left to raise
   (at most MAX_RAISES raises per tick; the last tick reads pages only).
Each part on a fresh database of the server given.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

from iot_telemetry.observability import STORE_COMMANDS
from iot_telemetry.rules import default_rules
from iot_telemetry.runtime import Runtime, get_runtime, set_runtime
from iot_telemetry.settings import Settings
from tests.conftest import Apps, record
from tests.unit.test_alerting import SinkServer
from tests.unit.test_offline_alerts import sweep


def commands() -> float:
    return sum(s.value for m in STORE_COMMANDS.collect() for s in m.samples
               if s.name.endswith("_total"))


def runtime(url: str, rules: list[dict[str, object]], **env: str) -> None:
    set_runtime(Runtime(Settings.from_environ({}, {
        "MONGO_URL": url, "MONGO_DB": f"bench_offline_{uuid.uuid4().hex[:8]}",
        "KAFKA_BOOTSTRAP_SERVERS": "memory://", "ALERT_RULES": json.dumps(rules), **env})))


def per_event(url: str, events: int = 200) -> None:
    rules = [r.describe() for r in default_rules()]
    for label, chosen in (("threshold rules only", [r for r in rules
                                                    if r.get("condition") != "offline"]),
                          ("plus device-offline", rules)):
        runtime(url, chosen)
        apps = Apps()
        t0 = datetime.now(UTC) - timedelta(minutes=30)
        apps.deliver("alert", record("warm", t0, {"temperature": 20.0}, "w"))
        before = commands()
        for i in range(events):
            apps.deliver("alert", record(f"d{i % 20}", t0 + timedelta(seconds=i),
                                         {"temperature": 21.0, "humidity": 50.0}, f"e{i}"))
        print(f"alert, {label}: {(commands() - before) / events:.2f} store commands per "
              f"telemetry event ({events} events)")


def sweeps(url: str, devices: int) -> None:
    sink = SinkServer()
    try:
        runtime(url, [{"name": "offline", "condition": "offline"}], K_SINK=sink.url)
        apps = Apps()
        seen = datetime.now(UTC) - timedelta(minutes=20)
        get_runtime().store.collection("devices").insert_many(
            [{"_id": f"d{i}", "last_seen": seen + timedelta(milliseconds=i)}
             for i in range(devices)])
        status, tick = 200, 0
        while status == 200:
            tick += 1
            before, t0 = commands(), time.perf_counter()
            status = sweep(apps, f"tick-{tick}").status_code
            print(f"sweep tick {tick} over {devices} silent devices: "
                  f"{commands() - before:.0f} store commands, {time.perf_counter() - t0:.2f} s, "
                  f"answer {status}")
    finally:
        sink.server.shutdown()


if __name__ == "__main__":
    per_event(sys.argv[1])
    sweeps(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
