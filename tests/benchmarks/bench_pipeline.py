"""Figures 3 and 6: the whole pipeline in real mode, and peak RSS of each process under it.

ingest -> Kafka -> dispatcher -> aggregate + alert -> FerretDB, each function its own
functions-framework (gunicorn) process (local/realmode.py), all on this machine together with
Kafka, FerretDB and the load generator (the project's device simulator).

1. Ramp: the simulator offers a rising rate, step by step; a step is sustained when the
   consumers kept up (their backlog grew by under 10% of what the step offered). The
   highest sustained step is the figure.
2. Latency at half that rate: probe events posted one at a time, each timed until its value
   is visible through query's GET /devices/{id}.
3. Nothing lost: once drained, every device's and metric's reading count through query's
   series API equals what the simulator recorded as accepted.
Peak RSS (figure 6) is sampled from every process during all three phases.

Per step, from the functions' /metrics and /proc: store commands per data point of aggregate
and of alert (iot_store_commands_total), aggregate's mean group commit
(iot_aggregate_batch_events), CPU per data point of everything but the store (functions,
dispatcher, Kafka) and the store's CPU per command.

Variants (`--pipeline-variants`, run one after the other in the same run, each on fresh
topics, groups and database): the aggregate Trigger's delivery order (eventing/ as it is, or
a copy with the annotation flipped) and aggregate's gunicorn THREADS (requests in flight per
process, so the largest group commit). The latency probes, the RSS figures and the profile
are of the first variant.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from iot_telemetry.events import JSON, SPECVERSION, TELEMETRY_TYPE, to_http
from iot_telemetry.local.eventing.dispatcher import Naming
from iot_telemetry.local.eventing.manifests import ORDER_ANNOTATION, load_eventing
from iot_telemetry.local.layout import EVENTING_DIR, FUNCTIONS
from iot_telemetry.local.realmode import RealPipeline
from iot_telemetry.local.simulator import SimulatorOptions, simulate
from iot_telemetry.settings import Settings
from iot_telemetry.telemetry import format_time
from tests.truth import points_of

from .common import (
    Context,
    CpuMeter,
    RssSampler,
    cpu_summary,
    fresh_db,
    metric_sum,
    metrics,
    percentile,
    profiled,
)

SAMPLES = 9  # buffered readings per event: a device sending every ~10 s, reading each second
DEVICES = 60
PROBE_DEVICE = "bench-probe"


@dataclass(frozen=True)
class Stream:
    """What the simulated fleet sends: figure 3's gateways, or single readings."""

    name: str
    mode: str  # the simulator's: batch or binary
    batch_size: int
    samples: int
    concurrency: int  # the simulator's posting threads
    devices: int | None  # None: one device per event/s offered (each about 1 event/s)

    def options(self, url: str, rate: float, seconds: float, record: Path, seed: int,
                anomaly_rate: float) -> SimulatorOptions:
        devices = self.devices or max(1, round(rate))
        return SimulatorOptions(url=url, devices=devices, rate=rate, duration=seconds,
                                mode=self.mode, batch_size=self.batch_size,
                                samples=self.samples, anomaly_rate=anomaly_rate, seed=seed,
                                concurrency=self.concurrency, progress=False,
                                record=str(record))


#: `gateway`: figure 3's stream, batches of 20 events of 10 readings (9 `samples`) from 60
#: devices. `single`: one event per request in binary mode, one reading of 2-3 metrics, each
#: device about one event per second, as most fleets post; 16 threads post, so requests
#: overlap as a fleet's do.
STREAMS = {"gateway": Stream("gateway", "batch", 20, SAMPLES, 4, DEVICES),
           "single": Stream("single", "binary", 1, 0, 16, None)}


