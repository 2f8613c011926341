"""The in-process broker against real HTTP subscribers on ephemeral ports, with eventing/ as is."""

from __future__ import annotations

import base64
import http.client
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from iot_telemetry.errors import DependencyUnavailable
from iot_telemetry.events import RawEvent, read_delivery, to_http, to_kafka
from iot_telemetry.local.eventing import Eventing, load_eventing
from iot_telemetry.local.eventing.memory_broker import MemoryBroker, partition_for

EVENTING = Path(__file__).resolve().parents[2] / "eventing"

#: answer(event, attempt of this event id) -> (status, headers, body)
Answer = Callable[[RawEvent, int], tuple[int, Mapping[str, str], bytes]]


def no_content(_event: RawEvent, _attempt: int) -> tuple[int, Mapping[str, str], bytes]:
    return 204, {}, b""


class Subscriber:
    """A function stand-in on a real port: records every delivery attempt, answers as told."""

    def __init__(self, answer: Answer = no_content, port: int = 0) -> None:
        self.answer = answer
        self.attempts: list[RawEvent] = []
        self.delivered: list[RawEvent] = []
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = make_server("127.0.0.1", port, self._app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self._answer(Request(environ))(environ, start_response)

    def _answer(self, request: Request) -> Response:
        event = read_delivery(dict(request.headers.items()), request.get_data())
        with self._lock:
            self.attempts.append(event)
            self._counts[event.attributes["id"]] += 1
            attempt = self._counts[event.attributes["id"]]
        status, headers, body = self.answer(event, attempt)
        if 200 <= status < 300:
            with self._lock:
                self.delivered.append(event)
        return Response(body, status=status, headers=dict(headers))

    def ids(self, delivered: bool = True) -> list[str]:
        with self._lock:
            return [e.attributes["id"] for e in (self.delivered if delivered else self.attempts)]

    def tries(self, event_id: str) -> int:
        with self._lock:
            return self._counts[event_id]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def telemetry(device: str, seq: int, event_id: str | None = None,
              ) -> tuple[dict[str, str], dict[str, Any]]:
    attributes = {"specversion": "1.0", "type": "iot.telemetry.v1",
                  "source": f"/devices/{device}", "id": event_id or f"{device}-{seq}",
                  "subject": device, "datacontenttype": "application/json"}
    return attributes, {"metrics": {"temperature": 20.0 + seq}, "seq": seq}


def record(device: str, seq: int, event_id: str | None = None) -> Any:
    return to_kafka("iot.telemetry", *telemetry(device, seq, event_id))


@pytest.fixture(scope="module")
def eventing() -> Eventing:
    # These tests count exact deliveries: the PingSource's ticks (every minute, to alert)
    # are played in their own tests. They deliver telemetry: notify's Triggers (alert events,
    # ticks) are left out (tests/unit/test_notify.py runs them).
    real = load_eventing(EVENTING)
    return replace(real, pings=(), triggers=tuple(t for t in real.triggers
                                                  if t.service != "notify"))


@pytest.fixture
def subscribers() -> Iterator[dict[str, Subscriber]]:
    subs = {"aggregate": Subscriber(), "alert": Subscriber()}
    yield subs
    for sub in subs.values():
        sub.close()


@pytest.fixture
def broker(eventing: Eventing, subscribers: dict[str, Subscriber]) -> Iterator[MemoryBroker]:
    b = MemoryBroker(eventing, {n: s.url for n, s in subscribers.items()}, ingress_port=0)
    b.start()
    yield b
    b.stop()


def headers_of(record: Any) -> dict[str, bytes]:
    return dict(record.headers)


# --- ordering -------------------------------------------------------------------------------

def test_each_device_is_delivered_in_order_to_every_function(
        broker: MemoryBroker, subscribers: dict[str, Subscriber]) -> None:
    def jitter(_event: RawEvent, _attempt: int) -> tuple[int, Mapping[str, str], bytes]:
        time.sleep(random.uniform(0, 0.002))
        return 202, {}, b""

    for sub in subscribers.values():
        sub.answer = jitter
    devices = [f"dev-{i}" for i in range(8)]
    sent = [record(d, seq) for seq in range(25) for d in devices]
    for i in range(0, len(sent), 7):
        broker.send(sent[i:i + 7], timeout=1)

    assert broker.wait_idle(30)
    for sub in subscribers.values():
        assert len(sub.delivered) == len(sent)
        for device in devices:
            seqs = [e.data["seq"] for e in sub.delivered if e.attributes.get("subject") == device]
            assert seqs == list(range(25)), device
    stats = broker.stats()
    assert stats["aggregate"].delivered == stats["alert"].delivered == len(sent)
    assert stats["alerts-to-kafka"].filtered == len(sent)
    assert all(s.pending == 0 for s in stats.values())


def test_a_stuck_partition_does_not_hold_up_the_others(
        broker: MemoryBroker, subscribers: dict[str, Subscriber]) -> None:
    slow, fast = "dev-0", next(f"dev-{i}" for i in range(1, 100)
                               if partition_for(f"dev-{i}".encode(), 6)
                               != partition_for(b"dev-0", 6))
    release = threading.Event()

    def hold_slow(event: RawEvent, _attempt: int) -> tuple[int, Mapping[str, str], bytes]:
        if event.attributes["subject"] == slow:
            release.wait(10)
        return 204, {}, b""

    subscribers["aggregate"].answer = hold_slow
    broker.send([record(slow, 0), record(slow, 1), record(fast, 0), record(fast, 1)], timeout=1)

    deadline = time.monotonic() + 5
    while subscribers["aggregate"].ids().count(f"{fast}-1") == 0:
        assert time.monotonic() < deadline, "the other partition waited for the stuck one"
        time.sleep(0.01)
    assert f"{slow}-1" not in subscribers["aggregate"].ids(delivered=False)
    release.set()
    assert broker.wait_idle(10)
    assert [i for i in subscribers["aggregate"].ids() if i.startswith(slow)] == [
        f"{slow}-0", f"{slow}-1"]


# --- retries and dead letters ---------------------------------------------------------------

def test_a_503_is_retried_with_backoff_and_later_events_wait(
        broker: MemoryBroker, subscribers: dict[str, Subscriber]) -> None:
    def flaky(event: RawEvent, attempt: int) -> tuple[int, Mapping[str, str], bytes]:
        if event.attributes["id"] == "dev-1-0" and attempt <= 2:
            return 503, {"Retry-After": "1"}, b'{"error":"unavailable"}'
        return 202, {}, b""

    subscribers["aggregate"].answer = flaky
    started = time.monotonic()
    broker.send([record("dev-1", 0), record("dev-1", 1)], timeout=1)

    assert broker.wait_idle(10)
    # Two retries of the manifest's exponential backoff from PT0.2S: 0.4 s + 0.8 s.
    assert time.monotonic() - started >= 1.2
    assert subscribers["aggregate"].tries("dev-1-0") == 3
    assert subscribers["aggregate"].ids() == ["dev-1-0", "dev-1-1"]
    assert subscribers["aggregate"].ids(delivered=False) == [
        "dev-1-0", "dev-1-0", "dev-1-0", "dev-1-1"]
    stats = broker.stats()["aggregate"]
    assert (stats.delivered, stats.retried, stats.dead_lettered) == (2, 2, 0)
    assert broker.dead_letters() == []


def test_a_400_is_dead_lettered_at_once_and_the_partition_moves_on(
        broker: MemoryBroker, subscribers: dict[str, Subscriber]) -> None:
    def picky(event: RawEvent, _attempt: int) -> tuple[int, Mapping[str, str], bytes]:
        if event.attributes["id"] == "poison":
            return 400, {"Content-Type": "application/json"}, b'{"error":"invalid"}'
        return 202, {}, b""

    subscribers["aggregate"].answer = picky
    broker.send([record("dev-1", 0, "poison"), record("dev-1", 1)], timeout=1)

    assert broker.wait_idle(10)
    assert subscribers["aggregate"].tries("poison") == 1
    assert subscribers["aggregate"].ids() == ["dev-1-1"]
    [dead] = broker.dead_letters("aggregate")
    assert (dead.sink, dead.status, dead.attempts) == ("iot-dead-letters", 400, 1)
    assert dead.attributes["id"] == "poison" and dead.data["seq"] == 0
    assert "not retried" in dead.reason
    assert broker.dead_letters("iot-dead-letters") == [dead]
    [parked] = broker.sink_records("iot-dead-letters")
    assert parked.topic == "iot.telemetry.dlq" and parked.key == b"dev-1"
    headers = headers_of(parked)
    assert headers["ce_id"] == b"poison"
    assert headers["ce_knativeerrorcode"] == b"400"
    assert headers["ce_knativeerrordest"] == subscribers["aggregate"].url.encode()
    assert base64.b64decode(headers["ce_knativeerrordata"]) == b'{"error":"invalid"}'
    # The alert function accepted the same event: dead letters are per Trigger.
    assert subscribers["alert"].ids() == ["poison", "dev-1-1"]
    assert broker.stats()["aggregate"].dead_lettered == 1


def test_an_unreachable_subscriber_is_retried(eventing: Eventing) -> None:
    late = Subscriber()
    port = late.port
    late.close()
    broker = MemoryBroker(eventing, {"aggregate": late.url, "alert": late.url}, ingress_port=None)
    broker.start()
    try:
        broker.send([record("dev-1", 0)], timeout=1)
        time.sleep(1.0)  # connection refused, retried at 0.4 s and 1.2 s
        assert broker.stats()["aggregate"].retried >= 1
        assert broker.stats()["aggregate"].pending == 1
        revived = Subscriber(port=port)
        try:
            assert broker.wait_idle(10)
            assert revived.ids().count("dev-1-0") == 2  # aggregate and alert share the URL
        finally:
            revived.close()
        assert broker.dead_letters() == []
    finally:
        broker.stop()


# --- replies --------------------------------------------------------------------------------

def alert_reply(event: RawEvent, _attempt: int) -> tuple[int, Mapping[str, str], bytes]:
    device = event.attributes["subject"]
    if event.data["seq"] != 1:
        return 204, {}, b""
    headers, body = to_http({"specversion": "1.0", "type": "iot.alert.v1",
                             "source": "/iot/alert", "id": f"alert-{device}/raised",
                             "subject": device, "partitionkey": device,
                             "datacontenttype": "application/json"},
                            {"device_id": device, "state": "raised"})
    return 200, headers, body


def test_a_reply_is_routed_through_the_broker_to_the_alerts_sink(
        broker: MemoryBroker, subscribers: dict[str, Subscriber]) -> None:
    subscribers["alert"].answer = alert_reply
    broker.send([record("dev-7", 0), record("dev-7", 1), record("dev-7", 2)], timeout=1)

    assert broker.wait_idle(10)
    [published] = broker.sink_records("iot-alerts")
    assert published.topic == "iot.alerts" and published.key == b"dev-7"
    headers = headers_of(published)
    assert headers["ce_type"] == b"iot.alert.v1"
    assert headers["ce_id"] == b"alert-dev-7/raised"
    assert json.loads(published.value) == {"device_id": "dev-7", "state": "raised"}
    # Telemetry Triggers do not see alert events.
    assert all(e.attributes["type"] == "iot.telemetry.v1"
               for s in subscribers.values() for e in s.attempts)
    assert broker.stats()["alerts-to-kafka"].delivered == 1


def test_a_malformed_reply_dead_letters_the_event(
        broker: MemoryBroker, subscribers: dict[str, Subscriber]) -> None:
    subscribers["alert"].answer = lambda _e, _a: (
        200, {"ce-specversion": "1.0", "ce-type": "iot.alert.v1",
              "Content-Type": "application/json"}, b"{}")
    broker.send([record("dev-1", 0)], timeout=1)

    assert broker.wait_idle(10)
    [dead] = broker.dead_letters("alert")
    assert "reply" in dead.reason and dead.status == 200
    assert broker.sink_records("iot-alerts") == []


# --- ingress --------------------------------------------------------------------------------

def post(url: str, headers: Mapping[str, str], body: bytes,
         method: str = "POST") -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request(method, "/iot/iot-broker", body=body, headers=dict(headers))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_the_ingress_takes_binary_and_structured_events_into_the_broker(
        broker: MemoryBroker, subscribers: dict[str, Subscriber]) -> None:
    assert broker.ingress_url is not None
    headers, body = to_http(*telemetry("dev-3", 0))
    status, _ = post(broker.ingress_url, headers, body)
    assert status == 202
    attributes, data = telemetry("dev-3", 1)
    status, _ = post(broker.ingress_url, {"Content-Type": "application/cloudevents+json"},
                     json.dumps({**attributes, "data": data}).encode())
    assert status == 202
    headers, body = to_http({"specversion": "1.0", "type": "iot.alert.v1", "source": "/iot/alert",
                             "id": "a-1", "subject": "dev-3"}, {"state": "raised"})
    assert post(broker.ingress_url, headers, body)[0] == 202

    assert broker.wait_idle(10)
    assert subscribers["aggregate"].ids() == ["dev-3-0", "dev-3-1"]
    assert subscribers["aggregate"].delivered[1].data == data
    [alert] = broker.sink_records("iot-alerts")
    assert headers_of(alert)["ce_id"] == b"a-1"


def test_the_ingress_refuses_what_is_not_a_cloudevent(broker: MemoryBroker) -> None:
    assert broker.ingress_url is not None
    status, body = post(broker.ingress_url, {"Content-Type": "application/json"}, b'{"x":1}')
    assert status == 400 and b"invalid" in body
    status, _ = post(broker.ingress_url, {"ce-specversion": "1.0", "ce-type": "t",
                                          "Content-Type": "application/json"}, b"{}")
    assert status == 400
    assert post(broker.ingress_url, {}, b"", method="GET")[0] == 405
    assert broker.stats()["aggregate"].pending == 0


def test_the_ingress_answers_health_and_readiness(broker: MemoryBroker) -> None:
    assert broker.ingress_url is not None
    host, port = broker.ingress_url.removeprefix("http://").split(":")
    for path in ("/healthz", "/readyz"):
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("GET", path)
        assert conn.getresponse().status == 200
        conn.close()


# --- lifecycle ------------------------------------------------------------------------------

def test_a_stopped_broker_refuses_records_like_an_unreachable_kafka(
        eventing: Eventing, subscribers: dict[str, Subscriber]) -> None:
    broker = MemoryBroker(eventing, {n: s.url for n, s in subscribers.items()}, ingress_port=None)
    assert not broker.ready()
    broker.start()
    assert broker.ready()
    broker.stop()

    assert not broker.ready()
    with pytest.raises(DependencyUnavailable):
        broker.send([record("dev-1", 0)], timeout=1)


def test_every_subscribed_service_needs_a_url(eventing: Eventing) -> None:
    with pytest.raises(ValueError, match="alert"):
        MemoryBroker(eventing, {"aggregate": "http://127.0.0.1:1/"}, ingress_port=None)


def test_records_for_topics_no_source_reads_are_kept_not_delivered(
        broker: MemoryBroker, subscribers: dict[str, Subscriber]) -> None:
    other = to_kafka("iot.other", *telemetry("dev-1", 0))
    broker.send([other], timeout=1)

    assert broker.wait_idle(5)
    assert broker.topic_records("iot.other") == [other]
    assert subscribers["aggregate"].attempts == []


def test_partitioning_is_stable_and_spreads_devices() -> None:
    partitions = {partition_for(f"dev-{i}".encode(), 6) for i in range(200)}

    assert partitions == set(range(6))
    assert partition_for(b"dev-42", 6) == partition_for(b"dev-42", 6)


# --- PingSource -----------------------------------------------------------------------------

def test_the_ping_source_of_eventing_ticks_into_alert_on_its_schedule(
        subscribers: dict[str, Subscriber]) -> None:
    """eventing/ as is: a clock 0.3 s before a minute boundary makes the tick come at once."""
    offset = 60 - time.time() % 60 - 0.3
    clock_start = time.time() + offset
    notify = Subscriber()
    b = MemoryBroker(load_eventing(EVENTING), {**{n: s.url for n, s in subscribers.items()},
                                               "notify": notify.url},
                     ingress_port=None, clock=lambda: time.time() + offset)
    b.start()
    try:
        deadline = time.monotonic() + 10
        while not (subscribers["alert"].delivered and notify.delivered) and (
                time.monotonic() < deadline):
            time.sleep(0.02)
    finally:
        b.stop()
        notify.close()
    # notify's summaries have a clock of their own, with the same schedule
    [summaries] = notify.delivered
    assert summaries.attributes["source"] == (
        "/apis/v1/namespaces/iot/pingsources/notify-summaries")
    [tick] = subscribers["alert"].delivered
    assert tick.attributes["type"] == "dev.knative.sources.ping"
    assert tick.attributes["source"] == "/apis/v1/namespaces/iot/pingsources/offline-sweep"
    due = datetime.fromtimestamp(clock_start + 0.3, UTC).replace(microsecond=0)
    assert tick.attributes["time"] == due.isoformat().replace("+00:00", "Z")
    assert tick.data == {"sweep": "offline"}
    assert subscribers["aggregate"].attempts == []  # the offline-sweep Trigger is alert's only
