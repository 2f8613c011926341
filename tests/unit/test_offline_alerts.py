"""Offline alerts through the real alert app: sweeps (PingSource ticks) and the next report."""

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest

from iot_telemetry import events
from iot_telemetry.devices import Registry
from iot_telemetry.rules import OfflineRule, parse_rules
from iot_telemetry.runtime import get_runtime, set_runtime
from tests.conftest import Apps, count_calls, iso, make_runtime, record
from tests.unit.test_alerting import sink_server  # noqa: F401 (fixture)

PING_SOURCE = "/apis/v1/namespaces/iot/pingsources/offline-sweep"
RULES = [{"name": "offline", "condition": "offline", "severity": "critical"}]


def sweep(apps, tick_id, at=None):
    """Deliver a PingSource tick to alert as the Broker would (binary mode)."""
    attributes = {"specversion": "1.0", "type": events.PING_TYPE, "source": PING_SOURCE,
                  "id": tick_id, "time": iso(at or datetime.now(UTC)),
                  "datacontenttype": "application/json"}
    headers, body = events.to_http(attributes, {"sweep": "offline"})
    return apps.alert.post("/", data=body, headers=headers)


def report(apps, device, seconds_ago, event_id, function="aggregate"):
    t = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    return apps.deliver(function, record(device, t, {"temperature": 21.0}, event_id))


def alerts(apps, device):
    return apps.query.get(f"/alerts?device_id={device}").get_json()["alerts"]


@pytest.fixture
def offline_apps(runtime, sink_server):  # noqa: F811
    set_runtime(make_runtime(K_SINK=sink_server.url, ALERT_RULES=json.dumps(RULES)))
    return Apps()


def test_a_device_silent_past_the_window_gets_an_offline_alert(offline_apps) -> None:
    apps = offline_apps
    assert report(apps, "quiet", 600, "q0").status_code == 204  # last_seen 10 min ago
    response = sweep(apps, "tick-1")
    assert response.status_code == 200
    assert response.headers["ce-type"] == "iot.alert.v1"
    assert response.headers["ce-id"] == "quiet:offline:1/raised"
    body = response.get_json()
    assert (body["state"], body["rule"], body["metric"], body["condition"]) == (
        "raised", "offline", None, "offline")
    [alert] = alerts(apps, "quiet")
    assert alert["state"] == "open" and alert["severity"] == "critical"
    assert alert["window_seconds"] == 300  # DEVICE_STALE_SECONDS by default
    assert alert["metric"] is None and alert["first_seen"] == alert["last_seen"]


def test_no_alert_before_the_window_and_a_rule_may_set_its_own(runtime, sink_server) -> None:  # noqa: F811
    rules = [*RULES, {"name": "offline-fast", "condition": "offline", "for_seconds": 60}]
    set_runtime(make_runtime(K_SINK=sink_server.url, ALERT_RULES=json.dumps(rules)))
    apps = Apps()
    report(apps, "recent", 120, "r0")  # silent 2 min: past 60 s, not past 300 s
    assert sweep(apps, "tick-1").status_code == 200
    assert [(a["rule"], a["window_seconds"]) for a in alerts(apps, "recent")] == [
        ("offline-fast", 60)]
    report(apps, "fresh", 10, "f0")
    assert sweep(apps, "tick-2").status_code == 204
    assert alerts(apps, "fresh") == []


def test_the_next_report_resolves_it_and_the_next_sweep_does_not_raise_again(
        offline_apps) -> None:
    apps = offline_apps
    report(apps, "back", 900, "b0")
    assert sweep(apps, "tick-1").status_code == 200
    [alert] = alerts(apps, "back")
    ack = apps.query.post(f"/alerts/{alert['id']}/ack", json={"by": "ops"})
    assert ack.get_json()["state"] == "acknowledged"
    # the alert function sees the device's next telemetry event (aggregate may lag behind)
    resolved = report(apps, "back", 0, "b1", function="alert")
    assert resolved.status_code == 200
    assert resolved.headers["ce-id"] == "back:offline:1/resolved"
    assert resolved.get_json()["state"] == "resolved"
    [alert] = alerts(apps, "back")
    assert (alert["state"], alert["resolved_reason"]) == ("resolved", "cleared")
    assert sweep(apps, "tick-2").status_code == 204  # devices.last_seen is still old
    assert len(alerts(apps, "back")) == 1
    # redelivering the report answers the same alert event and changes nothing
    again = report(apps, "back", 0, "b1", function="alert")
    assert again.headers["ce-id"] == "back:offline:1/resolved"
    assert len(alerts(apps, "back")) == 1


def test_a_redelivered_sweep_changes_nothing_and_answers_the_same(offline_apps) -> None:
    apps = offline_apps
    report(apps, "dup", 600, "d0")
    at = datetime.now(UTC)
    first = sweep(apps, "tick-1", at)
    [before] = alerts(apps, "dup")
    again = sweep(apps, "tick-1", at)
    assert again.status_code == 200
    assert again.headers["ce-id"] == first.headers["ce-id"] == "dup:offline:1/raised"
    assert alerts(apps, "dup") == [before]
    assert sweep(apps, "tick-2").status_code == 204  # a later tick: still the same one alert
    assert alerts(apps, "dup") == [before]


