"""Figure 4: query latency over a seeded history, with the store's share measured alone.

The history is bulk-inserted in the document shapes RollupWriter writes (series.py: one
document per device and hour with every metric's minute slots and totals and the event
keys, one per device and day with a snapshot of each hour's totals, device documents with
their latest values) and AlertBook writes (alert documents), for a few devices over 30 days
at one event every 10 s carrying a reading of every metric. Before seeding, one hour is
written both ways, by RollupWriter.apply_batch and by the seeder, and the documents must
match: the figures are of the documents the write path makes.

Measured one request at a time (p50/p95), side by side:
- through the query function (functions-framework's gunicorn, JSON over HTTP); with
  `--query-baseline CHECKOUT`, also through CHECKOUT's query function, the two in turn
  request by request, their answers compared;
- the same find with bare pymongo (the store's share: `_id $in` with the metric's projection);
- a what-if: the same documents read one `find_one` by `_id` each;
- the query function's Python on those documents once read, in-process: the buckets as
  series.read_points makes them, as query.py made them before (read_series' Summaries,
  format_time), and json.dumps of the answer.
"""

from __future__ import annotations

import json
import math
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from iot_telemetry.events import JSON, SPECVERSION, TELEMETRY_TYPE, RawEvent
from iot_telemetry.retention import Retention
from iot_telemetry.rollup import RollupWriter, event_hash
from iot_telemetry.series import (
    STEPS,
    Summary,
    bucket_start,
    day_id,
    hour_id,
    read_points,
    read_series,
    reading_key,
    time_key,
)
from iot_telemetry.store import ALERTS, DEVICES, ROLLUP_DAYS, ROLLUP_HOURS
from iot_telemetry.telemetry import TelemetryEvent, format_time, validate

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


def _slot(s: Summary) -> dict[str, Any]:
    """A stored slot holding `s` (Summary.increments applied to an empty slot)."""
    return {"c": s.count, "s": s.sum, "lo": s.min, "hi": s.max, "f": time_key(s.first),
            "lv": reading_key(s.last, s.last_value)}


def _readings(device: str, metrics: list[str], start: datetime, hour: datetime,
              now: datetime, rng: random.Random) -> list[tuple[datetime, dict[str, float]]]:
    """The readings of one device's hour: an event every READING_S s, every metric in it."""
    out = []
    t = hour
    while t < min(hour + timedelta(hours=1), now):
        phase = (t - start).total_seconds() / 86400 * 2 * math.pi
        out.append((t, {m: round({"temperature": 22.0, "humidity": 45.0, "battery": 80.0}.get(
            m, 10.0) + 3 * math.sin(phase) + rng.gauss(0, 0.3), 2) for m in metrics}))
        t += timedelta(seconds=READING_S)
    return out


def _key(device: str, t: datetime) -> str:
    return f"/devices/{device}\x1fh{t:%Y%m%d%H%M%S}"


def _hour_doc(device: str, hour: datetime,
              readings: list[tuple[datetime, dict[str, float]]]) -> dict[str, Any]:
    """The hour document RollupWriter leaves after these readings, one event per time."""
    metrics = sorted({m for _, values in readings for m in values})
    doc: dict[str, Any] = {"_id": hour_id(device, hour), "device_id": device, "t": hour,
                           "v": len(readings),
                           "ids": [event_hash(_key(device, t)) for t, _ in readings],
                           "min": {}, "tot": {}, "exp": Retention().hour_expiry(hour)}
    for metric in metrics:
        series = [(t, values[metric]) for t, values in readings if metric in values]
        doc["tot"][metric] = _slot(Summary.of(series))
        minutes: dict[int, list[tuple[datetime, float]]] = {}
        for t, v in series:
            minutes.setdefault(t.minute, []).append((t, v))
        doc["min"][metric] = {f"{m:02d}": _slot(Summary.of(pts)) for m, pts in minutes.items()}
    return doc


def _events(device: str, readings: list[tuple[datetime, dict[str, float]]],
            ) -> list[TelemetryEvent]:
    out = []
    for t, values in readings:
        attributes = {"specversion": SPECVERSION, "type": TELEMETRY_TYPE,
                      "source": f"/devices/{device}", "id": _key(device, t).split("\x1f")[1],
                      "subject": device, "time": format_time(t), "datacontenttype": JSON}
        event = validate(RawEvent(attributes, {"metrics": values}), datetime.now(UTC),
                         limits=None)
        assert isinstance(event, TelemetryEvent), event
        out.append(event)
    return out


