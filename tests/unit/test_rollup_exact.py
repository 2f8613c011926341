"""The rollup write path (issue 11): each problem of the old layout, bounded documents, and a
property test of every field under redelivery, crashes, batching and any arrival order."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iot_telemetry import events, raw
from iot_telemetry.errors import BadRequest
from iot_telemetry.events import RawEvent
from iot_telemetry.rollup import RollupWriter, event_hash
from iot_telemetry.series import STEPS, Summary, bucket_start, hour_id, read_series, reading_of
from iot_telemetry.store import (
    DEVICES,
    RAW_READINGS,
    ROLLUP_DAYS,
    ROLLUP_HOURS,
    Store,
    reset_embedded,
)
from iot_telemetry.telemetry import TelemetryEvent, validate
from tests.conftest import iso, make_runtime, telemetry


def event_of(device: str, t: datetime, metrics: dict[str, float], event_id: str,
             samples: list[tuple[datetime, dict[str, float]]] | None = None,
             ) -> TelemetryEvent:
    attributes, data = telemetry(device, t, metrics, event_id, samples)
    result = validate(RawEvent(attributes, data), datetime.now(UTC), None)
    assert isinstance(result, TelemetryEvent), result
    return result


def stored(store: Store, device: str, metric: str, step: str, around: datetime,
           ) -> dict[datetime, Summary]:
    return dict(read_series(store, device, metric, step, first=around - timedelta(days=3),
                            to=around + timedelta(days=3)))


def raw_stored(store: Store, device: str, metric: str, around: datetime,
               ) -> list[tuple[datetime, float, str]]:
    page = raw.read(store, device, metric, start=around - timedelta(days=1),
                    to=around + timedelta(days=1), after=None, limit=raw.MAX_LIMIT)
    assert not page.more and page.complete
    return [(r.t, r.value, r.event_id) for r in page.readings]


def raw_truth(evs: list[TelemetryEvent], device: str, metric: str,
              ) -> list[tuple[datetime, float, str]]:
    """Every reading once, in time order (readings at the same time in any order)."""
    return sorted((p.time, p.value, e.id) for e in evs if e.device_id == device
                  for p in e.points if p.metric == metric)


def truth(points: list[tuple[str, str, datetime, float]], step: str,
          ) -> dict[tuple[str, str, datetime], Summary]:
    groups: dict[tuple[str, str, datetime], list[tuple[datetime, float]]] = defaultdict(list)
    for device, metric, t, v in points:
        groups[(device, metric, bucket_start(t, step))].append((t, v))
    return {k: Summary.of(v) for k, v in groups.items()}


def same(a: Summary, b: Summary) -> bool:
    return (a.count, a.min, a.max, a.first, a.last, a.last_value) == (
        b.count, b.min, b.max, b.first, b.last, b.last_value) and abs(a.sum - b.sum) <= 1e-9 * max(
        1.0, abs(a.sum))


@pytest.fixture
def writer(runtime) -> RollupWriter:
    return runtime.rollups


# --- the four problems of the old layout --------------------------------------------------

def test_last_value_of_every_step_with_a_writer_paused_midway(writer, now, monkeypatch) -> None:
    """C=0.5 at :05, then A=2.0 at :20 stopped after its hour update, then B=1.0 at :10,
    then A again: every step's last value is A's (the old layout kept 0.5 in hour and day)."""
    store = writer.store
    c, a, b = (event_of("d", now + timedelta(minutes=m, seconds=1), {"x": v}, i)
               for m, v, i in ((5, 0.5, "c"), (20, 2.0, "a"), (10, 1.0, "b")))
    writer.apply(c)
    original = RollupWriter._snapshot_days
    monkeypatch.setattr(RollupWriter, "_snapshot_days", lambda *args: (_ for _ in ()).throw(
        RuntimeError("paused")))
    with pytest.raises(RuntimeError):
        writer.apply(a)
    monkeypatch.setattr(RollupWriter, "_snapshot_days", original)
    writer.apply(b)
    for step in ("1h", "1d"):  # already right before A's redelivery
        [total] = stored(store, "d", "x", step, now).values()
        assert (total.count, total.last_value) == (3, 2.0), step
    assert writer.apply(a) is False  # the redelivery: counted before
    for step in STEPS:
        last = max(stored(store, "d", "x", step, now).items())[1]
        assert last.last_value == 2.0, step


def test_an_older_reading_after_its_minutes_creator_crashed_is_counted(writer, now,
                                                                        monkeypatch) -> None:
    """The old layout answered 500 (KeyError 'last_value') to every non-newest event of a
    minute whose creator crashed between its two writes."""
    monkeypatch.setattr(RollupWriter, "_latest", lambda *args: (_ for _ in ()).throw(
        RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        writer.apply(event_of("d", now + timedelta(seconds=40), {"x": 5.0}, "creator"))
    monkeypatch.undo()
    assert writer.apply(event_of("d", now + timedelta(seconds=10), {"x": 1.0}, "older"))
    [minute] = stored(writer.store, "d", "x", "1m", now).values()
    assert (minute.count, minute.last_value, minute.first) == (
        2, 5.0, now + timedelta(seconds=10))


def ingested(attributes: dict[str, Any], data: dict[str, Any], received: datetime,
             ) -> events.KafkaRecord:
    """The record ingest writes for an event received at `received`."""
    result = validate(RawEvent(attributes, data), received, None)
    assert isinstance(result, TelemetryEvent), result
    return events.to_kafka("iot.telemetry", {**result.attributes, "ingesttime": iso(received)},
                           result.data)


def test_a_resend_without_time_counts_once_however_it_was_stamped(apps, sink, now) -> None:
    """Ingest stamps an event without `time` on receipt; a resend an hour later gets another
    time, but counts once, at the first time, in rollups and in alerting."""
    attributes, data = telemetry("dev-r", now, {"temperature": 35.0}, "no-time-1")
    del attributes["time"]
    headers, body = events.to_http(attributes, data)
    assert apps.ingest.post("/", data=body, headers=headers).status_code == 202
    assert dict(sink.records[0].headers)["ce_timesource"] == b"ingest"
    first, resend = (ingested(attributes, data, now + timedelta(minutes=m)) for m in (1, 75))
    for rec in (first, resend, resend, first):
        assert apps.deliver("aggregate", rec).status_code == 204
    for step in STEPS:
        buckets = apps.query.get(
            f"/devices/dev-r/series?metric=temperature&step={step}&from={iso(now - STEPS[step])}"
            f"&to={iso(now + timedelta(days=1))}").get_json()["buckets"]
        assert [(b["count"], b["last"]) for b in buckets] == [
            (1, iso(now + timedelta(minutes=1)))], step
    # temperature > 30 three times raises: the resend must not be the second of them
    second = ingested(*telemetry("dev-r", now + timedelta(minutes=76), {"temperature": 36.0},
                                 "with-time-2"), now + timedelta(minutes=76))
    for rec in (first, resend, second, resend):
        assert apps.deliver("alert", rec).status_code in (200, 204)
    assert apps.query.get("/alerts").get_json()["alerts"] == []
    third = ingested(*telemetry("dev-r", now + timedelta(minutes=77), {"temperature": 37.0},
                                "with-time-3"), now + timedelta(minutes=77))
    assert apps.deliver("alert", third).status_code == 200
    assert len(apps.query.get("/alerts").get_json()["alerts"]) == 1


def test_hour_document_stays_bounded_at_one_event_per_second(writer, now) -> None:
    """A device sending 3 metrics once a second for a whole hour: its hour document stays
    under 256 KiB, its day and device documents small."""
    batch: list[TelemetryEvent] = []
    for i in range(3600):
        batch.append(event_of("busy", now + timedelta(seconds=i), {
            "temperature": 20 + i % 7, "humidity": 40 + i % 11, "pressure": 1000.0 + i},
            f"{i:032x}-long-id-{i}"))
        if len(batch) == 200:
            writer.apply_batch(batch)
            batch = []
    db = writer.store.db
    hour = db[ROLLUP_HOURS].find_one({"_id": hour_id("busy", now)})
    assert hour is not None and len(hour["ids"]) == 3600
    assert len(bson.encode(hour)) < 256 * 1024
    assert len(bson.encode(db[ROLLUP_DAYS].find_one({}))) < 16 * 1024
    assert len(bson.encode(db[DEVICES].find_one({"_id": "busy"}))) < 4 * 1024


def test_hour_document_is_capped_under_4_mib_and_refuses_past_it(runtime, now) -> None:
    """At the cap (200,000 events in one hour, 55/s sustained: above the default rate limit
    of 50/s) the document is under 4 MiB; one event more is a 400 (dead-lettered) instead of
    a document that grows until every write to it fails; redeliveries stay duplicates."""
    writer = RollupWriter(runtime.store)
    cap = writer.max_events_per_hour
    metrics = {f"metric_{k}": float(k) for k in range(10)}
    for minute in range(60):  # every minute slot of ten metrics filled
        writer.apply(event_of("full", now + timedelta(minutes=minute), metrics, f"m{minute}"))
    collection = runtime.store.db[ROLLUP_HOURS]
    _id = hour_id("full", now)
    fill = [event_hash(f"/devices/full\x1ffill-{i}") for i in range(cap - 60)]
    for i in range(0, len(fill), 20_000):
        collection.update_one({"_id": _id}, {"$push": {"ids": {"$each": fill[i:i + 20_000]}}})
    collection.update_one({"_id": _id}, {"$set": {"v": cap}})
    doc = collection.find_one({"_id": _id})
    assert len(doc["ids"]) == cap
    assert len(bson.encode(doc)) < 4 * 1024 * 1024
    with pytest.raises(BadRequest, match="more than 200000 events"):
        writer.apply(event_of("full", now + timedelta(minutes=3), {"metric_1": 9.0}, "late"))
    assert writer.apply(event_of("full", now + timedelta(minutes=7), metrics, "m7")) is False
    assert collection.find_one({"_id": _id}, {"v": 1})["v"] == cap


def test_reads_never_return_the_event_keys(runtime, now, monkeypatch) -> None:
    """The hour documents' read-back and the series reads return totals, never `ids` or
    (for the write path) the minute slots: no reply grows with the hour's history."""
    seen: list[dict[str, Any]] = []
    collection_of = Store.collection

    class Spy:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            attr = getattr(self.inner, name)
            if name not in ("find", "find_one", "find_one_and_update"):
                return attr

            def call(*args: Any, **kwargs: Any) -> Any:
                result = attr(*args, **kwargs)
                if name == "find":
                    result = list(result)
                    seen.extend(result)
                elif result is not None:
                    seen.append(result)
                return result
            return call

    monkeypatch.setattr(Store, "collection", lambda self, name: Spy(collection_of(self, name)))
    writer = RollupWriter(runtime.store)
    for i in range(50):
        writer.apply(event_of("k", now + timedelta(seconds=i), {"x": i}, f"e{i}"))
    writer.apply_batch([event_of("k", now + timedelta(seconds=i), {"x": i}, f"f{i}")
                        for i in range(50)])
    read_series(runtime.store, "k", "x", "1m", first=now, to=now + timedelta(hours=1))
    assert seen and not [d for d in seen if "ids" in d]
    assert not [d for d in seen if "min" in d and "tot" in d]


