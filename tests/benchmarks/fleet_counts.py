"""Device states: what GET /fleet and GET /devices cost, in store commands and time.

    python -m tests.benchmarks.fleet_counts mongodb://127.0.0.1:27018 5000

A fleet of N devices (a quarter each reporting, stale, never reported and disabled, bar the
offline ones) with a history of resolved alerts (ten per device), and K of its stale devices
offline (an open offline alert each), for K = 0, N/20 and N/4. Per K, through the query app:
GET /fleet (counts by state of the whole fleet) beside reading every page of GET /devices
(what the dashboard does up to its cap, and the only other way to count), and the store
commands of one page of GET /devices (the states cost none of their own).
"""

from __future__ import annotations

import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from iot_telemetry.runtime import Runtime, set_runtime
from iot_telemetry.settings import Settings
from iot_telemetry.store import ALERTS, DEVICES
from tests.benchmarks.offline_sweep import commands
from tests.conftest import Apps

PAGE = 500  # QUERY_MAX_LIMIT's default


def seed(rt: Runtime, devices: int, offline: int, now: datetime) -> None:
    docs: list[dict[str, Any]] = []
    for n in range(devices):
        kind = n % 4
        doc: dict[str, Any] = {"_id": f"dev-{n:06d}", "name": f"dev-{n:06d}", "metadata": {}}
        if kind == 0:
            doc["last_seen"] = now - timedelta(seconds=10)
        elif kind == 1:
            doc["last_seen"] = now - timedelta(hours=2)
        elif kind == 3:
            doc.update(enabled=False, last_seen=now - timedelta(days=3))
        docs.append(doc)
    rt.store.collection(DEVICES).insert_many(docs)
    history = [{"_id": f"dev-{n:06d}:temperature-high:{k}", "device_id": f"dev-{n:06d}",
                "condition": ">", "state": "resolved", "raised_at": now - timedelta(days=k),
                "last_seen": now - timedelta(days=k)}
               for n in range(devices) for k in range(10)]
    rt.store.collection(ALERTS).insert_many(history)
    stale = [d for n, d in enumerate(docs) if n % 4 == 1]
    if offline:
        rt.store.collection(ALERTS).insert_many([
            {"_id": f"{d['_id']}:device-offline:1", "device_id": d["_id"],
             "condition": "offline", "state": "open", "raised_at": now,
             "first_seen": d["last_seen"], "last_seen": d["last_seen"]}
            for d in stale[:offline]])


def timed(call: Any, repeat: int = 5) -> tuple[float, float]:
    """Median milliseconds and store commands of one call."""
    times, cost = [], 0.0
    for _ in range(repeat):
        before = commands()
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
        cost = commands() - before
    return sorted(times)[len(times) // 2], cost


def every_page(apps: Apps) -> int:
    cursor, listed = None, 0
    while True:
        page = apps.query.get(f"/devices?limit={PAGE}" + (f"&cursor={cursor}" if cursor
                                                            else "")).get_json()
        listed += len(page["devices"])
        cursor = page["next_cursor"]
        if cursor is None:
            return listed


def main(url: str, devices: int) -> None:
    for offline in (0, devices // 20, devices // 4):
        rt = Runtime(Settings.from_environ({}, {
            "MONGO_URL": url, "MONGO_DB": f"bench_fleet_{uuid.uuid4().hex[:8]}",
            "KAFKA_BOOTSTRAP_SERVERS": "memory://"}))
        set_runtime(rt)
        rt.store.ensure_indexes()
        seed(rt, devices, offline, datetime.now(UTC))
        apps = Apps()
        counts = apps.query.get("/fleet").get_json()["states"]
        assert counts["offline"] == offline, counts
        fleet_ms, fleet_cmds = timed(lambda: apps.query.get("/fleet"))
        pages_ms, pages_cmds = timed(lambda: every_page(apps), 3)
        page_ms, page_cmds = timed(lambda: apps.query.get(f"/devices?limit={PAGE}"))
        print(f"{devices} devices, {offline} offline ({devices * 10} resolved alerts): "
              f"GET /fleet {fleet_ms:.0f} ms, {fleet_cmds:.0f} store commands; every page of "
              f"GET /devices {pages_ms:.0f} ms, {pages_cmds:.0f} commands "
              f"(x{pages_ms / fleet_ms:.1f} the time); one page of {PAGE}: {page_ms:.0f} ms, "
              f"{page_cmds:.0f} commands")
        rt.store.client.drop_database(rt.settings.mongo_db)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5000)
