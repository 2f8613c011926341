"""Figure 2: aggregate and alert through their HTTP apps against the store, with references.

First, store commands per event, one event at a time (no group commit), for single events
of 1, 5 and 20 metrics and events of 9 samples, counted by pymongo's command monitoring
(iot_store_commands_total), with the store's CPU per command.

Then, for each function and event shape, the same events are handled three ways, each on a fresh
database, one after the other in the same run:
1. library: the handler's library code (validate + RollupWriter / AlertBook) called
   in-process, no HTTP;
2. HTTP: the events delivered in binary mode, as the dispatcher delivers them, to the
   function served by functions-framework's gunicorn (recorded_function.py: the function
   with its store calls recorded);
3. raw pymongo: the calls the served function made, replayed with a bare pymongo client,
   nothing around them ("the same writes with no framework": same documents, operators and
   round trips). They are the served function's calls, not the library's: three threads
   in-process form larger group commits (fewer round trips per event) than HTTP
   deliveries do. aggregate's group commit runs one batch at a time, so its calls are one
   sequence, replayed in that order by one thread (threads replaying batches side by side
   would overlap what the function never overlaps); alert's calls are replayed by thread,
   each thread's events in order.
The library and HTTP use the same number of threads, each thread owning its devices and
sending their events in order, as the dispatcher does per partition.
"""

from __future__ import annotations

import contextlib
import pickle
import random
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from iot_telemetry.alerting import AlertBook, StateCache
from iot_telemetry.events import JSON, SPECVERSION, TELEMETRY_TYPE, RawEvent, to_http
from iot_telemetry.local.simulator import Device
from iot_telemetry.observability import STORE_COMMANDS
from iot_telemetry.rollup import RollupWriter, event_hash
from iot_telemetry.series import hour_id, reading_key, time_key
from iot_telemetry.settings import Settings
from iot_telemetry.store import (
    ALERT_STATE,
    ALERTS,
    DEVICES,
    EVENT_TIMES,
    ROLLUP_DAYS,
    ROLLUP_HOURS,
    Store,
)
from iot_telemetry.telemetry import TelemetryEvent, format_time, validate

from .common import (
    HERE,
    REPO,
    Context,
    FunctionServer,
    broker_ingress,
    fresh_db,
    metric_sum,
    metrics,
    mongo_client,
    percentile,
    profiled,
    python_load,
    store_cpu_seconds,
)
from .store_recording import DB_COMMAND, Op

THREADS = 3  # the dispatcher delivers one event at a time per partition; 3 partitions
DEVICES_PER_THREAD = 20
EVENT_INTERVAL = timedelta(seconds=10)  # each device reports every 10 s of event time


# --- events ---------------------------------------------------------------------------------

Record = tuple[dict[str, Any], dict[str, Any]]


