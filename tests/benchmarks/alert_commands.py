"""alert's store commands per event, through the function itself (HTTP, as the Broker
delivers), with the default rules (four threshold rules on temperature and humidity, one
offline rule).

    python -m tests.benchmarks.alert_commands mongodb://127.0.0.1:27018 [EVENTS]

Two streams, each on a fresh database of that server, 20 devices one after the other as one
alert process gets them: "pipeline" is figure 3's (2% of readings anomalous), "hot" has
temperatures uniform in 15-35 so the temperature rules raise, update and resolve all the
time. Counts carry over to any MongoDB server; they come from iot_store_commands_total.
Run it from two checkouts (PYTHONPATH=<checkout>/functions:<checkout>) to compare versions.
"""

from __future__ import annotations

import random
import sys
import uuid
from datetime import UTC, datetime

from iot_telemetry import events
from iot_telemetry.observability import STORE_COMMANDS
from iot_telemetry.runtime import Runtime, set_runtime
from iot_telemetry.settings import Settings
from iot_telemetry.telemetry import format_time
from tests.conftest import Apps


def by_command() -> dict[str, float]:
    return {s.labels.get("command", "?"): s.value for m in STORE_COMMANDS.collect()
            for s in m.samples if s.name.endswith("_total")}


def commands() -> float:
    return sum(s.value for m in STORE_COMMANDS.collect() for s in m.samples
               if s.name.endswith("_total"))


def stream(n: int, hot: bool) -> list[tuple[dict[str, str], dict[str, object]]]:
    rng = random.Random(1)
    out = []
    for i in range(n):
        device = f"d{i % 20}"
        attributes = {"specversion": "1.0", "type": "iot.telemetry.v1",
                      "source": f"/devices/{device}", "id": f"e{i}", "subject": device,
                      "datacontenttype": "application/json"}
        if hot:
            temperature = rng.uniform(15, 35)
        else:
            temperature = rng.uniform(45, 50) if rng.random() < 0.02 else rng.gauss(22, 1)
        out.append((attributes, {"metrics": {"temperature": temperature,
                                             "humidity": rng.uniform(40, 60)}}))
    return out


def main(argv: list[str]) -> int:
    url, n = argv[0], int(argv[1]) if len(argv) > 1 else 400
    sink = "http://127.0.0.1:9/"  # more than one alert event per reply is rare here
    for label, hot in (("pipeline", False), ("hot", True)):
        db = f"bench_alert_cmds_{uuid.uuid4().hex[:8]}"
        rt = Runtime(Settings.from_environ({}, {"MONGO_URL": url, "MONGO_DB": db,
                                                "KAFKA_BOOTSTRAP_SERVERS": "memory://",
                                                "K_SINK": sink}))
        set_runtime(rt)
        alert = Apps().alert
        evs = stream(n, hot)
        codes: dict[int, int] = {}
        before = 0.0
        for i, (attributes, data) in enumerate(evs):
            if i == 1:
                before = commands()  # after connection, discovery and the index build
                kinds = by_command()
            # stamped as they are sent, as ingest does
            now = format_time(datetime.now(UTC))
            headers, body = events.to_http({**attributes, "time": now, "ingesttime": now},
                                           data)
            status = alert.post("/", data=body, headers=headers).status_code
            codes[status] = codes.get(status, 0) + 1
        print(f"alert, {label} stream: {(commands() - before) / (n - 1):.2f} store commands "
              f"per event (replies {dict(sorted(codes.items()))})")
        after = by_command()
        print("  by command: " + ", ".join(
            f"{k} {(v - kinds.get(k, 0.0)) / (n - 1):.2f}" for k, v in sorted(after.items())
            if v > kinds.get(k, 0.0)))
        rt.store.client.drop_database(db)
        rt.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
