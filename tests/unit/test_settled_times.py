"""Settled times of events without `time` (eventtime.py, issue 20 items 2 and 8): keyed by
the device as well as (`source`, `id`), kept as long as a copy can still be counted, and
carried over from the layout of earlier versions."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from iot_telemetry.eventtime import LAYOUT_ID, EventTimes, legacy_entry_id
from iot_telemetry.retention import Retention, sweep
from iot_telemetry.rollup import RollupWriter
from iot_telemetry.series import bucket_start, hour_id
from iot_telemetry.store import EVENT_TIMES, ROLLUP_HOURS, Store
from iot_telemetry.telemetry import TelemetryEvent
from tests.conftest import iso, record, telemetry
from tests.unit.test_rollup_exact import event_of, ingested


def timeless(device: str, source: str, event_id: str, metrics: dict[str, float],
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    attributes, data = telemetry(device, datetime.now(), metrics, event_id)
    del attributes["time"]
    return {**attributes, "source": source}, data


def stamped(device: str, event_id: str, at: datetime, value: float = 1.0,
            source: str | None = None) -> TelemetryEvent:
    """A copy of a time-less event as ingest stamped it on receipt at `at`."""
    event = event_of(device, at, {"x": value}, event_id)
    return TelemetryEvent(source or event.source, event.id, event.device_id, at, event.points,
                          {**event.attributes, "timesource": "ingest",
                           **({"source": source} if source else {})}, event.data)


def test_another_device_cannot_settle_the_time_of_a_devices_event(apps, now) -> None:
    """Issue 20 item 2: device A, with its own token, sends a time-less event naming V's
    `source` and V's next `id`. V's own event of that id must keep its own time: its
    critical reading is V's newest and raises V's alert."""
    spoof = ingested(*timeless("dev-a", "/devices/dev-v", "v-next", {"temperature": 20.0}),
                     now + timedelta(minutes=1))
    normal = record("dev-v", now + timedelta(minutes=1, seconds=30), {"temperature": 21.0},
                    "v-1")
    own = ingested(*timeless("dev-v", "/devices/dev-v", "v-next", {"temperature": 45.0}),
                   now + timedelta(minutes=2))
    for rec in (spoof, normal, own):
        assert apps.deliver("aggregate", rec).status_code == 204
        assert apps.deliver("alert", rec).status_code in (200, 204)
    device = apps.query.get("/devices/dev-v").get_json()
    assert device["metrics"]["temperature"]["value"] == 45.0
    assert device["metrics"]["temperature"]["time"] == iso(now + timedelta(minutes=2))
    alerts = apps.query.get("/alerts?device_id=dev-v").get_json()["alerts"]
    assert [(a["rule"], a["state"]) for a in alerts] == [("temperature-critical", "open")]


def counted_then_swept(store: Store, now: datetime, later: timedelta) -> RollupWriter:
    """A writer that counted a copy of `e1` stamped at `now` + 5 min, its clock then moved
    on by `later` and the retention sweep run at that time."""
    clock = [now]
    writer = RollupWriter(store, retention=Retention(), clock=lambda: clock[0])
    assert writer.apply(stamped("dev", "e1", now + timedelta(minutes=5))) is True
    clock[0] = now + later
    sweep(store, Retention(), clock[0])
    return writer


def test_a_settled_time_outlives_the_week_a_copy_is_counted_in(runtime, now) -> None:
    """Issue 20 item 8: settled times lived 7 days, readings are counted for 29. A copy
    stamped two hours after the first, replayed 8 days later (say from the dead-letter
    topic), was counted again in its own hour."""
    writer = counted_then_swept(runtime.store, now, timedelta(days=8))
    late = stamped("dev", "e1", now + timedelta(hours=2, minutes=5), value=2.0)
    assert writer.apply(late) is False
    hours = runtime.store.db[ROLLUP_HOURS]
    assert hours.find_one({"_id": hour_id("dev", bucket_start(late.time, "1h"))}) is None
    assert hours.find_one({"_id": hour_id("dev", now)})["v"] == 1


def test_a_copy_stamped_too_long_ago_to_be_recognised_is_not_counted(runtime, now) -> None:
    """A copy whose first copy's settled time may be gone (stamped more than the minute
    retention minus the resend window and a day ago) is acknowledged, not counted again."""
    writer = counted_then_swept(runtime.store, now, timedelta(days=31))
    assert runtime.store.db[EVENT_TIMES].count_documents({"t": {"$exists": True}}) == 0
    resend = stamped("dev", "e1", now + timedelta(days=6))  # the device retried for 6 days
    assert writer.expired(resend, writer.clock()) == len(resend.points)
    assert writer.apply(resend) is False
    assert runtime.store.db[ROLLUP_HOURS].find_one(
        {"_id": hour_id("dev", bucket_start(resend.time, "1h"))}) is None
    # within the window, a first copy counts as usual
    assert writer.apply(stamped("dev", "e2", now + timedelta(days=10))) is True


def test_an_upgrade_keeps_the_times_settled_by_earlier_versions(runtime, now) -> None:
    """Entries of earlier versions are keyed by (`source`, `id`) only: a copy of an event
    settled before the upgrade still takes that time (counts once), for as long as such an
    entry may exist; after that they are not read any more."""
    first = stamped("dev", "e1", now + timedelta(minutes=5))
    runtime.store.db[EVENT_TIMES].insert_one(
        {"_id": legacy_entry_id(first), "t": first.time, "exp": first.time + timedelta(days=7)})
    clock = [now + timedelta(hours=3)]
    times = EventTimes(runtime.store, Retention(), lambda: clock[0])
    writer = RollupWriter(runtime.store, clock=lambda: clock[0], event_times=times)
    assert writer.apply_batch([first]) == [True]  # counted by the earlier version's writer
    copy = stamped("dev", "e1", now + timedelta(hours=2, minutes=5))
    assert times.settled(copy).time == first.time
    assert writer.apply(copy) is False
    layout = runtime.store.db[EVENT_TIMES].find_one({"_id": LAYOUT_ID})
    assert layout["legacy_until"].replace(tzinfo=clock[0].tzinfo) == clock[0] + timedelta(days=7)
    # a week after the first start of this version, no entry of the old layout is left
    clock[0] += timedelta(days=7, seconds=1)
    other = stamped("dev", "e9", now + timedelta(hours=2))
    runtime.store.db[EVENT_TIMES].insert_one(
        {"_id": legacy_entry_id(other), "t": now, "exp": clock[0] + timedelta(days=1)})
    assert times.settled(other).time == other.time


def test_a_fresh_store_never_reads_the_old_layout(runtime, now) -> None:
    times = EventTimes(runtime.store, Retention(), lambda: now)
    event = stamped("dev", "e1", now)
    assert times.settled(event).time == now
    layout = runtime.store.db[EVENT_TIMES].find_one({"_id": LAYOUT_ID})
    assert layout["legacy_until"].replace(tzinfo=now.tzinfo) == now
