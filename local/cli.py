"""`iot-telemetry`: run the pipeline locally, simulate devices, list settings."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from iot_telemetry.settings import ConfigError, Settings

from . import admin
from .layout import BROKER_PORT, EVENTING_DIR, PORTS

# Every port of the local run: (flag, environment twin, default). 0 = any free port.
PORT_OPTIONS: dict[str, tuple[str, str, int]] = {
    name: (f"--{name}-port", f"IOT_{name.upper()}_PORT", port)
    for name, port in {**PORTS, "broker": BROKER_PORT}.items()
}


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


def _port_args(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    group = parser.add_argument_group("ports (0 = any free port)")
    for name, (flag, variable, default) in PORT_OPTIONS.items():
        raw = environ.get(variable, "")
        try:
            value = int(raw) if raw else default
        except ValueError:
            parser.error(f"{variable}: {raw!r} is not a port number")
        group.add_argument(flag, type=int, default=value, dest=f"{name}_port", metavar="PORT",
                           help=f"{name} port (env {variable}, default {default})")


def _claim_ports(args: argparse.Namespace) -> dict[str, int] | str:
    """Each port of the run, 0 replaced by a free one; or why one cannot be had."""
    ports = {}
    for name, (flag, variable, _default) in PORT_OPTIONS.items():
        port = getattr(args, f"{name}_port")
        with socket.socket() as probe:
            # As the servers bind (werkzeug, gunicorn): a connection of the previous run
            # lingering in TIME_WAIT does not make a port busy, only a listener does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OverflowError:
                return f"{flag} {port}: not a port number (0-65535)"
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    return f"{flag} {port}: {exc.strerror}"
                return (f"port {port} ({name}) is already in use, perhaps by another "
                        f"`iot-telemetry local`: stop it, or choose another port with {flag} "
                        f"or {variable} (0 = any free port)")
            ports[name] = probe.getsockname()[1]
    return ports


def _stop_on_signals(stop: threading.Event) -> None:
    """Ctrl-C and SIGTERM stop the run, even in a background job (started with SIGINT ignored)."""
    def request_stop(signum: int, _frame: object) -> None:
        stop.set()
        # a second Ctrl-C interrupts whatever the shutdown is waiting for
        signal.signal(signal.SIGINT, signal.default_int_handler)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)


def _register_simulated(args: argparse.Namespace, real: bool) -> dict[str, str]:
    """Register the simulator's devices (INGEST_AUTH=registered); their tokens, by id."""
    if args.no_simulator:
        return {}
    from iot_telemetry.devices import Registry
    from iot_telemetry.errors import Conflict
    from iot_telemetry.runtime import get_runtime
    from iot_telemetry.store import Store

    from .simulator import device_ids

    registry = (Registry(Store(Settings.from_environ(None, {"MONGO_URL": args.mongo})))
                if real else get_runtime().registry)
    tokens = {}
    for device_id in device_ids(args.devices):
        try:
            tokens[device_id] = registry.add(device_id, f"simulated {device_id}")
        except Conflict:  # registered by an earlier run on the same store
            tokens[device_id] = registry.rotate(device_id)
    return tokens


