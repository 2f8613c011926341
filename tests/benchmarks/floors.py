"""Each event-path function's CPU per single-reading event against the floors under it.

    python -m tests.benchmarks.floors --kafka 127.0.0.1:9092 \
        --mongo mongodb://127.0.0.1:27018 [--events 600] [--rounds 2] [--clients 1]

For ingest, aggregate and alert in turn, single-reading events (one reading of 2-3 metrics,
figure 3's simulated devices) delivered by --clients keep-alive clients (1: each event
alone, what a fleet sends at a modest rate), CPU of the function's processes per event
(serving_cpu's round: functions-framework's ASGI mode, the store and Kafka apart). Side by
side in the same run, the floors that CPU cannot go below with the project's packages:

- serving: the trivial function (tests/benchmarks/trivial_function.py) served in the same
  mode with the same requests;
- store: pymongo commands (updates by `_id`, with the functions' command listener) as many
  as the function sent per event (its iot_store_commands_total, rounded), back to back
  after a 10 ms pause (1 client: a lone event's commands find the process idle, and the
  first one after a pause costs several times one in a busy loop), or back to back
  without pauses (several clients);
- Kafka: ingest's kafka-python producer options, one record written and acknowledged
  (acks=all) at a time, 10 ms apart (1 client), or --clients writers back to back, whose
  records share produce requests (kafka_write_cpu), once per ingest request;
- hand-off: waking another thread of the process and being woken back, 10 ms apart (the
  ASGI functions run their blocking work on a pool thread; kafka-python writes from its
  own network thread), once per event;
- own: aggregate's and alert's own code on the same kind of lone event with the store
  answered in process (lone_event_cpu).

What is left ("rest") is what none of them covers. The sum over the three functions is
printed beside issue 25's goal (2.0 ms per event), and the floors' sum (serving, store,
Kafka, hand-off) beside it: the least the three could cost with these packages on this
machine, whatever their own code does. The figures go to --out (JSON) too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final

from .client_floors import pymongo_case
from .common import BASE_PORT, Context, broker_ingress
from .serving_cpu import one_round

FUNCTIONS: Final = ("ingest", "aggregate", "alert")
#: Issue 25's goal for ingest + aggregate + alert per single-reading event.
GOAL_US: Final = 2000.0


def handoff_us(trips: int = 400) -> float:
    """CPU of this process per wake-up round trip to another thread, 10 ms apart."""
    ours, theirs = socket.socketpair()
    back = threading.Event()

    def other() -> None:
        while theirs.recv(1):
            back.set()

    threading.Thread(target=other, daemon=True).start()
    ours.send(b"x")
    back.wait(5)
    t0 = time.process_time()
    for _ in range(trips):
        back.clear()
        ours.send(b"x")
        back.wait(5)
        time.sleep(0.01)
    cpu = time.process_time() - t0
    sleep = _sleep_cpu(trips)
    ours.close()
    theirs.close()
    return max(0.0, cpu - sleep) / trips * 1e6


def _sleep_cpu(n: int) -> float:
    """What the 10 ms pauses themselves cost (taken off the hand-off's CPU)."""
    t0 = time.process_time()
    for _ in range(n):
        time.sleep(0.01)
    return time.process_time() - t0


def _figure(module: str, args: list[str], pattern: str) -> float:
    out = subprocess.run([sys.executable, "-m", f"tests.benchmarks.{module}", *args],
                         check=True, capture_output=True, text=True).stdout
    found = re.search(pattern, out)
    if found is None:
        raise SystemExit(f"{module} printed no figure: {out!r}")
    return float(found.group(1))


def kafka_write_us(bootstrap: str, in_flight: int, writes: int = 400) -> float:
    """kafka_write_cpu's kafka-python client: CPU per acknowledged write."""
    return _figure("kafka_write_cpu", [
        "--client", "kafka-python", "--bootstrap", bootstrap, "--in-flight", str(in_flight),
        "--writes", str(max(writes, 100 * in_flight))], r": (\d+) us of CPU per acknowledged")


def own_us(function: str) -> float:
    """lone_event_cpu: the function's own code per lone event, the store answered in process."""
    return _figure("lone_event_cpu", [function, "1000", "--rounds", "3"],
                   r": (\d+) us CPU per event")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.floors")
    parser.add_argument("--events", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=1,
                        help="keep-alive clients (1: every event alone)")
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--mongo", default="mongodb://127.0.0.1:27018")
    parser.add_argument("--out", default="artifacts/floors")
    parser.add_argument("--base-port", type=int, default=BASE_PORT + 450)
    args = parser.parse_args(argv)
    ctx = Context(quick=True, kafka=args.kafka, mongo=args.mongo, out_dir=Path(args.out),
                  _next_port=args.base_port)
    cpu: dict[str, list[float]] = {name: [] for name in (*FUNCTIONS, "trivial")}
    commands: dict[str, list[float]] = {name: [] for name in FUNCTIONS}
    floors: dict[str, list[float]] = {"kafka-python write": [], "thread hand-off": [],
                                      "own aggregate": [], "own alert": []}
    store: dict[str, list[float]] = {name: [] for name in FUNCTIONS}
    try:
        with broker_ingress() as sink:
            for r in range(args.rounds):
                # Each round: every function and every floor once, in turn, so a busy moment
                # of the machine falls on all of them alike.
                for name in (*FUNCTIONS, "trivial"):
                    per_event, _ = one_round(
                        ctx, name, None, args.events, args.clients, sink,
                        f"{name}-{r}", samples=0,
                        commands=commands.get(name))
                    cpu[name].append(per_event * 1e6)
                    ctx.say(f"round {r + 1}: {name} {per_event * 1e6:.0f} us per event"
                            + (f", {commands[name][-1]:.2f} store commands"
                               if name in commands else "")
                            + f"; load {os.getloadavg()[0]:.1f}")
                for name in FUNCTIONS:
                    burst = round(commands[name][-1])
                    store[name].append(pymongo_case(
                        args.mongo, listener=True, calls=300 * burst, burst=burst,
                        paused=args.clients == 1)() if burst else 0.0)
                floors["kafka-python write"].append(kafka_write_us(args.kafka, args.clients))
                floors["thread hand-off"].append(handoff_us())
                floors["own aggregate"].append(own_us("aggregate"))
                floors["own alert"].append(own_us("alert"))
                ctx.say(f"round {r + 1}: floors " + ", ".join(
                    f"{k} {v[-1]:.0f} us" for k, v in (*floors.items(), *(
                        (f"store {n}", v) for n, v in store.items()))))
    finally:
        ctx.cleanup()
    report = _report(cpu, commands, store, floors)
    report["clients"] = args.clients
    report["events"] = args.events
    report["loadavg"] = list(os.getloadavg())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "floors.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'floors.json'}")
    return 0


