"""Retention (issue 14, part 3): minute slots, hour totals and day totals each kept as long as
configured, on a fake clock; nothing a redelivery could need is deleted while it can come.

The scenario starts two days ago: the in-process store (mongomock) applies TTL indexes
with the real clock when it reads, so documents must not be due by the real clock before
the fake one says so.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from iot_telemetry import events
from iot_telemetry.observability import EVENTS_PROCESSED, POINTS_EXPIRED
from iot_telemetry.retention import MARGIN, Retention, sweep
from iot_telemetry.rollup import RollupWriter
from iot_telemetry.series import (
    Summary,
    bucket_start,
    day_id,
    hour_id,
    month_id,
    month_start,
    next_month,
    read_series,
)
from iot_telemetry.settings import ConfigError, Settings
from iot_telemetry.store import ROLLUP_DAYS, ROLLUP_HOURS, ROLLUP_MONTHS, Store
from iot_telemetry.telemetry import TelemetryEvent
from tests.conftest import record
from tests.unit.test_rollup_exact import event_of, same

DAY = timedelta(days=1)
#: Day 0 of the scenario; day 1 follows it.
D0 = bucket_start(datetime.now(UTC), "1d") - 2 * DAY
D1 = D0 + DAY
D0_HOUR_10 = hour_id("d", D0 + timedelta(hours=10))
RETENTION = Retention()


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def scenario(d0: datetime = D0) -> list[TelemetryEvent]:
    """Two devices, readings in three hours of day 0 (one event across two hours) and day 1."""
    d1 = d0 + DAY
    return [
        event_of("d", d0 + timedelta(hours=10, minutes=5), {"x": 1.0, "y": 7.0}, "e1"),
        event_of("d", d0 + timedelta(hours=10, minutes=59), {"x": 3.0}, "e2",
                 [(d0 + timedelta(hours=9, minutes=30), {"x": -2.0})]),
        event_of("d", d0 + timedelta(hours=23, minutes=59), {"x": 5.5}, "e3"),
        event_of("e", d0 + timedelta(hours=12), {"x": 10.0}, "e4"),
        event_of("d", d1 + timedelta(hours=0, minutes=1), {"x": 4.0}, "e5"),
    ]


def written(store: Store, clock: Clock) -> RollupWriter:
    writer = RollupWriter(store, retention=RETENTION, clock=clock)
    for event in scenario():
        assert writer.apply(event)
    return writer


def series(store: Store, step: str, device: str = "d", metric: str = "x",
           now: datetime | None = None) -> dict[datetime, Summary]:
    compacted = None if now is None else RETENTION.compactable_before(now)
    return dict(read_series(store, device, metric, step, first=D0 - DAY, to=D1 + DAY,
                            compacted_before=compacted))


def same_series(a: dict[datetime, Summary], b: dict[datetime, Summary]) -> bool:
    return a.keys() == b.keys() and all(same(a[t], b[t]) for t in a)


@pytest.fixture
def store(runtime) -> Store:
    runtime.store.ensure_indexes()
    return runtime.store


def test_an_hour_document_expires_with_its_minute_slots_and_keys(store: Store) -> None:
    written(store, Clock(D1 + timedelta(hours=2)))
    doc = store.collection(ROLLUP_HOURS).find_one({"_id": D0_HOUR_10})
    assert doc is not None and doc["exp"] == D0 + timedelta(hours=11, days=30)
    # A day gets its expiry only from the sweep, once its totals are compacted.
    assert "exp" not in store.collection(ROLLUP_DAYS).find_one({"_id": day_id("d", D0)})
    info = store.collection(ROLLUP_HOURS).index_information()
    assert info["expiry"]["expireAfterSeconds"] == 0 and info["expiry"]["key"] == [("exp", 1)]


def test_each_level_is_kept_as_configured_and_day_totals_outlive_their_days(
        store: Store) -> None:
    written(store, Clock(D1 + timedelta(hours=2)))
    before = {step: series(store, step) for step in ("1m", "1h", "1d")}
    assert len(before["1d"]) == 2 and before["1d"][D0].count == 4

    # 30 days after day 0: its minute slots are gone, day 1's hour 0 not yet.
    now = D1 + timedelta(days=30)
    outcome = sweep(store, RETENTION, now)
    assert outcome.compacted == 0 and outcome.deleted[ROLLUP_HOURS] == 4
    assert {t for t in series(store, "1m")} == {t for t in before["1m"] if t >= D1}
    assert same_series(series(store, "1h"), before["1h"])
    assert same_series(series(store, "1d", now=now), before["1d"])

    # 31 days after day 0: day 0 is final, so compacted (both devices), and given its expiry.
    now = D1 + timedelta(days=31)
    outcome = sweep(store, RETENTION, now)
    assert outcome.compacted == 2
    month = store.collection(ROLLUP_MONTHS).find_one({"_id": month_id("d", D0)})
    assert month is not None and set(month["d"]["x"]) == {f"{D0.day:02d}"}
    assert "exp" not in month
    assert store.collection(ROLLUP_DAYS).find_one({"_id": day_id("d", D0)})["exp"] == (
        D1 + timedelta(days=396))
    assert "exp" not in store.collection(ROLLUP_DAYS).find_one({"_id": day_id("d", D1)})
    assert same_series(series(store, "1d", now=now), before["1d"])

    # Again, and again later: nothing changes twice.
    assert sweep(store, RETENTION, now).compacted == 0
    assert store.collection(ROLLUP_MONTHS).find_one({"_id": month_id("d", D0)}) == month

    # 13 months on: day 0's hour totals are gone, its day total is not.
    now = D1 + timedelta(days=396)
    outcome = sweep(store, RETENTION, now)
    assert outcome.compacted == 1 and outcome.deleted[ROLLUP_DAYS] == 2  # day 0 of d and e
    hours = series(store, "1h")
    assert hours and all(t >= D1 for t in hours)
    assert same_series(series(store, "1d", now=now), before["1d"])
    assert same_series(series(store, "1d", "e", now=now), {D0: Summary.of([(
        D0 + timedelta(hours=12), 10.0)])})
    # Forever: a century on, the day totals are still there.
    now = D1 + timedelta(days=36500)
    sweep(store, RETENTION, now)
    assert same_series(series(store, "1d", now=now), before["1d"])


def test_a_day_never_compacted_is_never_deleted(store: Store, monkeypatch) -> None:
    written(store, Clock(D1 + timedelta(hours=2)))
    monkeypatch.setattr("iot_telemetry.retention._compact", lambda *args: (_ for _ in ()).throw(
        ConnectionError("crash before the month write")))
    with pytest.raises(ConnectionError):
        sweep(store, RETENTION, D1 + timedelta(days=800))
    assert store.collection(ROLLUP_DAYS).count_documents({}) == 3


def test_hour_documents_from_before_retention_get_their_expiry(store: Store) -> None:
    written(store, Clock(D1 + timedelta(hours=2)))
    store.collection(ROLLUP_HOURS).update_many({}, {"$unset": {"exp": ""}})
    outcome = sweep(store, RETENTION, D1 + timedelta(hours=3), page=2)
    assert outcome.dated == 5
    doc = store.collection(ROLLUP_HOURS).find_one({"_id": D0_HOUR_10})
    assert doc is not None and doc["exp"] == D0 + timedelta(hours=11, days=30)
    assert sweep(store, RETENTION, D1 + timedelta(days=40)).deleted[ROLLUP_HOURS] == 5


def test_day_totals_expire_when_a_retention_is_set(store: Store) -> None:
    retention = Retention(days=timedelta(days=400))
    written(store, Clock(D1 + timedelta(hours=2)))
    sweep(store, retention, D1 + timedelta(days=40))
    month = store.collection(ROLLUP_MONTHS).find_one({"_id": month_id("d", D0)})
    assert month["exp"] == next_month(month_start(D0)) + timedelta(days=400)
    sweep(store, retention, next_month(month_start(D0)) + timedelta(days=400))
    assert store.collection(ROLLUP_MONTHS).count_documents({}) == 0


def test_a_redelivery_past_the_minute_retention_counts_nothing_again(store: Store) -> None:
    clock = Clock(D0 + timedelta(hours=11))
    writer = RollupWriter(store, retention=RETENTION, clock=clock)
    late = event_of("d", D0 + timedelta(hours=10, minutes=30), {"x": 2.0}, "late")
    assert writer.apply(scenario()[0])
    day = series(store, "1d")
    expires = D0 + timedelta(hours=11, days=30)
    skipped = POINTS_EXPIRED._value.get()

    # Within the margin before the hour's keys may go: neither a redelivery nor a late
    # reading counts, although the document is still there.
    clock.now = expires - MARGIN
    assert not writer.apply(scenario()[0])
    assert not writer.apply(late)
    assert store.collection(ROLLUP_HOURS).find_one({"_id": D0_HOUR_10})["v"] == 1
    # Once the document and its keys are gone, the same: nothing comes back.
    sweep(store, RETENTION, expires)
    clock.now = expires + timedelta(days=5)
    assert not writer.apply(scenario()[0])
    assert not writer.apply(late)
    assert store.collection(ROLLUP_HOURS).count_documents({}) == 0
    assert series(store, "1m") == {}
    assert same_series(series(store, "1d"), day)
    assert POINTS_EXPIRED._value.get() - skipped == 2 * (2 + 1)  # e1 (x, y) and late, twice


def test_a_reading_just_inside_the_retention_still_counts(store: Store) -> None:
    clock = Clock(D0 + timedelta(hours=11, days=29) - timedelta(seconds=1))
    writer = RollupWriter(store, retention=RETENTION, clock=clock)
    assert writer.apply(event_of("d", D0 + timedelta(hours=10), {"x": 2.0}, "late"))
    assert series(store, "1h")[D0 + timedelta(hours=10)].count == 1


def test_aggregate_sweeps_on_a_retention_tick_up_to_the_ticks_time(apps, runtime) -> None:
    # Written before the TTL index exists (the tick creates it), as mongomock's would
    # delete these hours by the real clock before their days got the snapshots.
    old = bucket_start(datetime.now(UTC), "1d") - 40 * DAY
    writer = RollupWriter(runtime.store, retention=RETENTION, clock=Clock(old + 2 * DAY))
    for event in scenario(old):
        assert writer.apply(event)

    def tick(at: datetime, tick_id: str) -> int:
        attributes = {"specversion": "1.0", "type": events.PING_TYPE, "id": tick_id,
                      "source": "/apis/v1/namespaces/iot/pingsources/rollup-retention",
                      "time": at.isoformat().replace("+00:00", "Z"),
                      "datacontenttype": "application/json"}
        headers, body = events.to_http(attributes, {"sweep": "retention"})
        status: int = apps.aggregate.post("/", data=body, headers=headers).status_code
        return status

    assert tick(old + DAY + timedelta(days=30), "t1") == 204  # day 0 not final at that time
    assert runtime.store.collection(ROLLUP_MONTHS).count_documents({}) == 0
    assert tick(datetime.now(UTC) + DAY, "t2") == 204  # a tick is never later than the clock
    assert runtime.store.collection(ROLLUP_MONTHS).count_documents({}) == 2
    assert runtime.store.collection(ROLLUP_DAYS).count_documents({"exp": {"$exists": True}}) == 3


def test_aggregate_acknowledges_an_expired_event_without_counting_it(apps, runtime) -> None:
    old = datetime.now(UTC) - timedelta(days=40)
    before = EVENTS_PROCESSED.labels("aggregate", "expired")._value.get()
    response = apps.deliver("aggregate", record("d", old, {"x": 1.0}, "old"))
    assert response.status_code == 204
    assert runtime.store.collection(ROLLUP_HOURS).count_documents({}) == 0
    assert runtime.store.collection(ROLLUP_DAYS).count_documents({}) == 0
    assert EVENTS_PROCESSED.labels("aggregate", "expired")._value.get() == before + 1


def test_retention_settings_have_defaults_and_refuse_what_could_count_twice() -> None:
    def read(**env: str) -> Settings:
        return Settings.from_environ({}, {"MONGO_URL": "memory://", **env})

    assert Retention.of(read()) == Retention(timedelta(days=30), timedelta(days=396), None)
    assert Retention.of(read(ROLLUP_DAY_RETENTION_DAYS="800")).days == timedelta(days=800)
    assert read(ROLLUP_DAY_RETENTION_DAYS="Forever").rollup_day_retention_days is None
    for env, variable in [
            ({"INGEST_MAX_AGE_SECONDS": str(29 * 86400)}, "INGEST_MAX_AGE_SECONDS"),
            ({"ROLLUP_MINUTE_RETENTION_DAYS": "8"}, "INGEST_MAX_AGE_SECONDS"),
            ({"ROLLUP_HOUR_RETENTION_DAYS": "20"}, "ROLLUP_HOUR_RETENTION_DAYS"),
            ({"ROLLUP_DAY_RETENTION_DAYS": "300"}, "ROLLUP_DAY_RETENTION_DAYS"),
            ({"ROLLUP_DAY_RETENTION_DAYS": "never"}, "ROLLUP_DAY_RETENTION_DAYS"),
            ({"ROLLUP_MINUTE_RETENTION_DAYS": "0"}, "ROLLUP_MINUTE_RETENTION_DAYS")]:
        with pytest.raises(ConfigError) as error:
            read(**env)
        assert error.value.variable == variable
    assert read(ROLLUP_MINUTE_RETENTION_DAYS="9").rollup_minute_retention_days == 9


def test_the_api_says_how_long_each_step_is_kept() -> None:
    from iot_telemetry.openapi import document

    settings = Settings.from_environ({}, {"MONGO_URL": "memory://",
                                          "ROLLUP_DAY_RETENTION_DAYS": "800"})
    [step] = [p for p in document(settings)["paths"]["/devices/{device_id}/series"]["get"][
        "parameters"] if p["name"] == "step"]
    assert "1m for 30 days, 1h for 396 days, 1d for 800 days" in step["description"]


def test_a_changed_day_retention_applies_to_months_compacted_before(store: Store) -> None:
    """Issue 20 item 11: a month's expiry stuck after a change of ROLLUP_DAY_RETENTION_DAYS,
    so setting it back to `forever` still deleted the months compacted meanwhile; and months
    compacted under `forever` never got the retention set later."""
    finite = Retention(days=timedelta(days=400))
    written(store, Clock(D1 + timedelta(hours=2)))
    sweep(store, finite, D1 + timedelta(days=40))
    _id = month_id("d", D0)
    assert store.collection(ROLLUP_MONTHS).find_one({"_id": _id})["exp"] is not None
    past = next_month(month_start(D0)) + timedelta(days=401)
    sweep(store, Retention(), past)  # back to forever
    month = store.collection(ROLLUP_MONTHS).find_one({"_id": _id})
    assert month is not None and "exp" not in month
    sweep(store, Retention(days=timedelta(days=500)), past)
    month = store.collection(ROLLUP_MONTHS).find_one({"_id": _id})
    assert month["exp"] == next_month(month_start(D0)) + timedelta(days=500)
    sweep(store, finite, past)
    assert store.collection(ROLLUP_MONTHS).find_one({"_id": _id}) is None


def test_after_raising_the_minute_retention_a_late_replay_recreates_no_expired_hour(
        store: Store) -> None:
    """Issue 20, suspected item b (held): an hour document keeps the expiry it was created
    with, but hours were judged by the minute retention configured now. After raising it
    from 10 to 30 days, a replay 12 days after the hour found the document (and its keys)
    gone and recreated it, counting the event again."""
    short = Retention(minutes=timedelta(days=10))
    first = event_of("d", D0 + timedelta(hours=10, minutes=5), {"x": 1.0}, "e1")
    assert RollupWriter(store, retention=short, clock=Clock(D0 + timedelta(hours=11))).apply(
        first)
    later = D0 + timedelta(days=12)
    sweep(store, short, later)
    assert store.collection(ROLLUP_HOURS).find_one({"_id": D0_HOUR_10}) is None
    raised = RollupWriter(store, retention=Retention(minutes=timedelta(days=30)),
                          clock=Clock(later))
    assert raised.expired(first, later) == len(first.points)
    assert raised.apply(first) is False
    assert store.collection(ROLLUP_HOURS).find_one({"_id": D0_HOUR_10}) is None
    assert [s.count for s in series(store, "1h").values()] == [1]
    # Hours that began after the change are judged by the new retention.
    fresh = event_of("d", later + timedelta(hours=2), {"x": 2.0}, "e2")
    assert raised.expired(fresh, later + timedelta(days=20)) == 0
