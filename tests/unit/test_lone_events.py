"""Lone single-reading events cost little more than their store commands (issue 25): the
shortcuts of the consumers' paths write exactly what the general paths write."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iot_telemetry import events
from iot_telemetry.groupcommit import GroupCommit
from iot_telemetry.series import Summary, add_reading, reading_key, time_key
from tests.conftest import Apps, telemetry

TIMES = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59),
                     timezones=st.just(UTC))
VALUES = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)


@given(TIMES, VALUES, st.lists(st.sampled_from(["tot.t", "min.t.07", "tot.x_1"]), min_size=1,
                               max_size=3, unique=True))
def test_a_lone_reading_adds_what_its_summary_adds(t: datetime, value: float,
                                                   paths: list[str]) -> None:
    fast: dict[str, dict[str, Any]] = {"$inc": {}, "$min": {}, "$max": {}}
    add_reading(fast, paths, t, value)
    general: dict[str, dict[str, Any]] = {"$inc": {}, "$min": {}, "$max": {}}
    for path in paths:
        for op, fields in Summary.of([(t, value)]).increments(path).items():
            general[op].update(fields)
    assert fast == general
    # the same types too: BSON keeps an int count an int and a float sum a double
    assert {k: type(v) for op in fast.values() for k, v in op.items()} == {
        k: type(v) for op in general.values() for k, v in op.items()}


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_aggregate_logs_each_event_only_at_debug(runtime, apps: Apps, now: datetime,
                                                 caplog: pytest.LogCaptureFixture,
                                                 level: str) -> None:
    caplog.set_level(level, logger="iot_telemetry")
    headers, body = events.to_http(*telemetry("dev-1", now, {"temperature": 21.5}, "e1"))
    for _ in range(2):  # applied, then a duplicate
        assert apps.aggregate.post("/", data=body, headers=headers).status_code == 204
    lines = [(r.levelno, r.getMessage()) for r in caplog.records
             if r.name == "iot_telemetry.aggregate"]
    assert lines == ([] if level == "INFO" else [(logging.DEBUG, "aggregated"),
                                                  (logging.DEBUG, "duplicate")])


@given(st.lists(st.tuples(TIMES, VALUES), min_size=1, max_size=5),
       st.integers(min_value=1, max_value=2**40))
def test_a_day_snapshot_taken_from_the_stored_slot_is_the_summarys(
        readings: list[tuple[datetime, float]], version: int) -> None:
    total = Summary.of(readings)
    slot = {"c": total.count, "s": total.sum, "lo": total.min, "hi": total.max,
            "f": time_key(total.first), "lv": reading_key(total.last, total.last_value)}
    stored = Summary.from_slot(slot)
    assert stored is not None
    assert Summary.slot_snapshot(slot, version) == stored.snapshot(version) == total.snapshot(
        version)
    assert Summary.slot_snapshot({**slot, "c": 0}, version) is None


def test_group_commit_runs_a_lone_item_alone_and_batches_what_queues_meanwhile() -> None:
    batches: list[list[int]] = []
    first_running, release = threading.Event(), threading.Event()

    def run(items: Sequence[int]) -> list[int | Exception]:
        batches.append(list(items))
        if items == [0]:
            first_running.set()
            release.wait(10)
        return [ValueError(f"item {i}") if i == 3 else i * 10 for i in items]

    commit: GroupCommit[int, int] = GroupCommit(run)
    results: dict[int, object] = {}

    def submit(i: int) -> None:
        try:
            results[i] = commit.submit(i)
        except ValueError as exc:
            results[i] = str(exc)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(5)]
    threads[0].start()
    assert first_running.wait(10)
    for t in threads[1:]:
        t.start()
    while len(commit._queue) < 4:  # the others queue behind the lone one
        time.sleep(0.01)
    release.set()
    for t in threads:
        t.join(10)
    assert batches == [[0], [1, 2, 3, 4]]
    assert results == {0: 0, 1: 10, 2: 20, 3: "item 3", 4: 40}
    assert commit.submit(5) == 50 and batches[-1] == [5]  # idle again: alone


def test_group_commit_a_failing_lone_run_fails_its_item_and_frees_the_next() -> None:
    calls: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int | Exception]:
        calls.append(list(items))
        if 1 in items:
            raise RuntimeError("store down")
        return list(items)

    commit: GroupCommit[int, int] = GroupCommit(run)
    with pytest.raises(RuntimeError, match="store down"):
        commit.submit(1)
    assert commit.submit(2) == 2
    assert calls == [[1], [2]]


def test_alert_states_kept_as_objects_write_what_decoding_them_writes(now: datetime) -> None:
    """alert's cache keeps each device's rule states as objects between its events: the state
    documents and alerts it leaves, redeliveries included, are those of reading every state
    back from the store, and nothing but the document itself reaches the store."""
    from iot_telemetry import store as store_module
    from iot_telemetry.alerting import AlertBook, StateCache
    from iot_telemetry.settings import Settings
    from tests.conftest import make_runtime, record
    from tests.unit.test_alerting import _validated

    rules = Settings.from_environ({}).rules
    values = [31, 32, 33, 34, 41, 42, 29, 27, 20, 31, 32, 33, 35, 26, 45, 20]
    events = [_validated(record(f"dev-{d}", now + timedelta(seconds=10 * i),
                                {"temperature": v + d, "humidity": 50.0 + v, "battery": 9.0 + v},
                                f"e{d}-{i}"))
              for i, v in enumerate(values) for d in range(3)]
    events += events[5:9]  # redeliveries

    def run(cache: StateCache) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
        store_module.reset_embedded()
        rt = make_runtime()
        book = AlertBook(rt.store, rules, cache=cache)
        answers = [[(t["transition"], t["alert"]["id"]) for t in book.handle(e).transitions]
                   for e in events]
        states = {d["_id"]: d for d in rt.store.collection("alert_state").find({})}
        alerts = {d["_id"]: d for d in rt.store.collection("alerts").find({})}
        return states, alerts, answers

    cached, uncached = run(StateCache()), run(StateCache(0))
    assert cached == uncached and cached[1]
    assert all(set(doc) <= {"_id", "device_id", "rules", "effects", "event", "applied", "rev",
                            "recent"} for doc in cached[0].values())
