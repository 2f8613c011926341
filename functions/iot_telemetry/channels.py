"""Notification channels (NOTIFY_CHANNELS): which alert events each wants, and what it is sent.

A channel is a webhook: `json` receives the alert event itself as a structured-mode
CloudEvent (signed when the channel has a secret), `slack` a Slack incoming-webhook message.
URLs and secrets can name an environment variable instead of holding the value
(`url_env`, `secret_env`), so the ConfigMap holds the channel list and the Secret the
values; either way they are read once at start, and never logged or used as a metric label.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, urlsplit

from .events import STRUCTURED, structured_body
from .rules import SEVERITIES
from .scopes import EVERY_DEVICE, Selector, parse_selector

FORMATS: Final = ("json", "slack")
#: The alert transitions a channel can ask for, in the order an alert goes through them.
LIFECYCLE: Final = ("raised", "acknowledged", "resolved")
CHANNEL_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
CHANNEL_FIELDS: Final = ("name", "url", "url_env", "format", "secret", "secret_env", "scope",
                         "severity", "lifecycle")
#: Header of the signature of a `json` channel with a secret: `t=<unix seconds>,v1=<hex>`,
#: HMAC-SHA256 with the secret over `<t>.<body>` (README, Notifications).
SIGNATURE_HEADER: Final = "X-Iot-Signature"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
#: The CloudEvent type of the message that stands for the alerts folded in one minute.
SUMMARY_TYPE: Final = "iot.alert.summary.v1"
NOTIFY_SOURCE: Final = "/iot/notify"


@dataclass(frozen=True)
class Channel:
    """One webhook that alert events are sent to."""

    name: str
    url: str = field(repr=False)
    format: str = "json"
    secret: str = field(default="", repr=False)
    scope: Selector = EVERY_DEVICE
    severity: str = SEVERITIES[0]
    lifecycle: tuple[str, ...] = LIFECYCLE

    def wants(self, transition: str, severity: str) -> bool:
        """Whether the channel takes this transition at this severity (scope aside)."""
        return (transition in self.lifecycle and severity in SEVERITIES
                and SEVERITIES.index(severity) >= SEVERITIES.index(self.severity))

    def describe(self) -> dict[str, Any]:
        """The channel as `notify test` and logs may show it: no URL, no secret."""
        return {"name": self.name, "format": self.format, "signed": bool(self.secret),
                "scope": self.scope.describe(), "severity": self.severity,
                "lifecycle": list(self.lifecycle)}


def parse_channels(items: Any, env: Mapping[str, str]) -> tuple[Channel, ...]:
    """Check NOTIFY_CHANNELS (a JSON list); ValueError lists every problem, each naming its
    channel and field."""
    if not isinstance(items, list):
        raise ValueError('must be a JSON list of channels, e.g. [{"name": "ops", '
                         '"url": "https://...", "format": "json"}]')
    problems: list[str] = []
    channels = [_channel(item, i, env, problems) for i, item in enumerate(items)]
    names = [str(i["name"]) for i in items if isinstance(i, Mapping) and isinstance(
        i.get("name"), str)]
    problems += [f"channel {n!r}: the name is used twice" for n in sorted(set(names))
                 if names.count(n) > 1]
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(c for c in channels if c is not None)


def _channel(item: Any, index: int, env: Mapping[str, str],
             problems: list[str]) -> Channel | None:
    if not isinstance(item, Mapping):
        problems.append(f"channel [{index}]: must be an object")
        return None
    name = item.get("name")
    where = (f"channel {name!r}" if isinstance(name, str) and CHANNEL_NAME.fullmatch(name)
             else f"channel [{index}]")
    before = len(problems)
    problems += [f"{where}.{k}: unknown field (use {', '.join(CHANNEL_FIELDS)})"
                 for k in item if k not in CHANNEL_FIELDS]
    if not (isinstance(name, str) and CHANNEL_NAME.fullmatch(name)):
        problems.append(f"{where}.name: must match {CHANNEL_NAME.pattern}")
    url = _value(item, "url", env, where, problems, required=True)
    if url and not _is_http_url(url):
        problems.append(f"{where}.url: must be an http:// or https:// URL")
    fmt = item.get("format", "json")
    if fmt not in FORMATS:
        problems.append(f"{where}.format: must be one of {', '.join(FORMATS)}")
    secret = _value(item, "secret", env, where, problems, required=False)
    if secret and fmt != "json":
        problems.append(f"{where}.secret: only json channels are signed")
    scope = (parse_selector(item["scope"], f"{where}.scope", problems) if "scope" in item
             else EVERY_DEVICE)
    severity = item.get("severity", SEVERITIES[0])
    if severity not in SEVERITIES:
        problems.append(f"{where}.severity: must be one of {', '.join(SEVERITIES)} (the "
                        "least severe alert sent)")
    lifecycle = item.get("lifecycle", list(LIFECYCLE))
    if (not isinstance(lifecycle, list) or not lifecycle
            or not all(isinstance(t, str) and t in LIFECYCLE for t in lifecycle)):
        problems.append(f"{where}.lifecycle: must be a non-empty list of "
                        f"{', '.join(LIFECYCLE)}")
        lifecycle = list(LIFECYCLE)
    if len(problems) > before:
        return None
    return Channel(str(name), url, str(fmt), secret, scope, str(severity),
                   tuple(t for t in LIFECYCLE if t in lifecycle))


def _value(item: Mapping[str, Any], key: str, env: Mapping[str, str], where: str,
           problems: list[str], *, required: bool) -> str:
    """`key` given inline, or `key_env` naming the variable that holds it (from the Secret)."""
    inline, variable = item.get(key), item.get(f"{key}_env")
    if inline is not None and variable is not None:
        problems.append(f"{where}: give {key} or {key}_env, not both")
        return ""
    if variable is not None:
        if not isinstance(variable, str) or not variable:
            problems.append(f"{where}.{key}_env: must name an environment variable")
            return ""
        value = env.get(variable, "").strip()
        if not value:
            problems.append(f"{where}.{key}_env: variable {variable} is not set")
        return value
    if inline is None:
        if required:
            problems.append(f"{where}: needs {key} or {key}_env")
        return ""
    if not isinstance(inline, str) or not inline.strip():
        problems.append(f"{where}.{key}: must be a non-empty string")
        return ""
    return inline.strip()


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


# --- messages -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Message:
    """One HTTP request to a channel: headers (without the signature) and body."""

    headers: dict[str, str]
    body: bytes


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: `t=<timestamp>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, now: float,
           tolerance: float = 300.0) -> bool:
    """Whether a signature header is valid for `body` and not older than `tolerance` seconds:
    what a receiver checks (kept here so the tests check what the README tells receivers)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts.get("t", ""))
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


