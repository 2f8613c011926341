"""Rules per device group: scopes, overrides, their precedence and validation, and alerts of
rules that stop applying to a device (scope or metadata changed) being resolved."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from iot_telemetry.devices import Registry
from iot_telemetry.rules import parse_rule, verdict
from iot_telemetry.runtime import Runtime, get_runtime, set_runtime
from iot_telemetry.store import DEVICES
from tests.conftest import Apps, make_runtime, record
from tests.unit.test_alerting import sink_server  # noqa: F401 (fixture)
from tests.unit.test_offline_alerts import alerts, report, sweep

WARM = {"name": "warm", "metric": "temperature", "condition": ">", "threshold": 30,
        "clear_threshold": 28}


def rule(**fields: Any) -> Any:
    return parse_rule({**WARM, **fields})


# --- matching ---------------------------------------------------------------------------


@pytest.mark.parametrize(("scope", "device", "metadata", "applies"), [
    ({"prefix": "gh-"}, "gh-1", {}, True),
    ({"prefix": "gh-"}, "lab-gh-1", {}, False),
    ({"glob": "gh-*-a"}, "gh-7-a", {}, True),
    ({"glob": "gh-*-a"}, "gh-7-b", {}, False),
    ({"glob": "GH-*"}, "gh-1", {}, False),  # ids are case-sensitive
    ({"device": "dev-42"}, "dev-42", {}, True),
    ({"device": "dev-42"}, "dev-421", {}, False),
    ({"metadata": {"location": "greenhouse-2"}}, "x", {"location": "greenhouse-2"}, True),
    ({"metadata": {"location": "greenhouse-2"}}, "x", {"location": "greenhouse-3"}, False),
    ({"metadata": {"location": "greenhouse-2"}}, "x", {}, False),
    ({"metadata": {"floor": 2}}, "x", {"floor": 2.0}, True),
    ({"metadata": {"floor": 1}}, "x", {"floor": True}, False),  # 1 == True, not in metadata
    # every part given must hold
    ({"prefix": "gh-", "metadata": {"zone": "n"}}, "gh-1", {"zone": "n"}, True),
    ({"prefix": "gh-", "metadata": {"zone": "n"}}, "gh-1", {"zone": "s"}, False),
    ({"prefix": "gh-", "metadata": {"zone": "n"}}, "ab-1", {"zone": "n"}, False),
])
def test_a_scope_selects_devices_by_id_prefix_glob_and_metadata(
        scope: dict[str, Any], device: str, metadata: dict[str, Any], applies: bool) -> None:
    assert verdict(rule(scope=scope), device, metadata).applies is applies


def test_without_a_scope_a_rule_applies_to_every_device_as_before() -> None:
    v = verdict(rule(), "anything", {"location": "x"})
    assert (v.applies, v.reason, v.override, v.rule) == (True, "all devices", None, rule())


def test_the_reasons_say_what_matched_and_what_did_not() -> None:
    scoped = rule(scope={"prefix": "gh-", "metadata": {"location": "greenhouse-2"}})
    assert verdict(scoped, "gh-1", {"location": "greenhouse-2"}).reason == (
        "prefix 'gh-' and metadata location=greenhouse-2")
    assert verdict(scoped, "ab-1", {}).reason == (
        "scope prefix 'gh-' and metadata location=greenhouse-2: id does not start with "
        "'gh-'; metadata has no location, not location=greenhouse-2")


# --- precedence -------------------------------------------------------------------------


def test_the_first_matching_override_gives_its_values_the_rule_the_rest() -> None:
    r = rule(for_count=3, overrides=[
        {"match": {"device": "gh-9"}, "threshold": 40, "clear_threshold": 38},
        {"match": {"metadata": {"location": "greenhouse-2"}}, "threshold": 35},
        {"match": {"prefix": "gh-"}, "threshold": 33, "for_count": 1}])
    own = verdict(r, "gh-9", {"location": "greenhouse-2"})  # matches all three: the first wins
    assert (own.override, own.rule.threshold, own.rule.clear_threshold, own.rule.for_count) == (
        0, 40, 38, 3)
    assert own.changed == (("threshold", 30, 40), ("clear_threshold", 28, 38))
    group = verdict(r, "gh-1", {"location": "greenhouse-2"})
    # clear_threshold is the rule's (28): the override gave only the threshold
    assert (group.override, group.rule.threshold, group.rule.clear_threshold) == (1, 35, 28)
    prefix = verdict(r, "gh-1", {})
    assert (prefix.override, prefix.rule.threshold, prefix.rule.for_count) == (2, 33, 1)
    assert verdict(r, "ab-1", {}).rule == r  # no override matches: the rule's values


def test_an_overridden_threshold_moves_a_defaulted_clear_threshold_with_it() -> None:
    r = parse_rule({"name": "hot", "metric": "temperature", "condition": ">=", "threshold": 40,
                    "overrides": [{"match": {"device": "d"}, "threshold": 45}]})
    assert (verdict(r, "d", {}).rule.clear_threshold, r.clear_threshold) == (45, 40)


def test_offline_rules_take_a_scope_and_a_window_per_device() -> None:
    r = parse_rule({"name": "gone", "condition": "offline", "scope": {"glob": "gh-*"},
                    "overrides": [{"match": {"device": "gh-2"}, "for_seconds": 60}]})
    assert not verdict(r, "ab-1", {}).applies
    assert verdict(r, "gh-1", {}).rule.window(300) == 300
    assert verdict(r, "gh-2", {}).rule.window(300) == 60


def test_scoped_rules_round_trip_through_their_description() -> None:
    r = rule(scope={"glob": "gh-?", "metadata": {"location": "x"}},
             overrides=[{"match": {"device": "gh-1"}, "threshold": 31}])
    assert parse_rule(r.describe()) == r
    assert r.describe()["scope"] == {"glob": "gh-?", "metadata": {"location": "x"}}


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "problem"), [
    ({"scope": {}}, "rule.scope: must be an object with at least one of device, prefix, glob"),
    ({"scope": "gh-"}, "rule.scope: must be an object"),
    ({"scope": {"prefx": "gh-"}}, "rule.scope.prefx: unknown field"),
    ({"scope": {"prefix": "gh /"}}, "rule.scope.prefix: must match"),
    ({"scope": {"glob": "gh-{1,2}"}}, "rule.scope.glob: must match"),
    ({"scope": {"device": "a b"}}, "rule.scope.device: must be a device id"),
    ({"scope": {"metadata": {}}}, "rule.scope.metadata: must be a non-empty object"),
    ({"scope": {"metadata": {"location": ["a"]}}},
     "rule.scope.metadata.location: must be a string, a number or a boolean"),
    ({"overrides": {"dev-1": {"threshold": 35}}}, "rule.overrides: must be a non-empty list"),
    ({"overrides": [{"threshold": 35}]}, "rule.overrides[0].match: must be an object"),
    ({"overrides": [{"match": {"device": "d"}}]}, "rule.overrides[0]: overrides nothing"),
    ({"overrides": [{"match": {"device": "d"}, "severity": "critical"}]},
     "rule.overrides[0].severity: cannot be overridden (only threshold, clear_threshold, "
     "for_count, for_seconds)"),
    ({"overrides": [{"match": {"device": "d"}, "threshold": "35"}]},
     "rule.overrides[0].threshold: must be a finite number"),
    ({"overrides": [{"match": {"device": "d"}, "for_count": 0}]},
     "rule.overrides[0].for_count: must be an integer >= 1"),
    # the rule clears at 28: an override to 25 alone would clear above its threshold
    ({"overrides": [{"match": {"device": "d"}, "threshold": 25}]},
     "rule.overrides[0].clear_threshold: must not be above the threshold (hysteresis) "
     "(threshold 25, clear_threshold 28: give both)"),
])
def test_bad_scopes_and_overrides_are_refused_naming_the_problem(
        fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        rule(**fields)
    assert problem in str(caught.value)


def test_an_offline_override_may_only_change_the_window() -> None:
    with pytest.raises(ValueError) as caught:
        parse_rule({"name": "gone", "condition": "offline", "overrides": [
            {"match": {"device": "d"}, "threshold": 3},
            {"match": {"device": "e"}, "for_seconds": 0}]})
    assert str(caught.value) == (
        "rule.overrides[0].threshold: cannot be overridden (only for_seconds); "
        "rule.overrides[1].for_seconds: must be a number > 0")


def test_every_problem_of_every_rule_is_listed_at_start() -> None:
    from iot_telemetry.settings import ConfigError, Settings

    bad = [{**WARM, "scope": {"prefix": ""}}, {**WARM, "name": "w2", "overrides": []}]
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ({}, {"ALERT_RULES": json.dumps(bad)})
    assert "rules[0].scope.prefix" in str(caught.value)
    assert "rules[1].overrides" in str(caught.value)


# --- through the functions --------------------------------------------------------------

GROUPS = [
    {**WARM, "name": "warm-a", "scope": {"metadata": {"location": "greenhouse-a"}},
     "overrides": [{"match": {"device": "a-2"}, "threshold": 35, "clear_threshold": 33}]},
    {**WARM, "name": "warm-b", "threshold": 25, "clear_threshold": 24,
     "scope": {"metadata": {"location": "greenhouse-b"}}},
]


def reading(apps: Apps, device: str, value: float, at: datetime, event_id: str) -> Any:
    response = apps.deliver("alert", record(device, at, {"temperature": value}, event_id))
    assert response.status_code in (200, 204), response.get_json()
    return response


def rules_per_device_group(make: Callable[..., Runtime], sink: Any) -> None:
    """The scenario of the unit and the integration test (make: a runtime on some store)."""
    rt = make(ALERT_RULES=json.dumps(GROUPS), K_SINK=sink.url,
              ALERT_METADATA_CACHE_SECONDS="0.001")
    apps = Apps()
    registry = Registry(rt.store)
    for device, location in (("a-1", "greenhouse-a"), ("a-2", "greenhouse-a"),
                             ("b-1", "greenhouse-b")):
        registry.add(device, metadata={"location": location})
    t = datetime.now(UTC) - timedelta(minutes=30)
    # group A's threshold (30) for a-1: 31 raises warm-a, not warm-b (31 > 25 too)
    assert reading(apps, "a-1", 31, t, "a1-0").headers["ce-id"] == "a-1:warm-a:1/raised"
    # group B's (25) for b-1: 27 raises warm-b only
    assert reading(apps, "b-1", 27, t, "b1-0").headers["ce-id"] == "b-1:warm-b:1/raised"
    # a-2's own threshold (35): 33 raises nothing, 36 does, and the alert says 35
    assert reading(apps, "a-2", 33, t, "a2-0").status_code == 204
    raised = reading(apps, "a-2", 36, t + timedelta(seconds=10), "a2-1").get_json()
    assert (raised["rule"], raised["threshold"], raised["clear_threshold"]) == (
        "warm-a", 35, 33)
    assert [a["rule"] for a in alerts(apps, "a-1")] == ["warm-a"]
    assert [a["rule"] for a in alerts(apps, "b-1")] == ["warm-b"]
    # a-2 drops to 32: above the rule's clear threshold (28) but under its own (33): resolved
    resolved = reading(apps, "a-2", 32, t + timedelta(seconds=20), "a2-2").get_json()
    assert (resolved["state"], resolved["resolved_reason"]) == ("resolved", "cleared")

    # a-1 moves to greenhouse C: its next event resolves the warm-a alert, with an event
    with rt.store.guard():
        rt.store.collection(DEVICES).update_one(
            {"_id": "a-1"}, {"$set": {"metadata.location": "greenhouse-c"}})
    assert reading(apps, "a-1", 31, t + timedelta(seconds=10), "a1-1").status_code == 204
    [gone] = alerts(apps, "a-1")
    assert (gone["state"], gone["resolved_reason"], gone["resolved_value"]) == (
        "resolved", "rule_out_of_scope", None)
    [(headers, data)] = sink.received
    assert headers["ce-id"] == "a-1:warm-a:1/resolved" and headers["ce-type"] == "iot.alert.v1"
    assert (data["state"], data["resolved_reason"]) == ("resolved", "rule_out_of_scope")

    # the rules change so that group B is gone from warm-b's scope; b-1 sends nothing more:
    # the next tick resolves its alert (a new process: the rules are read at start)
    changed = [GROUPS[0], {**GROUPS[1], "scope": {"metadata": {"location": "greenhouse-z"}}}]
    make(ALERT_RULES=json.dumps(changed), K_SINK=sink.url)
    apps = Apps()
    assert sweep(apps, "tick-1").status_code == 204
    [gone] = alerts(apps, "b-1")
    assert (gone["state"], gone["resolved_reason"]) == ("resolved", "rule_out_of_scope")
    assert [h["ce-id"] for h, _ in sink.received] == [
        "a-1:warm-a:1/resolved", "b-1:warm-b:1/resolved"]
    assert sweep(apps, "tick-2").status_code == 204  # nothing left to resolve
    assert len(sink.received) == 2
    # back in scope later, a violation opens a new alert rather than updating the old one
    make(ALERT_RULES=json.dumps(GROUPS), K_SINK=sink.url)
    apps = Apps()
    assert reading(apps, "b-1", 28, t + timedelta(minutes=1), "b1-1").headers["ce-id"] == (
        "b-1:warm-b:2/raised")


def test_rules_per_device_group_through_the_alert_function(runtime, sink_server) -> None:  # noqa: F811
    def make(**env: str) -> Runtime:
        rt = make_runtime(**env)
        set_runtime(rt)
        return rt

    rules_per_device_group(make, sink_server)


def test_a_device_moving_out_in_and_out_of_a_group_has_each_alert_resolved(
        runtime, sink_server) -> None:  # noqa: F811
    # one scoped rule: in greenhouse A every rule applies to the device, elsewhere one does not
    rt = make_runtime(ALERT_RULES=json.dumps(GROUPS[:1]), K_SINK=sink_server.url,
                      ALERT_METADATA_CACHE_SECONDS="0.001")
    set_runtime(rt)
    registry = Registry(rt.store)
    registry.add("m-1", metadata={"location": "greenhouse-a"})
    apps = Apps()
    t = datetime.now(UTC) - timedelta(minutes=30)
    states = []
    for i, location in enumerate(("greenhouse-a", "greenhouse-c", "greenhouse-a",
                                  "greenhouse-c")):
        registry.set_metadata("m-1", {"location": location})
        reading(apps, "m-1", 31, t + timedelta(seconds=i), f"m{i}")
        states.append([(a["id"], a["state"]) for a in alerts(apps, "m-1")])
    assert states == [
        [("m-1:warm-a:1", "open")],
        [("m-1:warm-a:1", "resolved")],
        [("m-1:warm-a:2", "open"), ("m-1:warm-a:1", "resolved")],
        [("m-1:warm-a:2", "resolved"), ("m-1:warm-a:1", "resolved")]]
    assert [h["ce-id"] for h, _ in sink_server.received] == [
        "m-1:warm-a:1/resolved", "m-1:warm-a:2/resolved"]


def test_an_offline_rule_scoped_to_a_group_sweeps_with_its_windows(
        runtime, sink_server) -> None:  # noqa: F811
    rules = [{"name": "gh-offline", "condition": "offline", "for_seconds": 600,
              "scope": {"prefix": "gh-"},
              "overrides": [{"match": {"device": "gh-2"}, "for_seconds": 60},
                            {"match": {"device": "gh-long"}, "for_seconds": 3 * 3600}]}]
    set_runtime(make_runtime(K_SINK=sink_server.url, ALERT_RULES=json.dumps(rules)))
    apps = Apps()
    wall = datetime.now(UTC)
    for device, silent in (("gh-1", 120), ("gh-2", 120), ("ab-1", 900), ("gh-3", 900),
                           ("gh-long", 3 * 3600 + 5 * 60)):
        report(apps, device, silent, f"{device}-0")
    # a tick 15 minutes ago: gh-long had been silent 2 h 50 min then, under its 3 h
    assert sweep(apps, "tick-0", wall - timedelta(minutes=15)).status_code in (200, 204)
    assert alerts(apps, "gh-long") == []
    sweep(apps, "tick-1", wall)
    windows = {d: [(a["rule"], a["window_seconds"]) for a in alerts(apps, d)]
               for d in ("gh-1", "gh-2", "ab-1", "gh-3", "gh-long")}
    assert windows == {"gh-1": [],  # 2 min, under the group's 10 min
                       "gh-2": [("gh-offline", 60)],  # its own 1 min
                       "ab-1": [],  # not in the group
                       "gh-3": [("gh-offline", 600)],
                       # the short windows' sweeps went on past its last report long ago:
                       # its window has a sweep of its own
                       "gh-long": [("gh-offline", 3 * 3600)]}


def test_get_rules_for_a_device_gives_its_own_thresholds(runtime) -> None:
    rt = make_runtime(ALERT_RULES=json.dumps(GROUPS))
    set_runtime(rt)
    Registry(rt.store).add("a-2", metadata={"location": "greenhouse-a"})
    apps = Apps()
    body = apps.query.get("/rules?device_id=a-2").get_json()
    assert body["device_id"] == "a-2"
    [warm] = body["rules"]
    assert (warm["name"], warm["threshold"], warm["clear_threshold"]) == ("warm-a", 35, 33)
    assert warm["matched_by"] == "metadata location=greenhouse-a"
    assert warm["overridden"] == {"threshold": 30, "clear_threshold": 28}
    assert body["not_applying"] == [{"name": "warm-b", "reason": (
        "scope metadata location=greenhouse-b: metadata has location=greenhouse-a, "
        "not location=greenhouse-b")}]
    # an unknown device has no metadata: the metadata-scoped rules do not apply
    assert apps.query.get("/rules?device_id=nobody").get_json()["rules"] == []
    everything = apps.query.get("/rules").get_json()["rules"]
    assert [r["scope"] for r in everything] == [
        {"metadata": {"location": "greenhouse-a"}}, {"metadata": {"location": "greenhouse-b"}}]
    assert apps.query.get("/rules?device_id=a%20b").status_code == 400


def test_an_offline_rule_scoped_by_metadata_raises_for_that_group_only(
        runtime, sink_server) -> None:  # noqa: F811
    rules = [{"name": "gone", "condition": "offline",
              "scope": {"metadata": {"location": "greenhouse-a"}}}]
    rt = make_runtime(K_SINK=sink_server.url, ALERT_RULES=json.dumps(rules))
    set_runtime(rt)
    Registry(rt.store).add("m-1", metadata={"location": "greenhouse-a"})
    Registry(rt.store).add("m-2", metadata={"location": "greenhouse-b"})
    apps = Apps()
    report(apps, "m-1", 900, "m1")
    report(apps, "m-2", 900, "m2")
    assert sweep(apps, "tick").headers["ce-id"] == "m-1:gone:1/raised"
    assert alerts(apps, "m-2") == []


def test_ticks_check_the_open_alerts_of_scoped_rules_a_page_at_a_time(
        runtime, sink_server, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from iot_telemetry import alert

    def start(rules: list[dict[str, Any]]) -> Apps:
        set_runtime(make_runtime(ALERT_RULES=json.dumps(rules), K_SINK=sink_server.url))
        return Apps()

    monkeypatch.setattr(alert, "SCOPE_CHECKS_PER_TICK", 2)
    apps = start(GROUPS)
    t = datetime.now(UTC) - timedelta(minutes=30)
    kept, moved = [f"o-{i}" for i in range(3)], [f"p-{i}" for i in range(5)]
    for device in kept + moved:
        Registry(get_runtime().store).add(device, metadata={"location": "greenhouse-b"})
        reading(apps, device, 27, t, f"{device}-0")
    # warm-b now applies to o-* only: the o-* alerts (first in id order) stay open, and
    # each tick goes on after the last alert the previous one checked
    apps = start([GROUPS[0], {**GROUPS[1], "scope": {"prefix": "o-"}}])
    resolved = []
    for tick in range(5):
        sweep(apps, f"tick-{tick}")
        resolved.append(sum(a["state"] == "resolved" for d in moved for a in alerts(apps, d)))
    assert resolved == [0, 1, 3, 5, 5]
    assert [a["state"] for d in kept for a in alerts(apps, d)] == ["open"] * 3
    assert len(sink_server.received) == 5


def test_an_offline_alert_of_a_rule_no_longer_applying_is_resolved_by_the_next_tick(
        runtime, sink_server) -> None:  # noqa: F811
    rule = {"name": "gh-gone", "condition": "offline", "scope": {"prefix": "gh-"}}
    set_runtime(make_runtime(K_SINK=sink_server.url, ALERT_RULES=json.dumps([rule])))
    apps = Apps()
    report(apps, "gh-5", 900, "g0")
    assert sweep(apps, "tick-1").headers["ce-id"] == "gh-5:gh-gone:1/raised"
    # the device stays silent; the rule now covers gh-1* only
    set_runtime(make_runtime(K_SINK=sink_server.url, ALERT_RULES=json.dumps(
        [{**rule, "scope": {"prefix": "gh-1"}}])))
    apps = Apps()
    assert sweep(apps, "tick-2").status_code == 204
    [alert] = alerts(apps, "gh-5")
    assert (alert["state"], alert["resolved_reason"]) == ("resolved", "rule_out_of_scope")
    assert [h["ce-id"] for h, _ in sink_server.received] == ["gh-5:gh-gone:1/resolved"]
    assert sweep(apps, "tick-3").status_code == 204  # out of scope: not raised again
    assert len(alerts(apps, "gh-5")) == 1