# --- group commit -------------------------------------------------------------------------

def test_a_batch_costs_the_same_round_trips_as_one_event(runtime, now, monkeypatch) -> None:
    calls: list[str] = []
    bulk = Store.bulk

    def counting(self, name, ops, ordered=False, **kwargs):
        calls.append(name)
        return bulk(self, name, ops, ordered, **kwargs)

    monkeypatch.setattr(Store, "bulk", counting)
    writer = RollupWriter(runtime.store)
    batch = [event_of(f"g{i % 7}", now + timedelta(seconds=i), {"a": i, "b": -i}, f"g{i}")
             for i in range(100)]
    assert writer.apply_batch(batch) == [True] * 100
    # plus one find of the hours
    assert calls == [ROLLUP_HOURS, ROLLUP_DAYS, DEVICES, RAW_READINGS]
    assert writer.apply_batch(batch[:10]) == [False] * 10


def test_a_refused_write_fails_only_its_own_event(runtime, now, monkeypatch) -> None:
    bulk = Store.bulk

    def refuse_first(self, name, ops, ordered=False, **kwargs):
        outcome = bulk(self, name, ops[1:], ordered, **kwargs) if name == ROLLUP_HOURS else (
            bulk(self, name, ops, ordered, **kwargs))
        if name == ROLLUP_HOURS:
            outcome.duplicates = [i + 1 for i in outcome.duplicates]
            outcome.failed = {0: (10334, "BSONObjectTooLarge"),
                              **{i + 1: e for i, e in outcome.failed.items()}}
        return outcome

    monkeypatch.setattr(Store, "bulk", refuse_first)
    writer = RollupWriter(runtime.store)
    results = writer.apply_batch([event_of("r", now + timedelta(seconds=i), {"a": i}, f"r{i}")
                                  for i in range(3)])
    assert isinstance(results[0], BadRequest) and results[1:] == [True, True]
    [minute] = stored(runtime.store, "r", "a", "1m", now).values()
    assert minute.count == 2


