"""Run the benchmarks, print the figures as a table, write them with the machine to JSON.

    python -m tests.benchmarks.run [--quick] [--only NAME[,NAME]] [--profile]
                                   [--out artifacts/benchmarks.json]

Needs the real Kafka and a store: `bash local/services/services.sh start` (--mongo picks
the store: mongo-java-server, FerretDB, or any MongoDB). Progress lines go to stderr; the
table to stdout. See tests/benchmarks/README.md for what each figure measures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from .common import BASE_PORT, Context, git_commit, load_tool, machine_info, store_label

#: name -> (figure, what it measures); run in this order.
BENCHES: dict[str, str] = {
    "ingest": "1  ingest vs trivial function and raw producer",
    "consumers": "2  aggregate and alert vs raw pymongo",
    "pipeline": "3+6  whole pipeline in real mode; peak RSS under that load",
    "query": "4  query latency over a seeded history",
    "coldstart": "5  cold start per function",
}


def _runner(name: str, tool: str) -> Callable[[Context], None]:
    if name == "ingest":
        from . import bench_ingest

        return lambda ctx: bench_ingest.run(ctx, tool)
    if name == "consumers":
        from . import bench_consumers

        return bench_consumers.run
    if name == "pipeline":
        from . import bench_pipeline

        return bench_pipeline.run
    if name == "query":
        from . import bench_query

        return bench_query.run
    from . import bench_coldstart

    return bench_coldstart.run


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(ctx: Context) -> str:
    lines = []
    width = max([len(r.name) for r in ctx.rows] + [20])
    current = None
    for row in ctx.rows:
        if row.figure != current:
            current = row.figure
            lines.append(f"\n== figure {row.figure} ==")
        note = f"  {row.note}" if row.note else ""
        lines.append(f"{row.name:<{width}}  {_fmt(row.value):>10} {row.unit:<6}{note}")
    if ctx.goals:
        lines.append("\n== goals ==")
        for g in ctx.goals:
            status = {True: "MET", False: "MISSED", None: "n/a"}[g.met]
            note = f"  ({g.note})" if g.note else ""
            lines.append(f"{status:<7} {g.goal}: target {g.target}, measured {g.measured}{note}")
    for name, prof in ctx.profiles.items():
        lines.append(f"\n== profile {name} ({prof['busy_samples']} busy of {prof['samples']} "
                     "samples) ==")
        lines.append("own time:")
        lines += [f"  {pct:5.1f}%  {frame}" for frame, pct in prof["top_own"][:10]]
        lines.append("total time (incl. callees):")
        lines += [f"  {pct:5.1f}%  {frame}" for frame, pct in prof["top_total"][:10]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.run",
                                     description="Benchmarks of the telemetry pipeline.")
    parser.add_argument("--quick", action="store_true",
                        help="shorter loads and a smaller seeded history (~3 min)")
    parser.add_argument("--only", default="",
                        help=f"comma-separated subset of: {', '.join(BENCHES)}")
    parser.add_argument("--out", default="artifacts/benchmarks.json", help="JSON output file")
    parser.add_argument("--profile", action="store_true",
                        help="sample the servers with py-spy during the main loads")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator of figure 1 (auto: wrk when installed)")
    parser.add_argument("--pipeline-variants", default="as-is:8",
                        help="figure 3's pipelines, one after the other: ORDER:THREADS,... "
                        "where ORDER is the aggregate Trigger's delivery order (as-is: "
                        "eventing/ unchanged; ordered; unordered) and THREADS aggregate's "
                        "threads (requests in flight per process), e.g. ordered:8,unordered:32")
    parser.add_argument("--pipeline-start-rate", type=float, default=1.0,
                        help="figure 3's first offered rate, events/s (x1.5 per step)")
    parser.add_argument("--pipeline-stream", choices=("gateway", "single"), default="gateway",
                        help="figure 3's stream: gateway (batches of 20 events of 10 readings, "
                        "60 devices) or single (one event per request, one reading of 2-3 "
                        "metrics, each device about 1 event/s)")
    parser.add_argument("--query-baseline", type=Path, metavar="CHECKOUT",
                        help="figure 4 also serves query from CHECKOUT's functions/ (e.g. "
                        "`git worktree add /tmp/base main`), request by request in turn with "
                        "this checkout's, and checks both answer the same")
    parser.add_argument("--base-port", type=int, default=BASE_PORT,
                        help=f"first port of the run's servers (default {BASE_PORT}); move it "
                        "when another benchmark run on this machine uses that range")
    parser.add_argument("--kafka", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS",
                                                          "127.0.0.1:9092"))
    parser.add_argument("--mongo", default=os.environ.get("MONGO_URL",
                                                          "mongodb://127.0.0.1:27017"))
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    if "pipeline" in names:
        from .bench_pipeline import Variant

        try:
            for v in args.pipeline_variants.split(","):
                Variant.parse(v.strip())
        except ValueError as exc:
            parser.error(f"--pipeline-variants: {exc}")
    tool = load_tool(args.loadgen)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick=args.quick, kafka=args.kafka, mongo=args.mongo, out_dir=out.parent,
                  profile=args.profile, _next_port=args.base_port,
                  pipeline_variants=tuple(v.strip() for v in args.pipeline_variants.split(",")
                                          if v.strip()),
                  pipeline_start_rate=args.pipeline_start_rate,
                  pipeline_stream=args.pipeline_stream,
                  query_baseline=args.query_baseline)
    started = datetime.now(UTC)
    ctx.say(f"benchmark run {ctx.run_id} ({'quick' if args.quick else 'full'}): "
            f"{', '.join(names)}; logs in {ctx.log_dir}")
    machine = machine_info(args.mongo)
    ctx.say(f"machine: {machine['nproc']} cores, {machine['memory_gib']} GiB, "
            f"{machine['cpu_model']}; load average {machine['loadavg_at_start']}; store "
            f"{store_label(machine)}")
    # SIGTERM as Ctrl-C, so servers, databases and topics of the run are removed either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    failed: dict[str, str] = {}
    timings: dict[str, float] = {}
    try:
        for name in names:
            t0 = time.monotonic()
            ctx.say(f"--- {name}: figure {BENCHES[name]}")
            try:
                _runner(name, tool)(ctx)
            except Exception as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"
                ctx.say(f"{name} FAILED: {failed[name]}\n{traceback.format_exc()}")
            finally:
                ctx.cleanup()
            timings[name] = round(time.monotonic() - t0, 1)
    except KeyboardInterrupt:
        ctx.say("interrupted: cleaning up")
        ctx.cleanup()
        return 130
    machine["loadavg_at_end"] = os.getloadavg()
    report = {
        "run_id": ctx.run_id, "started": started.isoformat(), "mode":
        "quick" if args.quick else "full", "benches": names, "seconds": timings,
        "machine": machine, "git": git_commit(),
        "rows": [asdict(r) for r in ctx.rows], "goals": [asdict(g) for g in ctx.goals],
        "profiles": ctx.profiles, "raw": ctx.raw, "failed": failed,
    }
    out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"benchmarks {ctx.run_id} on {machine['nproc']} cores / {machine['memory_gib']} GiB "
          f"({machine['cpu_model']}), store {store_label(machine)}, "
          f"commit {report['git']['describe']}, "
          f"load average {machine['loadavg_at_start']} -> {machine['loadavg_at_end']}")
    print(table(ctx))
    if failed:
        print("\nFAILED: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    ctx.say(f"wrote {out} in {time.monotonic() - ctx.started:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
