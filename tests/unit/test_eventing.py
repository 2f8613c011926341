"""The eventing/ manifests as the local runner reads them: model, filters, backoff, retries."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from iot_telemetry.local.eventing.manifests import (
    PING_TYPE,
    Delivery,
    EventingError,
    load_eventing,
    retriable,
)
from iot_telemetry.local.eventing.schedules import Cron, parse_duration

EVENTING = Path(__file__).resolve().parents[2] / "eventing"

TELEMETRY = {"specversion": "1.0", "type": "iot.telemetry.v1", "source": "/devices/dev-1",
             "id": "1", "subject": "dev-1"}
ALERT = {**TELEMETRY, "type": "iot.alert.v1", "source": "/iot/alert"}


# --- the real manifests ---------------------------------------------------------------------

def test_the_real_manifests_load_with_their_values() -> None:
    eventing = load_eventing(EVENTING)

    broker = eventing.broker
    assert (broker.name, broker.namespace, broker.partitions) == ("iot-broker", "iot", 6)
    assert broker.topic == "knative-broker-iot-iot-broker"
    assert broker.replication_factor == 3
    [source] = eventing.sources
    assert source.topics == ("iot.telemetry",)
    assert source.consumer_group == "iot-telemetry-source"
    assert source.sink.name == "iot-broker" and source.ordered
    assert {t.name for t in eventing.triggers} == {"aggregate", "alert", "alerts-to-kafka",
                                                   "offline-sweep", "rollup-retention", "notify",
                                                   "notify-summaries"}
    assert eventing.sink_topic("iot-dead-letters") == "iot.telemetry.dlq"
    assert eventing.sink_topic("iot-alerts") == "iot.alerts"
    assert eventing.services == ("aggregate", "alert", "notify")


@pytest.mark.parametrize(("name", "ordered"), [("aggregate", False), ("alert", True)])
def test_function_triggers_take_telemetry_with_the_manifest_delivery(name: str,
                                                                     ordered: bool) -> None:
    """alert needs each device's readings in order; aggregate's rollups commute."""
    trigger = load_eventing(EVENTING).trigger(name)

    assert trigger.service == name and trigger.sink is None
    assert trigger.consumer_group == f"knative-trigger-iot-{name}"
    assert trigger.ordered is ordered
    assert trigger.matches(TELEMETRY)
    assert not trigger.matches(ALERT)
    assert trigger.delivery == Delivery(retry=10, backoff_policy="exponential",
                                        backoff_delay=0.2, timeout=30.0,
                                        dead_letter_sink="iot-dead-letters")


def test_alert_events_go_to_notify_in_order_per_device() -> None:
    """A person must not be told an alert is resolved before being told it was raised."""
    trigger = load_eventing(EVENTING).trigger("notify")

    assert trigger.service == "notify" and trigger.ordered
    assert trigger.matches(ALERT)
    assert not trigger.matches(TELEMETRY)
    assert trigger.delivery.dead_letter_sink == "iot-dead-letters"


def test_alert_events_go_to_the_alerts_kafka_sink() -> None:
    trigger = load_eventing(EVENTING).trigger("alerts-to-kafka")

    assert trigger.sink == "iot-alerts" and trigger.service is None
    assert trigger.matches(ALERT)
    assert not trigger.matches(TELEMETRY)


# --- backoff and retries --------------------------------------------------------------------

def test_exponential_backoff_doubles_from_twice_the_delay_like_the_kafka_broker() -> None:
    delivery = Delivery(retry=10, backoff_policy="exponential", backoff_delay=0.2)

    assert [delivery.backoff(n) for n in (1, 2, 3, 10)] == pytest.approx([0.4, 0.8, 1.6, 204.8])
    assert delivery.retry_budget() == pytest.approx(409.2)


def test_linear_backoff_grows_by_the_delay() -> None:
    delivery = Delivery(retry=3, backoff_policy="linear", backoff_delay=0.5)

    assert [delivery.backoff(n) for n in (1, 2, 3)] == pytest.approx([0.5, 1.0, 1.5])
    assert delivery.retry_budget() == pytest.approx(3.0)


def test_backoff_counts_retries_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        Delivery(backoff_delay=1).backoff(0)


@pytest.mark.parametrize("status", [None, 500, 502, 503, 504, 404, 408, 409, 429])
def test_server_errors_some_4xx_and_network_errors_are_retried(status: int | None) -> None:
    assert retriable(status)


@pytest.mark.parametrize("status", [400, 401, 403, 405, 410, 413, 415, 422, 301])
def test_other_answers_are_not_retried(status: int) -> None:
    assert not retriable(status)


@pytest.mark.parametrize(("text", "seconds"), [
    ("PT0.2S", 0.2), ("PT1S", 1.0), ("PT1M", 60.0), ("PT1M30S", 90.0), ("PT2H", 7200.0),
    ("P1D", 86400.0), ("P1DT1S", 86401.0), ("P1W", 604800.0), ("PT0,5S", 0.5), ("pt30s", 30.0),
])
def test_iso8601_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "P", "PT", "1S", "PT1", "P1Y", "P1M", "PT-1S", "soon"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_duration(text)


# --- filters --------------------------------------------------------------------------------

BASE = """
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: iot}
data:
  default.topic.partitions: "3"
  default.topic.replication.factor: "1"
  bootstrap.servers: "localhost:9092"
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: b
  namespace: iot
  annotations: {eventing.knative.dev/broker.class: Kafka}