def _same(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two documents differ (floats to 1e-9 relative: sums added in another order)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in (_same(a.get(k), b.get(k), f"{path}.{k}") if k in a and k in b
                          else [f"{path}.{k}: only in one"])]
    if isinstance(a, list) and isinstance(b, list):
        return [] if sorted(a) == sorted(b) else [f"{path}: lists differ"]
    if isinstance(a, float) or isinstance(b, float):
        return [] if math.isclose(float(a), float(b), rel_tol=1e-9) else [f"{path}: {a} != {b}"]
    if isinstance(a, datetime) and isinstance(b, datetime):
        return [] if a.replace(tzinfo=UTC) == b.replace(tzinfo=UTC) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def check_shape(ctx: Context, metrics: list[str]) -> None:
    """One hour written by RollupWriter and by the seeder must give the same documents."""
    from .bench_consumers import store_for

    db_name = fresh_db(ctx, "query_shape")
    store = store_for(ctx, db_name)
    device = "shape-000"
    hour = bucket_start(datetime.now(UTC) - timedelta(hours=3), "1h")
    readings = _readings(device, metrics, hour, hour, hour + timedelta(hours=1),
                         random.Random(3))
    writer, events = RollupWriter(store), _events(device, readings)
    t0 = time.perf_counter()
    # In batches as big as the pipeline's group commits (gunicorn THREADS up to 32).
    results = [r for i in range(0, len(events), 32) for r in writer.apply_batch(events[i:i + 32])]
    ctx.say(f"  seed check: RollupWriter wrote {len(events)} events in "
            f"{time.perf_counter() - t0:.1f}s")
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"seed check: the writer failed: {failed[0]}")
    written = store.collection(ROLLUP_HOURS).find_one({"_id": hour_id(device, hour)})
    day = store.collection(ROLLUP_DAYS).find_one({"_id": day_id(device, hour)})
    store.close()
    seeded = _hour_doc(device, hour, readings)
    problems = _same(written, seeded)
    snapshots = {m: {f"{hour.hour:02d}": Summary.from_slot(seeded["tot"][m]).snapshot(  # type: ignore[union-attr]
        seeded["v"])} for m in metrics}
    problems += _same((day or {}).get("h"), snapshots, ".h")
    if problems:
        raise RuntimeError("seed check: the seeder's documents differ from RollupWriter's: "
                           + "; ".join(problems[:5]))
    ctx.say(f"  seed check: one hour ({len(readings)} events) written by RollupWriter "
            "equals the seeder's hour and day documents")