# --- every field under any mix of faults --------------------------------------------------

# Yesterday just before midnight: readings cross the day, and stay within the minute retention.
BASE = datetime.now(UTC).replace(hour=23, minute=58, second=0, microsecond=0) - timedelta(days=1)
offsets = st.integers(min_value=0, max_value=4 * 3600).map(lambda s: timedelta(seconds=s))
values = st.sampled_from([-2.5, -1.0, 0.0, 1.0, 1.5, 3.0, 1e6])
metric_maps = st.dictionaries(st.sampled_from(["x", "y"]), values, min_size=1, max_size=2)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[TelemetryEvent], list[tuple[int, bool]]]:
    """Events (some with samples across minute, hour and day boundaries, equal times), and
    a delivery schedule: each event at least once, some twice, some crashing first."""
    n = draw(st.integers(min_value=1, max_value=12))
    evs = []
    for i in range(n):
        device = draw(st.sampled_from(["a", "b"]))
        t = BASE + draw(offsets)
        samples = draw(st.lists(st.tuples(offsets.map(lambda o: BASE + o), metric_maps),
                                max_size=3))
        evs.append(event_of(device, t, draw(metric_maps), f"e{i}", samples))
    schedule = [(i, draw(st.booleans())) for i in range(n)]  # (event, crash on this one)
    schedule += [(i, False) for i in draw(st.lists(st.integers(0, n - 1), max_size=n))]
    order = draw(st.permutations(schedule))
    return evs, list(order)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries(), st.integers(min_value=1, max_value=5), st.sampled_from(
    ["_count", "_snapshot_days", "_latest", "_keep_raw"]), st.randoms())
