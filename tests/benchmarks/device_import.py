"""Bulk device import beside one `devices add` per device, and what a token's scope costs.

    python -m tests.benchmarks.device_import mongodb://127.0.0.1:27018 10000

Rows per second and store commands per row of: `devices add` one device at a time (what
registering a fleet took before `devices import`; run on the first BASELINE rows only, it is
slow), `devices import` of N new devices, and the same file imported again (every row an
update, nothing new). Then, over those N devices, a scope picking half of them: resolving it
(once per AUTH_CACHE_SECONDS per instance) and one page of GET /devices and GET /alerts with
the scoped token beside a fleet-wide one.
"""

from __future__ import annotations

import sys
import time
import uuid

from iot_telemetry.devices import Registry
from iot_telemetry.registry_csv import import_rows, read_csv
from iot_telemetry.runtime import Runtime, set_runtime
from iot_telemetry.settings import Settings
from iot_telemetry.store import DEVICES
from tests.benchmarks.offline_sweep import commands
from tests.conftest import Apps

BASELINE = 1000
FLEET_TOKEN = "bench-fleet-" + "0" * 24


def devices_csv(rows: int) -> str:
    lines = ["id,name,location,units,tenant,site"]
    lines += [f"dev-{n:06d},Device {n},hall {n % 7},temperature=celsius;humidity=%,"
              f"{'acme' if n % 2 else 'globex'},site-{n % 13}" for n in range(rows)]
    return "\n".join(lines) + "\n"


def runtime(url: str) -> Runtime:
    rt = Runtime(Settings.from_environ({}, {
        "MONGO_URL": url, "MONGO_DB": f"bench_import_{uuid.uuid4().hex[:8]}",
        "KAFKA_BOOTSTRAP_SERVERS": "memory://", "QUERY_AUTH": "token",
        "MONGO_TIMEOUT_MS": "120000", "AUTH_CACHE_SECONDS": "3600",
        "QUERY_READ_TOKENS": FLEET_TOKEN}))
    set_runtime(rt)
    rt.store.ensure_indexes()
    return rt


def measured(label: str, rows: int, call: object) -> None:
    before, started = commands(), time.perf_counter()
    call()  # type: ignore[operator]
    seconds = time.perf_counter() - started
    spent = commands() - before
    print(f"{label:<44} {rows:>6} rows {seconds:8.2f} s {rows / seconds:9.0f} rows/s "
          f"{spent / rows:7.4f} store commands per row")


def median_ms(call: object, repeat: int = 7) -> tuple[float, float]:
    times, spent = [], 0.0
    for _ in range(repeat):
        before, started = commands(), time.perf_counter()
        call()  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000)
        spent = commands() - before
    return sorted(times)[len(times) // 2], spent


def main(url: str, rows: int) -> None:
    text = devices_csv(rows)
    parsed = read_csv(text)

    rt = runtime(url)
    registry = Registry(rt.store)
    first = parsed[:min(BASELINE, rows)]
    measured("devices add, one device at a time", len(first), lambda: [
        registry.add(r.id, r.name, r.metadata) for r in first])
    rt.store.client.drop_database(rt.settings.mongo_db)

    rt = runtime(url)
    started = time.perf_counter()
    read_csv(text)
    print(f"{'reading and checking the CSV':<44} {rows:>6} rows "
          f"{time.perf_counter() - started:8.2f} s")
    measured("devices import, every device new", rows, lambda: import_rows(rt.store, parsed))
    measured("devices import again, every row an update", rows,
             lambda: import_rows(rt.store, parsed))
    assert rt.store.collection(DEVICES).count_documents({}) == rows

    rt.store.collection("alerts").insert_many([
        {"_id": f"dev-{n:06d}:hot:1", "device_id": f"dev-{n:06d}", "state": "resolved",
         "severity": "warning", "raised_at": rt.store.collection(DEVICES).find_one()[
             "registered_at"]} for n in range(rows)])
    q = Apps().query
    fleet_wide = {"Authorization": f"Bearer {FLEET_TOKEN}"}
    for name, scope in (("half", {"metadata": {"tenant": "acme"}}), ("ten", {
            "prefix": "dev-00000"})):
        token = rt.query_tokens.add(name, "read", scope)
        selector = rt.query_tokens.verify(token).scope  # type: ignore[union-attr]
        resolve_ms, resolve_cmds = median_ms(
            lambda s=selector: type(rt.scopes)(rt.store, 5.0).audience(s), 3)
        size = len(rt.scopes.audience(selector).ids or ())
        print(f"scope {scope}: {size} of {rows} devices, resolved in {resolve_ms:.0f} ms, "
              f"{resolve_cmds:.0f} store command (once per AUTH_CACHE_SECONDS per instance)")
        for path in ("/devices?limit=50", "/alerts?limit=50", "/fleet"):
            scoped = median_ms(lambda p=path, t=token: q.get(
                p, headers={"Authorization": f"Bearer {t}"}), 3)
            fleet = median_ms(lambda p=path: q.get(p, headers=fleet_wide), 3)
            print(f"  GET {path:<18} scoped {scoped[0]:8.1f} ms {scoped[1]:.0f} commands; "
                  f"fleet-wide {fleet[0]:8.1f} ms {fleet[1]:.0f} commands")
    rt.store.client.drop_database(rt.settings.mongo_db)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10000)