def _run_local(args: argparse.Namespace) -> int:
    stop = threading.Event()
    _stop_on_signals(stop)
    real = bool(args.kafka or args.mongo)
    if real and not (args.kafka and args.mongo):
        print("real mode needs both --kafka and --mongo", file=sys.stderr)
        return 2
    ports = _claim_ports(args)
    if isinstance(ports, str):
        print(f"iot-telemetry local: {ports}", file=sys.stderr)
        return 2
    functions = {f: ports[f] for f in PORTS}
    supervised = None
    try:
        # Before any process starts: a bad setting is one line here, not a function that
        # exits at start.
        access = Settings.from_environ()
        if real:
            from .realmode import RealPipeline, StartError

            pipeline = RealPipeline(kafka=args.kafka, mongo=args.mongo, ports=functions,
                                    broker_port=ports["broker"],
                                    environ={**os.environ, "LOG_LEVEL": args.log_level},
                                    eventing_dir=Path(args.eventing),
                                    log_dir=Path(args.log_dir) if args.log_dir else None)
            try:
                supervised = pipeline.start()
            except StartError as exc:
                print(f"iot-telemetry local: {exc}", file=sys.stderr)
                return 1
            urls = {f: pipeline.url(f) for f in PORTS}
            extra = (f"  kafka     {args.kafka}\n  store     {args.mongo}\n"
                     f"  logs      {args.log_dir or '(this terminal)'}\n"
                     "  restarts  a process that exits is restarted (as on Knative); each exit "
                     "and restart is reported here")
        else:
            from .embedded import EmbeddedPipeline

            pipeline = EmbeddedPipeline(  # type: ignore[assignment]
                ports=functions, broker_port=ports["broker"],
                eventing_dir=Path(args.eventing),
                environ={**os.environ, "LOG_LEVEL": args.log_level}).start()
            urls = {f: pipeline.url(f) for f in PORTS}
            extra = ("  broker    in-process, applying the Triggers of eventing/\n"
                     "  store     in-process MongoDB API (mongomock): NOT persistent, "
                     "lost on exit")
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    extra += (f"\n  access    devices: {access.ingest_auth} (INGEST_AUTH), "
              f"query API: {access.query_auth} (QUERY_AUTH)")
    tokens: dict[str, str] = {}
    if access.ingest_auth == "registered":
        try:
            tokens = _register_simulated(args, real)
        except Exception as exc:
            pipeline.stop()
            print(f"iot-telemetry local: cannot register the simulated devices: {exc}",
                  file=sys.stderr)
            return 1
        extra += ("\n            register a device: iot-telemetry devices add ID "
                  "(prints its token)")
    print(_banner("real mode" if real else "embedded", urls, not args.no_simulator, extra),
          flush=True)
    sim: threading.Thread | None = None
    try:
        if not args.no_simulator:
            from .simulator import SimulatorOptions, simulate

            options = SimulatorOptions(url=urls["ingest"], devices=args.devices, rate=args.rate,
                                       duration=args.duration, anomaly_rate=args.anomaly_rate,
                                       tokens=tokens)
            sim = threading.Thread(target=simulate, args=(options, stop), daemon=True)
            sim.start()
        while not stop.wait(0.5):
            if supervised is not None and supervised.gave_up:
                stop.set()
    except KeyboardInterrupt:
        stop.set()
    finally:
        if sim is not None:
            sim.join(timeout=10)
        pipeline.stop()
    if supervised is not None and supervised.gave_up:
        print(f"iot-telemetry local: stopped: {supervised.gave_up}", file=sys.stderr)
        return 1
    return 0


def _devices(args: argparse.Namespace) -> int:
    import json

    from iot_telemetry.devices import Registry
    from iot_telemetry.telemetry import format_time

    from .registry_endpoint import RemoteRegistry

    if args.action == "import":
        return admin.import_devices(args)
    if args.action == "export":
        return admin.export_devices(args)

    def run(store: object, url: str) -> int:
        registry = Registry(store) if store is not None else RemoteRegistry(url)  # type: ignore[arg-type]
        if args.action == "add":
            units = dict(u.split("=", 1) for u in args.unit if "=" in u)
            metadata = {k: v for k, v in (("location", args.location), ("units", units)) if v}
            token = registry.add(args.device_id, args.name, metadata)
            print(f"registered {args.device_id}; its token (shown only now):\n{token}")
        elif args.action == "list":
            # Times and metadata written as the query API writes them (RFC 3339 with Z, JSON).
            for d in registry.list():
                seen = format_time(d.last_seen) if d.last_seen else "never"
                state = "enabled" if d.enabled else "DISABLED"
                meta = json.dumps(d.metadata, sort_keys=True) if d.metadata else ""
                print(f"{d.id:<24} {state:<9} last seen {seen:<24} {d.name} {meta}".rstrip())
        elif args.action == "set-metadata":
            changes: dict[str, str | None] = {}
            for item in args.changes:
                key, sep, value = item.partition("=")
                if not sep:
                    print(f"error: {item!r}: give KEY=VALUE (KEY= removes KEY)",
                          file=sys.stderr)
                    return 2
                changes[key] = value or None
            metadata = registry.set_metadata(args.device_id, changes)
            print(f"{args.device_id} metadata: {json.dumps(metadata, sort_keys=True)}")
        elif args.action == "rotate-token":
            print(f"new token for {args.device_id} (the old one no longer works):\n"
                  f"{registry.rotate(args.device_id)}")
        else:
            registry.set_enabled(args.device_id, args.action == "enable")
            print(f"{args.device_id} {args.action}d")
        return 0

    return admin.against_registry(run)