@dataclass(frozen=True)
class Variant:
    """How aggregate is delivered to and served: the Trigger's order, gunicorn THREADS; and
    the Broker's partitions (None: as eventing/ has them), which bound alert's deliveries in
    flight (its Trigger is ordered: one per partition)."""

    order: str  # "as-is" (eventing/ unchanged), "ordered" or "unordered"
    threads: int
    partitions: int | None = None

    @classmethod
    def parse(cls, text: str) -> Variant:
        order, _, rest = text.partition(":")
        threads, _, partitions = rest.partition(":")
        if (order not in ("as-is", "ordered", "unordered") or not threads.isdigit()
                or not (partitions == "" or (partitions.isdigit() and int(partitions) > 0))):
            raise ValueError(f"pipeline variant {text!r}: expected ORDER:THREADS[:PARTITIONS], "
                             "ORDER one of as-is, ordered, unordered (e.g. unordered:32, "
                             "as-is:32:12)")
        return cls(order, int(threads), int(partitions) if partitions else None)

    @property
    def label(self) -> str:
        tail = f":{self.partitions}" if self.partitions else ""
        return f"{self.order}:{self.threads}{tail}"


#: The Broker's partitions in eventing/broker.yaml (the local run sizes every topic by it).
PARTITIONS_SETTING: Final = re.compile(r'^(\s+default\.topic\.partitions:\s*)"\d+"', re.M)


def eventing_for(ctx: Context, order: str, partitions: int | None = None) -> Path:
    """eventing/ itself, or a copy whose aggregate Trigger delivers in `order` and whose
    Broker has `partitions`."""
    if order == "as-is" and partitions is None:
        return Path(EVENTING_DIR)
    target = ctx.log_dir / f"eventing-{order}{f'-p{partitions}' if partitions else ''}"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(EVENTING_DIR, target)
    if partitions is not None:
        broker = target / "broker.yaml"
        text, n = PARTITIONS_SETTING.subn(rf'\g<1>"{partitions}"',
                                          broker.read_text(encoding="utf-8"))
        if n != 1:
            raise RuntimeError(f"{broker}: no default.topic.partitions to change")
        broker.write_text(text, encoding="utf-8")
        if load_eventing(target).broker.partitions != partitions:
            raise RuntimeError(f"{broker}: the Broker did not get {partitions} partitions")
    if order == "as-is":
        return target
    path = target / "triggers.yaml"
    docs = path.read_text(encoding="utf-8").split("\n---\n")
    pattern = re.compile(rf"^(\s+{re.escape(ORDER_ANNOTATION)}:\s*)\w+", re.M)
    for i, doc in enumerate(docs):
        if re.search(r"^kind: Trigger$", doc, re.M) and re.search(r"^  name: aggregate$",
                                                                   doc, re.M):
            docs[i], n = pattern.subn(rf"\g<1>{order}", doc)
            if n != 1:
                raise RuntimeError(f"{path}: no {ORDER_ANNOTATION} on the aggregate Trigger")
    path.write_text("\n---\n".join(docs), encoding="utf-8")
    trigger = next(t for t in load_eventing(target).triggers if t.name == "aggregate")
    if trigger.ordered != (order == "ordered"):
        raise RuntimeError(f"{path}: the aggregate Trigger did not become {order}")
    return target


@dataclass
class _Pipeline(RealPipeline):
    """RealPipeline with environment variables for one function only (THREADS)."""

    function_env: dict[str, dict[str, str]] = field(default_factory=dict)

    def start_function(self, function: str) -> None:
        shared = self.environ
        self.environ = {**shared, **self.function_env.get(function, {})}
        try:
            super().start_function(function)
        finally:
            self.environ = shared


