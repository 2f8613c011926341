"""alert's store commands per event with rules scoped by device metadata, side by side with
the same rules unscoped, and with the metadata cache defeated (read for every event).

    python -m tests.benchmarks.alert_rule_scopes mongodb://127.0.0.1:27018 [EVENTS]

Each way runs on a fresh database of that server: 20 registered devices, all with
`{"fleet": "main"}`, events of temperature and humidity one after the other through what
alert does for a telemetry event (alert.evaluate: the device's rules, the check of alerts of
rules that no longer apply, offline resolves, the state cache). The scoped rules are the
defaults with `"scope": {"metadata": {"fleet": "main"}}`: every rule applies to every
device, so the evaluation is the same and the difference is what scoping costs. Counts come
from iot_store_commands_total and carry over to any MongoDB server.
"""

from __future__ import annotations

import json
import sys
import uuid

from iot_telemetry.alert import evaluate
from iot_telemetry.devices import Registry
from iot_telemetry.rules import default_rules
from iot_telemetry.runtime import Runtime
from iot_telemetry.settings import Settings
from tests.benchmarks.alert_state_cache import commands, events


def main(argv: list[str]) -> int:
    url, n = argv[0], int(argv[1]) if len(argv) > 1 else 400
    plain = [r.describe() for r in default_rules()]
    scoped = [{**r, "scope": {"metadata": {"fleet": "main"}}} for r in plain]
    ways = (("unscoped rules (defaults)", plain, "30"),
            ("rules scoped by metadata, cache 30 s", scoped, "30"),
            ("rules scoped by metadata, cache defeated", scoped, "0.000001"))
    for label, rules, seconds in ways:
        db = f"bench_alert_scopes_{uuid.uuid4().hex[:8]}"
        rt = Runtime(Settings.from_environ({}, {
            "MONGO_URL": url, "MONGO_DB": db, "KAFKA_BOOTSTRAP_SERVERS": "memory://",
            "ALERT_RULES": json.dumps(rules), "ALERT_METADATA_CACHE_SECONDS": seconds}))
        rt.store.ensure_indexes()
        registry = Registry(rt.store)
        evs = events(n)
        for device in sorted({e.device_id for e in evs}):
            registry.add(device, metadata={"fleet": "main"})
        for event in evs[:20]:  # each device's first event: connection, first reads
            evaluate(event, rt)
        before = commands()
        for event in evs[20:]:
            evaluate(event, rt)
        print(f"alert, {label}: {(commands() - before) / (n - 20):.2f} store commands per event")
        rt.store.client.drop_database(db)
        rt.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