def _rules(args: argparse.Namespace) -> int:
    """`rules check`: the rules as `alert` reads them (ALERT_RULES, ALERT_RULES_FILE or the
    defaults) decided for one device, with its metadata from --metadata, the store at
    MONGO_URL or the running embedded local run."""
    import json

    from pymongo.errors import PyMongoError

    from iot_telemetry.errors import TelemetryError
    from iot_telemetry.store import DEVICES, Store
    from iot_telemetry.telemetry import DEVICE_ID

    from .registry_endpoint import LocalRunUnreachable, RemoteRegistry, local_run_token
    from .rules_check import report

    if not DEVICE_ID.fullmatch(args.device_id):
        print(f"error: device id must match {DEVICE_ID.pattern}", file=sys.stderr)
        return 2
    target = ""
    try:
        settings = Settings.from_environ(None, {
            "MONGO_TIMEOUT_MS": os.environ.get("MONGO_TIMEOUT_MS") or "2000"})
        if args.metadata is not None:
            try:
                metadata = json.loads(args.metadata)
            except ValueError as exc:
                print(f"error: --metadata: not JSON: {exc}", file=sys.stderr)
                return 2
            if not isinstance(metadata, dict):
                print('error: --metadata: must be a JSON object, e.g. {"location": "gh-2"}',
                      file=sys.stderr)
                return 2
            source = "from --metadata"
        elif os.environ.get("MONGO_URL"):
            target = f"the store at MONGO_URL={settings.mongo_url}"
            store = Store(settings)
            with store.guard():
                doc = store.collection(DEVICES).find_one({"_id": args.device_id},
                                                         {"metadata": 1})
            metadata = dict((doc or {}).get("metadata") or {})
            source = f"from {target}" if doc else f"not in {target}"
        else:
            port = os.environ.get(PORT_OPTIONS["query"][1]) or str(PORTS["query"])
            target = f"127.0.0.1:{port}"
            known = {d.id: d for d in RemoteRegistry(f"http://{target}/",
                                                     local_run_token(settings)).list()}
            device = known.get(args.device_id)
            metadata = dict(device.metadata) if device else {}
            source = (f"from the local run on {target}" if device
                      else f"not registered in the local run on {target}")
    except LocalRunUnreachable as exc:
        print(f"error: no `iot-telemetry local` answers on {target} ({exc}): start one, set "
              "MONGO_URL to read the device from a MongoDB store, or give --metadata JSON",
              file=sys.stderr)
        return 1
    except (PyMongoError, TelemetryError) as exc:
        reason = str(exc).split(" (configured timeouts", 1)[0].split(", Timeout:", 1)[0]
        print(f"error: {target}: {reason}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report(args.device_id, metadata, settings.alert_rules or (),
                 settings.device_stale_seconds, source))
    return 0