def _pipeline(ctx: Context, variant: Variant, n: int) -> tuple[RealPipeline, str, str]:
    suffix = f".b{ctx.run_id}v{n}"
    db = fresh_db(ctx, f"pipeline{n}")
    topic = Naming(suffix).topic("iot.telemetry")
    settings = {name for name, _default, _doc in Settings.variables()}
    env = {k: v for k, v in os.environ.items() if k not in settings and k != "THREADS"}
    env.update({"MONGO_DB": db, "KAFKA_TOPIC": topic, "LOG_LEVEL": "INFO",
                # One simulated device may send more than the per-device default here.
                "INGEST_RATE_LIMIT": "1000000"})
    ports = {f: ctx.port() for f in FUNCTIONS}
    pipeline = _Pipeline(kafka=ctx.kafka, mongo=ctx.mongo, ports=ports,
                         broker_port=ctx.port(), environ=env,
                         eventing_dir=eventing_for(ctx, variant.order, variant.partitions),
                         dispatcher_args=("--name-suffix", suffix), log_dir=ctx.log_dir / f"v{n}",
                         function_env={"aggregate": {"THREADS": str(variant.threads)}})
    return pipeline, suffix, db


def _wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(
                url + "readyz", timeout=2) as resp:
            if resp.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s")


class Counts:
    """Events accepted by ingest and handled by each consumer, from their /metrics."""

    def __init__(self, pipeline: RealPipeline) -> None:
        self.pipeline = pipeline

    def read(self) -> dict[str, float]:
        ingest = metrics(self.pipeline.url("ingest"))
        out = {"accepted": metric_sum(ingest, "iot_events_accepted_total"),
               "points": metric_sum(ingest, "iot_points_accepted_total")}
        for function in ("aggregate", "alert"):
            values = metrics(self.pipeline.url(function))
            out[function] = metric_sum(values, "iot_events_processed_total", function=function)
            out[f"{function} commands"] = metric_sum(values, "iot_store_commands_total")
            out[f"{function} batches"] = metric_sum(values,
                                                    f"iot_{function}_batch_events_count")
        return out

    def backlog(self) -> float:
        c = self.read()
        return c["accepted"] - min(c["aggregate"], c["alert"])


def _simulate(url: str, rate: float, seconds: float, record: Path, seed: int,
              anomaly_rate: float = 0.02, stream: str = "gateway") -> Any:
    return simulate(STREAMS[stream].options(url, rate, seconds, record, seed, anomaly_rate))


def ramp(ctx: Context, pipeline: RealPipeline, records: list[Path], tag: str = "",
         ) -> dict[str, Any]:
    counts = Counts(pipeline)
    meter = CpuMeter({name: proc.pid for name, proc in pipeline.processes.items()},
                     ctx.kafka, ctx.mongo)
    step_s = ctx.pick(8.0, 15.0)
    rate = ctx.pipeline_start_rate  # events/s; x1.5 per step, until the consumers fall behind
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for n in range(ctx.pick(12, 16)):
        before = counts.read()
        record = ctx.log_dir / f"pipeline{tag}-step{n}.jsonl"
        records.append(record)
        cpu_before = meter.snapshot()
        t0 = time.monotonic()
        result = _simulate(pipeline.url("ingest"), rate, step_s, record, seed=n,
                           stream=ctx.pipeline_stream)
        elapsed = time.monotonic() - t0
        cores = CpuMeter.cores(cpu_before, meter.snapshot())
        after = counts.read()
        offered = after["accepted"] - before["accepted"]
        handled = min(after[f] - before[f] for f in ("aggregate", "alert"))
        grew = (after["accepted"] - min(after["aggregate"], after["alert"])) - (
            before["accepted"] - min(before["aggregate"], before["alert"]))
        points_per_event = (after["points"] - before["points"]) / max(1.0, offered)
        step = {"rate_ev_s": rate, "seconds": round(elapsed, 1), "accepted": offered,
                "handled": handled, "backlog_growth": grew,
                "handled_by": {f: after[f] - before[f] for f in ("aggregate", "alert")},
                "points_per_event": round(points_per_event, 2),
                "handled_points_per_s": handled * points_per_event / elapsed,
                "accepted_points_per_s": offered * points_per_event / elapsed,
                "sim_errors": result.errors, "cpu_cores": cores}
        # Events still in flight at the step's end (batch linger, delivery: about a second's
        # worth) are no backlog; more than that, or over 10% of the step, is falling behind.
        step["sustained"] = offered > 0 and grew <= max(0.1 * offered, rate)
        step.update(costs(before, after, cores, elapsed, handled * points_per_event))
        steps.append(step)
        ctx.say(f"fig 3 step {n + 1}: offered {rate:.1f} ev/s "
                f"({step['accepted_points_per_s']:,.0f} pt/s) -> handled "
                f"{handled / elapsed:.1f} ev/s ({step['handled_points_per_s']:,.0f} pt/s; "
                f"aggregate {step['handled_by']['aggregate'] / elapsed:.1f}, alert "
                f"{step['handled_by']['alert'] / elapsed:.1f} ev/s), "
                f"backlog +{grew:.0f}: {'kept up' if step['sustained'] else 'FELL BEHIND'}")
        ctx.say(f"  CPU (cores): {cpu_summary(cores)}")
        ctx.say(f"  per point: store commands aggregate {step['aggregate_commands_per_point']:.3f}"
                f", alert {step['alert_commands_per_point']:.3f}; "
                f"events per group commit aggregate {step['events_per_group_commit']:.1f}, "
                f"alert {step['alert_events_per_group_commit']:.1f}; CPU but the "
                f"store {step['cpu_us_per_point_but_store']:.0f} us; store CPU "
                f"{step['store_cpu_ms_per_command']:.2f} ms per command")
        if not step["sustained"]:
            break
        best = step
        rate *= 1.5
    return {"steps": steps, "best": best,
            "limit": steps[-1] if steps and not steps[-1]["sustained"] else None}


