"""Device states in the query API (GET /devices, /devices/{id}, /fleet), made by the real
functions: reports through aggregate and alert, offline alerts through PingSource sweeps."""

import json
from collections import Counter
from datetime import UTC, datetime

import pytest

from iot_telemetry import fleet
from iot_telemetry.devices import Registry
from iot_telemetry.runtime import get_runtime, set_runtime
from iot_telemetry.store import ALERTS
from tests.conftest import Apps, make_runtime
from tests.unit.test_alerting import sink_server  # noqa: F401 (fixture)
from tests.unit.test_offline_alerts import report, sweep

# Two offline rules: the default window (DEVICE_STALE_SECONDS, 300 s) and a shorter one, so
# that a device can be offline before it is stale, and have two offline alerts at once.
RULES = [{"name": "offline", "condition": "offline", "severity": "critical"},
         {"name": "offline-fast", "condition": "offline", "for_seconds": 60}]


def seed_fleet() -> Apps:
    """A device of each state (and the cases between them), through the real functions."""
    apps = Apps()
    registry = Registry(get_runtime().store)
    report(apps, "up", 10, "u0")          # reported 10 s ago
    report(apps, "quiet", 900, "q0")      # silent 15 min: both rules raise
    report(apps, "lagging", 120, "l0")    # silent 2 min: only the 60 s rule raises
    report(apps, "back", 900, "b0")       # silent, then reports again (below)
    report(apps, "retired", 900, "r0")    # silent, then disabled (below)
    registry.add("new")                   # registered, never reported
    assert sweep(apps, "tick-1").status_code == 200
    report(apps, "late", 400, "t0")       # silent past 300 s, but no sweep has seen it yet
    report(apps, "back", 5, "b1")         # aggregate has it; alert has not resolved yet
    registry.set_enabled("retired", False)
    return apps


EXPECTED = {
    "up": ("reporting", False, 0),
    "quiet": ("offline", True, 2),
    "lagging": ("offline", False, 1),   # offline by its rule's window, not yet stale
    "back": ("reporting", False, 2),    # reported after the silence alerted on
    "retired": ("disabled", True, 2),   # switched off: neither stale nor offline
    "new": ("never_reported", True, 0),  # nothing received: never offline
    "late": ("stale", True, 0),
}
COUNTS = {"offline": 2, "stale": 1, "never_reported": 1, "reporting": 2, "disabled": 1}


@pytest.fixture
def fleet_apps(runtime, sink_server):  # noqa: F811
    set_runtime(make_runtime(K_SINK=sink_server.url, ALERT_RULES=json.dumps(RULES)))
    return seed_fleet()


def states(apps):
    devices = apps.query.get("/devices?limit=500").get_json()["devices"]
    return {d["id"]: (d["state"], d["stale"], d["open_alerts"]) for d in devices}


def test_each_device_gets_its_state_and_stale_keeps_its_meaning(fleet_apps) -> None:
    assert states(fleet_apps) == EXPECTED
    one = fleet_apps.query.get("/devices/quiet").get_json()
    assert (one["state"], one["open_alerts"]) == ("offline", 2)
    assert fleet_apps.query.get("/devices/new").get_json()["state"] == "never_reported"


def test_a_device_that_reports_again_is_no_longer_offline(fleet_apps) -> None:
    apps = fleet_apps
    report(apps, "quiet", 1, "q1", function="aggregate")
    assert apps.query.get("/devices/quiet").get_json()["state"] == "reporting"
    report(apps, "quiet", 1, "q1", function="alert")  # resolves both offline alerts
    one = apps.query.get("/devices/quiet").get_json()
    assert (one["state"], one["open_alerts"]) == ("reporting", 0)
    # The next sweep finds it reporting: nothing raised again.
    assert sweep(apps, "tick-2").status_code in (200, 204)
    assert apps.query.get("/devices/quiet").get_json()["state"] == "reporting"


def test_an_acknowledged_offline_alert_still_means_offline(fleet_apps) -> None:
    apps = fleet_apps
    for alert in apps.query.get("/alerts?device_id=lagging").get_json()["alerts"]:
        assert apps.query.post(f"/alerts/{alert['id']}/ack", json={"by": "ops"}).status_code == 200
    assert apps.query.get("/devices/lagging").get_json()["state"] == "offline"


def test_fleet_counts_every_device_by_state(fleet_apps) -> None:
    body = fleet_apps.query.get("/fleet").get_json()
    assert body["states"] == COUNTS
    assert body["devices"] == 7 and body["stale_after_seconds"] == 300
    # The same verdicts as the devices' own views.
    by_view = Counter(state for state, _, _ in states(fleet_apps).values())
    assert body["states"] == {s: by_view[s] for s in fleet.DEVICE_STATES}
    assert fleet_apps.query.get("/fleet?limit=5").status_code == 400


def test_fleet_counts_read_offline_alerts_in_batches(fleet_apps) -> None:
    """One offline alert or device per store reply: quiet's two alerts count once."""
    store = get_runtime().store
    expected = fleet_apps.query.get("/fleet").get_json()["states"]
    for size in (1, 2, 3):
        assert fleet.fleet_counts(store, datetime.now(UTC), 300, size) == expected, size


def test_an_offline_alert_of_a_device_not_in_the_registry_counts_nothing(fleet_apps) -> None:
    get_runtime().store.collection(ALERTS).insert_one({
        "_id": "gone:offline:1", "device_id": "gone", "condition": "offline",
        "state": "open", "last_seen": datetime.now(UTC), "raised_at": datetime.now(UTC)})
    body = fleet_apps.query.get("/fleet").get_json()
    assert body["devices"] == 7 and body["states"]["offline"] == 2


class _ReportingMeanwhile:
    """The devices collection, with the fleet registering and reporting during every read:
    a new device reports, and another is registered, before each read and after each
    document a scan returns (issue 23: counts taken one by one went negative)."""

    def __init__(self, devices, now):
        self._devices = devices
        self._now = now
        self.writes = 0

    def _write(self):
        self.writes += 1
        self._devices.insert_one({"_id": f"joined-{self.writes}", "last_seen": self._now})
        self._devices.insert_one({"_id": f"registered-{self.writes}"})

    def count_documents(self, *args, **kwargs):
        self._write()
        return self._devices.count_documents(*args, **kwargs)

    def find(self, *args, **kwargs):
        self._write()
        for doc in list(self._devices.find(*args, **kwargs)):
            yield doc
            self._write()

    def __getattr__(self, name):
        return getattr(self._devices, name)


def test_fleet_counts_add_up_while_devices_register_and_report(fleet_apps, monkeypatch) -> None:
    rt = get_runtime()
    now = datetime.now(UTC)
    devices = rt.store.collection("devices")
    meanwhile = _ReportingMeanwhile(devices, now)
    real_collection = rt.store.collection
    monkeypatch.setattr(rt.store, "collection",
                        lambda name: meanwhile if name == "devices" else real_collection(name))
    counts = fleet.fleet_counts(rt.store, now, 300, 2)
    assert meanwhile.writes > 1
    assert all(n >= 0 for n in counts.values()), counts
    # Every device the one scan saw, once: the seeded fleet and those that joined before it.
    seen = counts["reporting"] - COUNTS["reporting"]
    assert counts["never_reported"] - COUNTS["never_reported"] == seen
    assert sum(counts.values()) == sum(COUNTS.values()) + 2 * seen
    assert {k: v for k, v in counts.items() if k not in ("reporting", "never_reported")} == {
        k: v for k, v in COUNTS.items() if k not in ("reporting", "never_reported")}