def make_events(shape: str, per_thread: int, seed: str) -> list[list[Record]]:
    """Per thread, its devices' events in order: realistic readings (the simulator's walk)."""
    samples = 9 if shape == "samples" else 0
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    received = format_time(datetime.now(UTC))
    out: list[list[Record]] = []
    for t in range(THREADS):
        devices = [Device(f"b{seed}-{t}-{d:03d}", random.Random(f"{seed}{t}{d}"), t)
                   for d in range(DEVICES_PER_THREAD)]
        events: list[Record] = []
        for n in range(per_thread):
            device = devices[n % len(devices)]
            at = start + EVENT_INTERVAL * (n // len(devices) + 1)
            data = device.measure(at, samples, anomaly_rate=0.02)
            attributes = {"specversion": SPECVERSION, "type": TELEMETRY_TYPE,
                          "source": f"/devices/{device.device_id}", "id": str(uuid.uuid4()),
                          "subject": device.device_id, "time": format_time(at),
                          "datacontenttype": JSON, "partitionkey": device.device_id,
                          "ingesttime": received}
            events.append((attributes, data))
        out.append(events)
    return out


def points_of(data: dict[str, Any]) -> int:
    return len(data.get("metrics", {})) + sum(len(s["metrics"]) for s in data.get("samples", []))


def store_for(ctx: Context, db: str) -> Store:
    settings = Settings.from_environ({"MONGO_URL": ctx.mongo, "MONGO_DB": db,
                                      "KAFKA_BOOTSTRAP_SERVERS": ctx.kafka})
    store = Store(settings)
    store.ensure_indexes()
    return store


# --- the three ways -------------------------------------------------------------------------

@dataclass
class Way:
    events: int
    points: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    calls: dict[str, Any] | None = None
    store_cpu_s: float = 0.0  # the store server's CPU over the run (0: not on this machine)
    commands: int = 0  # store commands sent (pymongo's command monitoring), when counted
    batches: int = 0  # aggregate's group commits (iot_aggregate_batch_events), over HTTP

    @property
    def store_ms_per_event(self) -> float:
        return self.store_cpu_s * 1000 / self.events

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def points_per_s(self) -> float:
        return self.points / self.seconds


def _threads(work: Callable[[int], list[float]], count: int = THREADS,
             ) -> tuple[float, list[float]]:
    results: list[list[float]] = [[] for _ in range(count)]
    gate = threading.Barrier(count + 1)

    def body(i: int) -> None:
        gate.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, [x for r in results for x in r]


Ops = list[Op]


def library(ctx: Context, function: str, db: str, events: list[list[Record]]) -> Way:
    store = store_for(ctx, db)
    rules = Settings.from_environ({}).rules
    handler: Callable[[TelemetryEvent], Any] = (
        RollupWriter(store).apply if function == "aggregate"
        else AlertBook(store, rules, cache=StateCache()).handle)  # a process's, as in alert

    def work(i: int) -> list[float]:
        latencies = []
        for attributes, data in events[i]:
            t0 = time.perf_counter()
            event = validate(RawEvent(dict(attributes), data), datetime.now(UTC), limits=None)
            assert isinstance(event, TelemetryEvent), event
            handler(event)
            latencies.append((time.perf_counter() - t0) * 1000)
        return latencies

    cpu0, commands0 = store_cpu_seconds(ctx.mongo), store_commands()
    seconds, latencies = _threads(work)
    cpu = store_cpu_seconds(ctx.mongo) - cpu0
    commands = sum((store_commands() - commands0).values())
    store.close()
    n, pts = _count(events)
    return Way(n, pts, seconds, percentile(latencies, 50), percentile(latencies, 99),
               store_cpu_s=cpu, commands=commands)


def split_in(ops: Ops) -> Ops:
    """The what-if of RollupWriter._fetch: a find by `_id $in` as one find_one per id."""
    out: Ops = []
    for number, collection, method, args, kwargs in ops:
        filt = args[0] if args and isinstance(args[0], dict) else {}
        if method == "find" and set(filt) == {"_id"} and isinstance(filt["_id"], dict):
            out += [(number, collection, "find_one", ({"_id": i}, *args[1:]), kwargs)
                    for i in filt["_id"]["$in"]]
        else:
            out.append((number, collection, method, args, kwargs))
    return out


def replay_streams(function: str, events: list[list[Record]], calls: dict[str, Ops],
                   ) -> list[list[Ops]]:
    """The served function's calls as the replay makes them: per replay thread, the calls of
    each delivery in order (see the module's docstring)."""
    if function == "aggregate":
        batches = sorted((ops for ops in calls.values() if ops), key=lambda ops: ops[0][0])
        return [batches]
    return [[calls.get(attributes["id"], []) for attributes, _ in thread] for thread in events]


def raw_pymongo(ctx: Context, db: str, events: list[list[Record]], recorded: list[list[Ops]],
                ) -> Way:
    client = mongo_client(ctx)
    database = client[db]  # the recorded calls create the indexes, as the function did
    errors = Counter[str]()
    by_kind: dict[str, list[float]] = defaultdict(list)
    lock = threading.Lock()

    def work(i: int) -> list[float]:
        latencies = []
        for ops in recorded[i]:
            t0 = time.perf_counter()
            for _number, collection, method, args, kwargs in ops:
                t1 = time.perf_counter()
                try:
                    target = database if collection == DB_COMMAND else database[collection]
                    result = getattr(target, method)(*args, **kwargs)
                    if method == "find":
                        list(result)
                except (DuplicateKeyError, BulkWriteError, OperationFailure) as exc:
                    # Refusals the library met too: a redelivered key, FerretDB's 238 for a
                    # findAndModify projection (then its fallback, recorded after it).
                    errors[type(exc).__name__] += 1
                with lock:
                    by_kind[op_kind(collection, method, args)].append(
                        (time.perf_counter() - t1) * 1000)
            latencies.append((time.perf_counter() - t0) * 1000)
        return latencies

    cpu0 = store_cpu_seconds(ctx.mongo)
    seconds, latencies = _threads(work, len(recorded))
    cpu = store_cpu_seconds(ctx.mongo) - cpu0
    client.close()
    n, pts = _count(events)
    way = Way(n, pts, seconds, percentile(latencies, 50), percentile(latencies, 99),
              sum(errors.values()), store_cpu_s=cpu)
    way.calls = {k: {"calls_per_event": round(len(v) / n, 2),
                     "ms_per_event": round(sum(v) / n, 2),
                     "p50_ms": round(percentile(v, 50), 2)}
                 for k, v in sorted(by_kind.items(), key=lambda kv: -sum(kv[1]))}
    return way


def op_kind(collection: str, method: str, args: tuple[Any, ...]) -> str:
    """What a store call is, by the shape of its filter: `_id` alone or more."""
    if collection == DB_COMMAND and args and isinstance(args[0], dict) and "update" in args[0]:
        updates = args[0]["updates"]
        shapes = sorted({"_id only" if set(u["q"]) == {"_id"} else "_id+conditions"
                         for u in updates})
        return f"{args[0]['update']}.update x{len(updates)} ({', '.join(shapes)})"
    if method.startswith("insert"):
        return f"{collection}.{method}"
    filt = args[0] if args and isinstance(args[0], dict) else {}
    if set(filt) == {"_id"}:
        shape = "_id $in" if isinstance(filt["_id"], dict) else "_id"
    else:
        shape = "_id+conditions" if "_id" in filt else "other filter"
    return f"{collection}.{method} ({shape})"


def _hour_doc(i: int, t: datetime) -> dict[str, Any]:
    """An hour document of RollupWriter's shape: 2 metrics, 60 minute slots each, 360 keys."""
    start = t + timedelta(hours=i)
    slot = {"c": 6, "s": 130.0, "lo": 21.0, "hi": 22.5, "f": time_key(start),
            "lv": reading_key(start, 22.0)}
    return {"_id": hour_id(f"dev-{i % 50}", start), "device_id": f"dev-{i % 50}", "t": start,
            "v": 360, "ids": [event_hash(f"{i}-{k}") for k in range(360)],
            "min": {m: {f"{k:02d}": slot for k in range(60)} for m in ("temperature",
                                                                      "humidity")},
            "tot": {"temperature": slot, "humidity": slot}}


def store_scaling(ctx: Context) -> dict[str, Any]:
    """Latency and store CPU of the write path's store calls against collection size."""
    client = mongo_client(ctx)
    db = client[fresh_db(ctx, "scaling")]
    coll = db[ROLLUP_HOURS]
    out: dict[str, Any] = {}
    t = datetime(2026, 1, 1, tzinfo=UTC)
    inserted = 0
    probe = "dev|2026-01-01T00-probe"
    key = 0
    for size in ctx.pick((500, 2000), (1000, 4000, 8000)):
        while inserted < size:
            coll.insert_many([_hour_doc(i, t) for i in range(inserted, inserted + 500)])
            inserted += 500
        coll.update_one({"_id": probe}, {"$setOnInsert": {"v": 0, "ids": []}}, upsert=True)
        ids = [probe, hour_id("dev-1", t + timedelta(hours=1))]

        def hour_update() -> Any:
            nonlocal key
            key += 1
            return {"_id": probe, "ids": {"$ne": key}, "v": {"$lt": 200_000}}, {
                "$inc": {"v": 1, "tot.temperature.c": 1}, "$push": {"ids": key},
                "$max": {"tot.temperature.lv": reading_key(t, float(key))}}

        calls: dict[str, Callable[[], Any]] = {
            "find by _id $in (2 ids), totals only": lambda: list(coll.find(
                {"_id": {"$in": ids}}, {"v": 1, "tot": 1})),
            "find_one by _id": lambda: coll.find_one({"_id": probe}, {"v": 1}),
            "hour update (_id + key and cap conditions, $push)": lambda: coll.update_one(
                *hour_update()),
            "update by _id ($max, day/device shape)": lambda: coll.update_one(
                {"_id": probe}, {"$max": {"h.temperature.00": f"{key:012x}"}}),
            "insert_one": lambda: coll.insert_one({"count": 1}),
        }
        row, cpu_row = {}, {}
        for name, call in calls.items():
            times = []
            cpu0 = store_cpu_seconds(ctx.mongo)
            started = time.monotonic()
            for i in range(ctx.pick(20, 50)):  # enough for CPU clock ticks of 10 ms
                if i >= 3 and time.monotonic() - started > ctx.pick(5.0, 15.0):
                    break  # a call that scans the collection: a few runs tell
                t0 = time.perf_counter()
                call()
                times.append((time.perf_counter() - t0) * 1000)
            row[name] = round(percentile(times, 50), 2)
            cpu_row[name] = round((store_cpu_seconds(ctx.mongo) - cpu0) * 1000 / len(times), 2)
        out[str(size)] = row
        out[f"{size} store_cpu_ms"] = cpu_row
        ctx.say(f"  store calls at {size:,} hour documents: " +
                ", ".join(f"{k} {v:.1f} ms (store CPU {cpu_row[k]:.1f} ms)"
                          for k, v in row.items()))
    client.close()
    return out


# --- store commands per event ----------------------------------------------------------------

def store_commands() -> Counter[str]:
    """Commands this process has sent to the store so far, by name (iot_store_commands_total,
    counted by pymongo's command monitoring in Store)."""
    out: Counter[str] = Counter()
    for metric in STORE_COMMANDS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["command"]] += int(sample.value)
    return out


