"""Offline sweeps and the tick's cleanups at their edges: records of their own that no device
id can meet, devices that become eligible after a long silence, redelivered ticks, caps that
page instead of truncating, a backlog in aggregate.

The scenarios taking `make` (a runtime factory) also run on mongo-java-server
(tests/integration/test_offline_sweeps_on_real_store.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from iot_telemetry import alert as alert_function
from iot_telemetry import offline
from iot_telemetry.devices import Registry
from iot_telemetry.runtime import Runtime, get_runtime, set_runtime
from iot_telemetry.store import ALERT_STATE, ALERTS, DEVICES, SWEEPS
from tests.conftest import Apps, make_runtime, record
from tests.unit.test_offline_alerts import RULES, alerts, report, sweep

Make = Callable[..., Runtime]


class FlakySink:
    """A Broker ingress (K_SINK) that records what it takes, or answers 503 while `fail`."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.fail = False
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                if not sink.fail:
                    sink.received.append(self.headers["ce-id"])
                self.send_response(503 if sink.fail else 202)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/"


@pytest.fixture
def flaky_sink() -> Iterator[FlakySink]:
    sink = FlakySink()
    yield sink
    sink.server.shutdown()


def embedded(**env: str) -> Runtime:
    """A runtime on the embedded store (which outlives it, like a restarted process's)."""
    rt = make_runtime(**env)
    set_runtime(rt)
    return rt


def silent(rt: Runtime, devices: list[str], ago: timedelta, **fields: Any) -> None:
    """Devices whose last report aggregate recorded `ago` (one second apart, in order)."""
    start = datetime.now(UTC) - ago
    rt.store.collection(DEVICES).insert_many(
        [{"_id": d, "last_seen": start + timedelta(seconds=i), **fields}
         for i, d in enumerate(devices)])


def announced(response: Any, sink: FlakySink) -> list[str]:
    """Alert event ids a delivery answered: its reply's and those posted to K_SINK."""
    return ([response.headers["ce-id"]] if response.status_code == 200 else []) + sink.received


def every_alert(apps: Apps) -> list[dict[str, Any]]:
    return list(get_runtime().store.collection(ALERTS).find())


# --- item 1: the sweep's records live apart from device-keyed ones ---------------------------

def test_devices_named_like_the_sweeps_records_are_alerted_and_stop_nothing(
        runtime, flaky_sink) -> None:
    """A device named `sweep` met the sweep's progress record (`sweep:<rule>` in alert_state):
    every tick failed with 500 and no device was alerted any more."""
    rules = [*RULES, {"name": "fast", "condition": "offline", "for_seconds": 400,
                      "overrides": [{"match": {"prefix": "sweep"}, "for_seconds": 60}]}]
    rt = embedded(K_SINK=flaky_sink.url, ALERT_RULES=json.dumps(rules))
    apps = Apps()
    names = ["sweep", "sweep:offline", "sweep:fast", "sweep:fast:60s", "tick:x", "b"]
    now = datetime.now(UTC)
    for i, name in enumerate(names):
        report(apps, name, 600, f"n{i}")
    # a tick from before they fell silent saves progress; the next ones find them silent
    assert sweep(apps, "tick-0", now - timedelta(minutes=30)).status_code == 204
    first = sweep(apps, "tick-1", now)
    assert first.status_code == 200
    expected = {f"{n}:offline:1/raised" for n in names} | {
        f"{n}:fast:1/raised" for n in names}
    assert set(announced(first, flaky_sink)) == expected
    assert sweep(apps, "tick-2", now).status_code == 204
    report(apps, "c", 600, "c0")
    flaky_sink.received.clear()
    assert set(announced(sweep(apps, "tick-3"), flaky_sink)) == {
        "c:offline:1/raised", "c:fast:1/raised"}
    # every alert_state record is a device's; the sweep's own are in their collection
    for doc in rt.store.collection(ALERT_STATE).find():
        assert doc["_id"] in {f"{doc['device_id']}:{r}" for r in ("offline", "fast")} or (
            doc["_id"] == f"{doc['device_id']}|rules")
    assert rt.store.collection(SWEEPS).count_documents({"_id": "offline:offline:300"}) == 1