def _report(cpu: dict[str, list[float]], commands: dict[str, list[float]],
            store: dict[str, list[float]], floors: dict[str, list[float]]) -> dict[str, Any]:
    """Print the table (medians of the rounds) and return its figures."""
    med = {k: statistics.median(v) for k, v in cpu.items()}
    floor = {k: statistics.median(v) for k, v in floors.items()}
    rows: dict[str, dict[str, float]] = {}
    for name in FUNCTIONS:
        kafka = floor["kafka-python write"] if name == "ingest" else 0.0
        # ingest: the loop hands each record to the producer's thread and is woken back;
        # aggregate, alert: each delivery runs on a pool thread and is answered from the loop.
        handoff = floor["thread hand-off"]
        least = med["trivial"] + statistics.median(store[name]) + kafka + handoff
        own = floor.get(f"own {name}", 0.0)
        rows[name] = {"measured_us": med[name], "serving_us": med["trivial"],
                      "store_commands": statistics.median(commands[name]),
                      "store_us": statistics.median(store[name]), "kafka_us": kafka,
                      "handoff_us": handoff, "floors_us": least, "own_us": own,
                      "rest_us": med[name] - least - own,
                      "per_trivial": med[name] / med["trivial"]}
    print(f"\nCPU per single-reading event, us (median of {len(cpu['trivial'])} rounds), "
          "against the floors of the same run:")
    print(f"  {'function':<10}{'measured':>9}{'serving':>9}{'store':>15}{'Kafka':>7}"
          f"{'hand-off':>9}{'floors':>8}{'own':>6}{'rest':>7}{'/ trivial':>10}")
    for name, row in rows.items():
        print(f"  {name:<10}{row['measured_us']:>9.0f}{row['serving_us']:>9.0f}"
              f"{row['store_us']:>8.0f} ({row['store_commands']:.2f})"
              f"{row['kafka_us']:>7.0f}{row['handoff_us']:>9.0f}{row['floors_us']:>8.0f}"
              f"{row['own_us']:>6.0f}{row['rest_us']:>7.0f}{row['per_trivial']:>10.2f}")
    total = sum(r["measured_us"] for r in rows.values())
    least = sum(r["floors_us"] for r in rows.values())
    print(f"  ingest + aggregate + alert: {total:.0f} us measured, {least:.0f} us of floors "
          f"(goal {GOAL_US:.0f} us)")
    print("  rounds: " + "; ".join(
        f"{k} " + ", ".join(f"{x:.0f}" for x in v)
        for k, v in (*cpu.items(), *floors.items(), *((f"store {n}", v)
                                                     for n, v in store.items()))))
    return {"functions": rows, "floors_us": floor, "rounds": {
            "cpu_us": cpu, "store_commands": commands, "store_us": store, "floors_us": floors},
            "total_us": total, "floors_total_us": least, "goal_us": GOAL_US}


if __name__ == "__main__":
    raise SystemExit(main())