def test_every_field_exact_under_redelivery_crashes_and_any_order(
        case, batch_size, crash_in, rnd) -> None:
    evs, schedule = case
    reset_embedded()
    store = make_runtime().store
    writer = RollupWriter(store)
    crash = {"armed": False}
    original = getattr(RollupWriter, crash_in)

    def step(self, *args):
        result = original(self, *args)
        if crash["armed"]:  # the step's writes happened; the process dies right after
            raise RuntimeError(f"killed after {crash_in}")
        return result

    setattr(writer, crash_in, step.__get__(writer))
    queue = list(schedule)
    while queue:
        size = min(len(queue), rnd.randint(1, batch_size))
        batch, queue = queue[:size], queue[size:]
        crash["armed"] = any(c for _, c in batch)
        try:
            writer.apply_batch([evs[i] for i, _ in batch])
        except RuntimeError:
            queue += [(i, False) for i, _ in batch]  # the Broker redelivers them all
        crash["armed"] = False
    points = [(e.device_id, p.metric, p.time, p.value) for e in evs for p in e.points]
    for step in STEPS:
        want = truth(points, step)
        got = {(d, m, t): s for d in ("a", "b") for m in ("x", "y")
               for t, s in stored(store, d, m, step, BASE).items()}
        assert got.keys() == want.keys(), step
        assert all(same(got[k], want[k]) for k in want), step
    for device in {p[0] for p in points}:
        doc = store.db[DEVICES].find_one({"_id": device})
        newest = {}
        for d, m, t, v in points:
            if d == device and (m not in newest or (t, v) > newest[m]):
                newest[m] = (t, v)
        assert {m: reading_of(k) for m, k in doc["latest"].items()} == newest
    for device in ("a", "b"):  # raw readings: each once, in time order
        for metric in ("x", "y"):
            got_raw = raw_stored(store, device, metric, BASE)
            assert [r[0] for r in got_raw] == sorted(r[0] for r in got_raw)
            assert sorted(got_raw) == raw_truth(evs, device, metric)