@pytest.mark.parametrize("merged", [False, True])
def test_an_upgrade_retires_the_progress_of_the_earlier_layout(runtime, flaky_sink,
                                                              merged) -> None:
    """The progress an earlier version kept as `sweep:<rule>` in alert_state leaves it
    (where it had been written into device `sweep`'s state, `merged`, only its fields do);
    the first pass walks every silent device, so one that version missed is alerted now."""
    rt = embedded(K_SINK=flaky_sink.url, ALERT_RULES=json.dumps(RULES))
    now = datetime.now(UTC)
    states = rt.store.collection(ALERT_STATE)
    state = {"device_id": "sweep", "rule": "offline", "rev": 2, "applied": True,
             "state": {"firing": False, "episode": 0, "last_report": None}} if merged else {}
    states.insert_one({"_id": "sweep:offline", "through": now - timedelta(minutes=6),
                       **state})
    # silent for 3 hours, and missed: re-enabled after the old version's pass went by
    silent(rt, ["long-gone"], timedelta(hours=3))
    silent(rt, ["sweep"], timedelta(minutes=8))
    apps = Apps()
    assert sorted(announced(sweep(apps, "tick-1", now), flaky_sink)) == [
        "long-gone:offline:1/raised", "sweep:offline:1/raised"]
    doc = states.find_one({"_id": "sweep:offline"})
    assert doc["device_id"] == "sweep" and "through" not in doc
    assert doc["rev"] == (3 if merged else 1)
    saved = rt.store.collection(SWEEPS).find_one({"_id": "offline:offline:300"})
    assert saved["through"] > now - timedelta(minutes=6)
    assert sweep(apps, "tick-2").status_code == 204


# --- item 3: eligible again after a long silence -------------------------------------------

def test_a_device_re_enabled_after_hours_of_silence_gets_its_alert(runtime, flaky_sink) -> None:
    rt = embedded(K_SINK=flaky_sink.url, ALERT_RULES=json.dumps(RULES))
    apps = Apps()
    silent(rt, ["old"], timedelta(hours=2), enabled=False)
    assert sweep(apps, "tick-1").status_code == 204
    assert sweep(apps, "tick-2").status_code == 204
    Registry(rt.store).set_enabled("old", True)
    assert sweep(apps, "tick-3").headers["ce-id"] == "old:offline:1/raised"
    assert sweep(apps, "tick-4").status_code == 204


def test_a_device_moved_into_a_rules_scope_after_hours_of_silence_gets_its_alert(
        runtime, flaky_sink) -> None:
    rules = [{"name": "site-a", "condition": "offline", "scope": {"metadata": {"site": "a"}}}]
    rt = embedded(K_SINK=flaky_sink.url, ALERT_RULES=json.dumps(rules))
    apps = Apps()
    silent(rt, ["mover"], timedelta(hours=2), metadata={"site": "b"})
    assert sweep(apps, "tick-1").status_code == 204
    Registry(rt.store).set_metadata("mover", {"site": "a"})
    assert sweep(apps, "tick-2").headers["ce-id"] == "mover:site-a:1/raised"


@pytest.mark.parametrize(("before", "after"), [
    ({"scope": {"prefix": "a-"}}, {"scope": {"prefix": "b-"}}),
    ({"overrides": [{"match": {"device": "b-1"}, "for_seconds": 10800}]}, {}),
])
def test_a_rule_change_that_makes_a_long_silent_device_eligible_alerts_it(
        runtime, flaky_sink, before, after) -> None:
    """A new scope, or an override with another window gone: the sweep walks every silent
    device again, however long ago the last pass went past it."""
    rule = {"name": "offline", "condition": "offline"}
    rt = embedded(K_SINK=flaky_sink.url, ALERT_RULES=json.dumps([{**rule, **before}]))
    apps = Apps()
    silent(rt, ["b-1"], timedelta(hours=2))
    assert sweep(apps, "tick-1").status_code == 204
    assert sweep(apps, "tick-2").status_code == 204
    embedded(K_SINK=flaky_sink.url, ALERT_RULES=json.dumps([{**rule, **after}]))  # a restart
    assert sweep(apps, "tick-3").headers["ce-id"] == "b-1:offline:1/raised"
    assert sweep(apps, "tick-4").status_code == 204


# --- item 4: a redelivered tick answers what its first delivery raised ----------------------

