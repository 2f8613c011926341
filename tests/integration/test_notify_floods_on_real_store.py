"""notify's flood limit and per-channel delivery state on the atomic store
(mongo-java-server), with several instances at once: exactly NOTIFY_MAX_PER_MINUTE
messages per channel and minute, every other alert in exactly one summary, nothing sent
twice when everything is delivered again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from iot_telemetry import notify
from tests.integration.test_core_on_real_services import real_runtime
from tests.unit.test_notify import T0, Clock, Receiver, alert, bodies

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_a_flood_from_several_instances_is_folded_exactly(
        mongo_url: str, mongo_db: str, receiver: Receiver) -> None:
    rt = real_runtime(mongo_url, mongo_db, NOTIFY_MAX_PER_MINUTE="5", NOTIFY_CHANNELS=json.dumps(
        [{"name": "ops", "url": f"{receiver.base}/ops"}]))
    clock = Clock(T0)
    events = [alert(i, device=f"dev-{i:02d}") for i in range(40)]

    def deliver(event: tuple[dict, dict]) -> None:
        # each call its own book: as a separate instance would have
        try:
            notify.deliver(rt, notify._book(rt), *event, clock=clock)
        except Exception as exc:  # a store error: the test fails below, naming it
            failures.append(exc)

    failures: list[Exception] = []
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(deliver, events))
    assert not failures
    assert len(receiver.taken("/ops")) == 5
    with ThreadPoolExecutor(8) as pool:  # everything delivered again, at once
        list(pool.map(deliver, events + events))
    assert len(receiver.taken("/ops")) == 5
    after = datetime(2026, 12, 7, 10, 43, tzinfo=UTC)
    book = notify._book(rt)
    with ThreadPoolExecutor(4) as pool:  # four ticks at once (redelivered, two instances)
        list(pool.map(lambda _: notify.send_summaries(rt, book, after), range(4)))
    [summary] = bodies(receiver.taken("/ops"))[5:]
    assert summary["data"]["count"] == 35
    sent = {b["id"] for b in bodies(receiver.taken("/ops"))[:5]}
    assert sent <= {e[0]["id"] for e in events}
    notify.send_summaries(rt, book, after)
    assert len(receiver.requests) == 6