#: Metric names of the single events: the simulator's first (alert's rules read them).
METRIC_NAMES = ("temperature", "humidity", "battery", *(f"m{i:02d}" for i in range(3, 20)))


def _lone_events(shape: str, n: int, seed: str) -> list[TelemetryEvent]:
    """`n` events of one shape over 5 devices, 10 s of event time apart per device."""
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=3)
    out = []
    for k in range(n):
        device = f"c{seed}-{k % 5}"
        at = start + timedelta(seconds=10 * (k // 5 + 1))
        if shape.startswith("samples"):
            data = Device(device, random.Random(f"{seed}{k}"), 0).measure(
                at, 9, anomaly_rate=0.0)
        else:
            m = int(shape.split(maxsplit=1)[0])
            data = {"metrics": {name: 20.0 + (k + i) % 7 for i, name in
                                enumerate(METRIC_NAMES[:m])}}
        attributes = {"specversion": SPECVERSION, "type": TELEMETRY_TYPE,
                      "source": f"/devices/{device}", "id": str(uuid.uuid4()),
                      "subject": device, "time": format_time(at), "datacontenttype": JSON}
        event = validate(RawEvent(attributes, data), datetime.now(UTC), limits=None)
        assert isinstance(event, TelemetryEvent), event
        out.append(event)
    return out


LONE_SHAPES = ("1 metric", "5 metrics", "20 metrics", "samples: 9 + 1 readings")


def commands_per_event(ctx: Context) -> dict[str, Any]:
    """Store commands per event, one event at a time (no group commit), by shape."""
    db = fresh_db(ctx, "commands")
    store = store_for(ctx, db)
    rules = Settings.from_environ({}).rules
    handlers: dict[str, Callable[[TelemetryEvent], Any]] = {
        "aggregate": RollupWriter(store).apply,
        "alert": AlertBook(store, rules, cache=StateCache()).handle}  # as the alert process
    n = ctx.pick(20, 60)
    out: dict[str, Any] = {}
    for function, handle in handlers.items():
        # A process's one-time commands (server discovery, the store's buildInfo) are no
        # event's: one event first, not counted.
        handle(_lone_events(LONE_SHAPES[0], 1, uuid.uuid4().hex[:4])[0])
        for shape in LONE_SHAPES:
            events = _lone_events(shape, n, uuid.uuid4().hex[:4])
            before, cpu0 = store_commands(), store_cpu_seconds(ctx.mongo)
            t0 = time.perf_counter()
            for event in events:
                handle(event)
            seconds = time.perf_counter() - t0
            cpu = store_cpu_seconds(ctx.mongo) - cpu0
            delta = store_commands() - before
            total = sum(delta.values())
            points = sum(len(e.points) for e in events)
            out[f"{function} {shape}"] = row = {
                "events": n, "points": points, "commands": dict(delta),
                "commands_per_event": round(total / n, 2),
                "commands_per_point": round(total / points, 3),
                "store_cpu_ms_per_event": round(cpu * 1000 / n, 2),
                "store_cpu_ms_per_command": round(cpu * 1000 / max(1, total), 2),
                "events_per_s": round(n / seconds, 1)}
            ctx.say(f"  {function} {shape}: {row['commands_per_event']} store commands/event "
                    f"({', '.join(f'{k} {v / n:.2f}' for k, v in sorted(delta.items()))}), "
                    f"store CPU {row['store_cpu_ms_per_command']} ms/command")
    store.close()
    return out


def over_http(ctx: Context, function: str, db: str, events: list[list[Record]], profile: str,
              ) -> tuple[Way, dict[str, Ops]]:
    """The events delivered to the served function; its store calls by delivery."""
    sink = contextlib.ExitStack()
    env = {"KAFKA_BOOTSTRAP_SERVERS": ctx.kafka, "MONGO_URL": ctx.mongo, "MONGO_DB": db,
           "LOG_LEVEL": "INFO", "PYTHONPATH": str(REPO),
           # alert posts a second alert event of one delivery there (as to the Broker)
           "K_SINK": sink.enter_context(broker_ingress())}
    ctx.on_exit(sink.close)
    server = FunctionServer(ctx, function, HERE / "recorded_function.py", env,
                            label=f"{function}-{db}").start()
    encoded = [[to_http(a, d) for a, d in thread] for thread in events]

    def make(i: int, n: int) -> tuple[str, str, dict[str, str], bytes] | None:
        if n >= len(encoded[i]):
            return None
        headers, body = encoded[i][n]
        return "POST", "/", headers, body

    cpu0 = store_cpu_seconds(ctx.mongo)
    before = metrics(server.url)
    try:
        with profiled(ctx, profile, server.worker_pid(), 20):
            res = python_load(server.url, make, THREADS, 3600, lambda s: s in (200, 204))
        after = metrics(server.url)
        with urllib.request.urlopen(server.url + "recorded", timeout=60) as answer:
            calls: dict[str, Ops] = pickle.loads(answer.read())
    finally:
        server.stop()
        sink.close()
    cpu = store_cpu_seconds(ctx.mongo) - cpu0
    commands = round(metric_sum(after, "iot_store_commands_total")
                     - metric_sum(before, "iot_store_commands_total"))
    batches = (metric_sum(after, "iot_aggregate_batch_events_count")
               - metric_sum(before, "iot_aggregate_batch_events_count"))
    n, pts = _count(events)
    bad = res.requests - res.ok
    if bad:
        ctx.say(f"  warning: {bad} deliveries not answered 200/204: {res.statuses}")
    return Way(n, pts, res.seconds, res.p50_ms, res.p99_ms, bad, store_cpu_s=cpu,
               commands=commands, batches=round(batches)), calls


def _count(events: Sequence[Sequence[Record]]) -> tuple[int, int]:
    flat = [e for thread in events for e in thread]
    return len(flat), sum(points_of(d) for _a, d in flat)


def sizes(ctx: Context, db: str) -> dict[str, int]:
    client = mongo_client(ctx)
    try:
        return {name: client[db][name].estimated_document_count()
                for name in (ROLLUP_HOURS, ROLLUP_DAYS, DEVICES, EVENT_TIMES, ALERTS,
                             ALERT_STATE)}
    finally:
        client.close()


def run(ctx: Context) -> None:
    per_thread = {"single": ctx.pick(15, 40), "samples": ctx.pick(10, 25)}
    raw: dict[str, Any] = {"threads": THREADS, "devices": THREADS * DEVICES_PER_THREAD,
                           "events_per_thread": per_thread}
    ctx.say("fig 2: store commands per event, one event at a time")
    raw["lone_events"] = lone = commands_per_event(ctx)
    for label, row in lone.items():
        by_name = ", ".join(f"{k} {v / row['events']:.2f}"
                            for k, v in sorted(row["commands"].items()))
        ctx.add("2", f"store commands per lone event: {label}", row["commands_per_event"],
                "cmd", f"{by_name}; store CPU {row['store_cpu_ms_per_event']:.2f} ms/event, "
                f"{row['store_cpu_ms_per_command']:.2f} ms/command")
    worst = max(row["commands_per_event"] for label, row in lone.items()
                if label.startswith("aggregate"))
    ctx.goal("aggregate: store commands per lone event, any number of metrics", "<= 3",
             f"{worst:.2f} at most", worst <= 3)
    for function in ("aggregate", "alert"):
        for shape in ("single", "samples"):
            events = make_events(shape, per_thread[shape], uuid.uuid4().hex[:4])
            n, pts = _count(events)
            label = f"{function} {shape}"
            ctx.say(f"fig 2: {label}: {n} events, {pts} points, {THREADS} threads")
            db_lib = fresh_db(ctx, f"{function}_{shape}_lib")
            lib = library(ctx, function, db_lib, events)
            ctx.say(f"  library in-process: {lib.events_per_s:,.1f} ev/s")
            db_http = fresh_db(ctx, f"{function}_{shape}_http")
            web, calls = over_http(ctx, function, db_http, events, f"fig2-{function}-{shape}")
            ctx.say(f"  HTTP (gunicorn): {web.events_per_s:,.1f} ev/s")
            recorded = replay_streams(function, events, calls)
            db_raw = fresh_db(ctx, f"{function}_{shape}_raw")
            ref = raw_pymongo(ctx, db_raw, events, recorded)
            ctx.say(f"  raw pymongo replay of the served calls: {ref.events_per_s:,.1f} ev/s")
            round_trips = sum(len(ops) for t in recorded for ops in t) / n
            counts = sizes(ctx, db_http)
            ctx.add("2", f"{label} over HTTP: events/s", web.events_per_s, "ev/s",
                    f"{web.points_per_s:,.0f} pt/s; p50 {web.p50_ms:.1f} / p99 "
                    f"{web.p99_ms:.1f} ms per delivery; store CPU "
                    f"{web.store_ms_per_event:.2f} ms/event")
            ctx.add("2", "  library in-process: events/s", lib.events_per_s, "ev/s",
                    f"{lib.points_per_s:,.0f} pt/s; store CPU "
                    f"{lib.store_ms_per_event:.2f} ms/event")
            ctx.add("2", "  ref raw pymongo, the served calls: events/s", ref.events_per_s, "ev/s",
                    f"{ref.points_per_s:,.0f} pt/s; {round_trips:.1f} store calls/event; "
                    f"store CPU {ref.store_ms_per_event:.2f} ms/event, "
                    f"{ref.store_cpu_s * 1000 / max(1.0, round_trips * n):.2f} ms/call")
            ctx.add("2", f"  ratio HTTP / raw pymongo ({label})",
                    web.events_per_s / ref.events_per_s, "x")
            batch = (f"; {n / web.batches:.2f} events per group commit" if web.batches else "")
            ctx.add("2", "  store commands per event over HTTP (iot_store_commands_total)",
                    web.commands / n, "cmd", f"{web.commands / pts:.3f} per point; in-process "
                    f"{lib.commands / n:.2f}/event{batch}")
            if function == "aggregate":
                ratio = web.events_per_s / ref.events_per_s
                ctx.goal(f"aggregate over HTTP / bare pymongo ({shape})", ">= 0.8",
                         f"{ratio:.2f}", ratio >= 0.8)
            if function == "aggregate":
                split = [[split_in(ops) for ops in t] for t in recorded]
                what_if = raw_pymongo(ctx, fresh_db(ctx, f"{function}_{shape}_split"), events,
                                      split)
                ctx.say(f"  what-if replay, _id $in as find_one per id: "
                        f"{what_if.events_per_s:,.1f} ev/s")
                ctx.add("2", "  what-if: same calls, each find _id $in as find_one per id",
                        what_if.events_per_s, "ev/s",
                        f"x{what_if.events_per_s / ref.events_per_s:.2f} of the raw replay")
                raw.setdefault("what_if_split_in", {})[label] = vars(what_if)
            top = list((ref.calls or {}).items())[:3]
            ctx.add("2", "  slowest store calls per event (raw replay)", None, "",
                    "; ".join(f"{k}: {v['ms_per_event']:.0f} ms" for k, v in top))
            raw[label] = {"events": n, "points": pts, "http": vars(web), "library": vars(lib),
                          "raw_pymongo": vars(ref), "store_calls_per_event": round_trips,
                          "collection_sizes_after_http": counts}
    ctx.say("fig 2: store calls alone against collection size")
    raw["store_scaling_ms"] = scaling = store_scaling(ctx)
    for size, row in scaling.items():
        if not size.isdigit():
            continue
        cpu_row = scaling.get(f"{size} store_cpu_ms", {})
        for name, ms in row.items():
            ctx.add("2", f"  store: {name} at {int(size):,} docs", ms, "ms",
                    f"store CPU {cpu_row.get(name, 0.0):.2f} ms/op")
    ctx.raw["fig2_consumers"] = raw
