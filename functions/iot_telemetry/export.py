"""CSV downloads of the query API: a series and the alerts list, streamed row by row.

The routes validate and read as they do for JSON; this module only chooses the format and
turns what they read into CSV (RFC 4180 quoting by the csv module, a header row, CRLF line
ends, times in RFC 3339 UTC as in the JSON).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import flask

from .telemetry import format_time

log = logging.getLogger(__name__)

JSON: Final = "json"
CSV: Final = "csv"
FORMATS: Final = (JSON, CSV)
CSV_TYPE: Final = "text/csv"

SERIES_COLUMNS: Final = ("device_id", "metric", "step", "t", "count", "min", "max", "avg",
                         "sum", "first", "last", "last_value")
RAW_COLUMNS: Final = ("device_id", "metric", "t", "value", "event_id")
ALERT_COLUMNS: Final = (
    "id", "device_id", "device_name", "device_metadata", "metric", "rule", "severity",
    "state", "condition", "threshold", "clear_threshold", "raised_at", "first_seen",
    "last_seen", "count", "peak", "last_value", "acknowledged_at", "acknowledged_by",
    "resolved_at", "resolved_value", "resolved_reason")
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection);
# text cells that do get a leading apostrophe, as OWASP advises. Numbers are not text.
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
_UNSAFE_IN_NAME: Final = re.compile(r"[^A-Za-z0-9._-]+")


def wants_csv(request: flask.Request, fmt: str | None) -> bool:
    """`format=csv`, or no `format` and an Accept header that prefers text/csv to JSON."""
    if fmt is not None:
        return fmt == CSV
    return request.accept_mimetypes.best_match(["application/json", CSV_TYPE]) == CSV_TYPE


def cell(value: Any) -> Any:
    """One CSV cell: times in RFC 3339, nothing for None, text that cannot run as a formula."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return "'" + text if text.startswith(_FORMULA_START) else text


def lines(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    """The header and then each row as one CSV record (a generator: nothing is held)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # excel dialect: RFC 4180 quoting, CRLF
    writer.writerow(header)
    yield buffer.getvalue()
    for row in rows:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow([cell(v) for v in row])
        yield buffer.getvalue()


def filename(*parts: str) -> str:
    """A download name from parts, with anything a file system might refuse replaced."""
    stem = "_".join(_UNSAFE_IN_NAME.sub("-", p).strip("-") for p in parts if p)
    return f"{stem or 'export'}.csv"


def response(header: Sequence[str], rows: Iterable[Sequence[Any]], name: str) -> flask.Response:
    """A streamed CSV download; Vary: Accept because the same URL also answers JSON."""
    out = flask.Response(_logged(lines(header, rows), name), mimetype=CSV_TYPE, headers={
        "Content-Disposition": f'attachment; filename="{name}"',
        "Cache-Control": "no-store"})
    out.vary.add("Accept")
    return out


def _logged(chunks: Iterator[str], name: str) -> Iterator[str]:
    """Pass the chunks on; a failure once the answer has started (the store gone between two
    pages) can only cut the download short, so say so in the log before the server does."""
    try:
        yield from chunks
    except Exception:
        log.warning("CSV download %s cut short", name, exc_info=True)
        raise


def series_rows(device_id: str, metric: str, step: str,
                points: Iterable[Mapping[str, Any]]) -> Iterator[list[Any]]:
    """Rows of SERIES_COLUMNS from the buckets the JSON answer would hold."""
    for p in points:
        yield [device_id, metric, step, p["t"], p["count"], p["min"], p["max"], p["avg"],
               p["sum"], p["first"], p["last"], p["last_value"]]


def raw_rows(device_id: str, metric: str, pages: Iterable[Sequence[Any]],
             ) -> Iterator[list[Any]]:
    """Rows of RAW_COLUMNS from pages of raw readings (raw.Reading)."""
    for page in pages:
        for r in page:
            yield [device_id, metric, r.t, r.value, r.event_id]


def alert_rows(pages: Iterable[tuple[Sequence[Mapping[str, Any]], Mapping[str, Any]]],
               ) -> Iterator[list[Any]]:
    """Rows of ALERT_COLUMNS from pages of public alert documents, each page with the
    registry documents (name, metadata) of its devices by id."""
    for alerts, devices in pages:
        for alert in alerts:
            device = devices.get(alert["device_id"]) or {}
            extra = {"device_name": device.get("name") or alert["device_id"],
                     "device_metadata": device.get("metadata") or None}
            yield [extra[c] if c in extra else alert.get(c) for c in ALERT_COLUMNS]