def seed(ctx: Context, db_name: str, devices: int, metrics: list[str], alerts: int,
         ) -> dict[str, Any]:
    """Bulk-insert the history; return what was seeded."""
    check_shape(ctx, metrics)
    client = mongo_client(ctx)
    db = client[db_name]
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = bucket_start(now - timedelta(days=DAYS), "1d")
    counts = {"hours": 0, "days": 0}
    rng = random.Random(7)
    t0 = time.monotonic()
    for d in range(devices):
        device = f"hist-{d:03d}"
        hours: list[dict[str, Any]] = []
        days: list[dict[str, Any]] = []
        day_slots: dict[str, dict[str, str]] = {m: {} for m in metrics}
        latest: dict[str, str] = {}
        hour = start
        while hour < now:
            readings = _readings(device, metrics, start, hour, now, rng)
            doc = _hour_doc(device, hour, readings)
            hours.append(doc)
            for m in metrics:
                total = Summary.from_slot(doc["tot"][m])
                assert total is not None
                day_slots[m][f"{hour.hour:02d}"] = total.snapshot(doc["v"])
                latest[m] = max(latest.get(m, ""), doc["tot"][m]["lv"])
            hour += timedelta(hours=1)
            if hour.hour == 0 or hour >= now:
                day = bucket_start(hour - timedelta(hours=1), "1d")
                days.append({"_id": day_id(device, day), "device_id": device, "t": day,
                             "h": day_slots})
                day_slots = {m: {} for m in metrics}
        for name, docs in ((ROLLUP_HOURS, hours), (ROLLUP_DAYS, days)):
            for i in range(0, len(docs), 200):
                db[name].insert_many(docs[i:i + 200], ordered=False)
        counts["hours"] += len(hours)
        counts["days"] += len(days)
        db[DEVICES].insert_one({
            "_id": device, "first_seen": start, "last_seen": now, "last_event_time": now,
            "latest": latest})
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
            "reading_every_s": READING_S, "documents": {**counts, "alerts": alerts},
            "seconds": round(time.monotonic() - t0, 1)}


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
            start: datetime, end: datetime, repeats: int,
            baseline: FunctionServer | None = None) -> dict[str, Any]:
    device, metric = "hist-000", "temperature"
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    path = (f"devices/{device}/series?metric={metric}&from={start.strftime(fmt)}"
            f"&to={end.strftime(fmt)}&step={step}")
    url = server.url + path
    ctx.say(f"fig 4: {label}: up to {repeats} requests through query")
    _get(url)  # warm: imports, connection
    base_ms: list[float] = []
    if baseline is None:
        with profiled(ctx, f"fig4-query-{step}", server.worker_pid(), 10):
            http_ms, (status, payload) = _timed(lambda: _get(url), repeats)
    else:
        _get(baseline.url + path)
        http_ms, base_ms = [], []
        started = time.monotonic()
        for i in range(repeats):
            if i >= 3 and time.monotonic() - started > 2 * BUDGET_S:
                break
            # in turn, each first every other round: neither always follows the other
            for which in ((server, baseline) if i % 2 else (baseline, server)):
                t0 = time.perf_counter()
                answer = _get(which.url + path)
                (http_ms if which is server else base_ms).append(
                    (time.perf_counter() - t0) * 1000)
                if which is server:
                    status, payload = answer
                else:
                    base_answer = answer
        if (base_answer[0], json.loads(base_answer[1])) != (status, json.loads(payload)):
            raise RuntimeError(f"series {label}: this checkout and {ctx.query_baseline} "
                               "answer differently")
    buckets = len(json.loads(payload)["buckets"]) if status == 200 else 0
    # The documents read_series reads (series.py): hours for minutes, days for hours.
    parent, name, field = (("1h", ROLLUP_HOURS, "min") if step == "1m" else
                           ("1d", ROLLUP_DAYS, "h"))
    make_id = hour_id if step == "1m" else day_id
    ids = []
    t = bucket_start(start, parent)
    while t < end:
        ids.append(make_id(device, t))
        t += timedelta(hours=1) if parent == "1h" else timedelta(days=1)
    collection = db[name]
    projection = {"t": 1, f"{field}.{metric}": 1}
    # The reference may take long on FerretDB: once over budget, one run is enough.
    store_ms, docs = _timed(lambda: list(collection.find({"_id": {"$in": ids}}, projection)),
                            repeats, at_least=1)
    decode = _decoding(docs, device, metric, step, bucket_start(start, step), end, repeats)
    by_id_ms, _ = _timed(lambda: [collection.find_one({"_id": i}, projection) for i in ids],
                         repeats, at_least=1)
    out: dict[str, Any] = {"http_ms": http_ms, "last_status": status, "buckets": buckets,
                           "documents": len(ids), "store_find_ms": store_ms,
                           "find_one_each_ms": by_id_ms, "bytes": len(payload), **decode}
    shown = f"{buckets} buckets" if status == 200 else f"answered {status}"
    ctx.add("4", f"series {label} ({shown}): p50", percentile(http_ms, 50), "ms",
            f"p95 {percentile(http_ms, 95):,.0f} ms, {len(http_ms)} requests")
    if baseline is not None:
        out["baseline_http_ms"] = base_ms
        out["baseline_same_bytes"] = base_answer[1] == payload
        ctx.add("4", f"  before: {ctx.query_baseline}'s query, in turn: p50",
                percentile(base_ms, 50), "ms", f"p95 {percentile(base_ms, 95):,.0f} ms, the "
                "same answer" + (", byte for byte" if base_answer[1] == payload else ""))
    ctx.add("4", f"  ref the same find ({len(ids)} {name} by _id $in), bare pymongo: p50",
            percentile(store_ms, 50), "ms", f"p95 {percentile(store_ms, 95):,.0f} ms")
    ctx.add("4", f"  what-if: the {len(ids)} documents one find_one by _id each: p50",
            percentile(by_id_ms, 50), "ms", f"p95 {percentile(by_id_ms, 95):,.0f} ms")
    for key, what in (("read_points_ms", "buckets from the documents read (read_points)"),
                      ("before_ms", "  as query.py made them before (Summaries, format_time)"),
                      ("json_ms", "json.dumps of the answer")):
        ctx.add("4", f"  in-process: {what}: p50", percentile(decode[key], 50), "ms")
    p95 = percentile(http_ms, 95)
    ctx.goal(f"query p95, series {label}", "< 50 ms",
             f"{p95:,.0f} ms" + ("" if status == 200 else f" (answered {status})"),
             p95 < 50 and status == 200)
    return out


