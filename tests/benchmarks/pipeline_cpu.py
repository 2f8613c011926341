"""CPU per data point of everything but the store, at one steady rate, with profiles.

Figure 3's ramp measures CPU per point at the highest rate the store sustains, where fixed
costs (Kafka's polls, the dispatcher's idle loop) weigh on few points. This script holds the
whole pipeline (ingest -> Kafka -> dispatcher -> aggregate + alert -> store, real mode) at one
offered rate after a warm-up, and prints each process group's CPU per data point and, with
py-spy installed, every Python process's top frames over the same window:

    python -m tests.benchmarks.pipeline_cpu --rate 20 --seconds 40 \
        --kafka 127.0.0.1:9092 --mongo mongodb://127.0.0.1:27018

With several rates (`--rate 2,40`) the windows run one after the other on the same pipeline,
and each process group's CPU is split by a least-squares line through them into a fixed part
(cores burnt whatever the load: polls, timers, idle threads) and a marginal part (us per
added data point). At a low rate the fixed part dominates CPU per point; at the 15,000
points/s of the goal the marginal part is what counts.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Any

from .bench_pipeline import (
    STORE_GROUPS,
    Counts,
    Variant,
    _delete_kafka,
    _pipeline,
    _simulate,
    _wait_ready,
    _worker,
)
from .common import (
    BASE_PORT,
    Context,
    CpuMeter,
    cpu_split,
    cpu_summary,
    descendants,
    print_profiles,
    profiled,
    service_arguments,
)


def user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process tree so far (system time is where thread
    switches and socket calls go)."""
    splits = [cpu_split(p) for p in descendants(pid)]
    return sum(u for u, _ in splits), sum(sy for _, sy in splits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.pipeline_cpu")
    parser.add_argument("--rate", default="20", help="events/s offered; a comma list runs "
                        "each in turn and fits fixed and marginal CPU")
    parser.add_argument("--seconds", type=float, default=40.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--anomaly-rate", type=float, default=0.02,
                        help="chance per reading that an anomaly episode starts (figure 3: "
                        "0.02, about one alert event per telemetry event; 0: no alerts)")
    parser.add_argument("--variant", default="as-is:32")
    service_arguments(parser, "artifacts/pipeline-cpu", BASE_PORT + 300, "py-spy every process")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick=True, kafka=args.kafka, mongo=args.mongo, out_dir=out,
                  profile=args.profile, _next_port=args.base_port)
    try:
        return _run(ctx, args)
    finally:
        ctx.cleanup()


def _run(ctx: Context, args: argparse.Namespace) -> int:
    rates = [float(r) for r in str(args.rate).split(",")]
    pipeline, suffix, _db = _pipeline(ctx, Variant.parse(args.variant), 0)
    ctx.on_exit(pipeline.stop)
    pipeline.start(timeout=90)
    _wait_ready(f"http://127.0.0.1:{pipeline.broker_port}/", 90)
    ctx.on_exit(lambda: _delete_kafka(ctx, suffix))
    counts = Counts(pipeline)
    ctx.say(f"warm-up {args.warmup:.0f}s at {rates[0]} ev/s")
    _simulate(pipeline.url("ingest"), rates[0], args.warmup, ctx.log_dir / "warmup.jsonl", 1,
              args.anomaly_rate)
    meter = CpuMeter({n: p.pid for n, p in pipeline.processes.items()}, ctx.kafka, ctx.mongo)
    windows: list[tuple[float, dict[str, float]]] = []  # (points/s, cores by group)
    for i, rate in enumerate(rates):
        last = i == len(rates) - 1
        windows.append(_window(ctx, args, pipeline, counts, meter, rate, i, profile=last))
    if len(windows) > 1:
        _fit(ctx, windows)
    print_profiles(ctx)
    return 0


def _window(ctx: Context, args: argparse.Namespace, pipeline: Any, counts: Counts,
            meter: CpuMeter, rate: float, index: int, profile: bool,
            ) -> tuple[float, dict[str, float]]:
    """One steady window at `rate`: prints its CPU per point; returns (points/s, cores)."""
    before, cpu0 = counts.read(), meter.snapshot()
    split0 = {n: user_system(p.pid) for n, p in pipeline.processes.items()}
    with contextlib.ExitStack() as stack:
        if profile:
            for name in pipeline.processes:
                stack.enter_context(profiled(ctx, f"steady-{name}", _worker(pipeline, name),
                                             args.seconds))
        t0 = time.monotonic()
        _simulate(pipeline.url("ingest"), rate, args.seconds,
                  ctx.log_dir / f"s{index}.jsonl", 2 + index, args.anomaly_rate)
        deadline = time.monotonic() + 60
        while counts.backlog() > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
    cpu1 = meter.snapshot()
    exact = {k: max(0.0, cpu1[k] - cpu0.get(k, 0.0)) / elapsed for k in cpu1 if k != "at"}
    cores = CpuMeter.cores(cpu0, cpu1)
    split = {n: tuple(b - a for a, b in zip(split0[n], user_system(p.pid), strict=True))
             for n, p in pipeline.processes.items()}
    after = counts.read()
    points = after["points"] - before["points"]
    events = after["accepted"] - before["accepted"]
    ctx.say(f"{rate} ev/s: {events:.0f} events, {points:.0f} points in {elapsed:.1f}s "
            f"(backlog {counts.backlog():.0f}); CPU (cores): {cpu_summary(cores, 10)}")
    per_point = {k: v * elapsed / max(points, 1) * 1e6 for k, v in exact.items()
                 if k not in STORE_GROUPS and k not in ("machine", "load generator")}
    ctx.say(f"CPU per data point but the store: {sum(per_point.values()):.0f} us ("
            + ", ".join(f"{k} {v:.0f}" for k, v in sorted(per_point.items(),
                                                          key=lambda kv: -kv[1])) + ")")
    per_event = sum(per_point.values()) * points / max(events, 1)
    ctx.say(f"CPU per event but the store: {per_event:.0f} us")
    ctx.say("user/system seconds: " + ", ".join(
        f"{n} {u:.1f}/{sy:.1f}" for n, (u, sy) in split.items()))
    return points / elapsed, exact


def _fit(ctx: Context, windows: list[tuple[float, dict[str, float]]]) -> None:
    """Least squares per group over the windows: cores = fixed + marginal x points/s."""
    xs = [x for x, _ in windows]
    mean_x = sum(xs) / len(xs)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var <= 0:
        return
    lines = []
    total_fixed = total_marginal = 0.0
    for group in windows[0][1]:
        if group in ("machine", "load generator"):
            continue
        ys = [cores.get(group, 0.0) for _, cores in windows]
        mean_y = sum(ys) / len(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var
        fixed = mean_y - slope * mean_x
        lines.append((slope, group, fixed))
        if group not in STORE_GROUPS:
            total_fixed += fixed
            total_marginal += slope
    ctx.say(f"fit over {len(windows)} rates ({', '.join(f'{x:.0f}' for x in xs)} points/s): "
            f"everything but the store: fixed {total_fixed:.2f} cores, marginal "
            f"{total_marginal * 1e6:.0f} us per data point")
    for slope, group, fixed in sorted(lines, reverse=True):
        ctx.say(f"  {group}: fixed {fixed:.3f} cores, marginal {slope * 1e6:.0f} us per point")


if __name__ == "__main__":
    raise SystemExit(main())