def test_two_sweeps_at_once_raise_one_alert_per_device(offline_apps, sink_server) -> None:  # noqa: F811
    apps = offline_apps
    for round_ in range(6):  # races are chancy: several rounds, new silent devices in each
        devices = [f"par-{round_}-{i}" for i in range(6)]
        for i, device in enumerate(devices):
            report(apps, device, 600 + i, f"p{round_}-{i}")
        barrier = threading.Barrier(4)
        statuses, replied = [], []
        sink_server.received.clear()

        def tick(n, r=round_, b=barrier, st=statuses, rep=replied):
            b.wait()
            response = sweep(apps, f"tick-{r}-{n}")
            st.append(response.status_code)
            if response.status_code == 200:
                rep.append(response.headers["ce-id"])

        threads = [threading.Thread(target=tick, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(statuses) <= {200, 204} and 200 in statuses
        every = apps.query.get(f"/alerts?limit=100&device_id={devices[0]}").get_json()["alerts"]
        assert [a["id"] for a in every] == [f"{devices[0]}:offline:1"]
        # every raise was announced once (as a reply or to K_SINK), by one tick or another
        announced = replied + [h["ce-id"] for h, _ in sink_server.received]
        assert sorted(announced) == sorted(f"{d}:offline:1/raised" for d in devices)
    assert len(apps.query.get("/alerts?limit=100").get_json()["alerts"]) == 36


def test_never_reported_and_disabled_devices_are_not_offline(offline_apps) -> None:
    apps = offline_apps
    registry = Registry(get_runtime().store)
    registry.add("registered-only")  # in the registry, never sent anything
    report(apps, "switched-off", 600, "s0")
    registry.set_enabled("switched-off", False)
    assert sweep(apps, "tick-1").status_code == 204
    assert apps.query.get("/alerts?limit=100").get_json()["alerts"] == []


def test_offline_rules_are_checked_at_start_with_every_problem() -> None:
    with pytest.raises(ValueError) as err:
        parse_rules([{"name": "Bad Name", "condition": "offline", "metric": "temperature",
                      "threshold": 3, "for_seconds": 0, "severity": "fatal", "every": 1}])
    message = str(err.value)
    for problem in ("rules[0].name", "rules[0].metric: not used by offline rules",
                    "rules[0].threshold: not used by offline rules", "rules[0].for_seconds",
                    "rules[0].severity", "rules[0].every: unknown field"):
        assert problem in message
    [rule] = parse_rules([{"name": "quiet", "condition": "offline", "for_seconds": 90}])
    assert rule == OfflineRule("quiet", "warning", 90.0) and rule.window(300) == 90.0


def test_a_restarted_alert_keeps_open_offline_alerts_open(offline_apps, sink_server) -> None:  # noqa: F811
    apps = offline_apps
    report(apps, "kept", 600, "k0")
    assert sweep(apps, "tick-1").status_code == 200
    # a new alert process with the same rules resolves the alerts of removed rules only
    set_runtime(make_runtime(K_SINK=sink_server.url, ALERT_RULES=json.dumps(RULES)))
    assert report(apps, "other", 0, "o0", function="alert").status_code == 204
    [alert] = alerts(apps, "kept")
    assert alert["state"] == "open" and alert["resolved_reason"] is None


def test_a_sweep_reads_in_pages_stops_at_its_bound_and_the_next_goes_on(
        offline_apps, monkeypatch) -> None:
    from iot_telemetry import offline

    monkeypatch.setattr(offline, "PAGE_SIZE", 3)
    monkeypatch.setattr(offline, "MAX_DEVICES", 6)
    apps = offline_apps
    # 10 silent devices, four of them with the same last report (ties across a page boundary)
    seen = datetime.now(UTC) - timedelta(minutes=20)
    store = get_runtime().store.collection("devices")
    for i in range(10):
        store.insert_one({"_id": f"pg-{i}", "last_seen": seen + timedelta(
            seconds=0 if 2 <= i <= 5 else i)})
    assert sweep(apps, "tick-1").status_code == 200
    first = {a["device_id"] for a in apps.query.get("/alerts?limit=100").get_json()["alerts"]}
    assert len(first) == 6  # the bound of one sweep
    assert sweep(apps, "tick-2").status_code == 200
    every = [a["device_id"] for a in apps.query.get("/alerts?limit=100").get_json()["alerts"]]
    assert sorted(every) == sorted(f"pg-{i}" for i in range(10))  # each once, none missed
    assert sweep(apps, "tick-3").status_code == 204


def test_a_sweep_stops_after_its_share_of_raises_and_the_next_goes_on(
        offline_apps, monkeypatch) -> None:
    from iot_telemetry import offline

    monkeypatch.setattr(offline, "PAGE_SIZE", 2)
    monkeypatch.setattr(offline, "MAX_RAISES", 3)
    apps = offline_apps
    seen = datetime.now(UTC) - timedelta(minutes=20)
    store = get_runtime().store.collection("devices")
    store.insert_many([{"_id": f"mr-{i}", "last_seen": seen + timedelta(seconds=i)}
                       for i in range(7)])
    assert sweep(apps, "tick-1").status_code == 200
    assert len(apps.query.get("/alerts?limit=100").get_json()["alerts"]) == 4  # 2 pages
    assert sweep(apps, "tick-2").status_code == 200
    every = [a["device_id"] for a in apps.query.get("/alerts?limit=100").get_json()["alerts"]]
    assert sorted(every) == [f"mr-{i}" for i in range(7)]


HOT = {"name": "hot", "metric": "temperature", "condition": ">", "threshold": 50.0}


def _offline_state_reads(runtime, monkeypatch):
    """Count reads of the offline rule's states (finds on alert_state by `_id $in`, or the
    find-and-modify that reads the one state while it records `heard`)."""
    def of_offline_states(query=None, *args, **kwargs):
        ids = (query or {}).get("_id")
        if isinstance(ids, str):
            return ids.endswith(":offline")
        return isinstance(ids, dict) and any(i.endswith(":offline") for i in ids.get("$in", ()))

    return count_calls(monkeypatch, runtime.store, "alert_state",
                       ["find", "find_one_and_update"], of_offline_states)


def test_a_steady_reporter_is_not_checked_for_offline_alerts_on_every_event(
        runtime, sink_server, monkeypatch) -> None:  # noqa: F811
    """alert reads a device's offline states when it had not heard from it for half the
    shortest window, or for an event it cannot tell new; not for each event of a device
    reporting every few seconds (it was one store read per event)."""
    set_runtime(make_runtime(K_SINK=sink_server.url, ALERT_RULES=json.dumps([*RULES, HOT])))
    apps = Apps()
    reads = _offline_state_reads(get_runtime(), monkeypatch)
    start = datetime.now(UTC) - timedelta(seconds=60)
    recs = [record("steady", start + timedelta(seconds=10 * i), {"temperature": 21.0}, f"s{i}")
            for i in range(6)]
    for rec in recs:
        assert apps.deliver("alert", rec).status_code == 204
    assert reads["n"] == 1  # the first event: this process had not heard from it
    # a redelivery may have to answer the alert events of its first delivery: checked
    assert apps.deliver("alert", recs[-1]).status_code == 204
    assert reads["n"] == 2


def test_a_raise_on_a_late_recorded_report_is_resolved_by_the_next_sweep(
        runtime, sink_server) -> None:  # noqa: F811
    """aggregate records the device's reports late, so a sweep raises although alert has
    just heard from the device and skips the check on its next report; the next sweep sees
    the report recorded and resolves the alert, answering its resolved event."""
    set_runtime(make_runtime(K_SINK=sink_server.url, ALERT_RULES=json.dumps([*RULES, HOT])))
    apps = Apps()
    report(apps, "late", 900, "l0")  # the last report aggregate recorded so far
    report(apps, "late", 20, "l1", function="alert")
    # alert's own `heard` keeps a sweep from raising on it; a raise it could not prevent (by
    # an earlier version, or with the clocks of ingest and alert apart): as if not written
    get_runtime().store.collection("alert_state").update_one(
        {"_id": "late:offline"}, {"$unset": {"heard": ""}})
    assert sweep(apps, "tick-1").headers["ce-id"] == "late:offline:1/raised"
    assert report(apps, "late", 10, "l2", function="alert").status_code == 204  # skipped
    report(apps, "late", 10, "l2")  # aggregate catches up
    response = sweep(apps, "tick-2")
    assert response.headers["ce-id"] == "late:offline:1/resolved"
    [alert] = alerts(apps, "late")
    assert (alert["state"], alert["resolved_reason"]) == ("resolved", "cleared")
    assert sweep(apps, "tick-3").status_code == 204


def test_a_device_clock_running_ahead_does_not_postpone_the_check(runtime, monkeypatch) -> None:
    """An event without ingesttime is heard at its own time, which may run ahead of this
    clock: it counts as heard no later than now, so the check is not skipped for longer."""
    from iot_telemetry import offline
    from iot_telemetry.offline import OfflineBook, ReportCache
    from tests.unit.test_alerting import _validated

    start = datetime.now(UTC)
    clock = {"now": start}

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):  # the tests run in UTC: tz is always UTC
            return clock["now"]

    monkeypatch.setattr(offline, "datetime", Clock)
    book = OfflineBook(runtime.store, (OfflineRule("offline", "warning", 300.0),), 300,
                       ReportCache())
    ahead = _validated(record("fast", start + timedelta(minutes=4), {"temperature": 21.0}, "f0"))
    assert "ingesttime" not in ahead.attributes
    book.handle(ahead, fresh=True)
    clock["now"] = start + timedelta(minutes=3)  # past half the window since it was heard
    reads = _offline_state_reads(runtime, monkeypatch)
    later = _validated(record("fast", start + timedelta(minutes=3), {"temperature": 21.0}, "f1"))
    book.handle(later, fresh=True)
    assert reads["n"] == 1
