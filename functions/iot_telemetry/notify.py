"""notify: alert events (`iot.alert.v1`) sent to the channels of NOTIFY_CHANNELS; PingSource
ticks send the summaries of the alerts folded in a flood.

Delivery is at least once and never silently dropped. Per channel (in parallel, each its own
state in the store: notifications.py), one delivery of an event ends as:

- sent (2xx): a later delivery of the same event skips the channel;
- retried (5xx, 408, 429, no answer within NOTIFY_TIMEOUT_SECONDS): the delivery answers
  503, so the Trigger retries it with backoff, then dead-letters it; the retry sends only to
  the channels that have not taken it, with the same Idempotency-Key (the event id);
- refused (any other answer, e.g. 400, 404): permanent; logged with the channel name,
  counted, never sent again. Once no channel is left to retry, the delivery answers 400
  naming the channels that refused, so the Broker parks the event on the dead-letter sink;
- folded: the channel had NOTIFY_MAX_PER_MINUTE messages this minute; the summary after the
  minute counts it.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import flask

from .alertevents import alert_event
from .channels import (
    LIFECYCLE,
    Channel,
    Message,
    alert_message,
    signed,
    summary_message,
)
from .errors import BadRequest, DependencyUnavailable
from .events import ALERT_TYPE, PING_TYPE, RawEvent, read_delivery
from .httpsession import HttpSession
from .notifications import (
    BUSY,
    CLAIMED,
    FOLDED,
    REJECTED,
    RETRY,
    SENT,
    NotificationBook,
    delivery_key,
)
from .observability import EVENTS_PROCESSED, NOTIFY_FAILED, NOTIFY_FOLDED, NOTIFY_SENT
from .runtime import Runtime, get_runtime
from .service import require, serve
from .telemetry import format_time

log = logging.getLogger(__name__)
FUNCTION: Final = "notify"
#: Channels sent to at once by one delivery (each channel's request waits on the network).
PARALLEL_CHANNELS: Final = 8
#: What a channel's answer means: sent, to be retried, or refused for good.
_RETRIED_STATUSES: Final = frozenset({408, 429})
#: Each worker thread's keep-alive connections to the channels.
_SESSIONS = threading.local()
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
#: Runtimes (processes, and the local run's restarts) whose store has notify's indexes.
_INDEXED: weakref.WeakSet[Runtime] = weakref.WeakSet()

Clock = Callable[[], datetime]


def _wall() -> datetime:
    return datetime.now(UTC)


def handle(request: flask.Request, runtime: Runtime | None = None,
           clock: Clock = _wall) -> flask.Response:
    rt = runtime or get_runtime()
    return serve(FUNCTION, request, lambda r: _notify(r, rt, clock),
                 lambda: {"store": rt.store.ping()})


def _notify(request: flask.Request, rt: Runtime, clock: Clock) -> flask.Response:
    # 1. Decode; 2. an alert event goes to its channels, a tick sends the due summaries;
    # 3. answer 204, or 503 (a channel to retry) or 400 (a channel refused for good).
    require(request, "/", "POST")
    raw = read_delivery(request.headers, request.get_data())
    book = _book(rt)
    if raw.attributes.get("type") == PING_TYPE:
        results = send_summaries(rt, book, clock())
    else:
        attributes, alert = decode_alert(raw)
        results = deliver(rt, book, attributes, alert, clock)
    answer(results)
    EVENTS_PROCESSED.labels(FUNCTION, "applied").inc()
    return flask.Response(status=204)


def _book(rt: Runtime) -> NotificationBook:
    book = NotificationBook(rt.store, rt.settings.notify_max_per_minute,
                            lease_seconds=rt.settings.notify_timeout_seconds + 20)
    if rt not in _INDEXED:
        book.ensure_indexes()
        _INDEXED.add(rt)
    return book


_ALERT_FIELDS: Final = ("id", "device_id", "rule", "severity")


def decode_alert(raw: RawEvent) -> tuple[dict[str, Any], dict[str, Any]]:
    """The attributes and alert of an `iot.alert.v1` event; BadRequest lists what is wrong."""
    attributes, data = raw.attributes, raw.data
    problems = list(raw.problems)
    if attributes.get("type") != ALERT_TYPE:
        problems.append(f"type: notify takes {ALERT_TYPE} events and PingSource ticks, not "
                        f"{str(attributes.get('type'))[:64]!r}")
    if not attributes.get("id") or not attributes.get("source"):
        problems.append("id and source: required")
    if not isinstance(data, dict):
        problems.append("data: must be the alert (a JSON object)")
        raise BadRequest(problems)
    problems += [f"data.{k}: required (a string)" for k in _ALERT_FIELDS
                 if not isinstance(data.get(k), str) or not data.get(k)]
    if data.get("state") not in LIFECYCLE:
        problems.append(f"data.state: must be one of {', '.join(LIFECYCLE)}")
    if problems:
        raise BadRequest(problems)
    return dict(attributes), data


@dataclass(frozen=True)
class ChannelResult:
    """What one delivery did for one channel."""

    channel: str
    outcome: str  # SENT, FOLDED, RETRY, REJECTED, BUSY, or "skipped" (final before)
    detail: str = ""


def deliver(rt: Runtime, book: NotificationBook, attributes: Mapping[str, Any],
            alert: Mapping[str, Any], clock: Clock = _wall) -> list[ChannelResult]:
    """Send one alert event to every channel that wants it and has not had it yet."""
    device = str(alert["device_id"])
    wanted = [c for c in rt.settings.notify_channels
              if c.wants(str(alert["state"]), str(alert["severity"]))]
    if any(c.scope.metadata for c in wanted):
        metadata = rt.rule_resolver.metadata.get(device)
        wanted = [c for c in wanted if c.scope.matches(device, metadata)]
    else:
        wanted = [c for c in wanted if c.scope.matches(device, {})]
    return _each(wanted, lambda c: _deliver_one(
        rt, book, c, attributes=attributes, alert=alert, clock=clock))


def _each(channels: Sequence[Channel],
          work: Callable[[Channel], ChannelResult]) -> list[ChannelResult]:
    """`work` for each channel, in parallel: one slow channel does not delay another."""
    if len(channels) <= 1:
        return [work(c) for c in channels]
    return list(_pool().map(work, channels))


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(PARALLEL_CHANNELS, thread_name_prefix="notify")
        return _POOL


def _deliver_one(rt: Runtime, book: NotificationBook, channel: Channel, *,
                 attributes: Mapping[str, Any], alert: Mapping[str, Any],
                 clock: Clock) -> ChannelResult:
    claim = book.claim(channel.name, attributes, alert, clock())
    if claim.outcome == BUSY:
        return ChannelResult(channel.name, BUSY, "being sent by another instance")
    if claim.outcome != CLAIMED:
        if claim.outcome == FOLDED:  # its first delivery may have stopped right after folding
            book.summary_due(channel.name, claim.doc["fold_minute"])
        if claim.outcome == REJECTED:
            return ChannelResult(channel.name, REJECTED,
                                 f"HTTP {claim.doc.get('status')}")
        return ChannelResult(channel.name, "skipped", claim.outcome)
    key = delivery_key(channel.name, attributes)
    event_id = str(attributes.get("id"))
    try:
        slot = book.take_slot(channel.name, key, claim.doc["minute"])
    except Exception:
        # Free the claim for the retry now rather than when its lease ends (best effort: the
        # store may be what failed). Only before sending: after, a retry may send it again.
        with contextlib.suppress(Exception):
            book.finish(key, RETRY, None, clock())
        raise
    if not slot:
        minute = book.fold(key, channel.name, clock())
        NOTIFY_FOLDED.labels(channel.name).inc()
        log.info("notification folded into the summary of %s", minute, extra={
            "event_id": event_id, "channel": channel.name, "alert_id": alert.get("id")})
        return ChannelResult(channel.name, FOLDED, minute)
    message = alert_message(channel, attributes, alert, rt.settings.dashboard_url)
    state, status, detail = send(channel, message, rt.settings.notify_timeout_seconds)
    book.finish(key, state, status, clock())
    _log_send(channel, state, detail, {"event_id": event_id, "alert_id": alert.get("id"),
                                       "device_id": alert.get("device_id")})
    return ChannelResult(channel.name, state, detail)


def send(channel: Channel, message: Message, timeout: float) -> tuple[str, int | None, str]:
    """POST a message once: (SENT | RETRY | REJECTED, HTTP status or None, what happened)."""
    session = getattr(_SESSIONS, "session", None)
    if session is None:
        session = _SESSIONS.session = HttpSession()
    headers = signed(channel, message, int(time.time()))
    try:
        answer = session.post(channel.url, headers, message.body, timeout)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # Only the kind of failure: the message of some errors holds the host of the URL.
        return RETRY, None, f"no answer ({type(exc).__name__})"
    if 200 <= answer.status < 300:
        return SENT, answer.status, f"HTTP {answer.status}"
    if answer.status >= 500 or answer.status in _RETRIED_STATUSES:
        return RETRY, answer.status, f"HTTP {answer.status}"
    return REJECTED, answer.status, f"HTTP {answer.status}"


def _log_send(channel: Channel, state: str, detail: str, extra: dict[str, Any]) -> None:
    extra = {**extra, "channel": channel.name}
    if state == SENT:
        NOTIFY_SENT.labels(channel.name).inc()
        log.info("notification sent to %s", channel.name, extra=extra)
    elif state == RETRY:
        NOTIFY_FAILED.labels(channel.name, "retried").inc()
        log.warning("channel %s did not take the notification (%s): retried", channel.name,
                    detail, extra=extra)
    else:
        NOTIFY_FAILED.labels(channel.name, "permanent").inc()
        log.error("channel %s refused the notification (%s): not retried, dead-lettered",
                  channel.name, detail, extra=extra)


def send_summaries(rt: Runtime, book: NotificationBook, now: datetime) -> list[ChannelResult]:
    """A tick: send each channel's summary of every minute over that had alerts folded."""
    channels = {c.name: c for c in rt.settings.notify_channels}
    results = []
    for due in book.due_summaries(channels, now):
        channel = channels[due.summary.channel]
        if not due.summary.count:
            book.summary_done(due)
            continue
        message = summary_message(channel, due.summary, format_time(now))
        state, _status, detail = send(channel, message, rt.settings.notify_timeout_seconds)
        _log_send(channel, state, detail, {"summary": due.summary.key,
                                           "folded": due.summary.count})
        if state == RETRY:
            book.summary_failed(due)
        else:
            book.summary_done(due)
        results.append(ChannelResult(channel.name, state, f"summary of {due.summary.minute}: "
                                                          f"{detail}"))
    book.delete_expired(now)
    return results


