"""Prometheus metrics and JSON-line logs shared by every function."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

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
POINTS_EXPIRED = Counter(
    "iot_points_expired_total",
    "Data points aggregate skipped: older than the minute retention lets it deduplicate")
RAW_DROPPED = Counter(
    "iot_raw_readings_dropped_total",
    "Readings aggregate counted in the rollups but could not keep raw: their device's "
    "ten-minute window was full (raw.MAX_BYTES)")
RETENTION_SWEPT = Counter(
    "iot_retention_swept_total",
    "Documents the retention sweep compacted (days) or deleted, by collection",
    ["action", "collection"])
STORE_COMMANDS = Counter(
    "iot_store_commands_total", "Commands sent to the store (round trips), by command name",
    ["command"])
AGGREGATE_BATCH_EVENTS = Histogram(
    "iot_aggregate_batch_events", "Events written together by one group commit of aggregate",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
ALERT_BATCH_EVENTS = Histogram(
    "iot_alert_batch_events", "Events handled together by one group commit of alert",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
ALERT_TRANSITIONS = Counter(
    "iot_alert_transitions_total", "Alerts raised and resolved", ["transition", "severity"])
ALERTS_ACKNOWLEDGED = Counter("iot_alerts_acknowledged_total", "Alerts acknowledged via the API")
NOTIFY_SENT = Counter(
    "iot_notify_sent_total", "Messages a channel took (2xx): alerts and flood summaries",
    ["channel"])
NOTIFY_FAILED = Counter(
    "iot_notify_failed_total", "Messages a channel did not take, by kind: `retried` (5xx, "
    "408, 429, no answer: the delivery is retried) or `permanent` (other answers: "
    "dead-lettered)", ["channel", "kind"])
NOTIFY_FOLDED = Counter(
    "iot_notify_folded_total", "Alert messages folded into a channel's summary of the minute "
    "(more than NOTIFY_MAX_PER_MINUTE)", ["channel"])
PROCESSING_SECONDS = Histogram(
    "iot_processing_seconds", "Time to handle one request or delivery", ["function"],
    buckets=LATENCY_BUCKETS)
QUERY_SECONDS = Histogram(
    "iot_query_seconds", "Query API latency by route and status", ["route", "status"],
    buckets=LATENCY_BUCKETS)
DEPENDENCY_ERRORS = Counter(
    "iot_dependency_errors_total", "Kafka or store failures answered with 503", ["function"])


# The function each metric family belongs to; families with a `function` label show that
# function's samples only; any other family (process, Python) shows everywhere.
OWNERS: Final = {
    "iot_events_accepted": "ingest", "iot_points_accepted": "ingest",
    "iot_events_rejected": "ingest", "iot_points_aggregated": "aggregate",
    "iot_points_expired": "aggregate", "iot_retention_swept": "aggregate",
    "iot_alert_transitions": "alert", "iot_alerts_acknowledged": "query",
    "iot_query_seconds": "query", "iot_aggregate_batch_events": "aggregate",
    "iot_notify_sent": "notify", "iot_notify_failed": "notify", "iot_notify_folded": "notify",
}


class _FunctionView(CollectorRegistry):
    """The process registry as one function sees it.

    The local run serves all four functions from one process, so every family is
    registered there; a port's /metrics must still describe only its own function.
    """

    def __init__(self, function: str) -> None:
        super().__init__(auto_describe=False)
        self.function = function

    def collect(self) -> Iterable[Metric]:
        for family in REGISTRY.collect():
            owner = OWNERS.get(family.name)
            if owner is not None and owner != self.function:
                continue
            if any("function" in s.labels for s in family.samples):
                own = [s for s in family.samples if s.labels.get("function") == self.function]
                family.samples[:] = own
            yield family


def metrics_body(function: str | None = None) -> tuple[bytes, str]:
    """Prometheus text of the process, or of one function's metrics."""
    registry = REGISTRY if function is None else _FunctionView(function)
    return generate_latest(registry), CONTENT_TYPE_LATEST


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
