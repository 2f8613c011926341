"""notify in real mode: its own functions-framework process behind the dispatcher on a real
Kafka, its delivery state on the atomic store (mongo-java-server); alert events from alert
and query reach a webhook receiver in order, a 503 is retried by the Trigger with the same
Idempotency-Key, a redelivered event and a restarted notify send nothing twice."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from iot_telemetry.events import to_http
from iot_telemetry.local.layout import REPO
from tests.integration.pipeline_harness import Harness, http
from tests.unit.test_notify import Receiver

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def harness(kafka_bootstrap: str, mongo_url: str, mongo_db: str,
            receiver: Receiver) -> Iterator[Harness]:
    log_dir = REPO / "artifacts" / "pipeline-logs" / "notify-real-mode"
    shutil.rmtree(log_dir, ignore_errors=True)
    channels = [{"name": "ops", "url": f"{receiver.base}/ops", "secret": "s3cret"},
                {"name": "chat", "url": f"{receiver.base}/chat", "format": "slack",
                 "severity": "critical"}]
    h = Harness(kafka_bootstrap, mongo_url, mongo_db, log_dir,
                extra_env={"NOTIFY_CHANNELS": json.dumps(channels)})
    try:
        h.start()
        yield h
    finally:
        h.stop()


def reading(h: Harness, device: str, value: float, at: datetime) -> None:
    status, _, body = http("POST", h.url("ingest"), json.dumps(
        {"metrics": {"temperature": value}}).encode(), {
        "Content-Type": "application/json", "ce-specversion": "1.0",
        "ce-type": "iot.telemetry.v1", "ce-source": f"/devices/{device}",
        "ce-id": str(uuid.uuid4()), "ce-subject": device,
        "ce-time": at.isoformat().replace("+00:00", "Z")})
    assert status == 202, body


def wait_for(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_alert_events_reach_the_channel_in_order_at_least_once_and_never_twice(
        harness: Harness, receiver: Receiver) -> None:
    receiver.script["/ops"].append(503)
    start = datetime.now(UTC) - timedelta(minutes=2)
    for i, value in enumerate((31, 32, 33)):
        reading(harness, "dev-r1", value, start + timedelta(seconds=i))
    wait_for(lambda: len(receiver.taken("/ops")) == 1, "the raise")
    alert_id = json.loads(receiver.taken("/ops")[0]["body"])["data"]["id"]
    status, _, body = http("POST", f"{harness.url('query')}alerts/{alert_id}/ack",
                           b'{"by": "ana"}', {"Content-Type": "application/json"})
    assert status == 200, body
    wait_for(lambda: len(receiver.taken("/ops")) == 2, "the acknowledgement")
    # notify is killed and restarted (by the real mode's supervisor): its state is in the
    # store, not in the process
    harness.pipeline.kill("notify")
    wait_for(lambda: harness.pipeline.healthy("notify"), "notify restarted by the supervisor")
    reading(harness, "dev-r1", 25, start + timedelta(seconds=10))
    wait_for(lambda: len(receiver.taken("/ops")) == 3, "the resolve")

    ops = [json.loads(r["body"]) for r in receiver.taken("/ops")]
    assert [e["id"] for e in ops] == [f"{alert_id}/raised", f"{alert_id}/acknowledged",
                                      f"{alert_id}/resolved"]
    first, retried = receiver.to("/ops")[:2]
    assert (first["status"], retried["status"]) == (503, 200)
    assert first["headers"]["idempotency-key"] == retried["headers"]["idempotency-key"]
    assert receiver.to("/chat") == []  # a warning: below the chat channel's severity

    # The raise delivered again (a redelivery, a replay): every channel already has it.
    attributes = {k: v for k, v in ops[0].items() if k != "data"}
    headers, body = to_http(attributes, ops[0]["data"])
    assert http("POST", harness.broker_url, body, headers)[0] in (200, 202)
    reading(harness, "dev-r2", 45, start + timedelta(seconds=20))  # critical: both channels
    wait_for(lambda: len(receiver.taken("/chat")) == 1, "the critical raise on chat")
    wait_for(lambda: len(receiver.taken("/ops")) == 4, "the critical raise on ops")
    time.sleep(2)  # the redelivered raise has long been handled: nothing more came
    assert [json.loads(r["body"])["id"] for r in receiver.taken("/ops")][3].startswith(
        "dev-r2:temperature-critical:")
    assert len(receiver.requests) == 6
