"""CPU of the consumers' own code on a lone event: aggregate's or alert's handler with every
store round trip answered in this process, so what is left is what is not a store command
(decoding, validation, building the writes, group commit, metrics, logging).

    python -m tests.benchmarks.lone_event_cpu aggregate [EVENTS] [--rounds N] [--stream NAME]
    python -m tests.benchmarks.lone_event_cpu alert 2000 --profile cumulative

The functions' logs go to stderr as in production (LOG_LEVEL INFO): send them elsewhere
(2>/dev/null) rather than leave them out, they are part of the cost.

The events are function_cpu's (--stream single by default: one reading of 2-3
metrics, no samples, 200 devices; no anomalies, so alert's lone event is one compare-and-swap).
The store answers in process the commands a steady event sends: the hour update returns the
totals its own update carries, every update command matches what it names, reads find
nothing. A figure of this checkout's library; run it from two checkouts
(PYTHONPATH=<checkout>/functions:<checkout>) to compare versions: function_cpu gives the same
events' CPU with the real store commands.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers

from iot_telemetry import aggregate, alert
from iot_telemetry.observability import configure_logging
from iot_telemetry.runtime import Runtime, set_runtime
from iot_telemetry.service import Answer, Incoming
from iot_telemetry.settings import Settings

from .function_cpu import STREAMS, stream


class _Found(list[dict[str, Any]]):
    """A cursor that found nothing."""

    def limit(self, _n: int) -> _Found:
        return self

    def sort(self, *_args: Any) -> _Found:
        return self


class _Collection:
    """A collection answering in process what a steady lone event asks of it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_one_and_update(self, filter: dict[str, Any], update: dict[str, Any],
                            **_options: Any) -> dict[str, Any]:
        # The hour document after its first event: the totals this update adds.
        totals: dict[str, dict[str, Any]] = {}
        for op in ("$inc", "$min", "$max"):
            for path, value in update.get(op, {}).items():
                where, metric, field = [*path.split("."), "", ""][:3]
                if where == "tot":
                    totals.setdefault(metric, {})[field] = value
        return {"_id": filter["_id"], "v": 1, "tot": totals}

    def find(self, *_args: Any, **_kwargs: Any) -> _Found:
        return _Found()

    def find_one(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    def insert_one(self, _doc: dict[str, Any]) -> None:
        return None


class _Database:
    def command(self, command: dict[str, Any], *_args: Any, **_kwargs: Any) -> dict[str, Any]:
        return {"n": len(command.get("updates", [])), "ok": 1.0}

    def __getitem__(self, name: str) -> _Collection:
        return _Collection(name)


def runtime() -> Runtime:
    """A runtime whose store answers in process (no server is contacted)."""
    rt = Runtime(Settings.from_environ({}, {
        "MONGO_URL": "mongodb://127.0.0.1:9", "KAFKA_BOOTSTRAP_SERVERS": "memory://",
        "K_SINK": "http://127.0.0.1:9/"}))
    # Logging as the functions log in production (JSON lines at LOG_LEVEL, on stderr).
    configure_logging(rt.settings.log_level)
    store: Any = rt.store
    store.db = _Database()
    store._ferretdb = False
    store._indexed = True
    for name in ("rollup_hours", "rollup_days", "devices", "alert_state", "alerts",
                 "event_times"):
        store._collections[name] = _Collection(name)
    set_runtime(rt)
    return rt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.lone_event_cpu")
    parser.add_argument("function", choices=("aggregate", "alert"))
    parser.add_argument("events", type=int, nargs="?", default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stream", choices=sorted(STREAMS), default="single")
    parser.add_argument("--profile", metavar="SORT", help="cProfile one round, sorted by SORT")
    args = parser.parse_args(argv)
    rt = runtime()
    # The library's handler of a delivery as the ASGI mode calls it on its blocking threads,
    # after reading the request: the serving mode's own cost is serving_cpu's.
    handle: Callable[[Incoming, Runtime], Answer] = (
        aggregate._aggregate if args.function == "aggregate" else alert._alert)
    devices, samples = STREAMS[args.stream]
    events = stream(args.events, samples, devices, 0.0)
    requests = [(dict(h), b) for h, b, _ in events]

    def one_round() -> float:
        t0 = time.process_time()
        for headers, body in requests:
            status = handle(Incoming("POST", "/", Headers(headers), body), rt).status
            if status not in (200, 204):
                raise SystemExit(f"{args.function} answered {status}")
        return (time.process_time() - t0) / len(requests) * 1e6

    one_round()  # each device's first event, caches
    if args.profile:
        profile = cProfile.Profile(time.process_time)
        profile.enable()
        one_round()
        profile.disable()
        pstats.Stats(profile).sort_stats(args.profile).print_stats(40)
        return 0
    cpu = [one_round() for _ in range(args.rounds)]
    print(f"{args.function} ({args.stream}): {statistics.median(cpu):.0f} us CPU per event "
          f"(median of {args.rounds} rounds, min {min(cpu):.0f}), the store answered in process")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
