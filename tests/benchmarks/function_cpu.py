"""CPU per event of one consumer function (alert or aggregate) in-process, through its HTTP
handler (functions-framework's test client), one event after the other on a real store.

    python -m tests.benchmarks.function_cpu alert mongodb://127.0.0.1:27018 [EVENTS] [--profile]

Events as figure 3's simulator sends them: 60 devices, 9 samples of temperature, humidity and
pressure each (27 data points). CPU time of this process (the store's is apart); --profile
prints cProfile's top functions. Run it from two checkouts
(PYTHONPATH=<checkout>/functions:<checkout>) to compare versions.
"""

from __future__ import annotations

import cProfile
import pstats
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

from iot_telemetry import events
from iot_telemetry.runtime import Runtime, set_runtime
from iot_telemetry.settings import Settings
from iot_telemetry.telemetry import format_time
from tests.conftest import Apps

WARMUP = 60


def event(i: int, rng: random.Random) -> tuple[dict[str, str], bytes]:
    device, now = f"d{i % 60}", datetime.now(UTC)
    samples = [{"time": format_time(now - timedelta(seconds=9 - j)),
                "metrics": {"temperature": rng.gauss(22, 1), "humidity": rng.gauss(50, 3),
                            "pressure": 1013.0}} for j in range(9)]
    attributes = {"specversion": "1.0", "type": "iot.telemetry.v1",
                  "source": f"/devices/{device}", "id": f"e{i}", "subject": device,
                  "time": format_time(now), "ingesttime": format_time(now),
                  "datacontenttype": "application/json", "partitionkey": device}
    return events.to_http(attributes, {"samples": samples})


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--profile"]
    function, url = args[0], args[1]
    n = int(args[2]) if len(args) > 2 else 400
    db = f"bench_fn_cpu_{uuid.uuid4().hex[:8]}"
    rt = Runtime(Settings.from_environ({}, {"MONGO_URL": url, "MONGO_DB": db,
                                            "KAFKA_BOOTSTRAP_SERVERS": "memory://",
                                            "K_SINK": "http://127.0.0.1:9/"}))
    set_runtime(rt)
    client = getattr(Apps(), function)
    rng = random.Random(1)
    requests = [event(i, rng) for i in range(n + WARMUP)]
    for headers, body in requests[:WARMUP]:  # connections, indexes, each device's first event
        client.post("/", data=body, headers=headers)
    profile = cProfile.Profile() if "--profile" in argv else None
    t0 = time.process_time()
    if profile:
        profile.enable()
    for headers, body in requests[WARMUP:]:
        status = client.post("/", data=body, headers=headers).status_code
        if status not in (200, 204):
            raise SystemExit(f"{function} answered {status}")
    if profile:
        profile.disable()
    cpu = (time.process_time() - t0) / n
    print(f"{function}: {cpu * 1e3:.2f} ms CPU per event, {cpu / 27 * 1e6:.0f} us per data "
          f"point{' (under cProfile)' if profile else ''}")
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    rt.store.client.drop_database(db)
    rt.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
