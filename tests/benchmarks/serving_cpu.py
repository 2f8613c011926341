"""CPU per request of one function served over HTTP as production serves it
(functions-framework: its ASGI mode for ingest, aggregate and alert), on a fixed stream of
events, beside a trivial function served in the same mode.

function_cpu measures the handler in-process; the difference is the cost of serving
(gunicorn, Flask, functions-framework, decoding the delivery, building the answer):

    python -m tests.benchmarks.serving_cpu aggregate --mongo mongodb://127.0.0.1:27018 \
        [--events 400] [--threads 3] [--rounds 2] [--before /tmp/main-checkout] [--profile]
    # ingest, single-reading events (no samples), 16 clients, beside the trivial function:
    python -m tests.benchmarks.serving_cpu ingest --samples 0 --threads 16 --trivial \
        --kafka 127.0.0.1:9092 --mongo mongodb://127.0.0.1:27018 --before /tmp/base-main

ingest's requests are the same events as devices POST them (binary mode), written to a fresh
topic of the real Kafka (acks=all); Kafka's CPU is apart. With --trivial, each round also
serves tests/benchmarks/trivial_function.py in the mode that checkout serves ingest in
(`trivial` on Flask, `trivial_async` in the ASGI mode) with the same requests: the floor a
function's CPU per request is judged against.

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
    HERE,
    Context,
    FunctionServer,
    broker_ingress,
    cpu_seconds,
    create_topic,
    descendants,
    metric_sum,
    metrics,
    mongo_client,
    print_profiles,
    profiled,
    python_load,
    service_arguments,
)
from .function_cpu import WARMUP, stream


def _serve(ctx: Context, function: str, checkout: Path | None, db: str, sink: str,
           topic: str) -> FunctionServer:
    env = {"MONGO_URL": ctx.mongo, "MONGO_DB": db, "KAFKA_BOOTSTRAP_SERVERS": ctx.kafka,
           "KAFKA_TOPIC": topic, "INGEST_RATE_LIMIT": "1000000000",
           "LOG_LEVEL": "INFO", "K_SINK": sink, "THREADS": str(THREADS.get(function, 16))}
    functions = (checkout or FUNCTIONS_DIR.parent) / "functions"
    source, target = functions / f"{function}.py", function
    if checkout is not None:  # its package before the one installed in the venv
        env["PYTHONPATH"] = os.pathsep.join([str(checkout / "functions"), str(checkout)])
    if function == "trivial":  # in the mode that checkout serves ingest in
        source = HERE / "trivial_function.py"
        asgi = "async def ingest" in (functions / "ingest.py").read_text(encoding="utf-8")
        target = "trivial_async" if asgi else "trivial"
    return FunctionServer(ctx, target, source, env,
                          label=f"{function}-{checkout.name if checkout else 'this'}-{db}")


def _store_commands(url: str) -> float:
    """The commands a served function has sent to the store so far (its /metrics)."""
    return metric_sum(metrics(url), "iot_store_commands_total")


def one_round(ctx: Context, function: str, checkout: Path | None, events: int,
              threads: int, sink: str, label: str, samples: int = 9,
              commands: list[float] | None = None) -> tuple[float, float]:
    """CPU seconds of the function's processes per request and per data point, over `events`
    deliveries. With `commands`, the store commands the function sent per request (its
    iot_store_commands_total) are appended to it."""
    db = ctx.name(f"serving_{uuid.uuid4().hex[:6]}")
    topic = ctx.name(f"serving_{uuid.uuid4().hex[:6]}").replace("_", ".")
    if function == "ingest":
        create_topic(ctx, topic, partitions=3)
    requests = stream(WARMUP + events, samples)
    points = sum(p for _, _, p in requests[WARMUP:])
    server = _serve(ctx, function, checkout, db, sink, topic).start()
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
                              lambda s: s in (200, 202, 204))
            if res.ok != res.requests:
                raise SystemExit(f"{function}: not all answered 200/202/204: {res.statuses}")

        drive(0, WARMUP)  # connections, indexes, each device's first event
        assert server.proc is not None
        sent0 = _store_commands(server.url) if commands is not None else 0.0
        pids = descendants(server.proc.pid)
        cpu0 = sum(cpu_seconds(p) for p in pids)
        with profiled(ctx, label, server.worker_pid(), 600):
            drive(WARMUP, events)
        cpu = sum(cpu_seconds(p) for p in pids) - cpu0
        if commands is not None:
            commands.append((_store_commands(server.url) - sent0) / events)
    finally:
        server.stop()
        client = mongo_client(ctx)
        client.drop_database(db)
        client.close()
    return cpu / events, cpu / points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.serving_cpu")
    parser.add_argument("function", choices=("aggregate", "alert", "ingest"))
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--samples", type=int, default=9,
                        help="buffered readings per event (figure 3: 9; 0: single readings)")
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--trivial", action="store_true",
                        help="also the trivial function in each checkout's serving mode")
    parser.add_argument("--before", type=Path, help="a checkout to compare with, in turn")
    service_arguments(parser, "artifacts/serving-cpu", BASE_PORT + 400, "py-spy the worker")
    args = parser.parse_args(argv)
    ctx = Context(quick=True, kafka=args.kafka, mongo=args.mongo, out_dir=Path(args.out),
                  profile=args.profile, _next_port=args.base_port)
    versions: list[tuple[str, Path | None]] = [("this", None)]
    if args.before is not None:
        versions.insert(0, ("before", args.before.resolve()))
    functions = [args.function, *(["trivial"] if args.trivial else [])]
    results: dict[str, list[tuple[float, float]]] = {
        f"{function} {name}": [] for name, _ in versions for function in functions}
    try:
        with broker_ingress() as sink:
            for r in range(args.rounds):
                for name, checkout in versions:
                    for function in functions:
                        cpu = one_round(ctx, function, checkout, args.events, args.threads,
                                        sink, f"{function}-{name}-{r}", args.samples)
                        results[f"{function} {name}"].append(cpu)
                        ctx.say(f"{function} {name} round {r + 1}: {cpu[0] * 1e6:.0f} us CPU "
                                f"per event, {cpu[1] * 1e6:.1f} us per data point; load "
                                f"{os.getloadavg()[0]:.1f}")
    finally:
        ctx.cleanup()
    for label, values in results.items():
        print(f"{label}, CPU over HTTP: per event " + ", ".join(
            f"{e * 1e6:.0f}" for e, _ in values) + " us; per data point "
            + ", ".join(f"{p * 1e6:.1f}" for _, p in values) + " us")
    if args.trivial:
        for name, _ in versions:
            ratios = [f / t for (f, _), (t, _) in zip(
                results[f"{args.function} {name}"], results[f"trivial {name}"], strict=True)]
            print(f"{args.function} {name} / trivial function in its serving mode: "
                  + ", ".join(f"{x:.2f}" for x in ratios))
    print_profiles(ctx, 15, 20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