spec:
  config: {apiVersion: v1, kind: ConfigMap, name: cfg, namespace: iot}
  delivery:
    retry: 3
    backoffPolicy: linear
    backoffDelay: PT1S
    deadLetterSink:
      ref: {apiVersion: eventing.knative.dev/v1alpha1, kind: KafkaSink, name: dlq}
---
apiVersion: eventing.knative.dev/v1alpha1
kind: KafkaSink
metadata: {name: dlq, namespace: iot}
spec: {topic: dead, bootstrapServers: ["localhost:9092"]}
"""


def _trigger_yaml(spec: str, name: str = "t", annotations: str = "") -> str:
    return BASE + textwrap.dedent(f"""
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata:
          name: {name}
          namespace: iot
          annotations: {{{annotations}}}
        spec:
          broker: b
          subscriber:
            ref: {{apiVersion: serving.knative.dev/v1, kind: Service, name: fn}}
        """) + textwrap.indent(textwrap.dedent(spec), "  ")


def _load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    (tmp_path / "all.yaml").write_text(text)
    return load_eventing(tmp_path)


def test_attribute_filter_needs_every_attribute_equal(tmp_path: Path) -> None:
    trigger = _load(tmp_path, _trigger_yaml("""
        filter:
          attributes: {type: iot.telemetry.v1, subject: dev-1}
        """)).trigger("t")

    assert trigger.matches(TELEMETRY)
    assert not trigger.matches({**TELEMETRY, "subject": "dev-2"})
    assert not trigger.matches({k: v for k, v in TELEMETRY.items() if k != "subject"})


def test_attribute_filter_empty_value_means_present_with_any_value(tmp_path: Path) -> None:
    trigger = _load(tmp_path, _trigger_yaml("""
        filter:
          attributes: {severity: ""}
        """)).trigger("t")

    assert trigger.matches({**ALERT, "severity": "critical"})
    assert not trigger.matches(ALERT)
    assert not trigger.matches({**ALERT, "severity": ""})


def test_no_filter_matches_everything(tmp_path: Path) -> None:
    trigger = _load(tmp_path, _trigger_yaml("")).trigger("t")

    assert trigger.matches(TELEMETRY) and trigger.matches(ALERT)


def test_exact_prefix_and_suffix_filters(tmp_path: Path) -> None:
    trigger = _load(tmp_path, _trigger_yaml("""
        filters:
          - exact: {type: iot.telemetry.v1}
          - prefix: {source: /devices/}
          - suffix: {subject: "-1"}
        """)).trigger("t")

    assert trigger.matches(TELEMETRY)
    assert not trigger.matches({**TELEMETRY, "type": "iot.telemetry.v2"})
    assert not trigger.matches({**TELEMETRY, "source": "/gateways/g-1"})
    assert not trigger.matches({**TELEMETRY, "subject": "dev-2"})
    assert not trigger.matches({k: v for k, v in TELEMETRY.items() if k != "subject"})


def test_any_all_and_not_filters_nest(tmp_path: Path) -> None:
    trigger = _load(tmp_path, _trigger_yaml("""
        filters:
          - any:
              - exact: {type: iot.alert.v1}
              - all:
                  - prefix: {type: iot.telemetry.}
                  - not:
                      suffix: {subject: "-test"}
        """)).trigger("t")

    assert trigger.matches(ALERT)
    assert trigger.matches(TELEMETRY)
    assert not trigger.matches({**TELEMETRY, "subject": "dev-test"})
    assert not trigger.matches({**TELEMETRY, "type": "other"})


def test_filters_take_precedence_over_filter(tmp_path: Path) -> None:
    trigger = _load(tmp_path, _trigger_yaml("""
        filter:
          attributes: {type: iot.alert.v1}
        filters:
          - exact: {type: iot.telemetry.v1}
        """)).trigger("t")

    assert trigger.matches(TELEMETRY) and not trigger.matches(ALERT)


def test_filters_compare_bytes_attributes_as_text(tmp_path: Path) -> None:
    trigger = _load(tmp_path, _trigger_yaml("""
        filters:
          - exact: {partitionkey: dev-1}
        """)).trigger("t")

    assert trigger.matches({**TELEMETRY, "partitionkey": b"dev-1"})


def test_cesql_is_refused_at_load_time(tmp_path: Path) -> None:
    with pytest.raises(NotImplementedError, match="CESQL"):
        _load(tmp_path, _trigger_yaml("""
            filters:
              - cesql: "type = 'iot.telemetry.v1'"
            """))


# --- delivery merge, ordering, validation ---------------------------------------------------

def test_a_trigger_without_delivery_takes_the_broker_default(tmp_path: Path) -> None:
    trigger = _load(tmp_path, _trigger_yaml("")).trigger("t")

    assert trigger.delivery == Delivery(retry=3, backoff_policy="linear", backoff_delay=1.0,
                                        dead_letter_sink="dlq")
    assert not trigger.ordered


def test_trigger_delivery_fields_override_the_broker_one_by_one(tmp_path: Path) -> None:
    trigger = _load(tmp_path, _trigger_yaml("""
        delivery:
          retry: 1
          timeout: PT5S
        """, annotations="kafka.eventing.knative.dev/delivery.order: ordered")).trigger("t")

    assert trigger.delivery == Delivery(retry=1, backoff_policy="linear", backoff_delay=1.0,
                                        timeout=5.0, dead_letter_sink="dlq")
    assert trigger.ordered


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(EventingError) as info:
        _load(tmp_path, _trigger_yaml("""
            filters:
              - exact: {type: ""}
            delivery:
              retry: -1
              backoffPolicy: fibonacci
              backoffDelay: soon
              deadLetterSink:
                ref: {apiVersion: eventing.knative.dev/v1alpha1, kind: KafkaSink, name: nope}
            """, annotations="kafka.eventing.knative.dev/delivery.order: sorted"))

    text = str(info.value)
    for expected in ("value must not be empty", "retry", "backoffPolicy", "backoffDelay",
                     "deadLetterSink", "delivery.order"):
        assert expected in text
    assert len(info.value.problems) == 6


def test_dangling_references_are_refused(tmp_path: Path) -> None:
    text = _trigger_yaml("").replace("broker: b", "broker: other").replace(
        "kind: Service, name: fn", "kind: KafkaSink, name: missing").replace(
        "serving.knative.dev/v1", "eventing.knative.dev/v1alpha1")
    with pytest.raises(EventingError) as info:
        _load(tmp_path, text)

    assert "spec.broker must be b" in str(info.value)
    assert "KafkaSink missing is not defined" in str(info.value)


def test_a_broker_of_another_class_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EventingError, match="Kafka-class"):
        _load(tmp_path, BASE.replace("broker.class: Kafka", "broker.class: MTChannelBasedBroker"))


def test_unknown_kinds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(EventingError, match="ApiServerSource"):
        _load(tmp_path, BASE + "---\napiVersion: sources.knative.dev/v1\nkind: ApiServerSource\n"
                               "metadata: {name: p}\n")


def test_alert_and_query_are_bound_to_the_broker_ingress() -> None:
    eventing = load_eventing(Path(__file__).resolve().parents[2] / "eventing")
    assert [(b.name, b.service) for b in eventing.bindings] == [("alert-events", "alert"),
                                                                ("query-events", "query")]
    assert eventing.sink_env("alert", "http://127.0.0.1:8005/") == {
        "K_SINK": "http://127.0.0.1:8005/"}
    assert eventing.sink_env("query", "http://127.0.0.1:8005/") == {
        "K_SINK": "http://127.0.0.1:8005/"}
    assert eventing.sink_env("aggregate", "http://127.0.0.1:8005/") == {}
    assert eventing.sink_env("alert", None) == {}


def test_a_sink_binding_must_bind_a_service_by_name_to_the_broker(tmp_path: Path) -> None:
    binding = textwrap.dedent("""
        ---
        apiVersion: sources.knative.dev/v1
        kind: SinkBinding
        metadata: {name: sb, namespace: iot}
        spec:
          subject: {apiVersion: apps/v1, kind: Deployment, selector: {matchLabels: {a: b}}}
          sink:
            ref: {apiVersion: eventing.knative.dev/v1alpha1, kind: KafkaSink, name: dlq}
        ---
        apiVersion: sources.knative.dev/v1
        kind: SinkBinding
        metadata: {name: sb2, namespace: iot}
        spec:
          subject: {apiVersion: serving.knative.dev/v1, kind: Service, name: fn}
          sink:
            ref: {apiVersion: eventing.knative.dev/v1alpha1, kind: KafkaSink, name: dlq}
        """)
    with pytest.raises(EventingError) as info:
        _load(tmp_path, BASE + binding)
    assert "SinkBinding sb: spec.subject must name" in str(info.value)
    assert "SinkBinding sb2: spec.sink must reference Broker b" in str(info.value)


# --- PingSource -----------------------------------------------------------------------------

def test_the_offline_sweep_ticks_every_minute_and_reaches_alert_only() -> None:
    eventing = load_eventing(EVENTING)
    [ping] = [p for p in eventing.pings if p.name == "offline-sweep"]
    assert (ping.name, ping.namespace) == ("offline-sweep", "iot")
    assert ping.source == "/apis/v1/namespaces/iot/pingsources/offline-sweep"
    at = datetime(2026, 11, 28, 19, 41, tzinfo=UTC)
    attributes, data = ping.event(at, "tick-1")
    assert attributes == {"specversion": "1.0", "type": PING_TYPE, "source": ping.source,
                          "id": "tick-1", "time": "2026-11-28T19:41:00Z",
                          "datacontenttype": "application/json"}
    assert data == {"sweep": "offline"}
    takers = [t.name for t in eventing.triggers if t.matches(attributes)]
    assert takers == ["offline-sweep"]
    assert eventing.trigger("offline-sweep").service == "alert"
    # every minute, on the minute
    assert ping.schedule.next_after(datetime(2026, 11, 28, 19, 40, 59, tzinfo=UTC)) == at
    assert ping.schedule.next_after(at) == datetime(2026, 11, 28, 19, 42, tzinfo=UTC)
    # another PingSource's ticks do not sweep
    other = {**attributes, "source": "/apis/v1/namespaces/iot/pingsources/other"}
    assert not eventing.trigger("offline-sweep").matches(other)


def test_the_retention_sweep_ticks_daily_and_reaches_aggregate_only() -> None:
    eventing = load_eventing(EVENTING)
    [ping] = [p for p in eventing.pings if p.name == "rollup-retention"]
    at = datetime(2026, 11, 28, 3, 17, tzinfo=UTC)
    attributes, data = ping.event(at, "tick-1")
    assert data == {"sweep": "retention"}
    assert [t.name for t in eventing.triggers if t.matches(attributes)] == ["rollup-retention"]
    assert eventing.trigger("rollup-retention").service == "aggregate"
    assert ping.schedule.next_after(datetime(2026, 11, 28, 3, 16, 59, tzinfo=UTC)) == at
    assert ping.schedule.next_after(at) == datetime(2026, 11, 29, 3, 17, tzinfo=UTC)


@pytest.mark.parametrize(("schedule", "after", "expected"), [
    ("*/15 * * * *", (2026, 11, 28, 19, 40), (2026, 11, 28, 19, 45)),
    ("0 * * * *", (2026, 11, 28, 19, 0), (2026, 11, 28, 20, 0)),
    ("5,35 3 * * *", (2026, 11, 28, 3, 5), (2026, 11, 28, 3, 35)),
    ("0 0 1 * *", (2026, 11, 28, 19, 40), (2026, 12, 1, 0, 0)),
    ("*/15 3 * * 1-5", (2026, 11, 28, 19, 40), (2026, 11, 30, 3, 0)),  # Sat -> Mon
    ("0 12 * * 0", (2026, 11, 28, 19, 40), (2026, 11, 29, 12, 0)),  # Sunday as 0
    ("0 12 * * 7", (2026, 11, 28, 19, 40), (2026, 11, 29, 12, 0)),  # ... and as 7
    ("0 0 29 2 *", (2026, 11, 28, 0, 0), (2028, 2, 29, 0, 0)),
    ("0 0 13 * 5", (2026, 11, 1, 0, 0), (2026, 11, 6, 0, 0)),  # day of month OR Friday
])
def test_cron_schedules_fire_when_cron_would(schedule: str, after: tuple[int, ...],
                                             expected: tuple[int, ...]) -> None:
    cron = Cron.parse(schedule)
    fired = cron.next_after(datetime(*after, tzinfo=UTC))
    assert fired == datetime(*expected, tzinfo=UTC)
    assert cron.matches(fired)


@pytest.mark.parametrize("schedule", ["@hourly", "* * * *", "60 * * * *", "*/0 * * * *",
                                      "L * * * *", "CRON_TZ=UTC * * * * *", "0 0 32 * *"])
def test_schedules_the_local_runner_cannot_play_are_refused(schedule: str) -> None:
    with pytest.raises(ValueError, match=r"cron|five-field"):
        Cron.parse(schedule)


def test_a_ping_source_is_checked_with_every_problem_listed(tmp_path: Path) -> None:
    ping = textwrap.dedent("""
        ---
        apiVersion: sources.knative.dev/v1
        kind: PingSource
        metadata: {name: p, namespace: iot}
        spec:
          schedule: "*/5 * * *"
          timezone: Europe/Paris
          data: "not json"
          sink:
            ref: {apiVersion: eventing.knative.dev/v1alpha1, kind: KafkaSink, name: dlq}
        """)
    with pytest.raises(EventingError) as info:
        _load(tmp_path, BASE + ping)
    message = str(info.value)
    for problem in ("PingSource p: spec.schedule", "spec.timezone 'Europe/Paris'",
                    "spec.data is not JSON", "PingSource p: spec.sink must reference Broker b"):
        assert problem in message
