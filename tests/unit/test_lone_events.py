"""Lone single-reading events cost little more than their store commands (issue 25): the
shortcuts of the consumers' paths write exactly what the general paths write."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iot_telemetry import events
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
