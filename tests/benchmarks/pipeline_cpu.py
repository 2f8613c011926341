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
added data point, and per added event). At a low rate the fixed part dominates CPU per point;
at the 15,000 points/s of the goal the marginal part is what counts.

`--stream single` sends single-reading events instead of figure 3's gateway batches (one
event per request, one reading of 2-3 metrics, each device about 1 event/s; bench_pipeline
.STREAMS); the fit then prints the marginal CPU per event of ingest + aggregate + alert
together, and the local dispatcher's on its own line (it stands in for Knative's data plane).
`--json FILE` writes the windows and the fit.

`--before CHECKOUT` runs the same measurement on that checkout's functions and dispatcher
(PYTHONPATH=CHECKOUT/functions, with the symlink functions/iot_telemetry/local -> ../../local
that tests/benchmarks/README.md describes) and on this one, in turn for `--rounds` rounds, and
prints them side by side:

    git worktree add --detach /tmp/base-main <commit>
    ln -s ../../local /tmp/base-main/functions/iot_telemetry/local
    python -m tests.benchmarks.pipeline_cpu --stream single --rate 100,200 --seconds 30 \
        --before /tmp/base-main --rounds 2 --kafka ... --mongo ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
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
    parser.add_argument("--stream", choices=("gateway", "single"), default="gateway",
                        help="gateway: figure 3's batches; single: one single-reading event "
                        "per request")
    parser.add_argument("--json", type=Path, help="write the windows and the fit here")
    parser.add_argument("--before", type=Path, metavar="CHECKOUT",
                        help="also measure CHECKOUT's functions and dispatcher, in turn")
    parser.add_argument("--rounds", type=int, default=1, help="with --before: rounds of both")
    service_arguments(parser, "artifacts/pipeline-cpu", BASE_PORT + 300, "py-spy every process")
    args = parser.parse_args(argv)
    if args.before is not None:
        return _side_by_side(args, [a for a in (argv if argv is not None else sys.argv[1:])])
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
    ctx.say(f"warm-up {args.warmup:.0f}s at {rates[0]} ev/s ({args.stream} stream)")
    _simulate(pipeline.url("ingest"), rates[0], args.warmup, ctx.log_dir / "warmup.jsonl", 1,
              args.anomaly_rate, args.stream)
    meter = CpuMeter({n: p.pid for n, p in pipeline.processes.items()}, ctx.kafka, ctx.mongo)
    windows: list[dict[str, Any]] = []
    for i, rate in enumerate(rates):
        last = i == len(rates) - 1
        windows.append(_window(ctx, args, pipeline, counts, meter, rate, i, profile=last))
    fit = _fit(ctx, windows) if len(windows) > 1 else {}
    print_profiles(ctx)
    if args.json is not None:
        args.json.write_text(json.dumps({"stream": args.stream, "windows": windows, "fit": fit,
                                         "loadavg": os.getloadavg()}, indent=1))
    return 0


def _window(ctx: Context, args: argparse.Namespace, pipeline: Any, counts: Counts,
            meter: CpuMeter, rate: float, index: int, profile: bool) -> dict[str, Any]:
    """One steady window at `rate`: prints its CPU per point and event; returns points/s,
    events/s and the cores of each process group."""
    before, cpu0 = counts.read(), meter.snapshot()
    split0 = {n: user_system(p.pid) for n, p in pipeline.processes.items()}
    with contextlib.ExitStack() as stack:
        if profile:
            for name in pipeline.processes:
                stack.enter_context(profiled(ctx, f"steady-{name}", _worker(pipeline, name),
                                             args.seconds))
        t0 = time.monotonic()
        _simulate(pipeline.url("ingest"), rate, args.seconds,
                  ctx.log_dir / f"s{index}.jsonl", 2 + index, args.anomaly_rate, args.stream)
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
    return {"rate": rate, "points_per_s": points / elapsed, "events_per_s": events / elapsed,
            "cores": exact, "loadavg": os.getloadavg()}


#: The functions whose CPU per event the goals are about (the dispatcher stands in for
#: Knative's data plane: its own line).
FUNCTION_GROUPS = ("ingest", "aggregate", "alert")