#: CPU groups of the store server (common.service_pids names them by kind).
STORE_GROUPS = frozenset({"ferretdb", "mongo-java-server", "store", "postgresql"})


def costs(before: dict[str, float], after: dict[str, float], cores: dict[str, float],
          seconds: float, points: float) -> dict[str, Any]:
    """A step's store commands per point and event, group commit size, and CPU per point."""
    points = max(points, 1.0)
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    commands = d["aggregate commands"] + d["alert commands"]
    but_store = {k: v * seconds / points * 1e6 for k, v in cores.items()
                 if k not in STORE_GROUPS and k not in ("machine", "load generator")}
    store_s = sum(v for k, v in cores.items() if k in STORE_GROUPS) * seconds
    return {
        "aggregate_commands_per_point": d["aggregate commands"] / points,
        "alert_commands_per_point": d["alert commands"] / points,
        "aggregate_commands_per_event": d["aggregate commands"] / max(1.0, d["aggregate"]),
        "alert_commands_per_event": d["alert commands"] / max(1.0, d["alert"]),
        "events_per_group_commit": d["aggregate"] / max(1.0, d["aggregate batches"]),
        "alert_events_per_group_commit": d["alert"] / max(1.0, d["alert batches"]),
        "cpu_us_per_point_but_store": sum(but_store.values()),
        "cpu_us_per_point_by_group": {k: round(v, 1) for k, v in but_store.items()},
        "store_cpu_ms_per_command": store_s * 1000 / max(1.0, commands),
        "store_cpu_us_per_point": store_s / points * 1e6,
    }


def drain(ctx: Context, pipeline: RealPipeline, timeout: float) -> float:
    counts = Counts(pipeline)
    t0 = time.monotonic()
    last = -1.0
    while time.monotonic() - t0 < timeout:
        backlog = counts.backlog()
        if backlog <= 0:
            return time.monotonic() - t0
        if backlog != last:
            ctx.say(f"  draining: {backlog:.0f} events behind")
            last = backlog
        time.sleep(2)
    raise RuntimeError(f"backlog not drained after {timeout:.0f}s")


