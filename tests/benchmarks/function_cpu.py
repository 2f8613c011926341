"""CPU per event of one consumer function (alert or aggregate) in-process, through its HTTP
handler (functions-framework's test client), one event after the other on a real store.

    python -m tests.benchmarks.function_cpu alert mongodb://127.0.0.1:27018 [EVENTS] [--profile]
    python -m tests.benchmarks.function_cpu alert mongodb://127.0.0.1:27018 [EVENTS] --store-bytes
    python -m tests.benchmarks.function_cpu aggregate mongodb://... 600 --stream single

Events as the simulator makes them (local/simulator.py's Device: temperature, humidity and for
some devices battery, 2% of readings starting an anomaly episode, so alert raises and resolves
as in the pipeline; --anomaly-rate changes that), in one of two streams (--stream, named as
figure 3's --pipeline-stream):
- `gateway` (the default): figure 3's, 60 devices, 9 buffered samples and a reading per event;
- `single`: one reading of 2-3 metrics per event and no samples, 200 devices, each at one
  event per second: what most fleets post (issue 25), where the cost is per event.
CPU time of this process (the store's is apart); --profile
prints cProfile's top functions; --store-bytes counts the store commands per event and the
bytes of BSON they send (figures that carry over to any MongoDB server; the counting itself
costs CPU, so leave it out when comparing CPU). The function logs as in production (JSON
lines at LOG_LEVEL INFO on stderr: 2>/dev/null). Run it from two checkouts
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
from typing import Final

import bson
from pymongo import monitoring

from iot_telemetry import events
from iot_telemetry.local.simulator import Device
from iot_telemetry.observability import configure_logging
from iot_telemetry.runtime import Runtime, set_runtime
from iot_telemetry.settings import Settings
from iot_telemetry.telemetry import format_time
from tests.conftest import Apps

from .common import broker_ingress

WARMUP = 60


#: Per stream: devices, buffered samples per event.
STREAMS: Final = {"gateway": (60, 9), "single": (200, 0)}


def stream(n: int, samples: int = 9, devices: int = 60, anomaly_rate: float = 0.02,
           ) -> list[tuple[dict[str, str], bytes, int]]:
    """n events of `devices` devices, one second apart per device, each with its data points
    (figure 3's: 9 `samples` each; 0: a single reading of 2-3 metrics)."""
    rng = random.Random(1)
    fleet = [Device(f"d{k}", rng, 0) for k in range(devices)]
    start = datetime.now(UTC) - timedelta(seconds=n // devices + 1)
    out = []
    for i in range(n):
        device = fleet[i % devices]
        at = start + timedelta(seconds=i // devices)
        data = device.measure(at, samples, anomaly_rate)
        points = len(data["metrics"]) + sum(len(s["metrics"]) for s in data.get("samples", ()))
        attributes = {"specversion": "1.0", "type": "iot.telemetry.v1",
                      "source": f"/devices/{device.device_id}", "id": f"e{i}",
                      "subject": device.device_id, "time": format_time(at),
                      "ingesttime": format_time(at), "datacontenttype": "application/json",
                      "partitionkey": device.device_id}
        out.append((*events.to_http(attributes, data), points))
    return out


def _option(argv: list[str], name: str, default: str) -> str:
    """The value of `--name VALUE` or `--name=VALUE` in argv, else `default`."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def main(argv: list[str]) -> int:
    valued = {"--stream", "--anomaly-rate", "--profile-sort", "--profile-filter"}
    args = [a for i, a in enumerate(argv)
            if not a.startswith("--") and (i == 0 or argv[i - 1] not in valued)]
    function, url = args[0], args[1]
    n = int(args[2]) if len(args) > 2 else 400
    name = _option(argv, "--stream", "gateway")
    if name not in STREAMS:
        raise SystemExit(f"--stream: one of {', '.join(STREAMS)}, not {name!r}")
    db = f"bench_fn_cpu_{uuid.uuid4().hex[:8]}"
    # A raise of temperature and humidity at once replies one event and posts the other to
    # K_SINK: a Broker ingress stand-in in its own process, so its CPU is not counted here.
    with broker_ingress() as sink:
        return _measure(function, url, n, db, sink, argv)


class StoreBytes(monitoring.CommandListener):
    """Commands sent to the store and their encoded size."""

    def __init__(self) -> None:
        self.commands = self.bytes = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands += 1
        self.bytes += len(bson.encode(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def _measure(function: str, url: str, n: int, db: str, sink: str, argv: list[str]) -> int:
    counter = StoreBytes() if "--store-bytes" in argv else None
    if counter:
        monitoring.register(counter)  # before the client is made
    rt = Runtime(Settings.from_environ({}, {"MONGO_URL": url, "MONGO_DB": db,
                                            "KAFKA_BOOTSTRAP_SERVERS": "memory://",
                                            "K_SINK": sink}))
    set_runtime(rt)
    configure_logging(rt.settings.log_level)  # as in production: JSON lines on stderr
    client = getattr(Apps(), function)
    name = _option(argv, "--stream", "gateway")
    devices, samples = STREAMS[name]
    warmup = max(WARMUP, devices)  # each device's first event is not the steady state
    requests = stream(n + warmup, samples, devices, float(_option(argv, "--anomaly-rate", "0.02")))
    points = sum(p for _, _, p in requests[warmup:])
    for headers, body, _ in requests[:warmup]:  # connections, indexes, each device's first event
        client.post("/", data=body, headers=headers)
    # CPU time, not wall time: waits on the store are not this process's cost.
    profile = cProfile.Profile(time.process_time) if "--profile" in argv else None
    t0 = time.process_time()
    commands0, bytes0 = (counter.commands, counter.bytes) if counter else (0, 0)
    if profile:
        profile.enable()
    for headers, body, _ in requests[warmup:]:
        status = client.post("/", data=body, headers=headers).status_code
        if status not in (200, 204):
            raise SystemExit(f"{function} answered {status}")
    if profile:
        profile.disable()
    cpu = time.process_time() - t0
    print(f"{function} ({name}): {cpu / n * 1e3:.3f} ms CPU per event, "
          f"{cpu / points * 1e6:.0f} us per data point ({points / n:.1f} per event)"
          f"{' (under cProfile)' if profile else ''}")
    if counter:
        print(f"  store: {(counter.commands - commands0) / n:.2f} commands, "
              f"{(counter.bytes - bytes0) / n:,.0f} bytes of BSON sent per event")
    if profile:
        # --profile-sort cumulative, --profile-filter iot_telemetry: pstats' own arguments
        stats = pstats.Stats(profile).sort_stats(_option(argv, "--profile-sort", "tottime"))
        stats.print_stats(_option(argv, "--profile-filter", ""), 25)
    rt.store.client.drop_database(db)
    rt.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