def _fit(ctx: Context, windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Least squares per group over the windows: cores = fixed + marginal x rate, against
    points/s and against events/s."""
    fit: dict[str, Any] = {}
    for unit, key in (("point", "points_per_s"), ("event", "events_per_s")):
        xs = [w[key] for w in windows]
        mean_x = sum(xs) / len(xs)
        var = sum((x - mean_x) ** 2 for x in xs)
        if var <= 0:
            continue
        lines = {}
        for group in windows[0]["cores"]:
            if group in ("machine", "load generator"):
                continue
            ys = [w["cores"].get(group, 0.0) for w in windows]
            mean_y = sum(ys) / len(ys)
            slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var
            lines[group] = {"fixed_cores": mean_y - slope * mean_x, "marginal_us": slope * 1e6}
        but_store = [v for g, v in lines.items() if g not in STORE_GROUPS]
        functions = sum(lines.get(g, {}).get("marginal_us", 0.0) for g in FUNCTION_GROUPS)
        fit[unit] = {"groups": lines, "functions_marginal_us": functions,
                     "but_store_marginal_us": sum(v["marginal_us"] for v in but_store),
                     "but_store_fixed_cores": sum(v["fixed_cores"] for v in but_store)}
        ctx.say(f"fit over {len(windows)} rates ({', '.join(f'{x:.0f}' for x in xs)} {unit}s/s)"
                f": everything but the store: fixed "
                f"{fit[unit]['but_store_fixed_cores']:.2f} cores, marginal "
                f"{fit[unit]['but_store_marginal_us']:.0f} us per {unit}")
        ctx.say(f"  ingest + aggregate + alert: marginal {functions:.0f} us per {unit} ("
                + ", ".join(f"{g} {lines.get(g, {}).get('marginal_us', 0.0):.0f}"
                            for g in FUNCTION_GROUPS) + ")")
        ctx.say(f"  local dispatcher (Knative's data plane here): marginal "
                f"{lines.get('dispatcher', {}).get('marginal_us', 0.0):.0f} us per {unit}")
        for group, line in sorted(lines.items(), key=lambda kv: -kv[1]["marginal_us"]):
            ctx.say(f"  {group}: fixed {line['fixed_cores']:.3f} cores, marginal "
                    f"{line['marginal_us']:.0f} us per {unit}")
    return fit


def _side_by_side(args: argparse.Namespace, argv: list[str]) -> int:
    """This measurement on CHECKOUT's code and on this one, in turn, then both per event."""
    own = []
    skip = False
    for a in argv:  # the same options, without --before/--rounds/--json
        if skip:
            skip = False
            continue
        if a in ("--before", "--rounds", "--json"):
            skip = True
            continue
        if not a.startswith(("--before=", "--rounds=", "--json=")):
            own.append(a)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkout = args.before.resolve()
    if not (checkout / "functions" / "iot_telemetry" / "local").exists():
        raise SystemExit(f"{checkout}: link functions/iot_telemetry/local -> ../../local first "
                         "(tests/benchmarks/README.md), or its dispatcher is this checkout's")
    results: dict[str, list[dict[str, Any]]] = {"before": [], "this": []}
    for r in range(args.rounds):
        for name in ("before", "this"):
            env = dict(os.environ)
            if name == "before":
                env["PYTHONPATH"] = os.pathsep.join(
                    [str(checkout / "functions"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
            path = out / f"side-{name}-{r}.json"
            print(f"--- round {r + 1}: {name} ---", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "tests.benchmarks.pipeline_cpu", *own,
                            "--json", str(path)], env=env, check=True)
            results[name].append(json.loads(path.read_text()))
    print(f"\nmarginal CPU per {args.stream} event, us (load average at the end of each):")
    for name, runs in results.items():
        for i, res in enumerate(runs):
            fit = res["fit"].get("event", {})
            groups = fit.get("groups", {})
            print(f"  {name} round {i + 1}: ingest+aggregate+alert "
                  f"{fit.get('functions_marginal_us', float('nan')):.0f} ("
                  + ", ".join(f"{g} {groups.get(g, {}).get('marginal_us', float('nan')):.0f}"
                              for g in (*FUNCTION_GROUPS, "dispatcher")) + "); "
                  f"load {res['loadavg'][0]:.1f}")
    (out / "side-by-side.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