def answer(results: Sequence[ChannelResult]) -> None:
    """Raise what the delivery answers when a channel has not taken it (5xx before 4xx:
    the channels still to retry must get their retries before the event is parked)."""
    waiting = [r for r in results if r.outcome in (RETRY, BUSY)]
    if waiting:
        raise DependencyUnavailable("not delivered yet, retried: " + "; ".join(
            f"channel {r.channel}: {r.detail}" for r in waiting), retry_after=1)
    refused = [r for r in results if r.outcome == REJECTED]
    if refused:
        raise BadRequest([f"channel {r.channel} refused the notification ({r.detail}); not "
                          "retried" for r in refused])


def sample_event(device_id: str = "sample-device") -> tuple[dict[str, str], dict[str, Any]]:
    """An alert event as alert would send it, for `iot-telemetry notify test`."""
    now = format_time(datetime.now(UTC))
    alert = {"id": f"test-{uuid.uuid4().hex[:12]}", "device_id": device_id,
             "metric": "temperature", "rule": "temperature-high", "severity": "warning",
             "condition": ">", "threshold": 30.0, "clear_threshold": 28.0, "state": "open",
             "raised_at": now, "first_seen": now, "last_seen": now, "count": 1,
             "last_value": 31.5, "peak": 31.5, "acknowledged_at": None,
             "acknowledged_by": None, "resolved_at": None, "resolved_value": None,
             "resolved_reason": None}
    return alert_event({"transition": "raised", "alert": alert})


def send_test(channel: Channel, dashboard_url: str, timeout: float) -> tuple[str, str]:
    """Send one sample alert message to a channel now (no store, no flood limit)."""
    attributes, alert = sample_event()
    state, _status, detail = send(channel, alert_message(channel, attributes, alert,
                                                         dashboard_url), timeout)
    return state, detail