def signed(channel: Channel, message: Message, timestamp: int) -> dict[str, str]:
    """The headers of one attempt: a fresh signature each time, the same idempotency key."""
    if not channel.secret:
        return message.headers
    return {**message.headers, SIGNATURE_HEADER: sign(channel.secret, timestamp, message.body)}


def alert_message(channel: Channel, attributes: Mapping[str, Any], alert: Mapping[str, Any],
                  dashboard_url: str) -> Message:
    """What `channel` is sent for one alert event (its id is the idempotency key)."""
    key = str(attributes["id"])
    if channel.format == "json":
        return Message({"Content-Type": STRUCTURED, IDEMPOTENCY_HEADER: key},
                       structured_body(attributes, alert))
    return Message({"Content-Type": "application/json", IDEMPOTENCY_HEADER: key},
                   json.dumps(slack_alert(alert, dashboard_url)).encode())


@dataclass(frozen=True)
class Summary:
    """The alerts folded for one channel in one minute (see notify.py, Floods)."""

    key: str
    channel: str
    minute: str
    count: int
    by_transition: dict[str, int]
    examples: tuple[Mapping[str, Any], ...]

    def text(self) -> str:
        """ "37 more alerts raised in 10:42 UTC: dev-1 temperature-high (critical), ..." """
        states = [t for t in LIFECYCLE if self.by_transition.get(t)]
        what = (states[0] if len(states) == 1 else
                ", ".join(f"{self.by_transition[t]} {t}" for t in states))
        head = (f"{self.count} more alert{'s' if self.count != 1 else ''} {what} in the minute "
                f"{self.minute[11:16]} UTC" if len(states) == 1 else
                f"{self.count} more alert{'s' if self.count != 1 else ''} in the minute "
                f"{self.minute[11:16]} UTC ({what})")
        shown = ", ".join(f"{e.get('device_id')} {e.get('rule')} ({e.get('severity')}"
                          + (f", {e.get('state')})" if len(states) > 1 else ")")
                          for e in self.examples)
        rest = self.count - len(self.examples)
        return f"{head}: {shown}" + (f" and {rest} more" if rest > 0 else "")


