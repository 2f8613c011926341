"""notify in the embedded local run: alert events from alert and query reach a channel
through the in-process broker and the Triggers of eventing/, with its retries and dead
letters."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from iot_telemetry.local.embedded import EmbeddedPipeline
from iot_telemetry.local.layout import FUNCTIONS
from tests.unit.test_notify import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def run(receiver: Receiver) -> EmbeddedPipeline:
    channels = [{"name": "ops", "url": f"{receiver.base}/ops"},
                {"name": "chat", "url": f"{receiver.base}/chat", "format": "slack",
                 "lifecycle": ["raised", "resolved"]}]
    return EmbeddedPipeline(ports=dict.fromkeys(FUNCTIONS, 0), broker_port=0, environ={
        "LOG_LEVEL": "WARNING", "NOTIFY_CHANNELS": json.dumps(channels)})


def post(url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def reading(ingest: str, device: str, value: float, at: datetime) -> None:
    assert post(ingest, json.dumps({"metrics": {"temperature": value}}).encode(), {
        "Content-Type": "application/json", "ce-specversion": "1.0",
        "ce-type": "iot.telemetry.v1", "ce-source": f"/devices/{device}",
        "ce-id": str(uuid.uuid4()), "ce-subject": device,
        "ce-time": at.isoformat().replace("+00:00", "Z")}) == 202


def wait_for(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_raise_acknowledge_and_resolve_reach_the_channel_in_order(receiver: Receiver) -> None:
    receiver.script["/ops"].append(503)  # the first attempt is retried by the Trigger
    with run(receiver) as pipeline:
        ingest, query = pipeline.url("ingest"), pipeline.url("query")
        start = datetime.now(UTC) - timedelta(minutes=1)
        for i, value in enumerate((31, 32, 33)):  # temperature-high: 3 readings over 30
            reading(ingest, "dev-n1", value, start + timedelta(seconds=i))
        wait_for(lambda: len(receiver.taken("/ops")) == 1)
        [raised] = [json.loads(r["body"]) for r in receiver.taken("/ops")]
        alert_id = raised["data"]["id"]
        assert post(f"{query}alerts/{alert_id}/ack", b'{"by": "ana"}',
                    {"Content-Type": "application/json"}) == 200
        wait_for(lambda: len(receiver.taken("/ops")) == 2)
        reading(ingest, "dev-n1", 25, start + timedelta(seconds=10))  # below 28: resolved
        wait_for(lambda: len(receiver.taken("/ops")) == 3)
        assert pipeline.wait_idle(30)
    ops = [json.loads(r["body"]) for r in receiver.taken("/ops")]
    assert [(e["data"]["state"], e["id"]) for e in ops] == [
        ("raised", f"{alert_id}/raised"), ("acknowledged", f"{alert_id}/acknowledged"),
        ("resolved", f"{alert_id}/resolved")]
    assert ops[1]["data"]["acknowledged_by"] == "ana"
    attempts = receiver.to("/ops")
    assert [r["status"] for r in attempts] == [503, 200, 200, 200]
    assert attempts[0]["headers"]["idempotency-key"] == attempts[1]["headers"]["idempotency-key"]
    # chat wants no acknowledgements, and took the raise once though ops made it retry
    chat = [json.loads(r["body"])["text"] for r in receiver.to("/chat")]
    assert [t.split(":")[0] for t in chat] == ["WARNING alert raised", "WARNING alert resolved"]


def test_a_channel_refusing_an_alert_event_gets_it_dead_lettered(receiver: Receiver) -> None:
    receiver.script["/chat"].append(400)
    with run(receiver) as pipeline:
        start = datetime.now(UTC) - timedelta(minutes=1)
        for i, value in enumerate((31, 32, 33)):
            reading(pipeline.url("ingest"), "dev-n2", value, start + timedelta(seconds=i))
        wait_for(lambda: bool(pipeline.broker and pipeline.broker.dead_letters("notify")))
        assert pipeline.broker is not None
        [dead] = pipeline.broker.dead_letters("notify")
        assert (dead.attributes["type"], dead.status, dead.attempts) == ("iot.alert.v1", 400, 1)
        # On the dead-letter topic, knativeerrordata says which channel refused it.
        [record] = [r for r in pipeline.broker.sink_records("iot-dead-letters")
                    if dict(r.headers)["ce_id"] == dead.attributes["id"].encode()]
        answer = base64.b64decode(dict(record.headers)["ce_knativeerrordata"])
        assert json.loads(answer)["problems"] == [
            "channel chat refused the notification (HTTP 400); not retried"]
    assert [r["status"] for r in receiver.to("/chat")] == [400]  # not retried
    assert len(receiver.taken("/ops")) == 1
