"""`iot-telemetry`: run the pipeline locally, simulate devices, list settings."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from iot_telemetry.settings import ConfigError, Settings

from .layout import EVENTING_DIR, PORTS


def settings_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | {f'`{default}`' if default else '(empty)'} | {doc} |"
             for name, default, doc in Settings.variables()]
    return "\n".join(rows)


def _banner(mode: str, urls: dict[str, str], simulator: bool, extra: str) -> str:
    lines = [f"iot-telemetry local ({mode})", *[f"  {name:<10}{u}" for name, u in urls.items()],
             extra]
    q = urls["query"]
    lines += ["", "Look at:", f"  {q}  (the dashboard)", f"  {q}devices", f"  {q}alerts?state=open"]
    if simulator:
        lines.append(f"  {q}devices/sim-0001/series?metric=temperature&step=1m")
    lines += [f"  {q}openapi.json", f"  {urls['ingest']}metrics", ""]
    if simulator:
        lines.append("A device simulator is posting to ingest; stop everything with Ctrl-C.")
    else:
        lines.append(f"No simulator: post readings to {urls['ingest']} (README, Event format); "
                     "stop with Ctrl-C.")
    return "\n".join(lines)


def _simulator_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("simulator")
    group.add_argument("--no-simulator", action="store_true", help="run without the simulator")
    group.add_argument("--devices", type=int, default=10, help="simulated devices (10)")
    group.add_argument("--rate", type=float, default=5.0, help="events per second (5)")
    group.add_argument("--anomaly-rate", type=float, default=0.02,
                       help="chance a device starts an anomaly episode per reading (0.02)")
    group.add_argument("--duration", type=float, default=0.0,
                       help="stop the simulator after this many seconds (0 = never)")


def _run_local(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    real = bool(args.kafka or args.mongo)
    if real and not (args.kafka and args.mongo):
        print("real mode needs both --kafka and --mongo", file=sys.stderr)
        return 2
    try:
        if real:
            from .realmode import RealPipeline

            pipeline = RealPipeline(kafka=args.kafka, mongo=args.mongo,
                                    environ={**os.environ, "LOG_LEVEL": args.log_level},
                                    eventing_dir=Path(args.eventing),
                                    log_dir=Path(args.log_dir) if args.log_dir else None)
            pipeline.start()
            urls = {f: pipeline.url(f) for f in PORTS}
            extra = (f"  kafka     {args.kafka}\n  store     {args.mongo}\n"
                     f"  logs      {args.log_dir or '(this terminal)'}")
        else:
            from .embedded import EmbeddedPipeline

            pipeline = EmbeddedPipeline(  # type: ignore[assignment]
                eventing_dir=Path(args.eventing),
                environ={**os.environ, "LOG_LEVEL": args.log_level}).start()
            urls = {f: pipeline.url(f) for f in PORTS}
            extra = ("  broker    in-process, applying the Triggers of eventing/\n"
                     "  store     in-process MongoDB API (mongomock): NOT persistent, "
                     "lost on exit")
        access = Settings.from_environ()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    extra += (f"\n  access    devices: {access.ingest_auth} (INGEST_AUTH), "
              f"query API: {access.query_auth} (QUERY_AUTH)")
    print(_banner("real mode" if real else "embedded", urls, not args.no_simulator, extra),
          flush=True)
    sim: threading.Thread | None = None
    try:
        if not args.no_simulator:
            from .simulator import SimulatorOptions, simulate

            options = SimulatorOptions(url=urls["ingest"], devices=args.devices, rate=args.rate,
                                       duration=args.duration, anomaly_rate=args.anomaly_rate)
            sim = threading.Thread(target=simulate, args=(options, stop), daemon=True)
            sim.start()
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        stop.set()
    finally:
        if sim is not None:
            sim.join(timeout=10)
        pipeline.stop()
    return 0


def _devices(args: argparse.Namespace) -> int:
    from iot_telemetry.devices import Registry
    from iot_telemetry.errors import TelemetryError
    from iot_telemetry.store import Store

    try:
        settings = Settings.from_environ()
        registry = Registry(Store(settings))
        if args.action == "add":
            units = dict(u.split("=", 1) for u in args.unit if "=" in u)
            metadata = {k: v for k, v in (("location", args.location), ("units", units)) if v}
            token = registry.add(args.device_id, args.name, metadata)
            print(f"registered {args.device_id}; its token (shown only now):\n{token}")
        elif args.action == "list":
            for d in registry.list():
                seen = d.last_seen.isoformat() if d.last_seen else "never"
                state = "enabled" if d.enabled else "DISABLED"
                print(f"{d.id:<24} {state:<9} last seen {seen:<32} {d.name} {d.metadata or ''}")
        elif args.action == "rotate-token":
            print(f"new token for {args.device_id} (the old one no longer works):\n"
                  f"{registry.rotate(args.device_id)}")
        else:
            registry.set_enabled(args.device_id, args.action == "enable")
            print(f"{args.device_id} {args.action}d")
    except (ConfigError, TelemetryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iot-telemetry", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    local = sub.add_parser(
        "local", help="run all four functions and the eventing wiring locally",
        description="Embedded by default (no Kafka or MongoDB needed); with --kafka and "
                    "--mongo, real mode: one functions-framework process per function and a "
                    "dispatcher playing KafkaSource + Broker + Triggers from eventing/.")
    local.add_argument("--kafka", default=os.environ.get("LOCAL_KAFKA", ""),
                       help="Kafka bootstrap servers for real mode (env LOCAL_KAFKA)")
    local.add_argument("--mongo", default=os.environ.get("LOCAL_MONGO", ""),
                       help="MongoDB-API URL for real mode (env LOCAL_MONGO)")
    local.add_argument("--eventing", default=str(EVENTING_DIR), help="eventing/ manifests")
    local.add_argument("--log-dir", default="", help="real mode: write each process's log here")
    local.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "WARNING"),
                       help="log level of the functions (env LOG_LEVEL; WARNING here so the "
                            "simulator's progress line stays readable)")
    _simulator_args(local)
    sub.add_parser("simulate", help="run the device simulator against an ingest URL",
                   add_help=False)
    sub.add_parser("settings", help="print every configuration variable as a Markdown table")
    devices = sub.add_parser(
        "devices", help="manage the device registry in the configured store (MONGO_URL)")
    dsub = devices.add_subparsers(dest="action", required=True)
    add = dsub.add_parser("add", help="register a device and print its token (shown once)")
    add.add_argument("device_id")
    add.add_argument("--name", default="", help="display name")
    add.add_argument("--location", default="", help="where the device is")
    add.add_argument("--unit", action="append", default=[], metavar="METRIC=UNIT",
                     help="unit of a metric, e.g. temperature=celsius (repeatable)")
    dsub.add_parser("list", help="list registered devices")
    for action, text in (("disable", "refuse the device's writes (403)"),
                         ("enable", "accept the device's writes again"),
                         ("rotate-token", "issue a new token; the old one stops working")):
        dsub.add_parser(action, help=text).add_argument("device_id")
    args, rest = parser.parse_known_args(argv)
    if args.command == "simulate":
        from .simulator import main as simulate_main

        return simulate_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "settings":
        print(settings_table())
        return 0
    if args.command == "devices":
        return _devices(args)
    return _run_local(args)


if __name__ == "__main__":
    sys.exit(main())
