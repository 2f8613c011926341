"""Prometheus metrics and JSON-line logs shared by every function."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

EVENTS_ACCEPTED = Counter(
    "iot_events_accepted_total", "Telemetry events accepted by ingest", ["mode"])
POINTS_ACCEPTED = Counter("iot_points_accepted_total", "Data points accepted by ingest")
EVENTS_REJECTED = Counter(
    "iot_events_rejected_total", "Requests refused by ingest, by reason", ["reason"])
EVENTS_PROCESSED = Counter(
    "iot_events_processed_total", "Events handled by a consumer function, by outcome",
    ["function", "outcome"])
DUPLICATES_SKIPPED = Counter(
    "iot_duplicates_skipped_total", "Redelivered events that changed nothing", ["function"])
POINTS_AGGREGATED = Counter("iot_points_aggregated_total", "Data points added to rollups")
STORE_COMMANDS = Counter(
    "iot_store_commands_total", "Commands sent to the store (round trips), by command name",
    ["command"])
AGGREGATE_BATCH_EVENTS = Histogram(
    "iot_aggregate_batch_events", "Events written together by one group commit of aggregate",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
ALERT_TRANSITIONS = Counter(
    "iot_alert_transitions_total", "Alerts raised and resolved", ["transition", "severity"])
ALERTS_ACKNOWLEDGED = Counter("iot_alerts_acknowledged_total", "Alerts acknowledged via the API")
PROCESSING_SECONDS = Histogram(
    "iot_processing_seconds", "Time to handle one request or delivery", ["function"],
    buckets=LATENCY_BUCKETS)
QUERY_SECONDS = Histogram(
    "iot_query_seconds", "Query API latency by route and status", ["route", "status"],
    buckets=LATENCY_BUCKETS)
DEPENDENCY_ERRORS = Counter(
    "iot_dependency_errors_total", "Kafka or store failures answered with 503", ["function"])


def metrics_body() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra={"event_id": ...}` fields are kept."""

    _STANDARD: Final = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in self._STANDARD})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str) -> None:
    """JSON lines on stderr for the whole process (idempotent)."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.handlers = [handler]
    root.setLevel(level)
    for noisy in ("kafka", "pymongo", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


class Timer:
    """Seconds since creation, for latency histograms."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
