"""Figure 4: query latency over a seeded history, with the store's share measured alone.

The history is bulk-inserted in the document shapes RollupWriter writes (1-minute buckets with
their event keys, hour buckets holding a snapshot per minute, day buckets a snapshot per hour,
device documents) and AlertBook writes (alert documents), for a few devices over 30 days at
one reading every 10 s per metric. 1-minute buckets are seeded for the last days only: see
README.md, FerretDB answers these queries by scanning the whole collection.

Measured one request at a time (p50/p95), side by side:
- through the query function (functions-framework's gunicorn, JSON over HTTP);
- the same find with bare pymongo (the store's share);
- a what-if: the same buckets read as parent documents by `_id` (hour documents for a 1-minute
  series, day documents for a 1-hour series), which FerretDB pushes down.
"""

from __future__ import annotations

import json
import math
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from iot_telemetry.rollup import Summary, bucket_id, bucket_start
from iot_telemetry.store import ALERTS, DEVICES, ROLLUP_COLLECTIONS

from .common import (
    FUNCTIONS_DIR,
    Context,
    FunctionServer,
    fresh_db,
    mongo_client,
    percentile,
    profiled,
)

READING_S = 10
DAYS = 30


def _summary(values: list[float], first: datetime, step: timedelta) -> Summary:
    return Summary(len(values), sum(values), min(values), max(values), first,
                   first + step * (len(values) - 1), values[-1])


def seed(ctx: Context, db_name: str, devices: int, metrics: list[str], minute_days: float,
         alerts: int) -> dict[str, Any]:
    """Bulk-insert the history; return what was seeded."""
    client = mongo_client(ctx)
    db = client[db_name]
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = bucket_start(now - timedelta(days=DAYS), "1d")
    minute_from = now - timedelta(days=minute_days)
    per_min = 60 // READING_S
    counts = {"1m": 0, "1h": 0, "1d": 0}
    rng = random.Random(7)
    t0 = time.monotonic()
    for d in range(devices):
        device = f"hist-{d:03d}"
        for metric in metrics:
            base = {"temperature": 22.0, "humidity": 45.0, "battery": 80.0}.get(metric, 10.0)
            minutes: list[dict[str, Any]] = []
            hours: list[dict[str, Any]] = []
            days: list[dict[str, Any]] = []
            day_slots: dict[str, Any] = {}
            hour = start
            while hour < now:
                slots: dict[str, Any] = {}
                for m in range(60):
                    t = hour + timedelta(minutes=m)
                    if t >= now:
                        break
                    phase = (t - start).total_seconds() / 86400 * 2 * math.pi
                    values = [round(base + 3 * math.sin(phase) + rng.gauss(0, 0.3), 2)
                              for _ in range(per_min)]
                    s = _summary(values, t, timedelta(seconds=READING_S))
                    slots[f"{m:02d}"] = {**s.to_doc(), "v": per_min}
                    if t >= minute_from:
                        minutes.append({
                            "_id": bucket_id(device, metric, t), "device_id": device,
                            "metric": metric, "t": t, **s.to_doc(), "v": per_min,
                            "ids": [f"/devices/{device}\x1f{t:%H%M}-{k}" for k in range(per_min)],
                            "last_at": s.last})
                hs = Summary.merge_all(Summary.from_doc(x) for x in slots.values())
                assert hs is not None
                hours.append({"_id": bucket_id(device, metric, hour), "device_id": device,
                              "metric": metric, "t": hour, "v": len(slots), "m": slots})
                day_slots[f"{hour.hour:02d}"] = {**hs.to_doc(), "v": len(slots)}
                hour += timedelta(hours=1)
                if hour.hour == 0 or hour >= now:
                    day = bucket_start(hour - timedelta(hours=1), "1d")
                    days.append({"_id": bucket_id(device, metric, day), "device_id": device,
                                 "metric": metric, "t": day, "v": len(day_slots),
                                 "h": day_slots})
                    day_slots = {}
            for step, docs in (("1m", minutes), ("1h", hours), ("1d", days)):
                for i in range(0, len(docs), 500):
                    db[ROLLUP_COLLECTIONS[step]].insert_many(docs[i:i + 500], ordered=False)
                counts[step] += len(docs)
        db[DEVICES].insert_one({
            "_id": device, "first_seen": start, "last_seen": now, "last_event_time": now,
            "metrics": {m: {"value": 21.0, "time": now} for m in metrics}})
        ctx.say(f"  seeded {device}: {counts} so far, {time.monotonic() - t0:.0f}s")
    alert_docs = []
    for i in range(alerts):
        raised = start + timedelta(seconds=rng.uniform(0, (now - start).total_seconds()))
        resolved = i % 5 != 0
        device = f"hist-{i % devices:03d}"
        alert_docs.append({
            "_id": f"{device}:temperature-high:{i + 1}", "device_id": device,
            "metric": "temperature", "rule": "temperature-high", "severity": "warning",
            "condition": ">", "threshold": 30.0, "clear_threshold": 28.0,
            "state": "resolved" if resolved else "open", "raised_at": raised,
            "first_seen": raised - timedelta(seconds=20), "acknowledged_at": None,
            "acknowledged_by": None,
            "resolved_at": raised + timedelta(minutes=5) if resolved else None,
            "resolved_value": 27.5 if resolved else None, "last_seen": raised,
            "count": 3, "last_value": 31.0, "peak": 32.5})
    if alert_docs:
        db[ALERTS].insert_many(alert_docs)
    # The indexes the functions create (Store.ensure_indexes), on the seeded data.
    from .bench_consumers import store_for

    store_for(ctx, db_name).close()
    client.close()
    return {"devices": devices, "metrics": metrics, "days": DAYS,
            "reading_every_s": READING_S, "minute_buckets_days": minute_days,
            "documents": {**counts, "alerts": alerts}, "seconds": round(time.monotonic() - t0, 1)}


