"""Alert rules: hysteresis, consecutive counts, durations, lifecycle, redelivery, replies."""

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer

import pytest

from iot_telemetry.alerting import AlertBook, RuleState, evaluate
from iot_telemetry.rules import AlertRule, parse_rule
from iot_telemetry.telemetry import DataPoint
from tests.conftest import Apps, count_calls, iso, make_runtime, record

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
HIGH = AlertRule("t-high", "temperature", ">", 30.0, "warning", 28.0, for_count=1)


def pts(values, metric="temperature", start=T0, every=10):
    return [DataPoint(metric, start + timedelta(seconds=every * i), float(v))
            for i, v in enumerate(values)]


def kinds(effects):
    return [e.kind for e in effects]


def test_hysteresis_does_not_flap_around_the_threshold() -> None:
    state, effects = evaluate(HIGH, "d", RuleState(), pts([29, 31, 29.5, 30.5, 29, 31, 27.9, 29]))
    assert kinds(effects) == ["raised", "updated", "updated", "resolved"]
    assert not state.firing


def test_consecutive_count_before_raising() -> None:
    rule = AlertRule("h", "humidity", ">", 80, "warning", 75, for_count=3)
    _, effects = evaluate(rule, "d", RuleState(), pts([81, 82, 70, 81, 82, 83], "humidity"))
    raised = [e for e in effects if e.kind == "raised"]
    assert len(raised) == 1
    assert raised[0].count == 3
    assert raised[0].first_seen == T0 + timedelta(seconds=30)


def test_duration_before_raising() -> None:
    rule = AlertRule("h", "temperature", ">", 30, "critical", 30, for_seconds=60)
    _, effects = evaluate(rule, "d", RuleState(), pts([31] * 6))  # 50 s of violation
    assert effects == []
    _, effects = evaluate(rule, "d", RuleState(), pts([31] * 7))  # 60 s
    assert kinds(effects) == ["raised"]


def test_falling_rule_and_peak() -> None:
    rule = AlertRule("low", "humidity", "<", 20, "warning", 25)
    _, effects = evaluate(rule, "d", RuleState(), pts([19, 15, 17, 22, 26], "humidity"))
    assert kinds(effects) == ["raised", "updated", "updated", "resolved"]
    assert effects[-1].peak == 15


def test_readings_already_evaluated_are_skipped() -> None:
    state, _ = evaluate(HIGH, "d", RuleState(), pts([31, 32]))
    again, second = evaluate(HIGH, "d", state, pts([31, 32]))
    assert second == [] and again == state
    late, effects = evaluate(HIGH, "d", state, pts([10], start=T0 - timedelta(minutes=1)))
    assert effects == [] and late.firing


def test_rule_validation_requires_hysteresis_on_the_right_side() -> None:
    with pytest.raises(ValueError, match="clear_threshold"):
        parse_rule({"name": "x", "metric": "t", "condition": ">", "threshold": 10,
                    "clear_threshold": 11})


