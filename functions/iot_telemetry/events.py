"""CloudEvents bindings: the only module that imports the cloudevents SDK.

functions-framework pins cloudevents 1.x; moving to 2.x should touch this file only.
"""

from __future__ import annotations

import json
import re
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
# CloudEvents 1.0: attribute names are lowercase ASCII letters and digits; an Integer is
# 32-bit signed; a String holds no control characters and no lone surrogates.
ATTRIBUTE_NAME: Final = re.compile(r"[a-z0-9]+")
INTEGER_RANGE: Final = (-(2**31), 2**31 - 1)
_NOT_IN_STRINGS: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Core attributes whose type is String (or URI, Timestamp: strings too); telemetry.validate
# checks the others of them (id, source, subject, time, type, specversion).
_STRING_ATTRIBUTES: Final = ("datacontenttype", "dataschema")


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


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of repeated keys; which reading a device meant is unknowable.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        keys = [k for k, _ in pairs]
        repeated = next(k for i, k in enumerate(keys) if k in keys[:i])
        raise _DuplicateKey(f"key {repeated[:64]!r} appears twice in one object")
    return obj


def loads(body: bytes | str) -> Any:
    """Decode JSON, keeping NaN/Infinity as floats so validation can name where they are,
    and refusing an object with a repeated key."""
    try:
        return json.loads(body, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise BadRequest(f"body is not valid here: {exc}") from None
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
    attributes, problems = _checked(attributes)
    return [RawEvent(attributes, loads(body) if body else None, problems)]


def _structured(item: Any) -> RawEvent:
    if not isinstance(item, dict):
        return RawEvent({}, None, ("a structured CloudEvent must be a JSON object",))
    attributes, problems = _checked(
        {k: v for k, v in item.items() if k not in ("data", "data_base64")})
    if "data_base64" in item:
        problems += ("data_base64 is not accepted: telemetry data must be JSON",)
    ctype = attributes.get("datacontenttype") or JSON
    if isinstance(ctype, str) and media_type(ctype) != JSON:
        problems += (f"datacontenttype must be {JSON}",)
    return RawEvent(attributes, item.get("data"), problems)


def _checked(attributes: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Attributes as the CloudEvents type system allows them, and what breaks it."""
    kept: dict[str, Any] = {}
    problems: list[str] = []
    for name, raw in attributes.items():
        if not ATTRIBUTE_NAME.fullmatch(name):
            shown = name if len(name) <= 64 else name[:60] + "..."
            problems.append(f"attribute {shown!r}: CloudEvents attribute names are lowercase "
                            "letters a-z and digits only")
            continue
        value, problem = _typed(name, raw)
        if problem:
            problems.append(f"{name}: {problem}")
        elif value is not None:
            kept[name] = value
    return kept, tuple(problems)


def _typed(name: str, value: Any) -> tuple[Any, str | None]:
    # A JSON null is an unset attribute; an integral number is an Integer (JSON has no
    # integer type of its own); objects, lists and fractions have no CloudEvents type.
    if isinstance(value, str):
        if _NOT_IN_STRINGS.search(value):
            return None, ("holds a control character or a lone surrogate, which no "
                          "CloudEvents attribute may")
        return value, None
    if value is None:
        return None, None
    if name in _STRING_ATTRIBUTES:
        return None, "must be a string"
    if isinstance(value, bool):
        return value, None
    if isinstance(value, int | float):
        low, high = INTEGER_RANGE
        if (isinstance(value, float) and not value.is_integer()) or not low <= value <= high:
            return None, (f"{value!r} is not a CloudEvents Integer (a whole number from "
                          f"{low} to {high})")
        return int(value), None
    kind = "an object" if isinstance(value, dict) else "a list"
    return None, f"is {kind}; a CloudEvents attribute is a string, an integer or a boolean"


def attribute_text(value: Any) -> str:
    """The canonical string form of an attribute value (CloudEvents type system), as the
    HTTP and Kafka bindings carry it in headers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _compact(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def is_ping(headers: Mapping[str, str] | Any, mimetype: str, body: bytes) -> bool:
    """Whether a delivery is a PingSource tick (binary mode from the Broker, or structured)."""
    if headers.get("ce-type") is not None:
        return bool(headers.get("ce-type") == PING_TYPE)
    if mimetype != STRUCTURED:
        return False
    event = loads(body)
    return isinstance(event, dict) and event.get("type") == PING_TYPE


#: Core attributes of CloudEvents 1.0 in the order the SDK lists an event's attributes.
_CORE_ORDER: Final = ("specversion", "id", "source", "type", "datacontenttype", "dataschema",
                      "subject", "time")
#: Names the SDK's binary-mode decoder gives a meaning of its own, or fills in when absent.
_SDK_SPECIAL: Final = frozenset({"data", "extensions", "datacontenttype"})


def read_delivery(headers: Mapping[str, str] | Any, body: bytes) -> RawEvent:
    """Decode an event delivered by the Broker (binary or structured mode)."""
    return _binary_delivery(headers, body) or _sdk_delivery(headers, body)


def _binary_delivery(headers: Mapping[str, str] | Any, body: bytes) -> RawEvent | None:
    """The Broker's usual delivery (binary mode, CloudEvents 1.0, `time` set, JSON data) as
    the SDK decodes it, without the SDK's objects per event (54 -> 21 us a delivery).

    None for anything else, which the SDK decodes: every refusal, default and quirk stays
    the SDK's (tests/unit/test_events.py compares the two).
    """
    content_type = None
    found: dict[str, str] = {}
    for name, value in headers.items():
        low = name.lower()
        if low.startswith("ce-"):
            found[low[3:]] = value
        elif low == "content-type":
            content_type = value
    if (content_type is None or media_type(content_type) != JSON or not body
            or found.get("specversion") != SPECVERSION
            or not all(found.get(k) for k in ("id", "source", "type", "time"))
            or not _SDK_SPECIAL.isdisjoint(found) or not all(found.values())):
        return None
    try:
        data = json.loads(body)
    except Exception:  # the SDK keeps undecodable data as it came; loads() then refuses it
        return None
    if isinstance(data, str):  # the SDK's answer looks undecoded; loads() refuses it
        return None
    found["datacontenttype"] = content_type
    attributes: dict[str, Any] = {k: found.pop(k) for k in _CORE_ORDER if k in found}
    attributes.update(found)
    return RawEvent(attributes, data)


def _sdk_delivery(headers: Mapping[str, str] | Any, body: bytes) -> RawEvent:
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
    attrs = {"datacontenttype": JSON, **{k: attribute_text(v) for k, v in attributes.items()
                                         if v is not None}}
    key = str(attrs.get("partitionkey") or attrs.get("subject") or "")
    attrs["partitionkey"] = key
    if attrs.get("specversion") != SPECVERSION or not all(attrs.get(k) for k in _SDK_FILLS):
        return sdk_to_kafka(topic, attrs, data, key)
    # The SDK's record without the SDK's objects per event (73 -> 25 us a record on ingest's
    # path): content-type, then every other attribute as ce_<name> in the event's order,
    # ce_partitionkey last. tests/unit/test_events.py compares the two.
    headers = [("content-type", attrs["datacontenttype"].encode())]
    headers += [(f"ce_{k}", v.encode()) for k, v in attrs.items() if k not in _NOT_HEADERS]
    headers.append(("ce_partitionkey", key.encode()))
    return KafkaRecord(topic, key.encode(), tuple(headers), _compact(data))


#: Attributes the SDK fills in when absent (and checks): the fast path needs them set.
_SDK_FILLS: Final = ("specversion", "id", "source", "type", "time", "datacontenttype")
_NOT_HEADERS: Final = frozenset({"data", "partitionkey", "datacontenttype"})


def sdk_to_kafka(topic: str, attrs: Mapping[str, str], data: Any, key: str) -> KafkaRecord:
    """The record as the SDK's Kafka binding encodes it (attributes already as text)."""
    message = _sdk_to_kafka(CloudEvent(dict(attrs), data), data_marshaller=_compact,
                            key_mapper=lambda _e: key)
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
    headers = {f"ce-{k}": quote(attribute_text(v), safe=" !#$&'()*+,/:;=?@[]^_`{|}~-.") for k, v in
               attributes.items() if k not in ("datacontenttype", "data")}
    headers.setdefault("ce-specversion", SPECVERSION)
    headers["Content-Type"] = str(attributes.get("datacontenttype") or JSON)
    return headers, json.dumps(data, separators=(",", ":"), default=str).encode()


def structured_body(attributes: Mapping[str, Any], data: Any) -> bytes:
    """Encode one event as an application/cloudevents+json body (structured mode)."""
    return json.dumps({"specversion": SPECVERSION, **attributes, "data": data},
                      separators=(",", ":"), default=str).encode()


def to_batch(events: Sequence[tuple[Mapping[str, Any], Any]]) -> bytes:
    """Encode events as an application/cloudevents-batch+json body."""
    return json.dumps(
        [{"specversion": SPECVERSION, **attrs, "data": data} for attrs, data in events],
        separators=(",", ":"), default=str,
    ).encode()