#: A slow case stops repeating once it has used this many seconds (after `at_least` runs).
BUDGET_S = 25.0


def _timed(call: Callable[[], Any], n: int, budget: float = BUDGET_S, at_least: int = 3,
           ) -> tuple[list[float], Any]:
    times: list[float] = []
    result = None
    started = time.monotonic()
    for i in range(n):
        if i >= at_least and time.monotonic() - started > budget:
            break
        t0 = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - t0) * 1000)
    return times, result


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=300) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _series(ctx: Context, db: Any, server: FunctionServer, label: str, step: str,
            start: datetime, end: datetime, repeats: int) -> dict[str, Any]:
    device, metric = "hist-000", "temperature"
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    url = (f"{server.url}devices/{device}/series?metric={metric}&from={start.strftime(fmt)}"
           f"&to={end.strftime(fmt)}&step={step}")
    ctx.say(f"fig 4: {label}: up to {repeats} requests through query")
    _get(url)  # warm: imports, connection
    with profiled(ctx, f"fig4-query-{step}", server.worker_pid(), 10):
        http_ms, (status, payload) = _timed(lambda: _get(url), repeats)
    buckets = len(json.loads(payload)["buckets"]) if status == 200 else 0
    first = bucket_start(start, step)
    same_find = {"device_id": device, "metric": metric, "t": {"$gte": first, "$lt": end}}
    collection = db[ROLLUP_COLLECTIONS[step]]
    # The reference may take minutes on FerretDB: once over budget, one run is enough.
    store_ms, _ = _timed(lambda: list(collection.find(same_find, {"ids": 0}).sort("t", 1)),
                         repeats, at_least=1)
    out: dict[str, Any] = {"http_ms": http_ms, "last_status": status, "buckets": buckets,
                           "store_find_ms": store_ms}
    shown = f"{buckets} buckets" if status == 200 else f"answered {status}"
    ctx.add("4", f"series {label} ({shown}): p50", percentile(http_ms, 50), "ms",
            f"p95 {percentile(http_ms, 95):,.0f} ms, {len(http_ms)} requests")
    ctx.add("4", "  ref the same find, bare pymongo: p50", percentile(store_ms, 50), "ms",
            f"p95 {percentile(store_ms, 95):,.0f} ms")
    if step == "1h":
        # What-if: the day documents hold a snapshot of each of their hours.
        days = []
        d = bucket_start(start, "1d")
        while d < end:
            days.append(bucket_id(device, metric, d))
            d += timedelta(days=1)
        day_coll = db[ROLLUP_COLLECTIONS["1d"]]
        by_id_ms, _ = _timed(lambda: [day_coll.find_one({"_id": i}) for i in days], repeats)
        out["day_documents_by_id_ms"] = by_id_ms
        ctx.add("4", f"  what-if: the {len(days)} day documents by _id: p50",
                percentile(by_id_ms, 50), "ms", f"p95 {percentile(by_id_ms, 95):,.0f} ms "
                "(their hour snapshots give the same buckets)")
    p95 = percentile(http_ms, 95)
    ctx.goal(f"query p95, series {label}", "< 50 ms",
             f"{p95:,.0f} ms" + ("" if status == 200 else f" (answered {status})"),
             p95 < 50 and status == 200)
    return out


