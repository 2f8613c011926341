"""The whole pipeline on the real Kafka and the atomic store: a simulated fleet posts
through ingest, the dispatcher plays eventing/, aggregate and alert run as
functions-framework processes, and what query shows afterwards must equal the ground truth
of what ingest accepted, exactly, also under duplicates, disorder, crashes and server
outages.

Each test runs its own pipeline (pipeline_harness.Harness): a fresh database, fresh topics and
consumer groups, free ports. Timings and outcomes go to artifacts/pipeline-timings.jsonl,
process logs to artifacts/pipeline-logs/<test>/ (IOT_TEST_ARTIFACTS moves both).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iot_telemetry import events
from iot_telemetry.local.layout import REPO
from iot_telemetry.telemetry import format_time
from tests.integration.pipeline_harness import (
    EVENTS,
    STORE,
    Harness,
    SimRun,
    check_scripts_drive,
    kill_store,
    read_records,
    service,
    truth_of,
)

pytestmark = pytest.mark.integration

ARTIFACTS = Path(os.environ.get("IOT_TEST_ARTIFACTS", REPO / "artifacts"))


@pytest.fixture
def harness(request: pytest.FixtureRequest, kafka_bootstrap: str, mongo_url: str,
            mongo_db: str) -> Iterator[Harness]:
    """A started pipeline of its own; records the test's timing and outcome when done."""
    name = request.node.name
    log_dir = ARTIFACTS / "pipeline-logs" / name
    shutil.rmtree(log_dir, ignore_errors=True)
    # indirect parametrization gives the pipeline's extra environment
    h = Harness(kafka_bootstrap, mongo_url, mongo_db, log_dir,
                extra_env=dict(getattr(request, "param", None) or {}))
    failed_before = request.session.testsfailed
    started = time.monotonic()
    outcome = "error"
    try:
        h.start()
        yield h
        # The call phase's report is logged before teardown runs.
        outcome = "failed" if request.session.testsfailed > failed_before else "passed"
    finally:
        if outcome != "passed":
            h.dump_store()
        h.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        line = {"test": name, "outcome": outcome,
                "seconds": round(time.monotonic() - started, 1),
                "at": datetime.now(UTC).isoformat(timespec="seconds"), **h.phases}
        with (ARTIFACTS / "pipeline-timings.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


def delivery_retries(h: Harness, trigger: str) -> list[str]:
    """Why the dispatcher retried deliveries of one Trigger (from its JSON log)."""
    reasons = [str(e.get("reason")) for e in h.log_lines("dispatcher", "delivery failed, retrying")
               if e.get("trigger") == trigger]
    h.phases.setdefault("retry_reasons", {})[trigger] = dict(Counter(reasons))
    return reasons


def test_end_to_end_rollups_latest_values_and_alerts_exact(harness: Harness,
                                                           tmp_path: Path) -> None:
    sent = tmp_path / "sent.jsonl"
    result = harness.simulate(harness.sim_options(sent, mode="binary"))
    assert result.accepted_events == EVENTS and result.rejected_events == 0, result
    records = read_records(sent)
    assert len(records) == EVENTS

    truth = harness.assert_exact(records)

    # The scenario is worth checking: buckets across a day boundary, alerts both ways.
    assert len({k[2][:10] for k in truth.rollups["1d"]}) == 2
    assert len(truth.devices) == 8
    assert sum(a["state"] == "resolved" for a in truth.alerts.values()) >= 3
    open_alerts = Counter(a["device_id"] for a in truth.alerts.values() if a["state"] == "open")
    assert {d: v["open_alerts"] for d, v in harness.devices().items()} == {
        d: open_alerts[d] for d in truth.devices}
    # Every raise and resolve was emitted as an iot.alert.v1 event (the reply, or K_SINK for
    # a second one) and routed by the alerts-to-kafka Trigger to the alerts topic.
    assert harness.alert_event_ids() == truth.alert_events
    assert harness.read_topic(harness.dead_letter_topic) == []


def test_duplicates_disorder_and_a_full_resend_change_nothing(harness: Harness,
                                                              tmp_path: Path) -> None:
    sent = tmp_path / "sent.jsonl"
    options = harness.sim_options(sent, mode="batch", batch_size=8, duplicate_rate=0.3,
                                  disorder=0.3)
    result = harness.simulate(options)
    assert result.accepted_events == EVENTS and result.rejected_events == 0, result
    assert result.duplicates_sent > 0
    records = read_records(sent)
    # Readings really were out of time order per device (late events).
    late = 0
    last: dict[str, str] = {}
    for attributes, _data in records:
        device = attributes["subject"]
        late += attributes["time"] < last.get(device, "")
        last[device] = max(last.get(device, ""), attributes["time"])
    assert late > 10

    truth = harness.assert_exact(records)

    # Every accepted event again, in the recorded order, through ingest.
    harness.resend(records)
    again = harness.assert_exact(records)
    assert again.alerts == truth.alerts
    assert harness.alert_event_ids() == truth.alert_events
    # The re-sent copies were accepted: the telemetry topic holds every event twice or more.
    accepted_twice = sum(m.value is not None for m in harness.read_topic(harness.telemetry_topic))
    assert accepted_twice >= 2 * len(records)


#: Killed in turn, one every KILL_EVERY accepted events (ingest first: the simulator retries).
KILLED = ("ingest", "aggregate", "alert", "dispatcher", "query")
KILL_EVERY = 50


def test_each_process_killed_under_load_is_restarted_and_nothing_is_lost(
        harness: Harness, tmp_path: Path) -> None:
    """kill -9 of each function and of the dispatcher, in turn, while devices post: the
    supervisor restarts each, which serves again within 10 s, and what query shows equals
    what ingest accepted, exactly (redeliveries counted once, nothing lost)."""
    sent = tmp_path / "sent.jsonl"
    events = KILL_EVERY * (len(KILLED) + 1)
    sim = SimRun(harness.sim_options(sent, rate=25.0, events=events))
    back_within: dict[str, float] = {}
    for turn, name in enumerate(KILLED, start=1):
        sim.wait_accepted(KILL_EVERY * turn, timeout=90)
        killed_pid = harness.pipeline.processes[name].pid
        harness.pipeline.kill(name, signal.SIGKILL)
        killed = time.monotonic()
        harness.wait_until(
            f"{name} restarted and serving", lambda n=name, pid=killed_pid: (
                harness.pipeline.processes[n].pid != pid and harness.pipeline.healthy(n)),
            timeout=10)
        if name == "dispatcher":  # serving = its consumers have their partitions again
            harness.wait_dispatcher_ready(10 - (time.monotonic() - killed))
        back_within[name] = round(time.monotonic() - killed, 1)
    harness.phases["back_within_s"] = back_within
    assert dict(harness.pipeline.restarts) == {
        n: int(n in KILLED) for n in harness.pipeline.processes}
    result = sim.join(timeout=180)
    assert result.accepted_events == events and result.rejected_events == 0, result

    harness.assert_exact(read_records(sent))
    for trigger in ("aggregate", "alert"):
        # killed mid-stream: the dispatcher had to retry deliveries while it was down
        assert delivery_retries(harness, trigger), f"{trigger} was not killed mid-stream"


@pytest.mark.parametrize("harness", [{"IOT_DISPATCHER_MAX_QUEUED": "20"}], indirect=True)
def test_alert_stopped_long_enough_to_fill_its_lanes_holds_aggregate_back_not_at_all(
        harness: Harness, tmp_path: Path) -> None:
    """alert frozen (SIGSTOP) while devices post, long enough for its lanes (20 records per
    partition here) to fill: aggregate's lag stays flat and reaches 0 with alert still
    frozen, as on the Kafka Broker where each Trigger is a consumer group of its own; once
    alert runs again it catches up and everything is exact."""
    groups = {t.name: harness.naming.group(t.consumer_group)
              for t in harness.eventing.triggers}
    sent = tmp_path / "sent.jsonl"
    alert = harness.pipeline.processes["alert"]
    os.killpg(alert.pid, signal.SIGSTOP)
    try:
        sim = SimRun(harness.sim_options(sent, rate=20.0))
        aggregate_lag = []
        while sim.running():
            aggregate_lag.append(harness.lag()[groups["aggregate"]])
            time.sleep(1.0)
        result = sim.join(timeout=60)
        assert result.accepted_events == EVENTS and result.rejected_events == 0, result
        harness.wait_until("aggregate has done everything with alert frozen",
                           lambda: harness.lag()[groups["aggregate"]] == 0, timeout=15)
        lag = harness.lag()
        harness.phases["aggregate_lag_while_alert_frozen"] = aggregate_lag
        harness.phases["alert_lag_frozen"] = lag[groups["alert"]]
        # alert really was behind by more than all its lanes can hold (6 partitions x 20).
        assert lag[groups["alert"]] > 6 * 20, lag
    finally:
        os.killpg(alert.pid, signal.SIGCONT)
    harness.assert_exact(read_records(sent))


def test_kafka_restarted_during_ingestion_loses_nothing_accepted(harness: Harness,
                                                                 tmp_path: Path) -> None:
    check_scripts_drive(harness.kafka, harness.mongo)
    ingest_503 = 'iot_dependency_errors_total{function="ingest"}'
    sent = tmp_path / "sent.jsonl"
    sim = SimRun(harness.sim_options(sent, rate=20.0, events=300))
    restarted = False
    try:
        sim.wait_accepted(60, timeout=60)
        harness.phases["kafka_stop_s"] = round(service("kafka", "stop"), 1)
        stopped_at = sim.accepted()
        refused_at_stop = harness.metric("ingest", ingest_503)
        # ingest answers 503 now (no acknowledgement within KAFKA_SEND_TIMEOUT_SECONDS): the
        # window watched lasts until a request made with Kafka fully down has been refused
        harness.phases["503_after_stop_s"] = round(harness.wait_until(
            "ingest answers 503 while Kafka is down",
            lambda: harness.metric("ingest", ingest_503) > refused_at_stop), 1)
        accepted_while_down = sim.accepted() - stopped_at
        harness.phases["accepted_while_down"] = accepted_while_down
        harness.phases["kafka_start_s"] = round(service("kafka", "start"), 1)
        restarted = True
    finally:
        if not restarted:
            service("kafka", "start")
    result = sim.join(timeout=240)
    harness.phases["sim"] = {"retries": result.retries, "errors": result.errors}
    assert result.accepted_events == 300 and result.rejected_events == 0, result
    assert "abandoned at stop" not in result.errors, result
    assert result.retries > 0 and result.errors.get("503", 0) > 0, result
    # Never a 202 without Kafka's acknowledgement: nothing was accepted while it was down.
    assert accepted_while_down == 0

    harness.assert_exact(read_records(sent), timeout=240)


def store_down_while_sending(harness: Harness, tmp_path: Path,
                             take_down: Callable[[], object]) -> None:
    """Send, take the store down a third of the way (`take_down`), keep it down until both
    functions had a delivery answered 503 and retried, start it again; check nothing is
    lost or counted twice and nothing was dead-lettered."""
    check_scripts_drive(harness.kafka, harness.mongo)
    sent = tmp_path / "sent.jsonl"
    sim = SimRun(harness.sim_options(sent, rate=20.0))
    restarted = False
    try:
        sim.wait_accepted(EVENTS // 3, timeout=60)
        take_down()
        harness.phases["both_503_s"] = round(harness.wait_until(
            "the dispatcher retries deliveries answered 503 by aggregate and by alert",
            lambda: all(harness.retried(t, "answered 503") for t in ("aggregate", "alert"))), 1)
        harness.phases["store_start_s"] = round(service(STORE, "start"), 1)
        restarted = True
    finally:
        if not restarted:
            service(STORE, "start")
    result = sim.join(timeout=180)
    assert result.accepted_events == EVENTS and result.rejected_events == 0, result

    harness.assert_exact(read_records(sent), timeout=240)
    assert harness.read_topic(harness.dead_letter_topic) == []


def test_store_restarted_during_processing_events_are_retried(harness: Harness,
                                                              tmp_path: Path) -> None:
    def stop() -> None:
        harness.phases["store_stop_s"] = round(service(STORE, "stop"), 1)

    store_down_while_sending(harness, tmp_path, stop)
    retried = {t: delivery_retries(harness, t) for t in ("aggregate", "alert")}
    harness.phases["dispatcher_retries"] = {t: len(r) for t, r in retried.items()}
    # Both functions answered 503 while the store was down, and the dispatcher retried.
    assert all("answered 503" in r for r in retried.values()), retried


def test_store_killed_during_processing_loses_nothing_acknowledged(harness: Harness,
                                                                   tmp_path: Path) -> None:
    # SIGKILL, not a clean stop: what the store acknowledged before it died must be on disk,
    # or the functions, which took the acknowledgement as done, would lose those counts.
    store_down_while_sending(harness, tmp_path, kill_store)


def test_poison_events_are_dead_lettered_and_do_not_block_the_partition(harness: Harness,
                                                                        ) -> None:
    device = "poison-dev"
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)

    def telemetry(i: int, data: dict[str, object]) -> tuple[dict[str, str], dict[str, object]]:
        attributes = {"specversion": "1.0", "type": "iot.telemetry.v1",
                      "source": f"/devices/{device}", "id": f"p-{i}", "subject": device,
                      "time": format_time(t0 + timedelta(seconds=i)),
                      "datacontenttype": "application/json"}
        return attributes, data

    # A valid CloudEvent whose data is invalid (aggregate and alert answer 400), and a record
    # that is no CloudEvent at all; both keyed by the device, then good events on that key.
    bad_data = telemetry(0, {"metrics": {"temperature": "hot"}})
    good = [telemetry(i, {"metrics": {"temperature": v}})
            for i, v in ((1, 31.0), (2, 32.0), (3, 33.5))]
    raw = [events.to_kafka(harness.telemetry_topic, *bad_data)]
    raw.append(events.KafkaRecord(harness.telemetry_topic, device.encode(),
                                  (("content-type", b"text/plain"),), b"not an event"))
    raw += [events.to_kafka(harness.telemetry_topic, *g) for g in good]
    harness.produce([(r.key, list(r.headers), r.value) for r in raw])
    # One more good event for the same device through ingest, after the poison.
    later = telemetry(4, {"metrics": {"temperature": 34.0}})
    harness.resend([later])

    truth = harness.assert_exact([*good, later])
    assert list(truth.alerts) == [f"{device}:temperature-high:1"]

    dead = harness.read_topic(harness.dead_letter_topic)
    assert all(m.key == device.encode() for m in dead)
    # The CloudEvent with bad data: answered 400 by aggregate and by alert, not retried,
    # parked once by each of their Triggers with Knative's error extensions.
    parked = sorted((dict(m.headers)["ce_knativeerrordest"].decode(),
                     dict(m.headers).get("ce_knativeerrorcode"), m.value)
                    for m in dead if dict(m.headers).get("ce_id") == b"p-0")
    assert parked == sorted((harness.url(f), b"400", raw[0].value)
                            for f in ("aggregate", "alert")), parked
    # The record that is no CloudEvent cannot be delivered to anyone; the dispatcher parks it
    # too (Knative's KafkaSource would wrap it as dev.knative.kafka.event, which no Trigger
    # here matches). Either way nothing else reaches the dead letters.
    others = [m.value for m in dead if dict(m.headers).get("ce_id") != b"p-0"]
    assert set(others) <= {b"not an event"}, others
    harness.phases["dead_letters"] = len(dead)
    # Poison and good events shared one partition of the broker topic, poison first.
    on_broker = [(m.partition, m.offset, dict(m.headers).get("ce_id", b"-").decode(),
                  dict(m.headers).get("ce_type"))
                 for m in harness.read_topic(harness.broker_topic) if m.key == device.encode()]
    assert len({p for p, _o, _i, _t in on_broker}) == 1, on_broker
    order = [i for _p, _o, i, t in sorted(on_broker) if t != b"iot.alert.v1"]
    assert order[0] == "p-0" and order[2:] == ["p-1", "p-2", "p-3", "p-4"], order
    # A 400 is final: the poison was never retried, so it held nothing up.
    assert not [e for e in harness.log_lines("dispatcher", "delivery failed, retrying")
                if e.get("event_id") == "p-0"]


def test_truth_replays_alerts_in_delivery_order() -> None:
    """The harness's truth: late readings do not flip alert state, duplicates count once."""
    device = "d"
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def rec(i: int, seconds: int, value: float) -> tuple[dict[str, str], dict[str, object]]:
        return ({"specversion": "1.0", "type": "iot.telemetry.v1", "source": "/d",
                 "id": str(i), "subject": device, "datacontenttype": "application/json",
                 "time": (t0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")},
                {"metrics": {"temperature": value}})

    records = [rec(1, 10, 31), rec(2, 20, 32), rec(3, 30, 33), rec(4, 5, 20),  # late, ignored
               rec(2, 20, 32), rec(5, 40, 27)]
    truth = truth_of(records)
    assert list(truth.alerts) == ["d:temperature-high:1"]
    alert = truth.alerts["d:temperature-high:1"]
    assert (alert["state"], alert["count"], alert["peak"], alert["resolved_value"]) == (
        "resolved", 3, 33.0, 27.0)
    assert truth.rollups["1d"][("d", "temperature", "2026-01-01T00:00:00.000Z")]["count"] == 5
    assert truth.latest == {"d": {"temperature": {"value": 27.0,
                                                  "time": "2026-01-01T00:00:40.000Z"}}}


def test_alert_events_reach_the_alerts_topic_in_the_order_they_happened(harness: Harness,
                                                                        ) -> None:
    """Issue 20 item 5, read off iot.alerts: one event whose samples are 41 then 30 raises
    and resolves temperature-critical (two alert events of one delivery: the earlier through
    K_SINK, the last as the reply); another device does the same over two events (two
    replies). Each alert's `raised` is before its `resolved` on the topic."""
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)

    def telemetry(device: str, i: int, data: dict[str, object],
                  ) -> tuple[dict[str, str], dict[str, object]]:
        return ({"specversion": "1.0", "type": "iot.telemetry.v1",
                 "source": f"/devices/{device}", "id": f"o-{i}", "subject": device,
                 "time": format_time(t0 + timedelta(seconds=i)),
                 "datacontenttype": "application/json"}, data)

    one = telemetry("order-one", 1, {"metrics": {"temperature": 41.0}, "samples": [
        {"time": format_time(t0 + timedelta(seconds=2)), "metrics": {"temperature": 30.0}}]})
    two = [telemetry("order-two", 1, {"metrics": {"temperature": 41.0}}),
           telemetry("order-two", 2, {"metrics": {"temperature": 30.0}})]
    harness.resend([one, *two])
    truth = harness.assert_exact([one, *two])
    assert sorted(truth.alerts) == ["order-one:temperature-critical:1",
                                    "order-two:temperature-critical:1"]
    deadline = time.monotonic() + 60
    while True:
        on_topic = [(m.partition, m.offset, dict(m.headers)["ce_id"].decode())
                    for m in harness.read_topic(harness.alerts_topic)]
        if len(on_topic) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(1)
    for device in ("order-one", "order-two"):
        # First occurrences: a retried delivery sends its alert events again, in order.
        ids = list(dict.fromkeys(i for _p, _o, i in sorted(on_topic)
                                 if i.startswith(f"{device}:")))
        assert ids == [f"{device}:temperature-critical:1/raised",
                       f"{device}:temperature-critical:1/resolved"], on_topic
