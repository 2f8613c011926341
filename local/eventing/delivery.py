"""HTTP data plane of the local broker: delivery to subscribers, and the ingress taking events in.

One delivery follows a Trigger's delivery spec the way the Kafka Broker dispatcher does:
binary-mode POST, retry on 5xx/404/408/409/429 and network errors with the manifest's
backoff, anything else non-2xx (and the last failed retry) goes to the dead-letter sink.
Both the in-memory broker and the Kafka dispatcher use this module.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from iot_telemetry.errors import BadRequest, DependencyUnavailable
from iot_telemetry.events import JSON, STRUCTURED, RawEvent, media_type, read_delivery, to_http
from iot_telemetry.httpsession import HttpAnswer, HttpSession

from .manifests import Trigger, retriable

log = logging.getLogger(__name__)

#: knativeerrordata carries at most this much of the subscriber's answer (as Knative does).
ERROR_DATA_MAX_BYTES: Final = 1024
#: The required CloudEvents context attributes.
REQUIRED: Final = ("specversion", "id", "source", "type")


# --- outcomes -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Delivered:
    """The subscriber answered 2xx; `reply` is the CloudEvent it answered with, if any."""

    status: int
    attempts: int
    reply: RawEvent | None = None


@dataclass(frozen=True)
class DeadLettered:
    """Not delivered: a non-retriable answer, or still failing after the last retry."""

    reason: str
    status: int | None
    attempts: int
    body: bytes = b""


@dataclass(frozen=True)
class Aborted:
    """Stopped while waiting to retry: the event is neither delivered nor dead-lettered."""

    attempts: int


Outcome = Delivered | DeadLettered | Aborted


def error_extensions(destination: str, outcome: DeadLettered) -> dict[str, str]:
    """The extensions Knative adds to a dead-lettered event: where it failed and the answer."""
    extensions = {"knativeerrordest": destination}
    if outcome.status is not None:
        extensions["knativeerrorcode"] = str(outcome.status)
    data = outcome.body or outcome.reason.encode()
    extensions["knativeerrordata"] = base64.b64encode(data[:ERROR_DATA_MAX_BYTES]).decode("ascii")
    return extensions


def text_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes with bytes values (the Kafka binding returns partitionkey as bytes) decoded."""
    return {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            for k, v in attributes.items()}


def missing_attributes(attributes: Mapping[str, Any]) -> list[str]:
    return [name for name in REQUIRED if not attributes.get(name)]


# --- delivery -------------------------------------------------------------------------------

def _reply(answer: HttpAnswer) -> RawEvent | None:
    """The CloudEvent in a 2xx answer (binary or structured mode), or None if it carries none."""
    ctype = media_type(answer.headers.get("content-type"))
    if "ce-specversion" not in answer.headers and ctype != STRUCTURED:
        return None
    event = read_delivery(answer.headers, answer.body)
    attributes = text_attributes(event.attributes)
    missing = missing_attributes(attributes)
    if missing:
        raise BadRequest(f"reply lacks {', '.join(missing)}")
    attributes.setdefault("datacontenttype", JSON)
    return RawEvent(attributes, event.data)


