"""What the rollups cost in storage per device and metric, under the configured retentions.

    python -m tests.benchmarks.retention_storage [--mongo URL] [--metrics 1,5,20]
                                                [--every 10,60] [--sweep DEVICES]

For each metric count and reporting interval: one device reports every metric at that
interval for a whole day through the real write path (RollupWriter); the day is copied to
the month's other days and compacted by the real sweep. The BSON size of each document
(what MongoDB stores before compression) is measured, and multiplied out by the default
retentions (minute slots 30 days, hour totals 396 days, day totals per year). Raw readings:
the same device reports for the last two hours (raw readings are kept 48 hours), and the
average ten-minute window is multiplied out by the raw retention. Prints a Markdown table;
the README's Retention section quotes it.

With --sweep N: N devices with 40 days each of 5-metric day documents, then one sweep;
prints its store commands and wall time (the first sweep over a backlog).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import bson

from iot_telemetry.events import RawEvent
from iot_telemetry.observability import STORE_COMMANDS
from iot_telemetry.retention import Retention, sweep
from iot_telemetry.rollup import RollupWriter
from iot_telemetry.series import bucket_start, month_start
from iot_telemetry.settings import Settings
from iot_telemetry.store import (
    RAW_READINGS,
    ROLLUP_DAYS,
    ROLLUP_HOURS,
    ROLLUP_MONTHS,
    Store,
    reset_embedded,
)
from iot_telemetry.telemetry import TelemetryEvent, validate

KIB = 1024


def _event(device: str, t: datetime, metrics: int, n: int) -> TelemetryEvent:
    attributes = {"specversion": "1.0", "type": "iot.telemetry.v1",
                  "source": f"/devices/{device}", "id": f"{device}-{n}", "subject": device,
                  "time": t.isoformat().replace("+00:00", "Z"),
                  "datacontenttype": "application/json"}
    data = {"metrics": {f"metric_{k:02d}": 20.0 + (n * 7 + k) % 100 / 10 for k in range(metrics)}}
    result = validate(RawEvent(attributes, data), datetime.now(UTC), None)
    assert isinstance(result, TelemetryEvent), result
    return result


def _sizes(store: Store, name: str, device: str) -> list[int]:
    return [len(bson.encode(d)) for d in store.collection(name).find(
        {"_id": {"$regex": f"^{device}\\|"}})]


def measure(store: Store, metrics: int, every: int) -> dict[str, Any]:
    """Sizes of one device's documents at `metrics` metrics reported every `every` seconds."""
    device = f"m{metrics}-e{every}"
    # A day in the past month, inside the minute retention by the real clock.
    day = bucket_start(datetime.now(UTC), "1d") - timedelta(days=2)
    writer = RollupWriter(store)
    batch: list[TelemetryEvent] = []
    for n in range(86_400 // every):
        batch.append(_event(device, day + timedelta(seconds=n * every), metrics, n))
        if len(batch) == 200:
            writer.apply_batch(batch)
            batch = []
    writer.apply_batch(batch)
    hours = _sizes(store, ROLLUP_HOURS, device)
    [day_size] = _sizes(store, ROLLUP_DAYS, device)
    # The month's other days as copies of this one, then the real sweep compacts them all.
    days = store.collection(ROLLUP_DAYS)
    doc = days.find_one({"_id": {"$regex": f"^{device}\\|"}})
    assert doc is not None
    first = month_start(day)
    for k in range(31):
        t = first + timedelta(days=k)
        if t.month != first.month or t == day:
            continue
        days.insert_one({**doc, "_id": f"{device}|{t:%Y-%m-%d}", "t": t})
    sweep(store, Retention(), day + timedelta(days=400))
    [month_size] = _sizes(store, ROLLUP_MONTHS, device)
    return {"metrics": metrics, "every": every, "hour": sum(hours) / len(hours),
            "day": day_size, "month": month_size}


def measure_raw(store: Store, metrics: int, every: int) -> float:
    """Average size of one device's ten-minute raw window over the last two hours."""
    device = f"raw-m{metrics}-e{every}"
    end = bucket_start(datetime.now(UTC), "1h")
    writer = RollupWriter(store)
    events = [_event(device, end - timedelta(seconds=n * every), metrics, n)
              for n in range(1, 7200 // every + 1)]
    for i in range(0, len(events), 200):
        writer.apply_batch(events[i:i + 200])
    sizes = _sizes(store, RAW_READINGS, device)
    return sum(sizes) / len(sizes)


def _commands() -> float:
    return sum(sample.value for metric in STORE_COMMANDS.collect() for sample in metric.samples
               if sample.name.endswith("_total"))


def sweep_figures(store: Store, devices: int) -> str:
    """One sweep over `devices` devices x 40 days of 5-metric day documents."""
    writer = RollupWriter(store)
    day = bucket_start(datetime.now(UTC), "1d") - timedelta(days=2)
    writer.apply_batch([_event("sweep-seed", day + timedelta(minutes=m), 5, m)
                        for m in range(0, 1440, 10)])
    doc = store.collection(ROLLUP_DAYS).find_one({"_id": {"$regex": "^sweep-seed\\|"}})
    assert doc is not None
    docs = [{**doc, "_id": f"sweep-{d:05d}|{day - timedelta(days=k):%Y-%m-%d}",
             "device_id": f"sweep-{d:05d}", "t": day - timedelta(days=k)}
            for d in range(devices) for k in range(40)]
    for i in range(0, len(docs), 1000):
        store.collection(ROLLUP_DAYS).insert_many(docs[i:i + 1000])
    before, start = _commands(), time.perf_counter()
    outcome = sweep(store, Retention(), datetime.now(UTC))
    took = time.perf_counter() - start
    return (f"sweep: {outcome.compacted} days compacted of {len(docs) + 1}, "
            f"{_commands() - before:.0f} store commands, {took:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mongo", default="memory://")
    parser.add_argument("--metrics", default="1,5,20")
    parser.add_argument("--every", default="10,60")
    parser.add_argument("--sweep", type=int, default=0, metavar="DEVICES")
    args = parser.parse_args(argv)
    reset_embedded()
    store = Store(Settings.from_environ({}, {"MONGO_URL": args.mongo,
                                             "MONGO_DB": "retention_storage"}))
    for name in (ROLLUP_HOURS, ROLLUP_DAYS, ROLLUP_MONTHS, RAW_READINGS):
        store.collection(name).delete_many({})
    if args.sweep:
        print(sweep_figures(store, args.sweep))
        store.close()
        return 0
    retention = Retention()
    minutes_days, hours_days = retention.minutes.days, retention.hours.days
    raw_windows = (retention.raw or timedelta(0)) / timedelta(minutes=10)
    print("| metrics | every | hour doc | day doc | month doc | minute level (30 d) "
          "| hour level (396 d) | day level per year | raw window doc | raw level (48 h) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for every in (int(x) for x in args.every.split(",")):
        for metrics in (int(x) for x in args.metrics.split(",")):
            m = measure(store, metrics, every)
            window = measure_raw(store, metrics, every)
            minute_level = m["hour"] * 24 * minutes_days / KIB / KIB
            print(f"| {metrics} | {every} s | {m['hour'] / KIB:.1f} KiB "
                  f"| {m['day'] / KIB:.1f} KiB | {m['month'] / KIB:.1f} KiB "
                  f"| {minute_level:.1f} MiB | {m['day'] * hours_days / KIB / KIB:.2f} MiB "
                  f"| {m['month'] * 12 / KIB:.0f} KiB | {window / KIB:.1f} KiB "
                  f"| {window * raw_windows / KIB / KIB:.2f} MiB |", flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
