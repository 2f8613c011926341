"""alert's store commands per event with and without the process's state cache, side by side.

    python -m tests.benchmarks.alert_state_cache mongodb://127.0.0.1:27018 [EVENTS]

Each way runs on a fresh database of that server: 20 devices, events of temperature and
humidity (the default rules watch both), one after the other as one alert process gets
them. Counts carry over to any MongoDB server; they come from iot_store_commands_total.
"""

from __future__ import annotations

import random
import sys
import uuid
from datetime import UTC, datetime, timedelta

from iot_telemetry.alerting import AlertBook, StateCache
from iot_telemetry.events import RawEvent
from iot_telemetry.observability import STORE_COMMANDS
from iot_telemetry.settings import Settings
from iot_telemetry.store import Store
from iot_telemetry.telemetry import TelemetryEvent, format_time, validate


def commands() -> float:
    return sum(s.value for m in STORE_COMMANDS.collect() for s in m.samples
               if s.name.endswith("_total"))


def events(n: int) -> list[TelemetryEvent]:
    rng = random.Random(1)
    start = datetime.now(UTC) - timedelta(hours=1)
    out = []
    for i in range(n):
        device = f"d{i % 20}"
        attributes = {"specversion": "1.0", "type": "iot.telemetry.v1",
                      "source": f"/devices/{device}", "id": f"e{i}", "subject": device,
                      "time": format_time(start + timedelta(seconds=i))}
        data = {"metrics": {"temperature": rng.uniform(15, 35), "humidity": rng.uniform(30, 90)}}
        event = validate(RawEvent(attributes, data), datetime.now(UTC), None)
        assert isinstance(event, TelemetryEvent), event
        out.append(event)
    return out


def main(argv: list[str]) -> int:
    url, n = argv[0], int(argv[1]) if len(argv) > 1 else 400
    rules = Settings.from_environ({}).rules
    for label, cache in (("without the cache", StateCache(0)), ("with the cache", StateCache())):
        db = f"bench_alert_cache_{uuid.uuid4().hex[:8]}"
        store = Store(Settings.from_environ({}, {"MONGO_URL": url, "MONGO_DB": db,
                                                 "KAFKA_BOOTSTRAP_SERVERS": "memory://"}))
        store.ensure_indexes()
        book = AlertBook(store, rules, cache=cache)
        evs = events(n)
        book.handle(evs[0])  # connection and server discovery
        before = commands()
        for event in evs[1:]:
            book.handle(event)
        print(f"alert {label}: {(commands() - before) / (n - 1):.2f} store commands per event")
        store.client.drop_database(db)
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
