"""The device registry as CSV: `devices import` registers or updates every row of a file,
`devices export` writes the same columns back (never a token or its hash).

Columns: `id` (required), `name`, `location`, `units` (`temperature=celsius;humidity=%`), and
any other column is a metadata key. An empty cell removes that key from the device; keys of
columns the file does not have are left as they are, so importing a file twice changes
nothing the second time. The whole file is checked before anything is written: a file with
a bad row (reported by line number) imports nothing. Writes go a thousand rows per store
command, and the registered ids are read a thousand per command, so 10,000 rows cost about
twenty commands.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from .devices import metadata_of, new_credential
from .errors import BadRequest
from .scopes import METADATA_KEY
from .store import DEVICES, Store, Update
from .telemetry import DEVICE_ID, METRIC_NAME

FIXED_COLUMNS: Final = ("id", "name", "location", "units")
CHUNK: Final = 1000
MAX_NAME: Final = 200
MAX_VALUE: Final = 256
#: Problems reported at most (a file of a wrong format would otherwise list every line).
MAX_PROBLEMS: Final = 50
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
#: What registering sets besides name and metadata.
_REGISTRATION: Final = ("enabled", "registered_at", "token", "token_rotated_at")


@dataclass(frozen=True)
class DeviceRow:
    """One checked row: what to set on the device and which metadata keys to remove."""

    line: int
    id: str
    name: str
    metadata: dict[str, Any]
    cleared: tuple[str, ...]


@dataclass
class ImportOutcome:
    """New devices with their tokens (shown once), and the ids updated."""

    created: dict[str, str] = field(default_factory=dict)
    updated: list[str] = field(default_factory=list)
    commands: int = 0


def _units(cell: str, where: str, problems: list[str]) -> dict[str, str]:
    units: dict[str, str] = {}
    for part in cell.split(";"):
        metric, sep, unit = part.strip().partition("=")
        metric, unit = metric.strip(), unit.strip()
        if not sep or not METRIC_NAME.fullmatch(metric) or not unit or len(unit) > 32:
            problems.append(f"{where}: units: {part.strip()!r} is not METRIC=UNIT (a metric "
                            f"name matching {METRIC_NAME.pattern}, a unit of 1-32 characters; "
                            "pairs apart with ;)")
        elif metric in units:
            problems.append(f"{where}: units: {metric!r} given twice")
        else:
            units[metric] = unit
    return units


def _header(names: list[str], problems: list[str]) -> list[str]:
    names = [n.strip() for n in names]
    if "id" not in names:
        problems.append("line 1: the header has no `id` column (columns: id, name, location, "
                        "units, and any metadata keys)")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            problems.append(f"line 1: column {name!r} appears twice")
        seen.add(name)
        if name not in FIXED_COLUMNS and not METADATA_KEY.fullmatch(name):
            problems.append(f"line 1: column {name!r} is not a metadata key "
                            f"({METADATA_KEY.pattern})")
    return names


def _row(line: int, header: list[str], cells: list[str], problems: list[str],
         ) -> DeviceRow | None:
    where = f"line {line}"
    if len(cells) != len(header):
        problems.append(f"{where}: {len(cells)} fields, the header has {len(header)}")
        return None
    values = dict(zip(header, (c.strip() for c in cells), strict=True))
    before = len(problems)
    device_id = values["id"]
    if not device_id:
        problems.append(f"{where}: id is empty")
    elif not DEVICE_ID.fullmatch(device_id):
        problems.append(f"{where}: id {device_id!r} must match {DEVICE_ID.pattern}")
    name = values.get("name", "")
    if len(name) > MAX_NAME or _CONTROL.search(name):
        problems.append(f"{where}: name: at most {MAX_NAME} characters, no control characters")
    metadata: dict[str, Any] = {}
    cleared = []
    for key, value in values.items():
        if key in ("id", "name"):
            continue
        if not value:
            cleared.append(key)
        elif key == "units":
            metadata[key] = _units(value, where, problems)
        elif len(value) > MAX_VALUE or _CONTROL.search(value):
            problems.append(f"{where}: {key}: at most {MAX_VALUE} characters, no control "
                            "characters")
        else:
            metadata[key] = value
    if len(problems) > before:
        return None
    return DeviceRow(line, device_id, name, metadata, tuple(cleared))


def read_csv(text: str) -> list[DeviceRow]:
    """Every row of a devices CSV, checked; BadRequest listing each bad row by line."""
    problems: list[str] = []
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
    rows: list[DeviceRow] = []
    first: dict[str, int] = {}
    try:
        header = next(reader, None)
        if header is None:
            raise BadRequest("the file is empty (expected a header line: id,name,location,...)")
        header = _header(header, problems)
        if problems:
            raise BadRequest(problems)
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue  # a blank line
            row = _row(reader.line_num, header, cells, problems)
            if row is None:
                continue
            if row.id in first:
                problems.append(f"line {row.line}: id {row.id!r} is also on line "
                                f"{first[row.id]} (one row per device)")
                continue
            first[row.id] = row.line
            rows.append(row)
    except csv.Error as exc:
        problems.append(f"line {reader.line_num}: not CSV: {exc}")
    if problems:
        shown = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"... and {len(problems) - MAX_PROBLEMS} more")
        raise BadRequest(shown)
    return rows


def import_rows(store: Store, rows: list[DeviceRow], now: datetime | None = None,
                outcome: ImportOutcome | None = None) -> ImportOutcome:
    """Register each new device (with a fresh token) and update each registered one.

    Each row is one single-document write (never half a row); `outcome`, if given, holds
    what was done so far when a store outage stops the import, so the tokens of the devices
    already registered are not lost. Importing the file again finishes it.
    """
    now = now or datetime.now(UTC)
    outcome = outcome if outcome is not None else ImportOutcome()
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start:start + CHUNK]
        with store.guard():
            registered = {d["_id"] for d in store.collection(DEVICES).find(
                {"_id": {"$in": [r.id for r in chunk]}, "token": {"$exists": True}}, {"_id": 1})}
        outcome.commands += 1
        ops, tokens = [], {}
        for row in chunk:
            changes: dict[str, Any] = {"name": row.name or row.id, **{
                f"metadata.{k}": v for k, v in row.metadata.items()}}
            if row.id not in registered:
                tokens[row.id], record = new_credential(row.id)
                changes.update(enabled=True, registered_at=now, token=record,
                               token_rotated_at=now)
            update: dict[str, Any] = {"$set": changes}
            if row.cleared:
                update["$unset"] = {f"metadata.{k}": "" for k in row.cleared}
            ops.append(Update({"_id": row.id} if row.id in registered
                              else {"_id": row.id, "token": {"$exists": False}},
                              update, upsert=row.id not in registered))
        result = store.bulk(DEVICES, ops)
        outcome.commands += 1
        # Registered meanwhile by someone else: update it as a registered device instead.
        for i in result.duplicates:
            del tokens[chunk[i].id]
        if result.duplicates:
            store.bulk(DEVICES, [Update({"_id": chunk[i].id}, {**ops[i].update, "$set": {
                k: v for k, v in ops[i].update["$set"].items() if k not in _REGISTRATION}})
                for i in result.duplicates])
            outcome.commands += 1
        outcome.created.update(tokens)
        outcome.updated += [r.id for r in chunk if r.id not in tokens]
    return outcome


def export_lines(docs: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """The devices as CSV lines, in the columns `read_csv` takes (never a token)."""
    devices = list(docs)
    keys = sorted({k for d in devices for k in metadata_of(d)} - set(FIXED_COLUMNS))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*FIXED_COLUMNS, *keys])
    for doc in devices:
        metadata = metadata_of(doc)
        units = metadata.get("units")
        writer.writerow([
            doc["_id"], doc.get("name") or doc["_id"], _text(metadata.get("location")),
            ";".join(f"{m}={u}" for m, u in units.items()) if isinstance(units, Mapping)
            else _text(units),
            *(_text(metadata.get(k)) for k in keys)])
    out.seek(0)
    yield from out


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def export_devices(store: Store) -> Iterator[str]:
    """Every device of the registry as CSV lines, by id."""
    with store.guard():
        docs = list(store.collection(DEVICES).find({}, {"name": 1, "metadata": 1}).sort("_id"))
    return export_lines(docs)
