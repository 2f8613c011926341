"""The `iot.alert.v1` events: built from an alert's transition, and posted to the Broker
ingress (K_SINK) when they cannot be the reply to a delivery."""

from __future__ import annotations

import http.client
import logging
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from .alerting import ACKNOWLEDGED, OPEN, public
from .errors import DependencyUnavailable
from .events import ALERT_TYPE, SPECVERSION, to_http
from .httpsession import HttpSession
from .store import ALERTS, Store

log = logging.getLogger(__name__)

SOURCE: Final = "/iot/alert"
#: Idle keep-alive connections to the Broker ingress, one taken per post (as many as posts
#: ran at once): a connection per post cost a TCP handshake on both sides for every second
#: alert event of a delivery. Not one per thread: the blocking pool picks any of its threads.
_SINK_SESSIONS: list[HttpSession] = []
_SINK_SESSIONS_LOCK = threading.Lock()


def alert_event(transition: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """The `iot.alert.v1` event of a raise, acknowledgement or resolve: its id (alert id and
    transition) is stable across redeliveries, so consumers can drop repeats."""
    alert = transition["alert"]
    state = transition["transition"]
    time = {"resolved": alert.get("resolved_at"),
            "acknowledged": alert.get("acknowledged_at")}.get(state) or alert["raised_at"]
    attributes = {
        "specversion": SPECVERSION, "type": ALERT_TYPE, "source": SOURCE,
        "id": f"{alert['id']}/{state}", "subject": alert["device_id"], "time": time,
        "datacontenttype": "application/json", "partitionkey": alert["device_id"],
    }
    return attributes, {**alert, "state": state, "lifecycle": alert["state"]}


def send_to_sink(sink: str, attributes: dict[str, str], data: dict[str, Any]) -> None:
    """POST one event to the Broker ingress; DependencyUnavailable if it was not taken."""
    # Failing the request (503: retried) loses nothing: the caller sends the event again.
    # Dropping the event would lose it for good.
    if not sink:
        raise DependencyUnavailable(
            "an alert event has nowhere to go: K_SINK is not set (the SinkBindings "
            "of eventing/sink-binding.yaml inject it)")
    headers, body = to_http(attributes, data)
    with _SINK_SESSIONS_LOCK:
        session = _SINK_SESSIONS.pop() if _SINK_SESSIONS else HttpSession()
    try:
        answer = session.post(sink, headers, body, timeout=10)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DependencyUnavailable(f"the Broker (K_SINK) did not take an alert event: {exc}",
                                    ) from None
    with _SINK_SESSIONS_LOCK:
        _SINK_SESSIONS.append(session)
    if not 200 <= answer.status < 300:
        raise DependencyUnavailable(
            "the Broker (K_SINK) did not take an alert event: "
            f"HTTP Error {answer.status}: {answer.reason}")


def announce_acknowledgement(store: Store, sink: str, alert_id: str, by: str,
                             now: datetime, *, within: Mapping[str, Any] | None = None,
                             ) -> None:
    """Post the `acknowledged` event of an open alert, before the alert is acknowledged.

    Event first, state second (as alert does for the alerts it resolves): a crash or an
    unreachable Broker in between leaves the alert open, so the retried acknowledgement
    posts the event again; the other order would lose it. Two acknowledgements at once may
    both post it, with the same event id, which consumers drop as a repeat. `within`: what
    the caller may acknowledge (a scoped token's devices); nothing else is announced.
    """
    with store.guard():
        doc = store.collection(ALERTS).find_one({"_id": alert_id, **(within or {})})
    if doc is None or doc.get("state") != OPEN:
        return  # unknown, already acknowledged or resolved: acknowledge() answers that
    if not sink:
        log.warning("alert acknowledged without an alert event: no K_SINK",
                    extra={"alert_id": alert_id})
        return
    alert = public({**doc, "state": ACKNOWLEDGED, "acknowledged_at": now,
                    "acknowledged_by": by})
    send_to_sink(sink, *alert_event({"transition": ACKNOWLEDGED, "alert": alert}))
