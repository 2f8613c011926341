"""The query API described as OpenAPI 3.1."""

from __future__ import annotations

from typing import Any

from . import __version__
from .export import ALERT_COLUMNS, RAW_COLUMNS, SERIES_COLUMNS
from .fleet import DEVICE_STATES
from .raw import DEFAULT_LIMIT as raw_default_limit
from .raw import MAX_LIMIT as raw_max_limit
from .settings import Settings

_TIME = {"type": "string", "format": "date-time"}
_SHOWN = "to 12 significant digits (no binary-fraction noise: 0.3, not 0.30000000000000004)"
_STATES = ("`offline`: an offline alert is open or acknowledged and the device has not "
           "reported since; `stale`: no report within DEVICE_STALE_SECONDS; "
           "`never_reported`: registered, nothing received yet (never offline); "
           "`reporting`: reported recently; `disabled`: switched off in the registry "
           "(takes precedence over the others)")
_ERROR = {"type": "object", "required": ["error", "message"], "properties": {
    "error": {"type": "string"}, "message": {"type": "string"},
    "problems": {"type": "array", "items": {"type": "string"}}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _json_or_csv(schema: dict[str, Any], description: str, columns: tuple[str, ...],
                 raw_columns: tuple[str, ...] = ()) -> dict[str, Any]:
    """A 200 that is JSON, or CSV with `format=csv` or `Accept: text/csv`."""
    answer = _json(schema, description)
    header = "Header row " + ",".join(columns) + (
        f" (step=raw: {','.join(raw_columns)})" if raw_columns else "")
    answer["content"]["text/csv"] = {"schema": {
        "type": "string",
        "description": header + "; RFC 4180 quoting, CRLF line ends, times in RFC 3339 UTC"}}
    answer["headers"] = {"Content-Disposition": {
        "description": "CSV only: attachment; filename=\"...csv\"",
        "schema": {"type": "string"}}}
    return answer


def _format_param() -> dict[str, Any]:
    return _param("format", "query", {"enum": ["json", "csv"]},
                  "Answer as JSON (default) or as a CSV download; without it, "
                  "`Accept: text/csv` asks for CSV")


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Invalid parameter", 404: "Not found", 409: "Conflict",
            503: "Store unavailable"}
    return {str(c): _json(_ref("Error"), text[c]) for c in codes}


def _param(name: str, where: str, schema: dict[str, Any], description: str,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path",
            "schema": schema, "description": description}


def document(settings: Settings) -> dict[str, Any]:
    device_id = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"}
    alert_id = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,200}$"}
    limit = {"type": "integer", "minimum": 1, "maximum": settings.query_max_limit,
             "default": settings.query_default_limit}
    latest = {"type": "object", "additionalProperties": {
        "type": "object", "required": ["value", "time"],
        "properties": {"value": {"type": "number"}, "time": _TIME}}}
    schemas = {
        "Error": _ERROR,
        "Device": {"type": "object",
                   "required": ["id", "last_seen", "stale", "state", "metrics"],
                   "properties": {
                       "id": device_id, "first_seen": {**_TIME, "nullable": True},
                       "last_seen": {"type": ["string", "null"], "format": "date-time"},
                       "last_event_time": {"type": ["string", "null"], "format": "date-time"},
                       "stale": {"type": "boolean",
                                 "description": "No report within DEVICE_STALE_SECONDS "
                                                "(or none at all), whatever the state"},
                       "state": {"enum": list(DEVICE_STATES), "description": _STATES},
                       "metrics": latest,
                       "open_alerts": {"type": "integer", "minimum": 0},
                       "name": {"type": "string"}, "enabled": {"type": "boolean"},
                       "metadata": {"type": "object"}}},
        "Bucket": {"type": "object",
                   "required": ["t", "count", "min", "max", "avg"],
                   "properties": {"t": _TIME, "count": {"type": "integer", "minimum": 1},
                                  "min": {"type": "number"}, "max": {"type": "number"},
                                  "avg": {"type": "number", "description": _SHOWN},
                                  "sum": {"type": "number", "description": _SHOWN},
                                  "first": _TIME, "last": _TIME,
                                  "last_value": {"type": "number"}}},
        "Reading": {"type": "object", "required": ["t", "value", "event_id"],
                    "properties": {"t": _TIME, "value": {"type": "number"},
                                   "event_id": {"type": "string",
                                                "description": "The event that carried it"}}},
        "Alert": {"type": "object",
                  "required": ["id", "device_id", "metric", "rule", "severity", "state",
                               "raised_at", "count"],
                  "properties": {
                      "id": {"type": "string"}, "device_id": device_id,
                      "metric": {"type": ["string", "null"],
                                 "description": "The metric the rule watches; null for an "
                                                "offline alert (condition `offline`)"},
                      "rule": {"type": "string", "description": "Name of the rule in "
                                                                 "ALERT_RULES"},
                      "severity": {"enum": ["warning", "critical"]},
                      "state": {"enum": ["open", "acknowledged", "resolved"]},
                      "condition": {
                          "enum": [">", ">=", "<", "<=", "offline"],
                          "description": "A threshold condition, or `offline`: the device "
                                         "sent nothing for window_seconds"},
                      "threshold": {"type": "number"}, "clear_threshold": {"type": "number"},
                      "window_seconds": {
                          "type": "number", "minimum": 0,
                          "description": "Offline alerts: seconds of silence that raise it"},
                      "raised_at": _TIME,
                      "first_seen": {**_TIME, "description": "First violating reading; "
                                     "offline alerts: the device's last report before the "
                                     "silence (offline since)"},
                      "last_seen": {**_TIME, "description": "Last violating reading; offline "
                                    "alerts: the same as first_seen"},
                      "count": {"type": "integer"}, "peak": {"type": "number"},
                      "last_value": {"type": "number"},
                      "acknowledged_at": {"type": ["string", "null"], "format": "date-time"},
                      "acknowledged_by": {"type": ["string", "null"]},
                      "resolved_at": {"type": ["string", "null"], "format": "date-time"},
                      "resolved_value": {"type": ["number", "null"]},
                      "resolved_reason": {
                          "enum": ["cleared", "rule_removed", "rule_out_of_scope", None],
                          "description": "Why it was resolved: `cleared` by a reading (for "
                                         "an offline alert: the device reported again, "
                                         "resolved_value null), `rule_removed` when its "
                                         "rule was removed or renamed, `rule_out_of_scope` "
                                         "when its rule no longer applies to the device (a "
                                         "scope or metadata change; resolved_value is then "
                                         "null)"}}},
        "Rule": {"type": "object",
                 "required": ["name", "metric", "condition", "threshold", "clear_threshold",
                              "severity"],
                 "properties": {
                     "name": {"type": "string"}, "metric": {"type": "string"},
                     "condition": {"enum": [">", ">=", "<", "<="]},
                     "threshold": {"type": "number"}, "clear_threshold": {"type": "number"},
                     "severity": {"enum": ["warning", "critical"]},
                     "for_count": {"type": "integer", "minimum": 1},
                     "for_seconds": {"type": "number", "minimum": 0},
                     "scope": {**_ref("Selector"), "description": "The devices the rule "
                               "applies to (absent: every device); without device_id only"},
                     "overrides": {"type": "array", "description": "Values for some devices: "
                                   "the first whose match selects the device gives its values; "
                                   "without device_id only",
                                   "items": {"type": "object", "required": ["match"],
                                             "properties": {
                                                 "match": _ref("Selector"),
                                                 "threshold": {"type": "number"},
                                                 "clear_threshold": {"type": "number"},
                                                 "for_count": {"type": "integer"},
                                                 "for_seconds": {"type": "number"}}}},
                     "matched_by": {"type": "string", "description": "With device_id: why "
                                    "the rule applies to it (`all devices`, `prefix 'gh-'`, "
                                    "`metadata location=greenhouse-2`...)"},
                     "overridden": {"type": "object", "additionalProperties": {
                         "type": ["number", "null"]}, "description": "With device_id: the "
                         "rule's own value of each field an override changed for the device "
                         "(the rule's fields hold the device's values)"}}},
        "Selector": {"type": "object", "properties": {
            "device": {"type": "string"}, "prefix": {"type": "string"},
            "glob": {"type": "string"},
            "metadata": {"type": "object", "description": "Every key must equal the device's "
                         "registry metadata"}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "IoT telemetry query API", "version": __version__,
                 "description": "Devices, their latest values, rollup series and alerts. "
                                "A token with a scope (`iot-telemetry tokens`) sees only the "
                                "devices of its scope on every route: any other device or "
                                "its alerts answer 404, as ones that do not exist."},
        "paths": {
            "/devices": {"get": {
                "summary": "Devices with last seen time and the latest value of each metric",
                "parameters": [
                    _param("limit", "query", limit, "Page size"),
                    _param("cursor", "query", device_id, "next_cursor of the previous page"),
                    _param("prefix", "query",
                           {"type": "string", "pattern": r"^[A-Za-z0-9._:-]{1,128}$"},
                           "Device id prefix")],
                "responses": {"200": _json({"type": "object", "properties": {
                    "devices": {"type": "array", "items": _ref("Device")},
                    "next_cursor": {"type": ["string", "null"]}}}, "A page of devices"),
                    **_errors(400, 503)}}},
            "/fleet": {"get": {
                "summary": "Every device counted by state, over the whole fleet",
                "description": "Four counts on the devices, then the unresolved offline "
                               "alerts and their devices, "
                               f"{settings.query_max_limit} (QUERY_MAX_LIMIT) per store reply: "
                               "the cost grows with the unresolved alerts and the offline "
                               "devices, not with the alerts' history.",
                "responses": {"200": _json({
                    "type": "object", "required": ["devices", "states"],
                    "properties": {
                        "devices": {"type": "integer", "minimum": 0,
                                    "description": "Every registered or reporting device"},
                        "states": {"type": "object", "required": list(DEVICE_STATES),
                                   "additionalProperties": False,
                                   "properties": {s: {"type": "integer", "minimum": 0}
                                                  for s in DEVICE_STATES},
                                   "description": "Devices in each state (they add up to "
                                                  "`devices`): " + _STATES},
                        "stale_after_seconds": {"type": "integer", "minimum": 1,
                                                "description": "DEVICE_STALE_SECONDS"},
                        "at": {**_TIME, "description": "The time the states were judged at"}}},
                    "Device counts by state"),
                    **_errors(503)}}},
            "/devices/{device_id}": {"get": {
                "summary": "One device",
                "parameters": [_param("device_id", "path", device_id, "Device id")],
                "responses": {"200": _json(_ref("Device"), "The device"),
                              **_errors(400, 404, 503)}}},
            "/devices/{device_id}/series": {"get": {
                "summary": "Rollup buckets, or the raw readings, of one metric over a time range",
                "parameters": [
                    _param("device_id", "path", device_id, "Device id"),
                    _param("metric", "query", {"type": "string",
                                               "pattern": r"^[a-z][a-z0-9_]{0,63}$"},
                           "Metric name", required=True),
                    _param("from", "query", _TIME, "Start (default: to - 1 hour)"),
                    _param("to", "query", _TIME, "End, exclusive (default: now)"),
                    _param("step", "query", {"enum": ["1m", "1h", "1d", "raw"]},
                           "Bucket width (default: finest within ~1500 buckets), or `raw` for "
                           "the readings themselves. Kept: 1m "
                           f"for {settings.rollup_minute_retention_days} days, 1h for "
                           f"{settings.rollup_hour_retention_days} days, 1d "
                           + ("forever" if settings.rollup_day_retention_days is None else
                              f"for {settings.rollup_day_retention_days} days after the "
                              "month") + ", raw " + (
                               f"for {settings.raw_retention_hours} hours"
                               if settings.raw_retention_hours else "not at all (400)")
                           + "; older buckets or readings are absent"),
                    _param("limit", "query", {"type": "integer", "minimum": 1,
                                              "maximum": raw_max_limit},
                           "step=raw only: readings per page (default "
                           f"{raw_default_limit}); for CSV the most rows (default: every "
                           "reading of the range up to QUERY_EXPORT_MAX_ROWS = "
                           f"{settings.query_export_max_rows})"),
                    _param("cursor", "query", {"type": "string", "minLength": 1},
                           "step=raw only: next_cursor of the previous page"),
                    _format_param()],
                "responses": {"200": _json_or_csv({"type": "object", "properties": {
                    "device_id": device_id, "metric": {"type": "string"},
                    "step": {"type": "string"}, "from": _TIME, "to": _TIME,
                    "buckets": {"type": "array", "items": _ref("Bucket"),
                                "description": "Steps 1m, 1h, 1d"},
                    "readings": {"type": "array", "items": _ref("Reading"),
                                 "description": "step=raw: in time order, each once"},
                    "kept_from": {**_TIME, "description": "step=raw: the oldest time raw "
                                                          "readings are kept for"},
                    "complete": {"type": "boolean", "description": (
                        "step=raw: false when a ten-minute window of the device was full, "
                        "so some readings were kept in the rollups only")},
                    "next_cursor": {"type": ["string", "null"],
                                    "description": "step=raw: the next page's cursor"}}},
                    f"Buckets in time order (at most {settings.query_max_buckets}), or "
                    "with step=raw a page of readings",
                    SERIES_COLUMNS, RAW_COLUMNS),
                    # 404: an id with a character no path takes (a newline) matches no route.
                    **_errors(400, 404, 503)}}},
            "/alerts": {"get": {
                "summary": "Alerts, newest first, paginated",
                "parameters": [
                    _param("state", "query", {"enum": ["open", "acknowledged", "resolved"]},
                           "Lifecycle state"),
                    _param("device_id", "query", device_id, "Device id"),
                    _param("severity", "query", {"enum": ["warning", "critical"]}, "Severity"),
                    _param("limit", "query", limit,
                           "Page size; for CSV the most rows (default: every matching alert "
                           f"up to QUERY_EXPORT_MAX_ROWS = {settings.query_export_max_rows})"),
                    _param("cursor", "query", {"type": "string", "minLength": 1},
                           "next_cursor of the previous page"),
                    _format_param()],
                "responses": {"200": _json_or_csv({"type": "object", "properties": {
                    "alerts": {"type": "array", "items": _ref("Alert")},
                    "next_cursor": {"type": ["string", "null"]}}},
                    "A page of alerts (CSV: every page up to the limit)", ALERT_COLUMNS),
                    **_errors(400, 503)}}},
            "/alerts/{alert_id}": {"get": {
                "summary": "One alert",
                "parameters": [_param("alert_id", "path", alert_id, "Alert id")],
                "responses": {"200": _json(_ref("Alert"), "The alert"),
                              **_errors(400, 404, 503)}}},
            "/alerts/{alert_id}/ack": {"post": {
                "summary": "Acknowledge an open alert (repeating it is harmless)",
                "parameters": [_param("alert_id", "path", alert_id, "Alert id")],
                "requestBody": {"required": False, "content": {"application/json": {
                    "schema": {"type": "object", "additionalProperties": False,
                               "properties": {"by": {"type": "string",
                                                     "pattern": r"^[\w .@:-]{1,100}$"}}}}}},
                "responses": {"200": _json(_ref("Alert"), "The acknowledged alert"),
                              **_errors(400, 404, 409, 503)}}},
            "/rules": {"get": {
                "summary": "The threshold alert rules, for drawing their thresholds on charts "
                           "(offline rules have no threshold and are not listed)",
                "parameters": [
                    _param("device_id", "query", device_id,
                           "Only the rules that apply to this device, with its values "
                           "(overrides applied); the others under not_applying"),
                    _param("metric", "query", {"type": "string",
                                               "pattern": r"^[a-z][a-z0-9_]{0,63}$"},
                           "Only the rules of this metric")],
                "responses": {"200": _json({"type": "object", "required": ["rules"],
                                            "properties": {
                                                "rules": {"type": "array",
                                                          "items": _ref("Rule")},
                                                "device_id": device_id,
                                                "not_applying": {
                                                    "type": "array", "items": {
                                                        "type": "object",
                                                        "required": ["name", "reason"],
                                                        "properties": {
                                                            "name": {"type": "string"},
                                                            "reason": {"type": "string"}}}}}},
                                           "Rules in configuration order"),
                              **_errors(400, 404, 503)}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/healthz": {"get": {"summary": "Process alive",
                                 "responses": {"200": {"description": "Alive"}}}},
            "/readyz": {"get": {"summary": "Store reachable",
                                "responses": {"200": {"description": "Ready"},
                                              "503": {"description": "Not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "Text format"}}}},
        },
        "components": {"schemas": schemas},
    }