def test_concurrent_writers_in_threads_share_round_trips(runtime, now) -> None:
    """Requests in flight at once go out together (fewer bulk commands than events) and
    every one of them gets its own answer."""
    import threading

    calls = {"n": 0}
    writer = RollupWriter(runtime.store)
    inner = writer.apply_batch

    def counting(batch):
        calls["n"] += 1
        time.sleep(0.005)  # a round trip to a real store: the others queue up meanwhile
        return inner(batch)

    writer._commit._run = counting  # type: ignore[attr-defined]
    evs = [event_of(f"t{i % 3}", now + timedelta(seconds=i), {"a": i}, f"t{i}")
           for i in range(120)]
    results: dict[int, bool] = {}

    def send(chunk):
        for i in chunk:
            results[i] = writer.apply(evs[i])

    order = list(range(120)) + list(range(0, 120, 4))
    random.Random(3).shuffle(order)
    threads = [threading.Thread(target=send, args=(order[k::8],)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls["n"] < len(order)
    points = [(e.device_id, p.metric, p.time, p.value) for e in evs for p in e.points]
    for (device, metric, start), want in truth(points, "1m").items():
        assert same(stored(runtime.store, device, metric, "1m", now)[start], want)


@pytest.mark.parametrize(("step", "span", "most"), [("1m", timedelta(hours=24), 25),
                                                    ("1h", timedelta(days=30), 31)])
def test_a_series_reads_one_find_of_at_most_a_day_or_a_month_of_documents(
        runtime, now, monkeypatch, step, span, most) -> None:
    finds: list[dict[str, Any]] = []
    collection_of = Store.collection

    class Spy:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def find(self, filter: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            finds.append(filter)
            return self.inner.find(filter, *args, **kwargs)

    writer = RollupWriter(runtime.store)
    writer.apply_batch([event_of("s", now - timedelta(hours=h), {"x": h}, f"s{h}")
                        for h in range(0, 30 * 24, 5)])
    monkeypatch.setattr(Store, "collection", lambda self, name: Spy(collection_of(self, name)))
    first = bucket_start(now - span, step)
    buckets = read_series(runtime.store, "s", "x", step, first=first, to=now + STEPS[step])
    assert buckets
    [only] = finds
    assert set(only) == {"_id"} and len(only["_id"]["$in"]) <= most


# --- refusals of one event (issue 20 items 9 and 10) --------------------------------------

def test_an_event_refused_in_a_full_hour_is_counted_consistently_in_its_others(runtime,
                                                                                now) -> None:
    """Its readings of the full hour are refused (400); those of its other hour are in that
    hour's minute slots and totals, and so in the day snapshot and the latest value too
    (they were only in the minute slots and hour totals)."""
    # Two hours of one day, whatever the time of day the test runs at.
    now = (now - timedelta(days=1)).replace(hour=10)
    writer = RollupWriter(runtime.store, max_events_per_hour=2)
    for i in range(2):  # the first hour is full
        writer.apply(event_of("dev", now + timedelta(minutes=i), {"x": 1.0}, f"fill-{i}"))
    later = now + timedelta(hours=1, minutes=5)
    event = event_of("dev", later, {"x": 7.0}, "split",
                     samples=[(now + timedelta(minutes=10), {"x": 9.0})])
    for _ in range(2):  # and a redelivery (the 400 is dead-lettered, perhaps replayed)
        with pytest.raises(BadRequest, match="more than 2 events"):
            writer.apply(event)
    [hour] = [s for t, s in stored(runtime.store, "dev", "x", "1h", now).items() if t > now]
    [day] = stored(runtime.store, "dev", "x", "1d", now).values()
    assert (hour.count, day.count) == (1, 3)  # two of the full hour, one of the split event
    assert day.last_value == 7.0
    device = runtime.store.db[DEVICES].find_one({"_id": "dev"})
    assert reading_of(device["latest"]["x"]) == (later, 7.0)


def test_a_lone_hour_write_the_store_refuses_fails_only_its_event(runtime, now,
                                                                   monkeypatch) -> None:
    """A group commit with exactly one hour write (the others heartbeats) runs it as
    findAndModify; a refusal of that write (document too large) is a 400 for its event, not
    a 503 for the whole batch."""
    from pymongo.errors import OperationFailure

    writer = RollupWriter(runtime.store)
    collection_of = Store.collection

    class TooLarge:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            if name == "find_one_and_update":
                def refuse(*args: Any, **kwargs: Any) -> Any:
                    raise OperationFailure("Resulting document after update is larger than "
                                           "16777216", code=17419)
                return refuse
            return getattr(self.inner, name)

    monkeypatch.setattr(Store, "collection", lambda self, name: (
        TooLarge(collection_of(self, name)) if name == ROLLUP_HOURS
        else collection_of(self, name)))
    attributes, _ = telemetry("quiet", now, {}, "hb")
    heartbeat = validate(RawEvent(attributes, {"samples": []}), datetime.now(UTC), None)
    assert isinstance(heartbeat, TelemetryEvent)
    reading = event_of("big", now, {"x": 1.0}, "r1")
    results = writer.apply_batch([heartbeat, reading])
    assert results[0] is True
    assert isinstance(results[1], BadRequest) and "size limit" in str(results[1])
    assert runtime.store.db[DEVICES].find_one({"_id": "quiet"}) is not None