def probe_latency(ctx: Context, pipeline: RealPipeline, seconds: float) -> list[float]:
    """POST one reading at a time; time until query shows it as the probe's latest value."""
    ingest, query = pipeline.url("ingest"), pipeline.url("query")
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
        at = datetime.now(UTC)
        attributes = {"specversion": SPECVERSION, "type": TELEMETRY_TYPE,
                      "source": f"/devices/{PROBE_DEVICE}", "id": str(uuid.uuid4()),
                      "subject": PROBE_DEVICE, "time": format_time(at), "datacontenttype": JSON}
        headers, body = to_http(attributes, {"metrics": {"probe": float(n)}})
        t0 = time.perf_counter()
        req = urllib.request.Request(ingest, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            if resp.status != 202:
                raise RuntimeError(f"probe answered {resp.status}")
        while True:
            with contextlib.suppress(OSError, ValueError, KeyError), urllib.request.urlopen(
                    query + f"devices/{PROBE_DEVICE}", timeout=30) as resp:
                if json.loads(resp.read())["metrics"]["probe"]["value"] == float(n):
                    break
            if time.perf_counter() - t0 > 60:
                raise RuntimeError("probe not visible after 60 s")
            time.sleep(0.01)
        latencies.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.3)
    return latencies


def verify(ctx: Context, pipeline: RealPipeline, records: list[Path]) -> dict[str, Any]:
    """Every device's and metric's count through the query API equals what was accepted."""
    expected: dict[tuple[str, str], int] = defaultdict(int)
    times: list[datetime] = []
    seen: set[tuple[str, str]] = set()
    for path in records:
        if not path.exists():
            continue
        with path.open(encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                key = (rec["attributes"]["source"], rec["attributes"]["id"])
                if key in seen:
                    continue
                seen.add(key)
                for device, metric, t, _v in points_of(rec["attributes"], rec["data"]):
                    expected[(device, metric)] += 1
                    times.append(t)
    if not times:
        return {"expected_points": 0, "found_points": 0, "mismatches": []}
    start = (min(times) - timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
    end = (max(times) + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
    query = pipeline.url("query")
    found = 0
    mismatches = []
    for (device, metric), count in sorted(expected.items()):
        url = f"{query}devices/{device}/series?metric={metric}&from={start}&to={end}&step=1d"
        with urllib.request.urlopen(url, timeout=60) as resp:
            got = sum(b["count"] for b in json.loads(resp.read())["buckets"])
        found += got
        if got != count:
            mismatches.append({"device": device, "metric": metric, "expected": count,
                               "found": got})
    return {"expected_points": sum(expected.values()), "found_points": found,
            "series_checked": len(expected), "mismatches": mismatches[:20],
            "events": len(seen)}


def run(ctx: Context) -> None:
    variants = [Variant.parse(v) for v in ctx.pipeline_variants]
    results = {}
    for n, variant in enumerate(variants):
        results[variant.label] = run_variant(ctx, variant, n, first=n == 0)
    ctx.raw["fig3_pipeline"] = results[variants[0].label]
    ctx.raw["fig3_pipeline_variants"] = results
    if len(variants) > 1:
        ctx.say("fig 3: variants side by side")
        for label, raw in results.items():
            best = raw["ramp"]["best"] or {}
            ctx.say(f"  {label}: {best.get('handled_points_per_s', 0):,.0f} pt/s, "
                    f"{best.get('aggregate_commands_per_point', float('nan')):.3f} aggregate "
                    f"commands/pt, {best.get('events_per_group_commit', float('nan')):.1f} "
                    f"events/commit, CPU but the store "
                    f"{best.get('cpu_us_per_point_but_store', float('nan')):.0f} us/pt")


def run_variant(ctx: Context, variant: Variant, n: int, first: bool) -> dict[str, Any]:
    """One pipeline: ramp, drain, (first variant: latency probes, RSS), verify."""
    pipeline, suffix, db = _pipeline(ctx, variant, n)
    ctx.on_exit(pipeline.stop)
    shape = STREAMS[ctx.pipeline_stream]
    tag = f"[{variant.label}{'' if shape.name == 'gateway' else ', ' + shape.name}] "
    ctx.say(f"fig 3 {tag}: starting the pipeline (4 functions + dispatcher) in real mode; "
            f"aggregate Trigger {variant.order}, aggregate THREADS={variant.threads}"
            f"{f', {variant.partitions} partitions' if variant.partitions else ''}")
    t0 = time.monotonic()
    pipeline.start(timeout=90)
    _wait_ready(f"http://127.0.0.1:{pipeline.broker_port}/", 90)
    ctx.say(f"  started in {time.monotonic() - t0:.1f}s")
    ctx.on_exit(lambda: _delete_kafka(ctx, suffix))
    roots = {name: proc.pid for name, proc in pipeline.processes.items()}
    records: list[Path] = []
    raw: dict[str, Any] = {"stream": shape.name, "devices": shape.devices or "1 per ev/s",
                           "samples_per_event": shape.samples, "mode": shape.mode,
                           "batch_size": shape.batch_size, "aggregate_trigger": variant.order,
                           "aggregate_threads": variant.threads,
                           "broker_partitions": variant.partitions or load_eventing(
                               Path(EVENTING_DIR)).broker.partitions}
    latencies: list[float] = []
    with RssSampler(roots) as rss:
        with contextlib.ExitStack() as stack:
            if first:
                for name in ("aggregate", "alert", "ingest", "dispatcher"):
                    stack.enter_context(profiled(ctx, f"fig3-{name}-under-ramp",
                                                 _worker(pipeline, name), ctx.pick(30, 60)))
            raw["ramp"] = ramp(ctx, pipeline, records, f"-v{n}")
        raw["drain_after_ramp_s"] = round(drain(ctx, pipeline, ctx.pick(180, 300)), 1)
        best = raw["ramp"]["best"]
        if first:
            half = (best["rate_ev_s"] if best else 1.0) / 2
            latency_s = ctx.pick(12.0, 30.0)
            ctx.say(f"fig 3: latency probes at half load ({half:.1f} ev/s) for "
                    f"{latency_s:.0f}s")
            record = ctx.log_dir / f"pipeline-v{n}-half.jsonl"
            records.append(record)
            background = threading.Thread(
                target=_simulate, args=(pipeline.url("ingest"), half, latency_s + 5, record,
                                        99, 0.02, ctx.pipeline_stream), daemon=True)
            background.start()
            time.sleep(3)
            latencies = probe_latency(ctx, pipeline, latency_s)
            background.join()
            raw["drain_after_half_s"] = round(drain(ctx, pipeline, ctx.pick(180, 300)), 1)
            raw["latency_ms"] = latencies
        ctx.say("fig 3: verifying counts through the query API")
        raw["verify"] = check = verify(ctx, pipeline, records)
    raw["peak_rss_kib"] = {k: dict(v) for k, v in rss.peak.items()}
    raw["collection_sizes"] = _sizes(ctx, db)
    pipeline.stop()

    lost = check["expected_points"] - check["found_points"]
    sustained_pts = best["handled_points_per_s"] if best else 0.0
    if best:
        ctx.add("3", f"{tag}pipeline: highest sustained events/s", best["handled"] / max(
            best["seconds"], 1e-9), "ev/s", f"offered {best['rate_ev_s']:.1f} ev/s")
    ctx.add("3", f"{tag}pipeline: highest sustained data points/s", sustained_pts, "pt/s",
            f"{best['rate_ev_s'] if best else 0:.1f} ev/s x "
            f"{best['points_per_event'] if best else 0:.1f} points; "
            "all on this 2-core machine (Kafka, the store, load generator too)")
    for label, step in (("at the highest sustained step", best),
                        ("at the step that fell behind", raw["ramp"]["limit"])):
        if step:
            ctx.add("3", f"  CPU {label}", step["cpu_cores"].get("machine", 0.0), "cores",
                    cpu_summary(step["cpu_cores"]))
    if best:
        ctx.add("3", "  store commands per data point: aggregate",
                best["aggregate_commands_per_point"], "cmd",
                f"{best['aggregate_commands_per_event']:.2f} per event, "
                f"{best['events_per_group_commit']:.1f} events per group commit")
        ctx.add("3", "  store commands per data point: alert",
                best["alert_commands_per_point"], "cmd",
                f"{best['alert_commands_per_event']:.2f} per event, "
                f"{best['alert_events_per_group_commit']:.1f} events per group commit")
        by_group = ", ".join(f"{k} {v:.0f}" for k, v in sorted(
            best["cpu_us_per_point_by_group"].items(), key=lambda kv: -kv[1]))
        ctx.add("3", "  CPU per data point, everything but the store",
                best["cpu_us_per_point_but_store"], "us", by_group)
        ctx.add("3", "  store CPU per command", best["store_cpu_ms_per_command"], "ms",
                f"{best['store_cpu_us_per_point']:.0f} us per data point")
        ctx.goal(f"{tag}store round trips per data point (aggregate)", "<= 0.05",
                 f"{best['aggregate_commands_per_point']:.3f} (alert "
                 f"{best['alert_commands_per_point']:.3f})",
                 best["aggregate_commands_per_point"] <= 0.05)
        ctx.goal(f"{tag}CPU per data point but the store", "<= 130 us",
                 f"{best['cpu_us_per_point_but_store']:.0f} us",
                 best["cpu_us_per_point_but_store"] <= 130)
    ctx.add("3", "  points checked through query after the run",
            check["found_points"], "pt",
            f"expected {check['expected_points']}; {len(check['mismatches'])} series differ")
    ctx.goal(f"{tag}whole pipeline sustained, nothing lost", ">= 15,000 pt/s",
             f"{sustained_pts:,.0f} pt/s; lost {lost}",
             sustained_pts >= 15000 and lost == 0 and not check["mismatches"])
    if not first:
        return raw
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    ctx.add("3", f"{tag}POST -> visible in query at half load: p50 ({len(latencies)} probes)",
            p50, "ms", f"p99 {p99:.0f} ms")
    ctx.goal("POST-to-visible p99 at half load", "< 1000 ms", f"{p99:.0f} ms", p99 < 1000)
    worst = 0.0
    for name in FUNCTIONS:
        peaks = raw["peak_rss_kib"].get(name, {})
        workers = [v for k, v in peaks.items() if k.startswith("worker")]
        peak = max(workers or [0]) / 1024
        worst = max(worst, peak)
        ctx.add("6", f"{tag}peak RSS {name} (gunicorn's worker)", peak, "MiB",
                f"+ arbiter {peaks.get('arbiter', 0) / 1024:.0f} MiB")
    disp = raw["peak_rss_kib"].get("dispatcher", {})
    ctx.add("6", "peak RSS dispatcher (local stand-in for Knative's data plane)",
            disp.get("arbiter", 0) / 1024, "MiB")
    ctx.goal("peak RSS per function", "< 120 MB", f"worst {worst * 1.048576:.0f} MB",
             worst * 1.048576 < 120, "serving worker; measured under the load of figure 3")
    return raw


def _worker(pipeline: RealPipeline, name: str) -> int:
    """The process that serves: gunicorn's worker under a function's arbiter, or the
    process itself (the dispatcher)."""
    from .common import children

    pid = pipeline.processes[name].pid
    kids = children(pid)
    return kids[0] if kids else pid


def _sizes(ctx: Context, db: str) -> dict[str, int]:
    from .bench_consumers import sizes

    return sizes(ctx, db)


def _delete_kafka(ctx: Context, suffix: str) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=ctx.kafka, request_timeout_ms=20000)
    try:
        topics = [t for t in admin.list_topics() if t.endswith(suffix)]
        if topics:
            admin.delete_topics(topics)
        groups = [g for g, _ in admin.list_consumer_groups() if g.endswith(suffix)]
        if groups:
            admin.delete_consumer_groups(groups)
    finally:
        admin.close()