def redelivered_ticks_answer_their_raises(make: Make, sink: FlakySink) -> None:
    """The first delivery of a tick raises but its K_SINK post fails (503): the redelivery,
    which starts from the progress the first one saved, answers all of it; with a cap on
    raises per tick, the next tick goes on with the devices after, and together the ticks
    announce every device once."""
    rt = make(K_SINK=sink.url, ALERT_RULES=json.dumps(RULES))
    apps = Apps()
    devices = [f"rd-{i}" for i in range(7)]
    silent(rt, devices, timedelta(hours=2))  # more than the hour a sweep looks back
    at = datetime.now(UTC)
    sink.fail = True
    assert sweep(apps, "tick-1", at).status_code == 503
    sink.fail = False
    again = sweep(apps, "tick-1", at)
    first = announced(again, sink)
    assert len(first) == len(set(first)) == 4  # the cap: two pages of two
    sink.received.clear()
    assert sorted(announced(sweep(apps, "tick-1", at), sink)) == sorted(first)  # the same
    sink.received.clear()
    rest = announced(sweep(apps, "tick-2", at), sink)
    assert sorted(first + rest) == sorted(f"{d}:offline:1/raised" for d in devices)
    sink.received.clear()
    assert sweep(apps, "tick-3", at).status_code == 204
    assert len(every_alert(apps)) == 7


def test_a_redelivered_tick_answers_what_its_first_delivery_raised(
        runtime, flaky_sink, monkeypatch) -> None:
    monkeypatch.setattr(offline, "PAGE_SIZE", 2)
    monkeypatch.setattr(offline, "MAX_RAISES", 3)
    redelivered_ticks_answer_their_raises(embedded, flaky_sink)


def test_the_first_tick_of_a_rule_redelivered_answers_every_raise(runtime, flaky_sink) -> None:
    rt = embedded(K_SINK=flaky_sink.url, ALERT_RULES=json.dumps(RULES))
    apps = Apps()
    silent(rt, ["f-0", "f-1", "f-2"], timedelta(hours=2))
    at = datetime.now(UTC)
    flaky_sink.fail = True
    assert sweep(apps, "tick-1", at).status_code == 503
    flaky_sink.fail = False
    assert sorted(announced(sweep(apps, "tick-1", at), flaky_sink)) == [
        f"f-{i}:offline:1/raised" for i in range(3)]


# --- item 6: the fix-up pages through every open offline alert ------------------------------

def wrongly_raised_alerts_are_all_resolved(make: Make, sink: FlakySink, offline_count: int,
                                           ticks: int) -> None:
    """Many devices truly offline, and one whose alert was raised while aggregate had not
    recorded its reports (its id sorts last): the fix-up reaches it within `ticks`."""
    rt = make(K_SINK=sink.url, ALERT_RULES=json.dumps(RULES))
    apps = Apps()
    silent(rt, [f"off-{i:03}" for i in range(offline_count)], timedelta(minutes=20))
    silent(rt, ["zz-reporter"], timedelta(minutes=10))
    raising = 0
    while sweep(apps, f"raising-{raising}").status_code == 200:  # the raises, tick by tick
        raising += 1
    assert len(every_alert(apps)) == offline_count + 1
    # aggregate records the reporter's reports; alert had skipped checking them
    rt.store.collection(DEVICES).update_one(
        {"_id": "zz-reporter"}, {"$set": {"last_seen": datetime.now(UTC)}})
    for n in range(ticks):
        sweep(apps, f"tick-{n + 1}")
    [alert] = alerts(apps, "zz-reporter")
    assert (alert["state"], alert["resolved_reason"]) == ("resolved", "cleared")
    assert sum(a["state"] == "open" for a in every_alert(apps)) == offline_count


def test_a_wrongly_raised_alert_behind_many_open_ones_is_resolved(
        runtime, flaky_sink, monkeypatch) -> None:
    monkeypatch.setattr(offline, "PAGE_SIZE", 4)
    monkeypatch.setattr(offline, "FIXUP_CHECKS", 8)
    monkeypatch.setattr(offline, "MAX_RAISES", 1000)
    wrongly_raised_alerts_are_all_resolved(embedded, flaky_sink, 26, ticks=4)


# --- item 7: alerts of removed rules, paged and every tick -----------------------------------

def _orphans(rt: Runtime, ids: range) -> None:
    now = datetime.now(UTC)
    rt.store.collection(ALERTS).insert_many([
        {"_id": f"o-{i}:gone:1", "device_id": f"o-{i}", "rule": "gone", "metric": "t",
         "severity": "warning", "state": "open", "raised_at": now, "condition": ">"}
        for i in ids])


