"""CPU per request of one consumer function (alert or aggregate) served over HTTP as
production serves it (functions-framework's gunicorn), on a fixed stream of events.

function_cpu measures the handler in-process; the difference is the cost of serving
(gunicorn, Flask, functions-framework, decoding the delivery, building the answer):

    python -m tests.benchmarks.serving_cpu aggregate --mongo mongodb://127.0.0.1:27018 \
        [--events 400] [--threads 3] [--rounds 2] [--before /tmp/main-checkout] [--profile]

Events as function_cpu makes them (figure 3's simulated devices), delivered in binary
mode by --threads keep-alive clients, each owning its devices (as the dispatcher's
partitions do), to a server with its Knative Service's THREADS. CPU is the function's
process tree (gunicorn's arbiter and worker); the store's is apart. With --before, that
checkout's functions serve the same stream in turn with this one's (before, after, before,
after, ...), each round on a fresh database.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

from iot_telemetry.local.layout import THREADS

from .common import (
    BASE_PORT,
    FUNCTIONS_DIR,
    Context,
    FunctionServer,
    broker_ingress,
    cpu_seconds,
    descendants,
    mongo_client,
    print_profiles,
    profiled,
    python_load,
    service_arguments,
)
from .function_cpu import WARMUP, stream


def _serve(ctx: Context, function: str, checkout: Path | None, db: str, sink: str,
           ) -> FunctionServer:
    env = {"MONGO_URL": ctx.mongo, "MONGO_DB": db, "KAFKA_BOOTSTRAP_SERVERS": ctx.kafka,
           "LOG_LEVEL": "INFO", "K_SINK": sink, "THREADS": str(THREADS[function])}
    source = FUNCTIONS_DIR / f"{function}.py"
    if checkout is not None:  # its package before the one installed in the venv
        env["PYTHONPATH"] = os.pathsep.join([str(checkout / "functions"), str(checkout)])
        source = checkout / "functions" / f"{function}.py"
    return FunctionServer(ctx, function, source, env,
                          label=f"{function}-{checkout.name if checkout else 'this'}-{db}")


def one_round(ctx: Context, function: str, checkout: Path | None, events: int,
              threads: int, sink: str, label: str) -> tuple[float, float]:
    """CPU seconds of the function's processes per request and per data point, over `events`
    deliveries."""
    db = ctx.name(f"serving_{uuid.uuid4().hex[:6]}")
    requests = stream(WARMUP + events)
    points = sum(p for _, _, p in requests[WARMUP:])
    server = _serve(ctx, function, checkout, db, sink).start()
    try:
        def make(offset: int, count: int) -> object:
            def request(thread: int, n: int) -> tuple[str, str, dict[str, str], bytes] | None:
                i = offset + thread + n * threads
                if i >= offset + count:
                    return None
                headers, body, _ = requests[i]
                return "POST", "/", headers, body
            return request

        def drive(offset: int, count: int) -> None:
            res = python_load(server.url, make(offset, count), threads, 600,  # type: ignore[arg-type]
                              lambda s: s in (200, 204))
            if res.ok != res.requests:
                raise SystemExit(f"{function}: not all answered 200/204: {res.statuses}")

        drive(0, WARMUP)  # connections, indexes, each device's first event
        assert server.proc is not None
        pids = descendants(server.proc.pid)
        cpu0 = sum(cpu_seconds(p) for p in pids)
        with profiled(ctx, label, server.worker_pid(), 600):
            drive(WARMUP, events)
        cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    finally:
        server.stop()
        client = mongo_client(ctx)
        client.drop_database(db)
        client.close()
    return cpu / events, cpu / points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.serving_cpu")
    parser.add_argument("function", choices=("aggregate", "alert"))
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", type=Path, help="a checkout to compare with, in turn")
    service_arguments(parser, "artifacts/serving-cpu", BASE_PORT + 400, "py-spy the worker")
    args = parser.parse_args(argv)
    ctx = Context(quick=True, kafka=args.kafka, mongo=args.mongo, out_dir=Path(args.out),
                  profile=args.profile, _next_port=args.base_port)
    versions: list[tuple[str, Path | None]] = [("this", None)]
    if args.before is not None:
        versions.insert(0, ("before", args.before.resolve()))
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in versions}
    try:
        with broker_ingress() as sink:
            for r in range(args.rounds):
                for name, checkout in versions:
                    cpu = one_round(ctx, args.function, checkout, args.events, args.threads,
                                    sink, f"{args.function}-{name}-{r}")
                    results[name].append(cpu)
                    ctx.say(f"{args.function} {name} round {r + 1}: {cpu[0] * 1e6:.0f} us CPU "
                            f"per event, {cpu[1] * 1e6:.1f} us per data point")
    finally:
        ctx.cleanup()
    for name, values in results.items():
        print(f"{args.function} {name}, CPU over HTTP: per event " + ", ".join(
            f"{e * 1e6:.0f}" for e, _ in values) + " us; per data point "
            + ", ".join(f"{p * 1e6:.1f}" for _, p in values) + " us")
    print_profiles(ctx, 15, 20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
