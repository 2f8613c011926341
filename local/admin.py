"""`iot-telemetry tokens` and `iot-telemetry devices import|export`, and where every management
command goes: the store at MONGO_URL, else the embedded `iot-telemetry local` on this machine."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iot_telemetry.settings import ConfigError, Settings

from .layout import PORTS

#: The environment twin of the local run's query port (cli.PORT_OPTIONS names it too).
QUERY_PORT_VARIABLE = "IOT_QUERY_PORT"


#: How long one write of `devices import` (a thousand rows) may take: a MongoDB takes tens of
#: milliseconds, mongo-java-server on a loaded machine seconds.
BULK_COMMAND_MS = 120_000


def against_registry(run: Callable[[Any, str], int], what: str = "devices",
                     command_timeout_ms: int | None = None) -> int:
    """Call `run(store, "")` with the store at MONGO_URL, or `run(None, url)` with the query
    URL of the running embedded local run; say the errors of either in one line."""
    from pymongo.errors import PyMongoError

    from iot_telemetry.errors import BadRequest, TelemetryError
    from iot_telemetry.store import Store

    from .registry_endpoint import LocalRunUnreachable

    target = ""
    try:
        if os.environ.get("MONGO_URL"):
            # Fail in seconds, not the functions' default, when nothing listens.
            settings = Settings.from_environ(None, {
                "MONGO_TIMEOUT_MS": os.environ.get("MONGO_TIMEOUT_MS") or "2000"})
            target = f"the store at MONGO_URL={settings.mongo_url}"
            return run(Store(settings, command_timeout_ms), "")
        port = os.environ.get(QUERY_PORT_VARIABLE) or str(PORTS["query"])
        target = f"127.0.0.1:{port}"
        return run(None, f"http://{target}/")
    except LocalRunUnreachable as exc:
        print(f"error: no `iot-telemetry local` answers on {target} ({exc}): start one "
              f"(INGEST_AUTH=registered iot-telemetry local), set {QUERY_PORT_VARIABLE} to its "
              f"query port, or set MONGO_URL to manage the {what} of a MongoDB store",
              file=sys.stderr)
        return 1
    except BadRequest as exc:
        print("error: " + "\n  ".join(exc.problems) if len(exc.problems) == 1 else
              "error: nothing was changed:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
        return 1
    except (PyMongoError, TelemetryError) as exc:
        # pymongo's own text goes on with its topology description: keep the first clause
        reason = str(exc).split(" (configured timeouts", 1)[0].split(", Timeout:", 1)[0]
        print(f"error: {target}: {reason}"
              + (" (is it running?)" if "unreachable" in reason or "refused" in reason else ""),
              file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# ------------------------------------------------------------------------------- tokens

def add_token_parser(sub: Any) -> None:
    tokens = sub.add_parser(
        "tokens", help="manage query API tokens kept in the store (QUERY_AUTH=token): of the "
                       "running `iot-telemetry local`, or with MONGO_URL set, of that store",
        description="Tokens for the query API and dashboard, each with a role and optionally "
                    "a scope of devices. Without MONGO_URL: those of the embedded "
                    "`iot-telemetry local` on this machine (IOT_QUERY_PORT, default 8002).")
    tsub = tokens.add_subparsers(dest="action", required=True)
    add = tsub.add_parser("add", help="create a token and print it (last line, shown once)")
    add.add_argument("name", help="what the token is for, e.g. acme-viewer")
    add.add_argument("--role", required=True, metavar="read|operate",
                     help="read: read the API; operate: also acknowledge alerts")
    add.add_argument("--scope", default=None, metavar="JSON",
                     help='the devices it sees, a selector as in rule scopes, e.g. '
                          '\'{"prefix": "acme-"}\' or \'{"metadata": {"tenant": "acme"}}\' '
                          "(default: every device)")
    tsub.add_parser("list", help="names, roles, scopes, created, last used (never a token)")
    tsub.add_parser("revoke", help="delete a token; refused everywhere within "
                                   "AUTH_CACHE_SECONDS").add_argument("name")
    scope = tsub.add_parser("set-scope", help="change the devices a token sees")
    scope.add_argument("name")
    which = scope.add_mutually_exclusive_group(required=True)
    which.add_argument("--scope", metavar="JSON", help="a selector, as for `tokens add`")
    which.add_argument("--every-device", action="store_true", help="no scope: every device")


def _scope_argument(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        from iot_telemetry.errors import BadRequest

        raise BadRequest(f"--scope: not JSON ({exc}): give a selector such as "
                         '\'{"prefix": "acme-"}\'') from None


def tokens(args: argparse.Namespace) -> int:
    from iot_telemetry.query_tokens import TokenBook

    from .registry_endpoint import RemoteTokens

    def run(store: Any, url: str) -> int:
        book = TokenBook(store) if store is not None else RemoteTokens(url)
        if args.action == "add":
            token = book.add(args.name, args.role, _scope_argument(args.scope))
            scope = json.dumps(_scope_argument(args.scope)) if args.scope else "every device"
            print(f"token {args.name}: role {args.role}, scope {scope}; shown only now:\n"
                  f"{token}")
        elif args.action == "list":
            for t in book.list():
                used = t.last_used_at.isoformat(timespec="seconds") if t.last_used_at else "never"
                made = t.created_at.isoformat(timespec="seconds") if t.created_at else "?"
                scope = json.dumps(t.scope, sort_keys=True) if t.scope else "every device"
                print(f"{t.name:<24} {t.role:<8} created {made:<26} last used {used:<26} "
                      f"scope {scope}")
        elif args.action == "revoke":
            book.revoke(args.name)
            print(f"revoked {args.name}: refused within AUTH_CACHE_SECONDS on every instance")
        else:
            book.set_scope(args.name, None if args.every_device else _scope_argument(args.scope))
            print(f"{args.name} now sees "
                  + ("every device" if args.every_device else args.scope))
        return 0

    return against_registry(run, "query tokens")


# ------------------------------------------------------------------ devices import|export

def add_device_file_parsers(dsub: Any) -> None:
    imp = dsub.add_parser(
        "import", help="register or update every device of a CSV file (id, name, location, "
                       "units, metadata columns); nothing is imported if a row is bad")
    imp.add_argument("file", help="the CSV file (- for standard input)")
    out = imp.add_mutually_exclusive_group()
    out.add_argument("--tokens-out", metavar="FILE",
                     help="write the new devices' tokens here (created with mode 0600; must "
                          "not exist yet)")
    out.add_argument("--print-tokens", action="store_true",
                     help="print the new devices' tokens on the terminal instead")
    out.add_argument("--discard-tokens", action="store_true",
                     help="keep no token of new devices (issue one later with rotate-token)")
    exp = dsub.add_parser("export", help="write every device as CSV, the columns `import` "
                                         "takes (no tokens)")
    exp.add_argument("file", nargs="?", default="-", help="where to write (default: stdout)")


def import_devices(args: argparse.Namespace) -> int:
    from iot_telemetry.errors import BadRequest
    from iot_telemetry.registry_csv import ImportOutcome, import_rows, read_csv
    from iot_telemetry.store import DEVICES

    from .registry_endpoint import RemoteRegistry

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(
            encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return 2
    tokens_out = Path(args.tokens_out) if args.tokens_out else None
    if tokens_out is not None and tokens_out.exists():
        print(f"error: --tokens-out {tokens_out}: exists already (tokens are never "
              "overwritten: choose a new file)", file=sys.stderr)
        return 2

    def run(store: Any, url: str) -> int:
        rows = read_csv(text)  # the whole file checked here first, before any write
        if store is not None:
            known = {d["_id"] for d in store.collection(DEVICES).find(
                {"_id": {"$in": [r.id for r in rows]}, "token": {"$exists": True}},
                {"_id": 1})}
        else:
            known = {d.id for d in RemoteRegistry(url).list() if d.registered_at}
        new = [r.id for r in rows if r.id not in known]
        if new and not (tokens_out or args.print_tokens or args.discard_tokens):
            raise BadRequest(f"{len(new)} new device(s) (first: {new[0]}) get tokens: give "
                             "--tokens-out FILE, --print-tokens or --discard-tokens")
        sink = _token_file(tokens_out) if tokens_out and new else None
        outcome = ImportOutcome()
        try:
            if store is not None:
                import_rows(store, rows, outcome=outcome)
            else:
                outcome = RemoteRegistry(url).import_csv(text)
        finally:
            # Also when the store failed halfway: the devices registered so far keep their
            # tokens (importing the file again finishes the rest).
            lines = [f"{d},{t}\n" for d, t in sorted(outcome.created.items())]
            if sink is not None:
                with sink:
                    sink.write("id,token\n" + "".join(lines))
            elif args.print_tokens and lines:
                print("id,token\n" + "".join(lines), end="")
        print(f"imported {len(rows)} devices: {len(outcome.created)} registered, "
              f"{len(outcome.updated)} updated"
              + (f"; tokens in {tokens_out} (mode 0600)" if sink is not None else ""),
              file=sys.stderr if args.print_tokens else sys.stdout)
        return 0

    return against_registry(run, command_timeout_ms=BULK_COMMAND_MS)


def _token_file(path: Path) -> Any:
    """A new file only its owner may read, opened for writing."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(descriptor, "w", encoding="utf-8")


def export_devices(args: argparse.Namespace) -> int:
    from iot_telemetry import registry_csv

    from .registry_endpoint import RemoteRegistry

    def run(store: Any, url: str) -> int:
        text = ("".join(registry_csv.export_devices(store)) if store is not None
                else RemoteRegistry(url).export_csv())
        if args.file == "-":
            sys.stdout.write(text)
        else:
            Path(args.file).write_text(text, encoding="utf-8")
            print(f"wrote {text.count(chr(10)) - 1} devices to {args.file}", file=sys.stderr)
        return 0

    return against_registry(run)
