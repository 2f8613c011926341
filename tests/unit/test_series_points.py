"""read_points, the query function's fast read of a series, answers what read_series answers,
written as the API writes it (the buckets the query function built before from Summaries)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from iot_telemetry.rollup import RollupWriter
from iot_telemetry.series import (
    STEPS,
    Summary,
    bucket_start,
    micros,
    micros_text,
    read_points,
    read_series,
    shown,
)
from iot_telemetry.telemetry import format_time
from tests.unit.test_rollup_exact import event_of


def as_api(t: datetime, s: Summary) -> dict[str, Any]:
    """A bucket as query.py wrote it from read_series before read_points."""
    return {"t": format_time(t), "count": s.count, "min": s.min, "max": s.max, "avg": shown(s.avg),
            "sum": shown(s.sum), "first": format_time(s.first), "last": format_time(s.last),
            "last_value": s.last_value}


@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59,
                                                                      999999),
                    timezones=st.just(UTC)))
def test_micros_text_is_format_time(t: datetime) -> None:
    assert micros_text(micros(t)) == format_time(t)


def test_read_points_are_read_series_as_the_api_writes_them(runtime, now) -> None:
    rng = random.Random(4)
    base = now - timedelta(days=3)
    events = []
    for i in range(400):
        t = base + timedelta(seconds=rng.randint(0, 3 * 86400), microseconds=rng.randint(0, 999999))
        value = rng.choice([rng.uniform(-1e6, 1e6), float(rng.randint(-5, 5)), 0.1, -0.0, 1e300])
        samples = [(t - timedelta(seconds=rng.randint(1, 7200)), {"x": rng.uniform(-3, 3)})]
        events.append(event_of(f"d{i % 2}", t, {"x": value, "y": rng.random()}, f"e{i}",
                               samples if i % 3 == 0 else None))
    writer = RollupWriter(runtime.store)
    for i in range(0, len(events), 16):
        assert not [r for r in writer.apply_batch(events[i:i + 16]) if isinstance(r, Exception)]
    cases = 0
    for step in STEPS:
        for k in range(8):
            first = base - timedelta(hours=2) + timedelta(
                seconds=rng.randint(0, 4 * 86400), microseconds=rng.randint(0, 999999))
            to = first + timedelta(seconds=rng.randint(1, 2 * 86400))
            if k % 2:  # on bucket boundaries, as the API asks (a bucket starting at `to` is out)
                first = bucket_start(first, step)
                to = first + STEPS[step] * rng.randint(1, 3 * 1440 // (1 + 59 * (step != "1m")))
            for device in ("d0", "d1", "nobody"):
                expected = [as_api(t, s) for t, s in read_series(
                    runtime.store, device, "x", step, first=first, to=to)]
                got = read_points(runtime.store, device, "x", step, first=first, to=to)
                # the same JSON, byte for byte, as the API answers it
                assert json.dumps(got) == json.dumps(expected), (step, first, to, device)
                cases += bool(expected)
    assert cases >= 20  # most ranges hold buckets: the comparison is not of empty lists
