"""CPU per data point of everything but the store, at one steady rate, with profiles.

Figure 3's ramp measures CPU per point at the highest rate the store sustains, where fixed
costs (Kafka's polls, the dispatcher's idle loop) weigh on few points. This script holds the
whole pipeline (ingest -> Kafka -> dispatcher -> aggregate + alert -> store, real mode) at one
offered rate after a warm-up, and prints each process group's CPU per data point and, with
py-spy installed, every Python process's top frames over the same window:

    python -m tests.benchmarks.pipeline_cpu --rate 20 --seconds 40 \
        --kafka 127.0.0.1:9092 --mongo mongodb://127.0.0.1:27018
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

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
    profiled,
)


def user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process tree so far (system time is where thread
    switches and socket calls go)."""
    splits = [cpu_split(p) for p in descendants(pid)]
    return sum(u for u, _ in splits), sum(sy for _, sy in splits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.pipeline_cpu")
    parser.add_argument("--rate", type=float, default=20.0, help="events/s offered")
    parser.add_argument("--seconds", type=float, default=40.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--variant", default="as-is:32")
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--mongo", default="mongodb://127.0.0.1:27018")
    parser.add_argument("--out", default="artifacts/pipeline-cpu")
    parser.add_argument("--base-port", type=int, default=BASE_PORT + 300)
    parser.add_argument("--profile", action="store_true", help="py-spy every process")
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
    pipeline, suffix, _db = _pipeline(ctx, Variant.parse(args.variant), 0)
    ctx.on_exit(pipeline.stop)
    pipeline.start(timeout=90)
    _wait_ready(f"http://127.0.0.1:{pipeline.broker_port}/", 90)
    ctx.on_exit(lambda: _delete_kafka(ctx, suffix))
    counts = Counts(pipeline)
    ctx.say(f"warm-up {args.warmup:.0f}s at {args.rate} ev/s")
    _simulate(pipeline.url("ingest"), args.rate, args.warmup, ctx.log_dir / "warmup.jsonl", 1)
    meter = CpuMeter({n: p.pid for n, p in pipeline.processes.items()}, ctx.kafka, ctx.mongo)
    before, cpu0 = counts.read(), meter.snapshot()
    split0 = {n: user_system(p.pid) for n, p in pipeline.processes.items()}
    with contextlib.ExitStack() as stack:
        for name in pipeline.processes:
            stack.enter_context(profiled(ctx, f"steady-{name}", _worker(pipeline, name),
                                         args.seconds))
        t0 = time.monotonic()
        _simulate(pipeline.url("ingest"), args.rate, args.seconds, ctx.log_dir / "s.jsonl", 2)
        deadline = time.monotonic() + 60
        while counts.backlog() > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
    cores = CpuMeter.cores(cpu0, meter.snapshot())
    split = {n: tuple(b - a for a, b in zip(split0[n], user_system(p.pid), strict=True))
             for n, p in pipeline.processes.items()}
    after = counts.read()
    points = after["points"] - before["points"]
    events = after["accepted"] - before["accepted"]
    ctx.say(f"{events:.0f} events, {points:.0f} points in {elapsed:.1f}s "
            f"(backlog {counts.backlog():.0f}); CPU (cores): {cpu_summary(cores, 10)}")
    per_point = {k: v * elapsed / max(points, 1) * 1e6 for k, v in cores.items()
                 if k not in STORE_GROUPS and k not in ("machine", "load generator")}
    ctx.say(f"CPU per data point but the store: {sum(per_point.values()):.0f} us ("
            + ", ".join(f"{k} {v:.0f}" for k, v in sorted(per_point.items(),
                                                          key=lambda kv: -kv[1])) + ")")
    per_event = sum(per_point.values()) * points / max(events, 1)
    ctx.say(f"CPU per event but the store: {per_event:.0f} us")
    ctx.say("user/system seconds: " + ", ".join(
        f"{n} {u:.1f}/{sy:.1f}" for n, (u, sy) in split.items()))
    for name, prof in ctx.profiles.items():
        print(f"== {name}: {prof['busy_samples']} busy of {prof['samples']}")
        for frame, pct in prof["top_own"][:12]:
            print(f"   own {pct:5.1f}%  {frame}")
        for frame, pct in prof["top_total"][:15]:
            print(f"   tot {pct:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
