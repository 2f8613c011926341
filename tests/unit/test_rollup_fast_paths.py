"""The shortcuts of aggregate's write path for lone events write exactly what the general
path writes (issue 25: a single-reading event should cost its store commands, little more)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from iot_telemetry.series import Summary, add_reading

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