def test_alerts_of_a_removed_rule_are_all_resolved_also_those_raised_later(
        runtime, monkeypatch) -> None:
    """The cleanup ran once per process and resolved at most 1000: now each tick resolves
    its share, also alerts an instance still running the old rules raised meanwhile."""
    monkeypatch.setattr(alert_function, "REMOVED_PER_TICK", 5)
    rt = embedded(ALERT_RULES=json.dumps(RULES))
    apps = Apps()
    _orphans(rt, range(12))
    for n in range(3):
        assert sweep(apps, f"tick-{n}").status_code == 204
    assert {a["state"] for a in every_alert(apps)} == {"resolved"}
    _orphans(rt, range(12, 14))  # raised by an old instance during a rolling update
    assert sweep(apps, "tick-3").status_code == 204
    gone = every_alert(apps)
    assert len(gone) == 14
    assert {(a["state"], a["resolved_reason"]) for a in gone} == {("resolved", "rule_removed")}


# --- suspected: aggregate's backlog longer than a window ------------------------------------

@pytest.mark.parametrize("rules", [
    RULES, [*RULES, {"name": "gone", "condition": "offline", "for_seconds": 600}]])
def test_a_backlog_in_aggregate_does_not_raise_and_resolve_every_window(
        runtime, flaky_sink, rules) -> None:
    """aggregate lags 20 minutes (windows 5 and 10): alert hears the device every minute,
    and neither raises nor resolves an offline alert for it."""
    rt = embedded(K_SINK=flaky_sink.url, ALERT_RULES=json.dumps(rules))
    apps = Apps()
    start = datetime.now(UTC) - timedelta(minutes=40)
    silent(rt, ["lagging"], timedelta(minutes=60))
    for minute in range(30):
        t = start + timedelta(minutes=minute)
        rec = record("lagging", t, {"temperature": 21.0}, f"lag-{minute}")
        assert apps.deliver("alert", rec).status_code in (200, 204)
        # aggregate records the report of 20 minutes before
        rt.store.collection(DEVICES).update_one(
            {"_id": "lagging"}, {"$max": {"last_seen": t - timedelta(minutes=20)}})
        sweep(apps, f"tick-{minute}", t + timedelta(seconds=30))
    assert alerts(apps, "lagging") == []
    assert get_runtime().store.collection(ALERT_STATE).find_one(
        {"_id": "lagging:offline"})["heard"] > start


def test_offline_state_ids_split_one_way_whatever_the_device_id() -> None:
    """`<device>:<rule>`: device ids may hold `:`, rule names may not, so no two (device,
    rule) pairs share an id, nor meet a threshold state (`<device>|rules`)."""
    from iot_telemetry.alerting import device_state_id
    from iot_telemetry.rules import OfflineRule, parse_rules

    with pytest.raises(ValueError, match="name"):
        parse_rules([{"name": "b:c", "condition": "offline"}])
    rules = [OfflineRule(n, "warning") for n in ("c", "b", "offline", "rules", "60s")]
    devices = ["a", "a:b", "a:b:c", "sweep", "sweep:offline", "sweep:offline:60s", "x.y-z"]
    ids = [offline.state_id(d, r) for d in devices for r in rules]
    assert len(set(ids)) == len(ids)
    assert not set(ids) & {device_state_id(d) for d in devices}


def test_the_out_of_scope_check_goes_on_across_instances(runtime, flaky_sink,
                                                         monkeypatch) -> None:
    """Its progress was the process's own: each tick on a new instance (a restart, another
    pod) started over at the first page and never got past it."""
    from tests.unit.test_rule_scopes import GROUPS, reading

    monkeypatch.setattr(alert_function, "SCOPE_CHECKS_PER_TICK", 2)
    rt = embedded(ALERT_RULES=json.dumps(GROUPS), K_SINK=flaky_sink.url)
    apps = Apps()
    t = datetime.now(UTC) - timedelta(minutes=30)
    kept, moved = [f"o-{i}" for i in range(3)], [f"p-{i}" for i in range(5)]
    for device in kept + moved:
        Registry(rt.store).add(device, metadata={"location": "greenhouse-b"})
        reading(apps, device, 27, t, f"{device}-0")
    narrowed = [GROUPS[0], {**GROUPS[1], "scope": {"prefix": "o-"}}]
    for tick in range(5):
        embedded(ALERT_RULES=json.dumps(narrowed), K_SINK=flaky_sink.url)  # another instance
        sweep(apps, f"tick-{tick}")
    assert [a["state"] for d in moved for a in alerts(apps, d)] == ["resolved"] * 5
    assert [a["state"] for d in kept for a in alerts(apps, d)] == ["open"] * 3