def run(ctx: Context) -> None:
    devices = ctx.pick(1, 3)
    metrics = ["temperature", "humidity"] if ctx.quick else ["temperature", "humidity",
                                                             "battery"]
    minute_days = ctx.pick(1.1, 2.0)
    repeats = ctx.pick(3, 10)
    db_name = fresh_db(ctx, "query")
    ctx.say(f"fig 4: seeding {devices} devices x {len(metrics)} metrics x {DAYS} days "
            f"(1-minute buckets for the last {minute_days} days)")
    seeded = seed(ctx, db_name, devices, metrics, minute_days, alerts=ctx.pick(200, 500))
    ctx.say(f"  seeded {seeded['documents']} in {seeded['seconds']}s")
    server = FunctionServer(ctx, "query", FUNCTIONS_DIR / "query.py",
                            {"MONGO_URL": ctx.mongo, "MONGO_DB": db_name,
                             "KAFKA_BOOTSTRAP_SERVERS": ctx.kafka}).start()
    client = mongo_client(ctx)
    db = client[db_name]
    now = datetime.now(UTC)
    raw: dict[str, Any] = {"seeded": seeded, "repeats": repeats, "cases": {}}
    for label, step, start in (("24 h at 1 m", "1m", now - timedelta(hours=24)),
                               ("30 d at 1 h", "1h", now - timedelta(days=DAYS))):
        raw["cases"][label] = _series(ctx, db, server, label, step, start, now, repeats)
    url = f"{server.url}alerts"
    _get(url)
    alerts_ms, (status, _body) = _timed(lambda: _get(url), max(repeats, 10))
    store_alerts, _ = _timed(lambda: list(db[ALERTS].find({}).sort(
        [("raised_at", -1), ("_id", -1)]).limit(51)), max(repeats, 10))
    raw["cases"]["alerts"] = {"http_ms": alerts_ms, "store_find_ms": store_alerts,
                              "last_status": status}
    ctx.add("4", f"alert list (newest 50 of {seeded['documents']['alerts']}): p50",
            percentile(alerts_ms, 50), "ms", f"p95 {percentile(alerts_ms, 95):,.0f} ms"
            + ("" if status == 200 else f", answered {status}"))
    ctx.add("4", "  ref the same find, bare pymongo: p50", percentile(store_alerts, 50), "ms",
            f"p95 {percentile(store_alerts, 95):,.0f} ms")
    client.close()
    server.stop()
    docs = seeded["documents"]
    ctx.add("4", "seeded history", None, "",
            f"{devices} devices x {len(metrics)} metrics x {DAYS} days, a reading per "
            f"{READING_S} s; documents {docs}")
    ctx.raw["fig4_query"] = raw