def _notify(args: argparse.Namespace) -> int:
    """`notify test CHANNEL`: send a sample alert message to a channel of NOTIFY_CHANNELS."""
    from iot_telemetry.notify import send_test

    try:
        settings = Settings.from_environ()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    channels = {c.name: c for c in settings.notify_channels}
    channel = channels.get(args.channel)
    if channel is None:
        known = ", ".join(channels) or "none: set NOTIFY_CHANNELS"
        print(f"error: no channel {args.channel!r} in NOTIFY_CHANNELS (channels: {known})",
              file=sys.stderr)
        return 2
    state, detail = send_test(channel, settings.dashboard_url, settings.notify_timeout_seconds)
    if state != "sent":
        print(f"channel {channel.name} did not take the sample alert: {detail}"
              + (" (retried in a real delivery)" if state == "retry" else
                 " (a real delivery would be dead-lettered)"), file=sys.stderr)
        return 1
    print(f"sent a sample alert to channel {channel.name} ({channel.format}"
          f"{', signed' if channel.secret else ''}): {detail}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iot-telemetry", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    local = sub.add_parser(
        "local", help="run all five functions and the eventing wiring locally",
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
    _port_args(local, os.environ)
    _simulator_args(local)
    sub.add_parser("simulate", help="run the device simulator against an ingest URL",
                   add_help=False)
    sub.add_parser("settings", help="print every configuration variable as a Markdown table")
    devices = sub.add_parser(
        "devices", help="manage the device registry: of the running `iot-telemetry local`, "
                        "or with MONGO_URL set, of that store",
        description="Without MONGO_URL: the registry of the embedded `iot-telemetry local` "
                    "running on this machine (its query port, IOT_QUERY_PORT, default 8002). "
                    "With MONGO_URL (and MONGO_DB): the devices collection of that store.")
    dsub = devices.add_subparsers(dest="action", required=True)
    add = dsub.add_parser("add", help="register a device and print its token (shown once)")
    add.add_argument("device_id")
    add.add_argument("--name", default="", help="display name")
    add.add_argument("--location", default="", help="where the device is")
    add.add_argument("--unit", action="append", default=[], metavar="METRIC=UNIT",
                     help="unit of a metric, e.g. temperature=celsius (repeatable)")
    dsub.add_parser("list", help="list registered devices")
    meta = dsub.add_parser(
        "set-metadata", help="set registry metadata keys (KEY=VALUE; KEY= removes KEY), "
                             "which rules scoped by metadata follow")
    meta.add_argument("device_id")
    meta.add_argument("changes", nargs="+", metavar="KEY=VALUE")
    admin.add_device_file_parsers(dsub)
    for action, text in (("disable", "refuse the device's writes (403)"),
                         ("enable", "accept the device's writes again"),
                         ("rotate-token", "issue a new token; the old one stops working")):
        dsub.add_parser(action, help=text).add_argument("device_id")
    admin.add_token_parser(sub)
    rules = sub.add_parser(
        "rules", help="explain the alert rules (ALERT_RULES, ALERT_RULES_FILE or the defaults)")
    rsub = rules.add_subparsers(dest="action", required=True)
    check = rsub.add_parser(
        "check", help="which rules apply to a device and why, with its thresholds",
        description="The device's metadata comes from --metadata, else the store at MONGO_URL, "
                    "else the running embedded `iot-telemetry local` (IOT_QUERY_PORT).")
    check.add_argument("device_id")
    check.add_argument("--metadata", default=None, metavar="JSON",
                       help='the device\'s registry metadata, e.g. \'{"location": "gh-2"}\' '
                            "(instead of reading it)")
    notify = sub.add_parser("notify", help="notification channels (NOTIFY_CHANNELS)")
    nsub = notify.add_subparsers(dest="action", required=True)
    ntest = nsub.add_parser("test", help="send a sample alert message to a channel now")
    ntest.add_argument("channel", help="the channel's name in NOTIFY_CHANNELS")
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
    if args.command == "rules":
        return _rules(args)
    if args.command == "tokens":
        return admin.tokens(args)
    if args.command == "notify":
        return _notify(args)
    return _run_local(args)


if __name__ == "__main__":
    sys.exit(main())