def summary_message(channel: Channel, summary: Summary, time: str) -> Message:
    """What `channel` is sent for the alerts folded in one minute."""
    if channel.format == "json":
        attributes = {"specversion": "1.0", "type": SUMMARY_TYPE, "source": NOTIFY_SOURCE,
                      "id": summary.key, "time": time, "datacontenttype": "application/json"}
        data = {"channel": summary.channel, "minute": summary.minute, "count": summary.count,
                "by_transition": summary.by_transition, "text": summary.text(),
                "examples": list(summary.examples)}
        return Message({"Content-Type": STRUCTURED, IDEMPOTENCY_HEADER: summary.key},
                       structured_body(attributes, data))
    text = summary.text()
    body = {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn",
                                                                  "text": _escape(text)}}]}
    return Message({"Content-Type": "application/json", IDEMPOTENCY_HEADER: summary.key},
                   json.dumps(body).encode())


_EMOJI: Final = {"raised": ":rotating_light:", "acknowledged": ":eyes:",
                 "resolved": ":white_check_mark:"}


def slack_alert(alert: Mapping[str, Any], dashboard_url: str) -> dict[str, Any]:
    """A Slack incoming-webhook body for one alert: `text` (notifications, clients without
    blocks) and blocks with the device, rule, value, threshold and severity."""
    state = str(alert.get("state"))
    device = str(alert.get("device_id"))
    rule = str(alert.get("rule"))
    severity = str(alert.get("severity"))
    value = alert.get("resolved_value") if state == "resolved" else alert.get("last_value")
    if value is None:
        value = alert.get("peak")
    text = f"{severity.upper()} alert {state}: {rule} on {device}"
    fields = [("Device", device), ("Rule", rule), ("Severity", severity),
              ("Value", _shown(value, alert.get("metric"))),
              ("Threshold", _threshold(alert))]
    if state == "acknowledged" and alert.get("acknowledged_by"):
        fields.append(("Acknowledged by", str(alert["acknowledged_by"])))
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": f"{_EMOJI.get(state, '')} *{_escape(text)}*"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{_escape(v)}"}
                                       for k, v in fields]}]
    if dashboard_url:
        link = device_link(dashboard_url, device)
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"<{link}|Open {_escape(device)} in the dashboard>"}]})
        text += f" ({link})"
    return {"text": text, "blocks": blocks}


def device_link(dashboard_url: str, device_id: str) -> str:
    """The dashboard's page of a device (`DASHBOARD_URL/#/devices/<id>`)."""
    return f"{dashboard_url.rstrip('/')}/#/devices/{quote(device_id, safe='')}"


def _shown(value: Any, metric: Any) -> str:
    if value is None:
        return "-"
    return f"{value} ({metric})" if metric else str(value)


def _threshold(alert: Mapping[str, Any]) -> str:
    threshold = alert.get("threshold")
    if threshold is None:
        window = alert.get("window_seconds")
        return f"silent for {window} s" if window is not None else "-"
    condition = alert.get("condition")
    return f"{condition} {threshold}" if condition else str(threshold)


def _escape(text: str) -> str:
    # Slack's mrkdwn: these three are control characters, everything else is literal.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def example(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The few fields a summary shows of a folded alert."""
    return {k: alert.get(k) for k in ("id", "device_id", "rule", "severity", "state")}


def names(channels: Sequence[Channel]) -> list[str]:
    return [c.name for c in channels]
