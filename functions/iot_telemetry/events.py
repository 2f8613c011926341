"""CloudEvents bindings: the only module that imports the cloudevents SDK.

functions-framework pins cloudevents 1.x; moving to 2.x should touch this file only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, unquote

from cloudevents.http import CloudEvent
from cloudevents.http import from_http as _sdk_from_http
from cloudevents.kafka import KafkaMessage
from cloudevents.kafka import from_binary as _sdk_from_kafka
from cloudevents.kafka import to_binary as _sdk_to_kafka

from .errors import BadRequest, UnsupportedMediaType

JSON: Final = "application/json"
STRUCTURED: Final = "application/cloudevents+json"
BATCH: Final = "application/cloudevents-batch+json"
TELEMETRY_TYPE: Final = "iot.telemetry.v1"
ALERT_TYPE: Final = "iot.alert.v1"
#: What a PingSource sends (Knative sets the type; ceOverrides can only add extensions).
PING_TYPE: Final = "dev.knative.sources.ping"
SPECVERSION: Final = "1.0"


@dataclass(frozen=True)
class RawEvent:
    """A CloudEvent as received: attributes (extensions included) and decoded JSON data."""

    attributes: dict[str, Any]
    data: Any = None
    problems: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class KafkaRecord:
    """One record of the CloudEvents Kafka binding (binary mode)."""

    topic: str
    key: bytes
    headers: tuple[tuple[str, bytes], ...]
    value: bytes


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _reject_constant(name: str) -> float:
    # NaN and Infinity are not JSON; keep them visible so validation names the metric.
    return float(name.replace("Infinity", "inf"))


def loads(body: bytes | str) -> Any:
    """Decode JSON, keeping NaN/Infinity as floats so validation can name where they are."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None


def read_http(headers: Mapping[str, str] | Any, body: bytes) -> list[RawEvent]:
    """Decode an HTTP request in binary, structured or batch mode into raw events."""
    ctype = media_type(headers.get("Content-Type"))
    if ctype == BATCH:
        items = loads(body)
        if not isinstance(items, list):
            raise BadRequest("batch body must be a JSON array of CloudEvents")
        if not items:
            raise BadRequest("batch is empty")
        return [_structured(item) for item in items]
    if ctype == STRUCTURED:
        return [_structured(loads(body))]
    if headers.get("ce-specversion") is None:
        if ctype == JSON:
            raise BadRequest(
                "binary mode needs ce-specversion, ce-id, ce-source, ce-type and ce-subject "
                f"headers; or send {STRUCTURED} or {BATCH}"
            )
        raise UnsupportedMediaType(
            f"content type {ctype or '(none)'!r} is not supported; use {JSON} with ce-* "
            f"headers, {STRUCTURED} or {BATCH}"
        )
    if ctype != JSON:
        raise UnsupportedMediaType(f"binary-mode data must be {JSON}, not {ctype or '(none)'!r}")
    attributes: dict[str, Any] = {
        name[3:].lower(): unquote(value)
        for name, value in headers.items()
        if name.lower().startswith("ce-")
    }
    attributes["datacontenttype"] = JSON
    return [RawEvent(attributes, loads(body) if body else None)]


def _structured(item: Any) -> RawEvent:
    if not isinstance(item, dict):
        return RawEvent({}, None, ("a structured CloudEvent must be a JSON object",))
    attributes = {k: v for k, v in item.items() if k not in ("data", "data_base64")}
    problems: tuple[str, ...] = ()
    if "data_base64" in item:
        problems = ("data_base64 is not accepted: telemetry data must be JSON",)
    ctype = media_type(attributes.get("datacontenttype") or JSON)
    if ctype != JSON:
        problems += (f"datacontenttype must be {JSON}",)
    return RawEvent(attributes, item.get("data"), problems)


def read_delivery(headers: Mapping[str, str] | Any, body: bytes) -> RawEvent:
    """Decode an event delivered by the Broker (binary or structured mode)."""
    try:
        event = _sdk_from_http(dict(headers), body)
    except Exception as exc:  # the SDK raises several unrelated types for bad input
        raise BadRequest(f"not a CloudEvent: {exc}") from None
    attributes = dict(event.get_attributes())
    data = event.get_data()
    if isinstance(data, bytes | str):
        data = loads(data) if data else None
    return RawEvent(attributes, data)


def to_kafka(topic: str, attributes: Mapping[str, Any], data: Any) -> KafkaRecord:
    """Encode one event as a binary-mode Kafka record keyed by its partition key."""
    attrs = {"datacontenttype": JSON, **attributes}
    key = str(attrs.get("partitionkey") or attrs.get("subject") or "")
    attrs["partitionkey"] = key
    message = _sdk_to_kafka(CloudEvent(attrs, data), key_mapper=lambda _e: key)
    headers = dict(message.headers)
    headers["ce_partitionkey"] = key.encode()
    value = message.value if isinstance(message.value, bytes) else message.value.encode()
    return KafkaRecord(topic, key.encode(), tuple(headers.items()), value)


def from_kafka(key: bytes | None, headers: Iterable[tuple[str, bytes]], value: bytes) -> RawEvent:
    """Decode a binary-mode Kafka record."""
    message = KafkaMessage(headers=dict(headers), key=key, value=value)
    try:
        decoded = _sdk_from_kafka(message)
    except Exception as exc:
        raise BadRequest(f"not a CloudEvent record: {exc}") from None
    attributes = {k: v.decode() if isinstance(v, bytes) else v
                  for k, v in decoded.get_attributes().items()}
    data = decoded.get_data()
    if isinstance(data, bytes | str):
        data = loads(data) if data else None
    return RawEvent(attributes, data)


def to_http(attributes: Mapping[str, Any], data: Any) -> tuple[dict[str, str], bytes]:
    """Encode an event as a binary-mode HTTP message (headers, body)."""
    headers = {f"ce-{k}": quote(str(v), safe=" !#$&'()*+,/:;=?@[]^_`{|}~-.") for k, v in
               attributes.items() if k not in ("datacontenttype", "data")}
    headers.setdefault("ce-specversion", SPECVERSION)
    headers["Content-Type"] = str(attributes.get("datacontenttype") or JSON)
    return headers, json.dumps(data, separators=(",", ":"), default=str).encode()


def to_batch(events: Sequence[tuple[Mapping[str, Any], Any]]) -> bytes:
    """Encode events as an application/cloudevents-batch+json body."""
    return json.dumps(
        [{"specversion": SPECVERSION, **attrs, "data": data} for attrs, data in events],
        separators=(",", ":"), default=str,
    ).encode()
