"""Ground truth: rollups computed directly from the readings that were sent."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

STEPS = {"1m": timedelta(minutes=1), "1h": timedelta(hours=1), "1d": timedelta(days=1)}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


Point = tuple[str, str, datetime, float]


def points_of(attributes: dict[str, Any], data: dict[str, Any]) -> list[Point]:
    """(device, metric, time, value) of one event as sent."""
    device = attributes["subject"]
    t = datetime.fromisoformat(attributes["time"])
    out = [(device, m, t, float(v)) for m, v in data.get("metrics", {}).items()]
    for s in data.get("samples", []):
        st = datetime.fromisoformat(s["time"])
        out += [(device, m, st, float(v)) for m, v in s["metrics"].items()]
    return out


def expected(points: Iterable[tuple[str, str, datetime, float]], step: str,
             ) -> dict[tuple[str, str, str], dict[str, float]]:
    """(device, metric, bucket start) -> count, sum, min, max of every point once."""
    width = STEPS[step]
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for device, metric, t, v in points:
        start = EPOCH + ((t.astimezone(UTC) - EPOCH) // width) * width
        label = start.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        groups[(device, metric, label)].append(v)
    return {k: {"count": len(v), "sum": sum(v), "min": min(v), "max": max(v)}
            for k, v in groups.items()}


def observed(buckets: list[dict[str, Any]], device: str, metric: str,
             ) -> dict[tuple[str, str, str], dict[str, float]]:
    return {(device, metric, b["t"]): {"count": b["count"], "sum": b["sum"], "min": b["min"],
                                       "max": b["max"]} for b in buckets}


def close(a: dict[Any, dict[str, float]], b: dict[Any, dict[str, float]]) -> bool:
    """Same buckets, same counts, min and max; sums equal up to float rounding."""
    if a.keys() != b.keys():
        return False
    for k, x in a.items():
        y = b[k]
        if x["count"] != y["count"] or x["min"] != y["min"] or x["max"] != y["max"]:
            return False
        if abs(x["sum"] - y["sum"]) > 1e-9 * max(1.0, abs(x["sum"])):
            return False
    return True