def deliver(trigger: Trigger, event_attrs: Mapping[str, Any], data: Any, url: str,
            session: HttpSession, *, stop: threading.Event | None = None,
            on_retry: Callable[[int, str], None] | None = None) -> Outcome:
    """Deliver one event to `url` under the Trigger's delivery spec.

    Blocks through the retries (sleeping the manifest's backoff); returns Aborted if
    `stop` is set while waiting. `on_retry(attempt, why)` is called before each retry.
    """
    spec = trigger.delivery
    headers, body = to_http(text_attributes(event_attrs), data)
    # The Kafka Broker asks for a reply; functions may answer with an event.
    headers["Prefer"] = "reply"
    event_id = str(event_attrs.get("id"))
    attempt = 0
    while True:
        attempt += 1
        status: int | None = None
        answer: HttpAnswer | None = None
        try:
            answer = session.post(url, headers, body, spec.timeout)
            status = answer.status
            why = f"answered {status}"
        except (OSError, http.client.HTTPException) as exc:
            why = f"{type(exc).__name__}: {exc}"
        if answer is not None and 200 <= answer.status < 300:
            try:
                return Delivered(answer.status, attempt, _reply(answer))
            except BadRequest as exc:
                return DeadLettered(f"reply is not a valid CloudEvent: {exc}", answer.status,
                                    attempt, answer.body)
        answer_body = answer.body if answer is not None else b""
        if not retriable(status):
            return DeadLettered(f"{trigger.subscriber.name} {why} (not retried)", status, attempt,
                                answer_body)
        if attempt > spec.retry:
            return DeadLettered(f"{trigger.subscriber.name} {why} after {spec.retry} retries",
                                status, attempt, answer_body)
        delay = spec.backoff(attempt)
        log.info("delivery failed, retrying", extra={
            "trigger": trigger.name, "event_id": event_id, "attempt": attempt,
            "reason": why, "retry_in_seconds": round(delay, 3)})
        if on_retry is not None:
            on_retry(attempt, why)
        if stop is not None:
            if stop.wait(delay):
                return Aborted(attempt)
        else:
            threading.Event().wait(delay)


# --- counters -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TriggerStats:
    """What one Trigger did so far; `pending` = accepted for it but not yet done."""

    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    filtered: int = 0
    pending: int = 0


@dataclass
class TriggerCounters:
    """Thread-safe counters behind TriggerStats."""

    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    filtered: int = 0
    pending: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def snapshot(self) -> TriggerStats:
        with self._lock:
            return TriggerStats(self.delivered, self.retried, self.dead_lettered, self.filtered,
                                self.pending)


# --- ingress --------------------------------------------------------------------------------

Publish = Callable[[dict[str, Any], Any], None]


def ingress_app(publish: Publish, ready: Callable[[], bool]) -> Callable[..., Any]:
    """WSGI app of the broker ingress: a POSTed CloudEvent (binary or structured) is published.

    Answers 202 once the event is in the broker, 400 for a bad event, 503 when the broker
    cannot take it. Any path is accepted (Knative's is /<namespace>/<broker>).
    """

    @Request.application
    def app(request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        if request.method in ("GET", "HEAD") and path in ("/healthz", "/readyz"):
            ok = path == "/healthz" or ready()
            return _json({"ready": ok} if path == "/readyz" else {"status": "ok"},
                         200 if ok else 503)
        if request.method != "POST":
            return _json({"error": "method_not_allowed", "message": "POST a CloudEvent"}, 405)
        try:
            event = read_delivery(dict(request.headers.items()), request.get_data())
            attributes = text_attributes(event.attributes)
            missing = missing_attributes(attributes)
            if missing:
                raise BadRequest(f"missing attributes: {', '.join(missing)}")
            attributes.setdefault("datacontenttype", JSON)
            publish(attributes, event.data)
        except BadRequest as exc:
            return _json(exc.payload(), 400)
        except DependencyUnavailable as exc:
            return _json(exc.payload(), 503, {"Retry-After": str(exc.retry_after)})
        return Response(status=202)

    return app


def _json(body: Any, status: int, headers: Mapping[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=dict(headers or {}),
                    mimetype="application/json")


class QuietHandler(WSGIRequestHandler):
    """No access log line per request: what matters is logged as JSON lines."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


class IngressServer:
    """The ingress app served by werkzeug on a background thread (port 0 = pick a free one)."""

    def __init__(self, app: Callable[..., Any], host: str, port: int) -> None:
        self._server: BaseWSGIServer = make_server(host, port, app, threaded=True,
                                                   request_handler=QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,),
                                         name=f"ingress-{self.port}", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        host = self._server.server_address[0]
        if isinstance(host, bytes):
            host = host.decode()
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
