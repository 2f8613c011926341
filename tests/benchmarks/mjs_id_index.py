"""aggregate's hour update on mongo-java-server with and without the launcher's `_id` lookup.

    python -m tests.benchmarks.mjs_id_index [--sizes 100,1000,5000] [--updates 20] [--out F]

Starts two servers with local/services/mongo-java-server.sh (H2 file backend, as the tests
run it), each in a temporary data directory on a free port: one as the launcher runs by
default, one with MJS_ID_INDEX=0 (the library as released, which takes the `_id` index only
for a bare `{_id}` filter). Both get the same hour documents (figure 4's history: two
metrics, an event every 10 s, so 60 minute slots per metric and 360 event keys), grown to
each size in turn; at each size the hour update RollupWriter sends for one event
(findAndModify on `{_id, ids: {$ne: key}, v: {$lt: cap}}` with the totals' projection, as
`_count_one`) goes to a random existing hour, alternately to each server. Prints p50/p95
and the documents each update examined (serverStatus scannedObjects).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymongo
from pymongo import ReturnDocument

from iot_telemetry.events import RawEvent
from iot_telemetry.rollup import RollupWriter
from iot_telemetry.series import bucket_start, hour_id
from iot_telemetry.settings import Settings
from iot_telemetry.store import ROLLUP_HOURS, Store
from iot_telemetry.telemetry import TelemetryEvent, format_time, validate

from .bench_query import READING_S, _hour_doc, _readings
from .common import percentile

SCRIPT = Path(__file__).resolve().parents[2] / "local" / "services" / "mongo-java-server.sh"
HOURS_PER_DEVICE = 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def server(id_index: bool) -> Iterator[str]:
    """A mongo-java-server of its own (fresh H2 file); its URL."""
    with tempfile.TemporaryDirectory(prefix="mjs-id-index-") as data:
        env = {**os.environ, "IOT_DATA_DIR": data, "MJS_PORT": str(_free_port()),
               "MJS_ID_INDEX": "1" if id_index else "0", "MJS_BACKEND": "h2"}
        subprocess.run(["bash", str(SCRIPT), "start"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        try:
            yield f"mongodb://127.0.0.1:{env['MJS_PORT']}"
        finally:
            subprocess.run(["bash", str(SCRIPT), "stop"], env=env, check=False,
                           stdout=subprocess.DEVNULL)


def _template(hour: datetime) -> dict[str, Any]:
    readings = _readings("tmpl", ["temperature", "humidity"], hour, hour,
                         hour + timedelta(hours=1), random.Random(5))
    return _hour_doc("tmpl", hour, readings)


def _doc(template: dict[str, Any], k: int, now: datetime) -> dict[str, Any]:
    device = f"dev-{k // HOURS_PER_DEVICE:04d}"
    hour = now - timedelta(hours=k % HOURS_PER_DEVICE)
    return {**template, "_id": hour_id(device, hour), "device_id": device, "t": hour,
            "ids": [k * 100 + i for i in range(len(template["ids"]))]}


def _event(k: int, now: datetime, n: int) -> TelemetryEvent:
    device = f"dev-{k // HOURS_PER_DEVICE:04d}"
    t = now - timedelta(hours=k % HOURS_PER_DEVICE) + timedelta(seconds=30 + n % 3000)
    attributes = {"specversion": "1.0", "type": "iot.telemetry.v1",
                  "source": f"/devices/{device}", "id": f"bench-{n}", "subject": device,
                  "time": format_time(t)}
    event = validate(RawEvent(attributes, {"metrics": {"temperature": 21.5, "humidity": 40.0}}),
                     datetime.now(UTC), None)
    assert isinstance(event, TelemetryEvent), event
    return event


def scanned(client: pymongo.MongoClient[dict[str, Any]]) -> int:
    return int(client.admin.command("serverStatus")["metrics"]["queryExecutor"]
               ["scannedObjects"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds per server and size after which the updates stop (>= 3)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    now = bucket_start(datetime.now(UTC), "1h")
    template = _template(now)
    settings = Settings.from_environ({}, {"MONGO_URL": "mongodb://127.0.0.1:1",
                                          "KAFKA_BOOTSTRAP_SERVERS": "memory://"})
    writer = RollupWriter(Store(settings))  # only builds the updates: never connects
    results: list[dict[str, Any]] = []
    with ExitStack() as stack:
        urls = {"id lookup (default)": stack.enter_context(server(True)),
                "as released (MJS_ID_INDEX=0)": stack.enter_context(server(False))}
        clients = {label: stack.enter_context(pymongo.MongoClient(url))
                   for label, url in urls.items()}
        filled = 0
        rng = random.Random(9)
        serial = 0
        for size in sizes:
            t0 = time.monotonic()
            for i in range(filled, size, 500):
                docs = [_doc(template, k, now) for k in range(i, min(size, i + 500))]
                for client in clients.values():
                    client.bench[ROLLUP_HOURS].insert_many(docs, ordered=False)
            filled = size
            print(f"{size} hour documents (a reading every {READING_S} s) in each store "
                  f"({time.monotonic() - t0:.0f}s to add)", flush=True)
            times: dict[str, list[float]] = {label: [] for label in clients}
            examined: dict[str, list[int]] = {label: [] for label in clients}
            started = time.monotonic()
            # the first size begins with 5 unmeasured updates each: the JVMs' warm-up
            for n in range(-5 if size == sizes[0] else 0, args.updates):
                for label, client in clients.items():
                    if n >= 3 and time.monotonic() - started > args.budget * len(clients):
                        continue
                    serial += 1
                    update = writer._hour_writes(0, _event(rng.randrange(size), now, serial))[0]
                    before = scanned(client)
                    t = time.perf_counter()
                    doc = client.bench[ROLLUP_HOURS].find_one_and_update(
                        update.update.filter, update.update.update, upsert=True,
                        projection={"v": 1, "tot": 1}, return_document=ReturnDocument.AFTER)
                    if n >= 0:
                        times[label].append((time.perf_counter() - t) * 1000)
                        examined[label].append(scanned(client) - before)
                    assert doc is not None and doc["v"] > 60, doc
            for label in clients:
                row = {"hour_documents": size, "server": label, "updates": len(times[label]),
                       "p50_ms": round(percentile(times[label], 50), 1),
                       "p95_ms": round(percentile(times[label], 95), 1),
                       "examined_per_update": max(examined[label])}
                results.append(row)
                print(f"  {label:30} p50 {row['p50_ms']:8.1f} ms  p95 {row['p95_ms']:8.1f} ms"
                      f"  documents examined per update {row['examined_per_update']:>5}"
                      f"  ({row['updates']} updates)", flush=True)
    print("\n| hour documents | update p50 / p95, id lookup | as released | p50 ratio |"
          " documents examined |\n|---|---|---|---|---|")
    for size in sizes:
        a, b = (r for r in results if r["hour_documents"] == size)
        print(f"| {size:,} | {a['p50_ms']} / {a['p95_ms']} ms | {b['p50_ms']} / {b['p95_ms']} ms"
              f" | x{b['p50_ms'] / max(a['p50_ms'], 0.01):,.0f} | {a['examined_per_update']}"
              f" / {b['examined_per_update']} |")
    print(f"load average after: {os.getloadavg()}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"results": results, "load": os.getloadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