class SinkServer:
    """A stand-in Broker ingress (K_SINK) that records posted events."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(({k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/"


@pytest.fixture
def sink_server():
    server = SinkServer()
    yield server
    server.server.shutdown()


def readings(device, values, start, metric="temperature", prefix="e"):
    return [record(device, start + timedelta(seconds=10 * i), {metric: v}, f"{prefix}{i}")
            for i, v in enumerate(values)]


def test_raise_and_resolve_are_replied_as_alert_events(runtime, now, sink_server) -> None:
    from iot_telemetry.runtime import set_runtime

    set_runtime(make_runtime(K_SINK=sink_server.url))
    apps = Apps()
    # temperature-high needs 3 readings over 30; 41 also crosses temperature-critical (>= 40)
    recs = readings("dev-1", [31, 32, 41, 33, 20], now)
    replies = []
    for rec in recs:
        response = apps.deliver("alert", rec)
        assert response.status_code in (200, 204)
        if response.status_code == 200:
            replies.append((response.headers, response.get_json()))
    assert [h["ce-type"] for h, _ in replies] == ["iot.alert.v1"] * 3
    assert [(d["rule"], d["state"]) for _, d in replies] == [
        ("temperature-critical", "raised"), ("temperature-critical", "resolved"),
        ("temperature-high", "resolved")]
    assert replies[0][0]["ce-subject"] == "dev-1"
    assert replies[0][0]["ce-id"] == "dev-1:temperature-critical:1/raised"
    # the first change of one event (high raised at 41) went to the Broker ingress before
    # the reply carrying the last
    [(headers, data)] = sink_server.received
    assert (data["rule"], data["state"], data["severity"]) == (
        "temperature-high", "raised", "warning")
    assert headers["ce-type"] == "iot.alert.v1"
    assert headers["ce-id"] == "dev-1:temperature-high:1/raised"
    alerts = apps.query.get("/alerts?device_id=dev-1").get_json()["alerts"]
    assert {(a["rule"], a["state"]) for a in alerts} == {
        ("temperature-high", "resolved"), ("temperature-critical", "resolved")}
    high = next(a for a in alerts if a["rule"] == "temperature-high")
    assert high["count"] == 4 and high["peak"] == 41.0


def test_one_open_alert_per_device_metric_rule_under_duplicates(apps, now) -> None:
    recs = readings("dev-2", [31, 32, 33, 34, 35], now)
    for rec in recs + recs + recs[::-1]:
        assert apps.deliver("alert", rec).status_code in (200, 204)
    alerts = apps.query.get("/alerts?device_id=dev-2").get_json()["alerts"]
    assert len(alerts) == 1
    assert alerts[0]["count"] == 5 and alerts[0]["state"] == "open"
    assert alerts[0]["peak"] == 35.0


def test_concurrent_instances_raise_once(apps, now) -> None:
    """Four instances each get the device's whole stream in order (as after a rebalance,
    when a partition's events are delivered again elsewhere), interleaved with each other.
    (Out of order, a reading older than one already evaluated is ignored by design, so a
    scrambled stream could legitimately raise nothing: alert's Trigger is ordered.)"""
    recs = readings("dev-3", [31, 32, 33, 34, 35, 36], now)
    codes: list[int] = []

    def worker(chunk):
        for rec in chunk:
            codes.append(apps.deliver("alert", rec).status_code)

    threads = [threading.Thread(target=worker, args=(recs,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alerts = apps.query.get("/alerts?device_id=dev-3").get_json()["alerts"]
    assert set(codes) <= {200, 204}
    assert len(alerts) == 1 and alerts[0]["count"] == 6  # every reading, once


def test_a_crash_before_effects_then_redelivery_replies_again(apps, runtime, now,
                                                              monkeypatch) -> None:
    recs = readings("dev-4", [31, 32, 33], now)
    apps.deliver("alert", recs[0])
    apps.deliver("alert", recs[1])
    original = AlertBook._write_effects

    def crash(self, *args, **kwargs):
        raise RuntimeError("killed after the state was committed")

    monkeypatch.setattr(AlertBook, "_write_effects", crash)
    assert apps.deliver("alert", recs[2]).status_code == 500
    assert apps.query.get("/alerts?device_id=dev-4").get_json()["alerts"] == []
    monkeypatch.setattr(AlertBook, "_write_effects", original)
    response = apps.deliver("alert", recs[2])
    assert response.status_code == 200
    assert response.get_json()["state"] == "raised"
    [alert] = apps.query.get("/alerts?device_id=dev-4").get_json()["alerts"]
    assert alert["state"] == "open" and alert["count"] == 3


def test_acknowledge_lifecycle(apps, now) -> None:
    recs = readings("dev-5", [31, 32, 33], now)
    for rec in recs:
        apps.deliver("alert", rec)
    [alert] = apps.query.get("/alerts?state=open&device_id=dev-5").get_json()["alerts"]
    url = f"/alerts/{alert['id']}/ack"
    acked = apps.query.post(url, json={"by": "ops@example.com"})
    assert acked.status_code == 200
    assert acked.get_json()["state"] == "acknowledged"
    assert acked.get_json()["acknowledged_by"] == "ops@example.com"
    assert apps.query.post(url).status_code == 200  # repeating is harmless
    assert apps.query.post(url).get_json()["acknowledged_by"] == "ops@example.com"
    # readings clear: acknowledged -> resolved
    apps.deliver("alert", record("dev-5", now + timedelta(minutes=5), {"temperature": 20}, "z"))
    assert apps.query.get(f"/alerts/{alert['id']}").get_json()["state"] == "resolved"
    assert apps.query.post(url).status_code == 409
    assert apps.query.post("/alerts/nope/ack").status_code == 404
    assert apps.query.post(url, json={"by": {"$ne": 1}}).status_code == 400


def test_reading_exactly_at_the_threshold_of_ge_rule_does_not_flap() -> None:
    # clear_threshold defaults to the threshold: 40.0 violates `>= 40` and must not also clear
    rule = parse_rule({"name": "crit", "metric": "temperature", "condition": ">=",
                       "threshold": 40})
    state, effects = evaluate(rule, "d", RuleState(), pts([40.0] * 6))
    assert kinds(effects) == ["raised"] + ["updated"] * 5 and state.firing
    _, effects = evaluate(rule, "d", state, pts([39.9], start=T0 + timedelta(minutes=5)))
    assert kinds(effects) == ["resolved"]
    low = parse_rule({"name": "low", "metric": "humidity", "condition": "<=", "threshold": 20})
    state, effects = evaluate(low, "d", RuleState(), pts([20.0] * 6, "humidity"))
    assert kinds(effects) == ["raised"] + ["updated"] * 5 and state.firing
    # strict conditions keep clearing at the threshold itself
    assert kinds(evaluate(HIGH, "d", RuleState(), pts([31, 28]))[1]) == ["raised", "resolved"]


def test_reading_with_the_time_of_one_already_evaluated_counts_once(apps, now) -> None:
    # temperature-high needs 3 readings over 30; two events share one millisecond
    same = [record("dev-6", now, {"temperature": v}, f"tie{i}") for i, v in enumerate([31, 32])]
    later = record("dev-6", now + timedelta(seconds=10), {"temperature": 33}, "tie2")
    for rec in [same[0], same[1], same[1], same[0]]:  # redeliveries must not count
        assert apps.deliver("alert", rec).status_code == 204
    assert apps.query.get("/alerts?device_id=dev-6").get_json()["alerts"] == []
    response = apps.deliver("alert", later)
    assert response.status_code == 200 and response.get_json()["state"] == "raised"
    [alert] = apps.query.get("/alerts?device_id=dev-6").get_json()["alerts"]
    assert alert["count"] == 3 and alert["first_seen"] == iso(now)


def test_redelivery_after_a_later_event_answers_the_same_alert_event(apps, now) -> None:
    recs = readings("dev-7", [31, 32, 33, 34, 35], now)
    for rec in recs[:2]:
        assert apps.deliver("alert", rec).status_code == 204
    first = apps.deliver("alert", recs[2])
    assert first.status_code == 200
    for rec in recs[3:]:  # later events move the (device, rule) state on
        apps.deliver("alert", rec)
    again = apps.deliver("alert", recs[2])  # the reply to recs[2] was lost: redelivered
    assert again.status_code == 200
    assert again.headers["ce-id"] == first.headers["ce-id"] == "dev-7:temperature-high:1/raised"
    assert again.get_json()["state"] == "raised"
    [alert] = apps.query.get("/alerts?device_id=dev-7").get_json()["alerts"]
    assert alert["count"] == 5 and alert["last_value"] == 35.0  # nothing counted twice


def test_another_instance_answers_a_redelivery_from_the_stored_state(runtime, now) -> None:
    """The raises and resolves of recent events are in the store, not only in the cache of
    the instance that wrote them: a cold instance answers a redelivery the same way, after
    later events that changed no alert and after one that resolved it."""
    from iot_telemetry.alerting import StateCache
    from iot_telemetry.settings import Settings

    rules = [r for r in Settings.from_environ({}).rules if isinstance(r, AlertRule)]
    recs = [_validated(r) for r in readings("dev-r", [31, 32, 33, 34, 35, 20, 21], now)]
    warm = AlertBook(runtime.store, rules, cache=StateCache())
    answers = [warm.handle(event).transitions for event in recs]
    assert [t["transition"] for t in answers[2]] == ["raised"]
    assert [t["transition"] for t in answers[5]] == ["resolved"]
    cold = AlertBook(runtime.store, rules, cache=StateCache(0))
    for i in (2, 5):
        again = cold.handle(recs[i])
        assert [(t["transition"], t["alert"]["id"]) for t in again.transitions] == [
            (t["transition"], t["alert"]["id"]) for t in answers[i]]


@pytest.mark.parametrize(("condition", "values", "peak"), [(">", (41.0, 45.0), 45.0),
                                                          ("<", (15.0, 10.0), 10.0)])
def test_a_late_applied_raise_keeps_the_newer_peak_and_last_value(
        runtime, condition, values, peak) -> None:
    from iot_telemetry.alerting import Effect

    rule = AlertRule("r", "temperature", condition, 30.0 if condition == ">" else 20.0,
                     "warning", 30.0 if condition == ">" else 20.0)
    book = AlertBook(runtime.store, [rule])
    t3, t4 = T0, T0 + timedelta(seconds=10)
    raised = Effect("raised", "d:r:1", t3, values[0], 1, values[0], first_seen=t3, rule="r")
    updated = Effect("updated", "d:r:1", t4, values[1], 2, values[1], rule="r")
    book._apply("d", [raised, updated])
    book._apply("d", [raised])  # another instance, late
    doc = runtime.store.collection("alerts").find_one({"_id": "d:r:1"})
    assert (doc["peak"], doc["last_value"], doc["count"]) == (peak, values[1], 2)
    assert doc["state"] == "open"


class KeepAliveSink:
    """A Broker ingress stand-in that keeps connections open (HTTP/1.1) and counts them."""

    def __init__(self) -> None:
        self.connections = 0
        self.posts = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                sink.connections += 1

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                sink.posts += 1
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/"


def test_second_alert_events_reuse_one_connection_to_the_broker_ingress(runtime, now) -> None:
    from iot_telemetry.runtime import set_runtime

    sink = KeepAliveSink()
    try:
        set_runtime(make_runtime(K_SINK=sink.url))
        apps = Apps()
        # 41 after two readings over 30 raises temperature-high and -critical at once: the
        # second raise of each device's third event goes to K_SINK
        for device in ("dev-ka", "dev-kb", "dev-kc"):
            for rec in readings(device, [31, 32, 41], now):
                assert apps.deliver("alert", rec).status_code in (200, 204)
        assert (sink.posts, sink.connections) == (3, 1)
    finally:
        sink.server.shutdown()


def test_a_second_alert_event_without_k_sink_fails_the_delivery_instead_of_vanishing(
        apps, now) -> None:
    recs = readings("dev-8", [31, 32, 41], now)
    for rec in recs[:2]:
        assert apps.deliver("alert", rec).status_code == 204
    failed = apps.deliver("alert", recs[2])  # two raises, one reply, no K_SINK
    assert failed.status_code == 503 and "K_SINK" in failed.get_json()["message"]


def test_alerts_of_a_removed_rule_are_resolved_with_a_reason(runtime, now, sink_server) -> None:
    from iot_telemetry.rules import default_rules
    from iot_telemetry.runtime import set_runtime

    rules = [r.describe() for r in default_rules()]
    set_runtime(make_runtime(K_SINK=sink_server.url))
    apps = Apps()
    for rec in readings("dev-9", [31, 32, 33], now):
        apps.deliver("alert", rec)
    [alert] = apps.query.get("/alerts?device_id=dev-9").get_json()["alerts"]
    assert (alert["rule"], alert["state"]) == ("temperature-high", "open")
    # the rule is renamed: a new alert process starts with the new rules
    renamed = [{**r, "name": "temperature-warm"} if r["name"] == "temperature-high" else r
               for r in rules]
    set_runtime(make_runtime(K_SINK=sink_server.url, ALERT_RULES=json.dumps(renamed)))
    apps.deliver("alert", record("dev-other", now, {"humidity": 50}, "h0"))
    gone = apps.query.get(f"/alerts/{alert['id']}").get_json()
    assert (gone["state"], gone["resolved_reason"]) == ("resolved", "rule_removed")
    assert gone["resolved_at"] is not None and gone["resolved_value"] is None
    [(headers, data)] = sink_server.received
    assert headers["ce-id"] == f"{alert['id']}/resolved"
    assert (data["state"], data["resolved_reason"]) == ("resolved", "rule_removed")
    # the OpenAPI description knows the field
    schema = apps.query.get("/openapi.json").get_json()["components"]["schemas"]["Alert"]
    assert schema["properties"]["resolved_reason"]["enum"] == [
        "cleared", "rule_removed", "rule_out_of_scope", None]
    # the rule comes back under its old name: a new violation opens a new alert
    set_runtime(make_runtime(K_SINK=sink_server.url))
    later = readings("dev-9", [34, 35, 36], now + timedelta(minutes=5), prefix="b")
    for rec in later:
        apps.deliver("alert", rec)
    alerts = apps.query.get("/alerts?device_id=dev-9").get_json()["alerts"]
    assert [(a["id"], a["state"]) for a in alerts] == [
        ("dev-9:temperature-high:2", "open"), ("dev-9:temperature-high:1", "resolved")]


def test_an_alert_resolved_by_readings_says_cleared(apps, now) -> None:
    for rec in readings("dev-10", [31, 32, 33, 20], now):
        apps.deliver("alert", rec)
    [alert] = apps.query.get("/alerts?device_id=dev-10").get_json()["alerts"]
    assert (alert["state"], alert["resolved_reason"]) == ("resolved", "cleared")


def _validated(rec):
    from iot_telemetry import events as ev
    from iot_telemetry.telemetry import validate

    raw = ev.from_kafka(rec.key, rec.headers, rec.value)
    return validate(raw, datetime.now(UTC), None)


def test_state_cache_saves_the_reads_and_two_instances_stay_exact(runtime, now,
                                                                  monkeypatch) -> None:
    """Each instance remembers the states it wrote, so the next event reads none back; when
    the other instance wrote meanwhile, the compare-and-swap refuses the stale write and the
    state is read again: the alerts are those of one instance handling every event."""
    from iot_telemetry.alerting import StateCache
    from iot_telemetry.settings import Settings

    rules = Settings.from_environ({}).rules
    values = [31, 32, 33, 34, 35, 20, 21, 31, 32, 33, 41, 29, 27]
    recs = [_validated(r) for r in readings("dev-c", values, now)]
    reads = count_calls(monkeypatch, runtime.store, "alert_state", ["find_one"])
    one = AlertBook(runtime.store, rules, cache=StateCache())
    one.handle(recs[0])
    before = reads["n"]
    one.handle(recs[1])
    assert reads["n"] == before  # the state came from the cache

    a, b = (AlertBook(runtime.store, rules, cache=StateCache()) for _ in range(2))
    for i, event in enumerate(recs[2:]):
        (a if i % 3 else b).handle(event)  # b's cache is stale for most of its events
    got = {d["_id"]: (d["state"], d["count"], d["peak"])
           for d in runtime.store.collection("alerts").find({})}

    from iot_telemetry import store as store_module

    store_module.reset_embedded()
    fresh = make_runtime()
    single = AlertBook(fresh.store, rules)
    for event in recs:
        single.handle(event)
    want = {d["_id"]: (d["state"], d["count"], d["peak"])
            for d in fresh.store.collection("alerts").find({})}
    assert got == want and want


def test_one_state_write_per_event_whatever_the_number_of_rules(runtime, now,
                                                                monkeypatch) -> None:
    """An event of temperature and humidity moves four default rules; their states are one
    document, written once (it was one compare-and-swap per rule)."""
    from iot_telemetry.alerting import StateCache
    from iot_telemetry.settings import Settings

    rules = [r for r in Settings.from_environ({}).rules if isinstance(r, AlertRule)]
    recs = [_validated(record("dev-w", now + timedelta(seconds=10 * i),
                              {"temperature": 20.0 + i, "humidity": 50.0 + i}, f"w{i}"))
            for i in range(5)]
    book = AlertBook(runtime.store, rules, cache=StateCache())
    writes = count_calls(monkeypatch, runtime.store, "alert_state",
                         ["insert_one", "update_one", "replace_one", "find_one_and_update"])
    for event in recs:
        assert book.handle(event).changed
    assert writes["n"] == len(recs)
    # a redelivery changes nothing and writes nothing
    assert book.handle(recs[2]).duplicate and writes["n"] == len(recs)


def test_an_upgrade_keeps_the_per_rule_states_of_earlier_versions(runtime, now) -> None:
    """A device whose state is still in the per-rule documents of earlier versions
    (`<device>:<rule>`) goes on from it: its open alert (episode 3) is the one resolved,
    no new episode 1 is raised, and its last event is still recognised as a redelivery."""
    from iot_telemetry.alerting import device_state_id

    rule = AlertRule("t-high", "temperature", ">", 30.0, "warning", 28.0)
    runtime.store.collection("alerts").insert_one({
        "_id": "dev-u:t-high:3", "device_id": "dev-u", "metric": "temperature",
        "rule": "t-high", "severity": "warning", "condition": ">", "threshold": 30.0,
        "clear_threshold": 28.0, "state": "open", "raised_at": now, "first_seen": now,
        "last_seen": now, "last_value": 35.0, "count": 1, "peak": 35.0})
    runtime.store.collection("alert_state").insert_one({
        "_id": "dev-u:t-high", "device_id": "dev-u", "rule": "t-high", "rev": 7,
        "applied": True, "event": "old", "effects": [],
        "recent": [{"event": "src\x1fold-raise", "effects": [{
            "kind": "raised", "alert_id": "dev-u:t-high:3", "time": now, "value": 35.0,
            "count": 1, "peak": 35.0, "first_seen": now}]}],
        "state": {"firing": True, "streak": 0, "streak_since": None, "streak_peak": None,
                  "last_time": now, "episode": 3, "count": 1, "peak": 35.0,
                  "last_events": ["old"]}})
    book = AlertBook(runtime.store, [rule])
    cool = _validated(record("dev-u", now + timedelta(seconds=10), {"temperature": 20.0}, "c1"))
    outcome = book.handle(cool)
    assert [(t["transition"], t["alert"]["id"]) for t in outcome.transitions] == [
        ("resolved", "dev-u:t-high:3")]
    assert runtime.store.collection("alerts").count_documents({}) == 1
    doc = runtime.store.collection("alert_state").find_one({"_id": device_state_id("dev-u")})
    assert doc["rules"]["t-high"]["state"]["episode"] == 3
    assert any(r["event"] == "src\x1fold-raise" for r in doc["recent"])


def test_an_event_of_many_readings_writes_one_update_per_open_alert(runtime, now,
                                                                   monkeypatch) -> None:
    """Ten violating readings in one event move an open alert ten times; one statement, the
    newest, says it all: the alert ends with the count, peak and last value of all ten."""
    from iot_telemetry.alerting import StateCache

    rule = AlertRule("t-high", "temperature", ">", 30.0, "warning", 28.0, for_count=1)
    book = AlertBook(runtime.store, [rule], cache=StateCache())
    book.handle(_validated(record("dev-m", now, {"temperature": 31.0}, "m0")))
    statements: list[int] = []
    bulk = type(runtime.store).bulk

    def counting(store, name, ops, *args, **kwargs):
        statements.append(len(ops))
        return bulk(store, name, ops, *args, **kwargs)

    monkeypatch.setattr(type(runtime.store), "bulk", counting)
    values = [33.0, 36.0, 32.0, 35.0, 34.0, 39.0, 31.0, 32.5, 33.5, 34.5]
    samples = [(now + timedelta(seconds=i + 1), {"temperature": v})
               for i, v in enumerate(values[:-1])]
    book.handle(_validated(record("dev-m", now + timedelta(seconds=10),
                                  {"temperature": values[-1]}, "m1", samples)))
    assert statements == [1]
    doc = runtime.store.collection("alerts").find_one({"_id": "dev-m:t-high:1"})
    assert (doc["count"], doc["peak"], doc["last_value"], doc["state"]) == (
        11, 39.0, 34.5, "open")


def _stream(devices: int, values: list[float], now: datetime) -> list:
    """Each device's readings in order, the devices interleaved as partitions deliver them."""
    return [_validated(record(f"dev-b{d}", now + timedelta(seconds=10 * i),
                              {"temperature": v + d, "humidity": 50.0 + v / 10}, f"b{d}-{i}"))
            for i, v in enumerate(values) for d in range(devices)]


def _alerts_of(store) -> dict:
    return {d["_id"]: (d["state"], d["count"], d["peak"], d["last_value"])
            for d in store.collection("alerts").find({})}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_group_commit_answers_as_one_event_at_a_time(runtime, now, seed) -> None:
    """Events handled in batches (a device twice in one batch included) leave the alerts
    and answer the alert events that handling them one at a time does."""
    import random

    from iot_telemetry import store as store_module
    from iot_telemetry.alerting import StateCache
    from iot_telemetry.settings import Settings

    rules = [r for r in Settings.from_environ({}).rules if isinstance(r, AlertRule)]
    values = [31, 32, 33, 34, 41, 42, 29, 27, 20, 31, 32, 33, 35, 26]
    events = _stream(4, values, now)
    book = AlertBook(runtime.store, rules, cache=StateCache())
    rng = random.Random(seed)
    got, i = [], 0
    while i < len(events):
        size = rng.randint(1, 7)
        got += book.handle_batch([(book, e) for e in events[i:i + size]])
        i += size
    got_alerts = _alerts_of(runtime.store)

    store_module.reset_embedded()
    fresh = make_runtime()
    single = AlertBook(fresh.store, rules, cache=StateCache())
    want = [single.handle(e) for e in events]
    assert got_alerts == _alerts_of(fresh.store) and got_alerts
    assert [[(t["transition"], t["alert"]["id"], t["alert"]["count"]) for t in o.transitions]
            for o in got] == [
        [(t["transition"], t["alert"]["id"], t["alert"]["count"]) for t in o.transitions]
        for o in want]
    assert [(o.changed, o.duplicate) for o in got] == [(o.changed, o.duplicate) for o in want]


def test_group_commit_a_refused_swap_goes_the_one_event_way(runtime, now) -> None:
    """Another instance wrote one device's state since this one cached it: that event's
    compare-and-swap is refused and it is handled again alone; the others of the batch
    land; the alerts are those of one instance handling every event."""
    from iot_telemetry import store as store_module
    from iot_telemetry.alerting import StateCache
    from iot_telemetry.settings import Settings

    rules = [r for r in Settings.from_environ({}).rules if isinstance(r, AlertRule)]
    values = [31, 32, 33, 34, 35, 27]
    events = _stream(3, values, now)
    a, b = (AlertBook(runtime.store, rules, cache=StateCache()) for _ in range(2))
    per_step = 3  # one event of each device
    for step in range(len(values)):
        batch = events[step * per_step:(step + 1) * per_step]
        if step == 2:  # b handles dev-b0's event: a's cached state of it is now stale
            b.handle(batch[0])
            results = a.handle_batch([(a, e) for e in batch[1:]])
            assert all(not isinstance(r, Exception) for r in results)
            results = a.handle_batch([(a, e) for e in events[(step + 1) * per_step:
                                                             (step + 2) * per_step]])
            assert all(not isinstance(r, Exception) for r in results)
            break
        a.handle_batch([(a, e) for e in batch])
    for e in events[(step + 2) * per_step:]:
        a.handle_batch([(a, e)])
    got = _alerts_of(runtime.store)

    store_module.reset_embedded()
    fresh = make_runtime()
    single = AlertBook(fresh.store, rules)
    for e in events:
        single.handle(e)
    assert got == _alerts_of(fresh.store) and got


def test_group_commit_a_failure_fails_only_its_own_event(runtime, now, monkeypatch) -> None:
    """The store refuses one device's compare-and-swap, alone too: that event fails, the
    others of the batch are handled."""
    from iot_telemetry.alerting import StateCache
    from iot_telemetry.errors import DependencyUnavailable
    from iot_telemetry.settings import Settings
    from iot_telemetry.store import BulkOutcome

    rules = [r for r in Settings.from_environ({}).rules if isinstance(r, AlertRule)]
    events = _stream(3, [31, 32, 33, 34], now)
    book = AlertBook(runtime.store, rules, cache=StateCache())
    book.handle_batch([(book, e) for e in events[:3]])  # every device has its state now
    bulk = type(runtime.store).bulk
    update_one = type(runtime.store.collection("alert_state")).update_one

    def refusing_bulk(store, name, ops, *args, **kwargs):
        if name != "alert_state":
            return bulk(store, name, ops, *args, **kwargs)
        kept = [op for op in ops if not op.filter["_id"].startswith("dev-b1|")]
        outcome = bulk(store, name, kept, *args, **kwargs)
        return BulkOutcome(failed={0: (2, "refused")}, matched=outcome.matched)

    def refusing_update_one(collection, filter, *args, **kwargs):
        if str(filter.get("_id", "")).startswith("dev-b1|"):
            raise DependencyUnavailable("refused", 1)
        return update_one(collection, filter, *args, **kwargs)

    monkeypatch.setattr(type(runtime.store), "bulk", refusing_bulk)
    monkeypatch.setattr(type(runtime.store.collection("alert_state")), "update_one",
                        refusing_update_one)
    results = book.handle_batch([(book, e) for e in events[3:6]])
    assert isinstance(results[1], DependencyUnavailable)
    assert [r.changed for i, r in enumerate(results) if i != 1] == [True, True]


# --- alert changes refused by the store (issue 20, suspected item a) ----------------------

def _refusing(monkeypatch, refuse):
    """Store.bulk on the alerts whose command `refuse(ops)` stops at (index, code): the ops
    before it are applied, as an ordered command does."""
    from iot_telemetry.errors import DependencyUnavailable
    from iot_telemetry.store import ALERTS, DUPLICATE_KEY, BulkOutcome, Store

    bulk = Store.bulk

    def fake(self, name, ops, ordered=False, *, tolerate=False):
        hit = refuse(ops) if name == ALERTS else None
        if hit is None:
            return bulk(self, name, ops, ordered, tolerate=tolerate)
        index, code = hit
        if index:
            bulk(self, name, ops[:index], ordered, tolerate=tolerate)
        if code == DUPLICATE_KEY:
            return BulkOutcome(duplicates=[index])
        if not tolerate:
            raise DependencyUnavailable("store refused a write", 1)
        return BulkOutcome(failed={index: (code, "refused")})

    monkeypatch.setattr(Store, "bulk", fake)


def _default_rules():
    from iot_telemetry.settings import Settings

    return [r for r in Settings.from_environ({}).rules if isinstance(r, AlertRule)]


def test_a_raise_that_loses_two_insert_races_is_still_applied(runtime, now,
                                                              monkeypatch) -> None:
    """The ordered write of an event's alert changes was retried once: a second duplicate
    key (another instance raising the same alert again) left the changes after it unapplied
    while this process's cache marked them applied, so the critical alert never existed."""
    from iot_telemetry.alerting import StateCache
    from iot_telemetry.store import ALERTS, DUPLICATE_KEY

    races = {"left": 2}

    def race(ops):
        critical = [i for i, op in enumerate(ops)
                    if op.upsert and "temperature-critical" in op.filter["_id"]]
        if critical and races["left"]:
            races["left"] -= 1
            return critical[0], DUPLICATE_KEY
        return None

    _refusing(monkeypatch, race)
    book = AlertBook(runtime.store, _default_rules(), cache=StateCache())
    event = _validated(record("dev-x", now, {"temperature": 31.0}, "e1", samples=[
        (now + timedelta(seconds=10), {"temperature": 32.0}),
        (now + timedelta(seconds=20), {"temperature": 41.0})]))
    outcome = book.handle(event)
    assert races["left"] == 0
    assert sorted(t["alert"]["rule"] for t in outcome.transitions) == [
        "temperature-critical", "temperature-high"]
    assert runtime.store.db[ALERTS].count_documents({"device_id": "dev-x"}) == 2


def test_an_alert_change_refused_for_one_device_fails_only_that_devices_event(
        runtime, now, monkeypatch) -> None:
    """A group commit's alert changes go in one ordered command: a refusal other than a
    duplicate key (say, a document too large) failed every device of the batch."""
    from iot_telemetry.alerting import Outcome, StateCache
    from iot_telemetry.errors import DependencyUnavailable
    from iot_telemetry.store import ALERTS

    book = AlertBook(runtime.store, _default_rules(), cache=StateCache())
    for device in ("bad", "good"):  # known states: the batch goes the group-commit way
        book.handle(_validated(record(device, now, {"temperature": 20.0}, "e0")))
    _refusing(monkeypatch, lambda ops: next(
        ((i, 2) for i, op in enumerate(ops) if op.filter["_id"].startswith("bad:")), None))
    bad, good = (_validated(record(d, now + timedelta(seconds=10), {"temperature": 41.0}, "e1"))
                 for d in ("bad", "good"))
    results = book.handle_batch([(book, bad), (book, good)])
    assert isinstance(results[0], DependencyUnavailable)
    assert isinstance(results[1], Outcome)
    assert [t["transition"] for t in results[1].transitions] == ["raised"]
    assert runtime.store.db[ALERTS].count_documents({"device_id": "good"}) == 1
    # the redelivery of the failed one, once the store takes it, raises its alert
    monkeypatch.undo()
    again = book.handle_batch([(book, bad)])[0]
    assert isinstance(again, Outcome) and [t["transition"] for t in again.transitions] == [
        "raised"]


def test_alert_events_of_one_event_leave_in_the_order_they_happened(runtime, now,
                                                                   sink_server) -> None:
    """Issue 20 item 5: one event whose samples are 41 then 30 raises and resolves
    temperature-critical. The reply reaches the Broker only after the delivery is answered,
    so it must carry the last change, and K_SINK the earlier ones (it carried `raised` while
    `resolved` had gone to K_SINK first)."""
    from iot_telemetry.runtime import set_runtime

    set_runtime(make_runtime(K_SINK=sink_server.url))
    apps = Apps()
    response = apps.deliver("alert", record("dev-o", now, {"temperature": 41.0}, "e1", samples=[
        (now + timedelta(seconds=10), {"temperature": 30.0})]))
    assert response.status_code == 200
    sent = [h["ce-id"] for h, _ in sink_server.received] + [response.headers["ce-id"]]
    assert sent == ["dev-o:temperature-critical:1/raised", "dev-o:temperature-critical:1/resolved"]