class _Read:
    """A store whose find answers documents already read: times the query's Python alone."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs

    def guard(self) -> Any:
        import contextlib

        return contextlib.nullcontext()

    def collection(self, name: str) -> Any:
        return self

    def find(self, *args: Any) -> list[dict[str, Any]]:
        return self.docs


def _decoding(docs: list[dict[str, Any]], device: str, metric: str, step: str,
              first: datetime, end: datetime, repeats: int) -> dict[str, list[float]]:
    store: Any = _Read(docs)
    assert first == bucket_start(first, step) and step in STEPS

    def before() -> list[dict[str, Any]]:
        return [{"t": format_time(t), "count": s.count, "min": s.min, "max": s.max,
                 "avg": s.avg, "sum": s.sum, "first": format_time(s.first),
                 "last": format_time(s.last), "last_value": s.last_value}
                for t, s in read_series(store, device, metric, step, first=first, to=end)]

    after_ms, points = _timed(lambda: read_points(store, device, metric, step, first=first,
                                                  to=end), repeats * 2)
    before_ms, old = _timed(before, repeats * 2)
    if json.dumps(old) != json.dumps(points):
        raise RuntimeError(f"series {step}: read_points differs from the buckets made before")
    json_ms, _ = _timed(lambda: json.dumps({"buckets": points}, default=str), repeats * 2)
    return {"read_points_ms": after_ms, "before_ms": before_ms, "json_ms": json_ms}


def run(ctx: Context) -> None:
    devices = ctx.pick(1, 3)
    metrics = ["temperature", "humidity"] if ctx.quick else ["temperature", "humidity",
                                                             "battery"]
    repeats = ctx.pick(5, 20)
    db_name = fresh_db(ctx, "query")
    ctx.say(f"fig 4: seeding {devices} devices x {len(metrics)} metrics x {DAYS} days")
    seeded = seed(ctx, db_name, devices, metrics, alerts=ctx.pick(200, 500))
    ctx.say(f"  seeded {seeded['documents']} in {seeded['seconds']}s")
    server = FunctionServer(ctx, "query", FUNCTIONS_DIR / "query.py",
                            {"MONGO_URL": ctx.mongo, "MONGO_DB": db_name,
                             "KAFKA_BOOTSTRAP_SERVERS": ctx.kafka}).start()
    baseline = None
    if ctx.query_baseline is not None:
        functions = ctx.query_baseline.resolve() / "functions"
        # PYTHONPATH first: its iot_telemetry, not the one installed from this checkout
        baseline = FunctionServer(ctx, "query", functions / "query.py",
                                  {"MONGO_URL": ctx.mongo, "MONGO_DB": db_name,
                                   "KAFKA_BOOTSTRAP_SERVERS": ctx.kafka,
                                   "PYTHONPATH": str(functions)}, label="query-baseline").start()
    client = mongo_client(ctx)
    db = client[db_name]
    now = datetime.now(UTC)
    raw: dict[str, Any] = {"seeded": seeded, "repeats": repeats, "cases": {},
                           "baseline": str(ctx.query_baseline or "")}
    for label, step, start in (("24 h at 1 m", "1m", now - timedelta(hours=24)),
                               ("30 d at 1 h", "1h", now - timedelta(days=DAYS))):
        raw["cases"][label] = _series(ctx, db, server, label, step, start, now, repeats,
                                      baseline)
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
    if baseline is not None:
        baseline.stop()
    docs = seeded["documents"]
    ctx.add("4", "seeded history", None, "",
            f"{devices} devices x {len(metrics)} metrics x {DAYS} days, a reading per "
            f"{READING_S} s; documents {docs}")
    ctx.raw["fig4_query"] = raw
