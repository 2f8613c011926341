"""The real-mode dispatcher on the real Kafka: order, dead letters, outages, restarts.

Every test gets its own topics and consumer groups (a name suffix), so reruns and
parallel runs do not see each other's records.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from iot_telemetry.events import KafkaRecord, RawEvent, to_http
from iot_telemetry.local.eventing import Eventing, load_eventing
from iot_telemetry.local.eventing.dispatcher import Dispatcher, Naming
from iot_telemetry.local.eventing.kafka_clients import RecordWriter
from iot_telemetry.local.eventing.memory_broker import partition_for
from tests.unit.test_memory_broker import Subscriber, record

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EVENTING = REPO / "eventing"


def without_notify(eventing: Eventing) -> Eventing:
    """eventing/ without notify's Triggers: these tests deliver to stand-ins of aggregate and
    alert (notify behind the dispatcher: test_notify_on_real_services.py)."""
    return replace(eventing, triggers=tuple(t for t in eventing.triggers
                                            if t.service != "notify"))


@pytest.fixture(scope="module")
def eventing() -> Eventing:
    # These tests count exact deliveries: the PingSource's ticks (every minute, to alert)
    # are played in their own tests.
    return replace(without_notify(load_eventing(EVENTING)), pings=())


@pytest.fixture
def naming(kafka_bootstrap: str) -> Iterator[Naming]:
    naming = Naming(f".test-{uuid.uuid4().hex[:10]}")
    yield naming
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        mine = [t for t in admin.list_topics() if t.endswith(naming.suffix)]
        if mine:
            admin.delete_topics(mine)
    finally:
        admin.close()


@pytest.fixture
def subscribers() -> Iterator[dict[str, Subscriber]]:
    subs = {"aggregate": Subscriber(), "alert": Subscriber()}
    yield subs
    for sub in subs.values():
        sub.close()


class Pipeline:
    """A dispatcher for one test, plus what the test needs to feed and watch it."""

    def __init__(self, eventing: Eventing, bootstrap: str, naming: Naming,
                 subscribers: Mapping[str, Subscriber]) -> None:
        self.eventing, self.bootstrap, self.naming = eventing, bootstrap, naming
        self.subscribers = subscribers
        self.writer = RecordWriter([bootstrap], client_id="test-producer")
        self.dispatcher: Dispatcher | None = None

    def start(self, **options: Any) -> Dispatcher:
        self.dispatcher = Dispatcher(
            self.eventing, [self.bootstrap], {n: s.url for n, s in self.subscribers.items()},
            ingress_port=0, naming=self.naming, **options)
        self.dispatcher.start()
        wait_for(self.dispatcher.ready, 60, "the dispatcher did not get its partitions")
        return self.dispatcher

    def stop(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None

    def create_source_topic(self) -> None:
        """Create iot.telemetry (6 partitions) before any dispatcher runs, as kafka.sh does."""
        admin = KafkaAdminClient(bootstrap_servers=[self.bootstrap])
        try:
            admin.create_topics({self.naming.topic("iot.telemetry"): {
                "num_partitions": 6, "replication_factor": 1}}, wait_for_metadata=True)
        finally:
            admin.close()

    def produce(self, records: list[KafkaRecord]) -> None:
        """Write telemetry as ingest does (to the suffixed iot.telemetry)."""
        topic = self.naming.topic("iot.telemetry")
        self.writer.write([replace(r, topic=topic) for r in records], threading.Event(),
                          timeout=30)

    def read(self, topic: str, count: int, timeout: float = 30) -> list[Any]:
        """At least `count` records of a topic, read from the beginning."""
        consumer = KafkaConsumer(bootstrap_servers=[self.bootstrap], enable_auto_commit=False)
        try:
            name = self.naming.topic(topic)
            wait_for(lambda: bool(consumer.partitions_for_topic(name)), 30, f"no topic {name}")
            tps = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            found: list[Any] = []
            deadline = time.monotonic() + timeout
            while len(found) < count and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=200).values():
                    found += batch
            return found
        finally:
            consumer.close()

    def committed(self, trigger: str) -> dict[int, int]:
        group = self.naming.group(f"knative-trigger-iot-{trigger}")
        admin = KafkaAdminClient(bootstrap_servers=[self.bootstrap])
        try:
            offsets = admin.list_group_offsets({group: None}).get(group, {})
        finally:
            admin.close()
        return {tp.partition: meta.offset for tp, meta in offsets.items()}

    def close(self) -> None:
        self.stop()
        self.writer.close()


@pytest.fixture
def ordered(eventing: Eventing) -> Eventing:
    """eventing/ with every Trigger ordered (alert's delivery), for the tests of the ordered
    mechanics: per-partition order, a poisoned partition moving on, offsets committed."""
    return replace(eventing, triggers=tuple(replace(t, ordered=True) for t in eventing.triggers))


@pytest.fixture
def pipeline(ordered: Eventing, kafka_bootstrap: str, naming: Naming,
             subscribers: dict[str, Subscriber]) -> Iterator[Pipeline]:
    p = Pipeline(ordered, kafka_bootstrap, naming, subscribers)
    yield p
    p.close()


def wait_for(condition: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.05)


def delivered_ids(sub: Subscriber) -> set[str]:
    return set(sub.ids())


def assert_in_order_per_device(sub: Subscriber, devices: list[str], count: int) -> None:
    """Each device's first deliveries are 0..count-1 in order (redeliveries may follow)."""
    for device in devices:
        seqs = [e.data["seq"] for e in sub.delivered if e.attributes.get("subject") == device]
        firsts = list(dict.fromkeys(seqs))
        assert firsts == list(range(count)), (device, seqs)


# --- end to end -----------------------------------------------------------------------------

@pytest.fixture
def as_deployed(eventing: Eventing, kafka_bootstrap: str, naming: Naming,
                subscribers: dict[str, Subscriber]) -> Iterator[Pipeline]:
    """A pipeline on the manifests as they are: alert's Trigger ordered, aggregate's not."""
    p = Pipeline(eventing, kafka_bootstrap, naming, subscribers)
    yield p
    p.close()


def test_records_reach_both_functions_alert_in_order_per_device(
        as_deployed: Pipeline, subscribers: dict[str, Subscriber]) -> None:
    pipeline = as_deployed
    pipeline.start()
    devices = [f"dev-{i}" for i in range(10)]
    pipeline.produce([record(d, seq) for seq in range(20) for d in devices])

    expected = {f"{d}-{s}" for d in devices for s in range(20)}
    for name, sub in subscribers.items():
        wait_for(lambda s=sub: delivered_ids(s) >= expected, 60, "not every event arrived")
        if pipeline.eventing.trigger(name).ordered:
            assert_in_order_per_device(sub, devices, 20)
    # The broker topic is keyed like iot.telemetry: a device stays on its partition.
    broker_records = pipeline.read(pipeline.eventing.broker.topic, len(expected))
    for r in broker_records:
        assert r.partition == partition_for(r.key, 6)
    assert pipeline.dispatcher is not None
    stats = pipeline.dispatcher.stats()
    assert stats["aggregate"].dead_lettered == stats["alert"].dead_lettered == 0


def test_a_reply_is_published_on_the_alerts_topic(
        pipeline: Pipeline, subscribers: dict[str, Subscriber]) -> None:
    def reply_once(event: RawEvent, _attempt: int) -> tuple[int, Mapping[str, str], bytes]:
        if event.data["seq"] != 1:
            return 204, {}, b""
        device = event.attributes["subject"]
        headers, body = to_http({"specversion": "1.0", "type": "iot.alert.v1",
                                 "source": "/iot/alert", "id": f"{device}/raised",
                                 "subject": device, "partitionkey": device,
                                 "datacontenttype": "application/json"}, {"state": "raised"})
        return 200, headers, body

    subscribers["alert"].answer = reply_once
    pipeline.start()
    pipeline.produce([record("dev-1", 0), record("dev-1", 1), record("dev-1", 2)])

    [published] = pipeline.read("iot.alerts", 1)
    headers = dict(published.headers)
    assert headers["ce_type"] == b"iot.alert.v1" and published.key == b"dev-1"
    wait_for(lambda: len(subscribers["aggregate"].delivered) == 3, 30, "aggregate missed some")
    assert all(e.attributes["type"] == "iot.telemetry.v1"
               for e in subscribers["aggregate"].attempts)


def test_the_ingress_writes_posted_events_into_the_broker_topic(
        pipeline: Pipeline, subscribers: dict[str, Subscriber]) -> None:
    dispatcher = pipeline.start()
    assert dispatcher.ingress_url is not None
    attributes = {"specversion": "1.0", "type": "iot.telemetry.v1", "source": "/devices/dev-9",
                  "id": "posted-1", "subject": "dev-9", "datacontenttype": "application/json"}
    headers, body = to_http(attributes, {"seq": 0})
    request = urllib.request.Request(dispatcher.ingress_url + "/iot/iot-broker", data=body,
                                     headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=15) as response:
        assert response.status == 202

    wait_for(lambda: subscribers["aggregate"].ids() == ["posted-1"], 30, "not delivered")
    [stored] = pipeline.read(pipeline.eventing.broker.topic, 1)
    assert stored.key == b"dev-9"


def test_an_unordered_trigger_keeps_many_in_flight_and_commits_only_what_is_done(
        eventing: Eventing, kafka_bootstrap: str, naming: Naming,
        subscribers: dict[str, Subscriber]) -> None:
    """One device's events (one partition) reach an unordered Trigger's subscriber many at
    a time; an ordered Trigger still gets them one by one, in order."""
    unordered = replace(eventing, triggers=tuple(
        replace(t, ordered=t.name != "aggregate") for t in eventing.triggers))
    in_flight = {"now": 0, "most": 0}
    lock = threading.Lock()

    def slow(event: RawEvent, _attempt: int) -> tuple[int, Mapping[str, str], bytes]:
        with lock:
            in_flight["now"] += 1
            in_flight["most"] = max(in_flight["most"], in_flight["now"])
        time.sleep(0.1)
        with lock:
            in_flight["now"] -= 1
        return 204, {}, b""

    subscribers["aggregate"].answer = slow
    pipeline = Pipeline(unordered, kafka_bootstrap, naming, subscribers)
    try:
        pipeline.start()
        pipeline.produce([record("dev-1", seq) for seq in range(60)])
        expected = {f"dev-1-{s}" for s in range(60)}
        wait_for(lambda: delivered_ids(subscribers["aggregate"]) >= expected, 60,
                 "the unordered Trigger missed events")
        wait_for(lambda: delivered_ids(subscribers["alert"]) >= expected, 60,
                 "the ordered Trigger missed events")
        assert in_flight["most"] > 4
        assert_in_order_per_device(subscribers["alert"], ["dev-1"], 60)
        wait_for(lambda: sum(pipeline.committed("aggregate").values()) == 60, 30,
                 "the unordered Trigger's offsets were not committed to the end")
    finally:
        pipeline.close()


def test_every_alert_transition_of_one_event_reaches_the_alerts_topic(
        pipeline: Pipeline, subscribers: dict[str, Subscriber]) -> None:
    """The real alert function behind the dispatcher, K_SINK set as eventing/ binds it."""
    from datetime import UTC, datetime, timedelta

    from functions_framework import create_app

    from iot_telemetry import store
    from iot_telemetry.local.embedded import serve_app
    from iot_telemetry.runtime import set_runtime
    from tests.conftest import make_runtime
    from tests.conftest import record as telemetry_record

    store.reset_embedded()
    set_runtime(make_runtime())
    app = create_app("alert", str(REPO / "functions" / "alert.py"), "http")
    server = serve_app("127.0.0.1", 0, app)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dispatcher = Dispatcher(
        pipeline.eventing, [pipeline.bootstrap],
        {"aggregate": subscribers["aggregate"].url,
         "alert": f"http://127.0.0.1:{server.server_port}/"},
        ingress_port=0, naming=pipeline.naming)
    pipeline.dispatcher = dispatcher
    try:
        dispatcher.start()
        wait_for(dispatcher.ready, 60, "the dispatcher did not get its partitions")
        set_runtime(make_runtime(**dispatcher.sink_env("alert")))  # its ingress is up now
        # Default rules: 31, 32, 41 raise temperature-high (3 readings over 30) and, at 41,
        # temperature-critical (>= 40): two transitions of one event, and one reply.
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
        pipeline.produce([telemetry_record("dev-k", start + timedelta(seconds=10 * i),
                                           {"temperature": v}, f"k{i}")
                          for i, v in enumerate([31, 32, 41])])
        published = pipeline.read("iot.alerts", 2)
        assert {dict(r.headers)["ce_id"] for r in published} == {
            b"dev-k:temperature-high:1/raised", b"dev-k:temperature-critical:1/raised"}
        assert {r.key for r in published} == {b"dev-k"}
    finally:
        server.shutdown()


def test_a_ping_source_tick_reaches_the_real_alert_on_schedule_and_raises_offline(
        kafka_bootstrap: str, naming: Naming, subscribers: dict[str, Subscriber]) -> None:
    """eventing/ as is, with a clock set just before a minute boundary: the PingSource's
    tick goes through the broker topic and the offline-sweep Trigger to the real alert,
    which raises an offline alert for a device silent for 10 minutes."""
    from datetime import UTC, datetime, timedelta

    from functions_framework import create_app

    from iot_telemetry import store
    from iot_telemetry.local.embedded import serve_app
    from iot_telemetry.runtime import get_runtime, set_runtime
    from tests.conftest import make_runtime

    store.reset_embedded()
    set_runtime(make_runtime())
    get_runtime().store.collection("devices").insert_one(
        {"_id": "dev-silent", "last_seen": datetime.now(UTC) - timedelta(minutes=10)})
    app = create_app("alert", str(REPO / "functions" / "alert.py"), "http")
    server = serve_app("127.0.0.1", 0, app)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    offset = 60 - time.time() % 60 - 1.0  # the clock reads 1 s before the next minute
    pipeline = Pipeline(without_notify(load_eventing(EVENTING)), kafka_bootstrap, naming,
                        subscribers)
    pipeline.dispatcher = Dispatcher(
        pipeline.eventing, [kafka_bootstrap],
        {"aggregate": subscribers["aggregate"].url,
         "alert": f"http://127.0.0.1:{server.server_port}/"},
        ingress_port=0, naming=naming, clock=lambda: time.time() + offset)
    try:
        pipeline.dispatcher.start()
        [published] = pipeline.read("iot.alerts", 1, timeout=60)
        headers = dict(published.headers)
        assert headers["ce_id"] == b"dev-silent:device-offline:1/raised"
        assert published.key == b"dev-silent"
        stats = pipeline.dispatcher.stats()
        assert stats["offline-sweep"].delivered >= 1 and stats["offline-sweep"].dead_lettered == 0
        assert subscribers["aggregate"].attempts == []  # ticks are alert's only
        [tick] = [r for r in pipeline.read(pipeline.eventing.broker.topic, 2, timeout=5)
                  if dict(r.headers)["ce_type"] == b"dev.knative.sources.ping"][:1]
        assert dict(tick.headers)["ce_time"].endswith(b":00Z")  # on the minute, as scheduled
    finally:
        pipeline.close()
        server.shutdown()


def test_the_retention_tick_reaches_the_real_aggregate_daily_and_compacts(
        kafka_bootstrap: str, naming: Naming, subscribers: dict[str, Subscriber]) -> None:
    """eventing/ as is, with a clock set 1 s before the next 03:17 UTC: the rollup-retention
    PingSource's tick goes through the broker topic and its Trigger to the real aggregate,
    which compacts a day older than the minute retention into its month document."""
    from datetime import UTC, datetime, timedelta

    from functions_framework import create_app

    from iot_telemetry import store
    from iot_telemetry.local.embedded import serve_app
    from iot_telemetry.retention import Retention
    from iot_telemetry.rollup import RollupWriter
    from iot_telemetry.runtime import get_runtime, set_runtime
    from iot_telemetry.series import bucket_start, month_id
    from tests.conftest import make_runtime
    from tests.unit.test_rollup_exact import event_of

    store.reset_embedded()
    set_runtime(make_runtime())
    rt = get_runtime()
    day = bucket_start(datetime.now(UTC), "1d") - timedelta(days=40)
    writer = RollupWriter(rt.store, retention=Retention(), clock=lambda: day + timedelta(hours=2))
    assert writer.apply(event_of("dev-old", day + timedelta(hours=1), {"x": 2.0}, "old-1"))
    app = create_app("aggregate", str(REPO / "functions" / "aggregate.py"), "http")
    server = serve_app("127.0.0.1", 0, app)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    now = datetime.now(UTC)
    due = now.replace(hour=3, minute=17, second=0, microsecond=0)
    due += timedelta(days=1) if due <= now else timedelta(0)
    offset = (due - now).total_seconds() - 1.0
    pipeline = Pipeline(without_notify(load_eventing(EVENTING)), kafka_bootstrap, naming,
                        subscribers)
    pipeline.dispatcher = Dispatcher(
        pipeline.eventing, [kafka_bootstrap],
        {"aggregate": f"http://127.0.0.1:{server.server_port}/",
         "alert": subscribers["alert"].url},
        ingress_port=0, naming=naming, clock=lambda: time.time() + offset)
    try:
        pipeline.dispatcher.start()
        months = rt.store.collection("rollup_months")
        wait_for(lambda: months.count_documents({}) == 1, 60, "no month document")
        month = months.find_one({"_id": month_id("dev-old", day)})
        assert month is not None and set(month["d"]["x"]) == {f"{day.day:02d}"}
        # The dispatcher counts the delivery once it has aggregate's answer, which may come
        # just after the sweep's writes are visible.
        wait_for(lambda: pipeline.dispatcher.stats()["rollup-retention"].delivered == 1, 30,
                 "the tick was not counted as delivered")
        stats = pipeline.dispatcher.stats()
        assert stats["rollup-retention"].dead_lettered == 0
    finally:
        pipeline.close()
        server.shutdown()


# --- dead letters ---------------------------------------------------------------------------

def test_a_poison_event_goes_to_the_dlq_and_its_partition_moves_on(
        pipeline: Pipeline, subscribers: dict[str, Subscriber]) -> None:
    def picky(event: RawEvent, _attempt: int) -> tuple[int, Mapping[str, str], bytes]:
        if event.attributes["id"] == "poison":
            return 400, {"Content-Type": "application/json"}, b'{"error":"invalid"}'
        return 202, {}, b""

    subscribers["aggregate"].answer = picky
    pipeline.start()
    pipeline.produce([record("dev-1", 0), record("dev-1", 1, "poison"), record("dev-1", 2),
                      record("dev-1", 3)])

    wait_for(lambda: subscribers["aggregate"].ids() == ["dev-1-0", "dev-1-2", "dev-1-3"], 30,
             "later events of the poisoned partition were not delivered")
    [dead] = pipeline.read("iot.telemetry.dlq", 1)
    headers = dict(dead.headers)
    assert headers["ce_id"] == b"poison" and dead.key == b"dev-1"
    assert headers["ce_knativeerrorcode"] == b"400"
    assert headers["ce_knativeerrordest"] == subscribers["aggregate"].url.encode()
    assert subscribers["aggregate"].tries("poison") == 1
    assert pipeline.dispatcher is not None
    assert pipeline.dispatcher.stats()["aggregate"].dead_lettered == 1


def test_a_record_that_is_not_a_cloudevent_is_dead_lettered_not_skipped_silently(
        pipeline: Pipeline, subscribers: dict[str, Subscriber]) -> None:
    pipeline.start()
    garbage = KafkaRecord("iot.telemetry", b"dev-1", (("content-type", b"text/plain"),), b"hi")
    pipeline.produce([garbage, record("dev-1", 0)])

    wait_for(lambda: subscribers["aggregate"].ids() == ["dev-1-0"], 30, "next event missing")
    dead = pipeline.read("iot.telemetry.dlq", 2)
    assert {r.value for r in dead} == {b"hi"}
    assert all(b"ce_knativeerrordata" in {k.encode() for k, _ in r.headers} for r in dead)


# --- outages and restarts -------------------------------------------------------------------

def test_a_subscriber_down_for_seconds_loses_nothing(
        pipeline: Pipeline, subscribers: dict[str, Subscriber]) -> None:
    pipeline.start()
    aggregate = subscribers["aggregate"]
    port = aggregate.port
    aggregate.close()
    devices = ["dev-1", "dev-2", "dev-3"]
    pipeline.produce([record(d, seq) for seq in range(10) for d in devices])
    time.sleep(4)
    revived = Subscriber(port=port)
    try:
        expected = {f"{d}-{s}" for d in devices for s in range(10)}
        wait_for(lambda: delivered_ids(revived) >= expected, 60, "events were lost")
        assert_in_order_per_device(revived, devices, 10)
        assert pipeline.dispatcher is not None
        stats = pipeline.dispatcher.stats()["aggregate"]
        assert stats.retried >= 1 and stats.dead_lettered == 0
    finally:
        revived.close()


def test_an_offset_is_committed_only_once_its_record_is_done(
        pipeline: Pipeline, subscribers: dict[str, Subscriber]) -> None:
    release = threading.Event()

    def hold(event: RawEvent, _attempt: int) -> tuple[int, Mapping[str, str], bytes]:
        if event.attributes["id"] == "dev-1-1":
            release.wait(30)
        return 202, {}, b""

    subscribers["aggregate"].answer = hold
    pipeline.start()
    pipeline.produce([record("dev-1", s) for s in range(3)])
    partition = partition_for(b"dev-1", 6)

    wait_for(lambda: pipeline.committed("aggregate").get(partition) == 1, 30,
             "the first record's offset was not committed")
    time.sleep(1)  # several commit intervals while dev-1-1 is in flight
    assert pipeline.committed("aggregate").get(partition) == 1
    release.set()
    wait_for(lambda: pipeline.committed("aggregate").get(partition) == 3, 30,
             "offsets did not move on once the records were done")


def test_a_killed_dispatcher_resumes_where_it_left_off(
        eventing: Eventing, kafka_bootstrap: str, naming: Naming,
        subscribers: dict[str, Subscriber], pipeline: Pipeline) -> None:
    def slow(_event: RawEvent, _attempt: int) -> tuple[int, Mapping[str, str], bytes]:
        time.sleep(0.02)
        return 202, {}, b""

    for sub in subscribers.values():
        sub.answer = slow
    devices = [f"dev-{i}" for i in range(6)]
    pipeline.create_source_topic()
    pipeline.produce([record(d, seq) for seq in range(40) for d in devices])
    expected = {f"{d}-{s}" for d in devices for s in range(40)}

    process = start_dispatcher_process(kafka_bootstrap, naming, subscribers)
    try:
        wait_for(lambda: len(subscribers["aggregate"].delivered) >= 40, 60, "no progress")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        before = len(subscribers["aggregate"].delivered)
        assert before < len(expected), "finished before it could be killed"
        process = start_dispatcher_process(kafka_bootstrap, naming, subscribers)
        for name, sub in subscribers.items():
            wait_for(lambda s=sub: delivered_ids(s) >= expected, 90, "events were lost")
            if eventing.trigger(name).ordered:  # the manifests' own: alert ordered
                assert_in_order_per_device(sub, devices, 40)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def start_dispatcher_process(bootstrap: str, naming: Naming,
                             subscribers: Mapping[str, Subscriber]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "iot_telemetry.local.eventing.dispatcher", "--eventing",
               str(EVENTING), "--bootstrap", bootstrap, "--ingress-port", "0",
               "--name-suffix", naming.suffix]
    for name, sub in subscribers.items():
        command += ["--subscriber", f"{name}={sub.url}"]
    # eventing/ as is: notify's Triggers need a URL; nothing here sends it alert events.
    command += ["--subscriber", "notify=http://127.0.0.1:9/"]
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, "LOG_LEVEL": "WARNING"})


# --- one shared fetch for every Trigger -----------------------------------------------------

def hold_until(release: threading.Event) -> Callable[[RawEvent, int], tuple[int, Mapping[str, str],
                                                                              bytes]]:
    def answer(_event: RawEvent, _attempt: int) -> tuple[int, Mapping[str, str], bytes]:
        release.wait(60)
        return 202, {}, b""

    return answer


def test_a_stuck_trigger_holds_back_neither_the_others_nor_its_own_offsets(
        pipeline: Pipeline, subscribers: dict[str, Subscriber]) -> None:
    """The Triggers share one fetch: while alert's subscriber hangs, aggregate gets every
    event and commits past them, offline-sweep (its filter takes none of them) commits past
    them too, and alert's committed offsets stay where its records are not done."""
    release = threading.Event()
    subscribers["alert"].answer = hold_until(release)
    pipeline.start()
    devices = [f"dev-{i}" for i in range(6)]
    pipeline.produce([record(d, seq) for seq in range(10) for d in devices])
    expected = {f"{d}-{s}" for d in devices for s in range(10)}
    try:
        wait_for(lambda: delivered_ids(subscribers["aggregate"]) >= expected, 60,
                 "a stuck Trigger held back another one")
        for trigger in ("aggregate", "offline-sweep"):
            wait_for(lambda t=trigger: sum(pipeline.committed(t).values()) == len(expected), 30,
                     f"{trigger}'s offsets were not committed to the end")
        assert sum(pipeline.committed("alert").values()) < len(expected)
    finally:
        release.set()
    wait_for(lambda: delivered_ids(subscribers["alert"]) >= expected, 60, "alert lost events")
    assert_in_order_per_device(subscribers["alert"], devices, 10)
    wait_for(lambda: sum(pipeline.committed("alert").values()) == len(expected), 30,
             "alert's offsets were not committed to the end")


def test_a_trigger_past_its_buffer_holds_back_no_other_and_skips_nothing(
        pipeline: Pipeline, subscribers: dict[str, Subscriber]) -> None:
    """With a buffer of 3 records per Trigger and partition, a stuck alert leaves the shared
    fetch (it would pause the partition for every Trigger): aggregate gets every event while
    alert holds; once alert answers again, its own reader catches up from where its lane
    stopped and both have every event, in order, none twice."""
    release = threading.Event()
    subscribers["alert"].answer = hold_until(release)
    pipeline.start(max_queued=3)
    expected = {f"dev-1-{s}" for s in range(40)}
    try:
        pipeline.produce([record("dev-1", seq) for seq in range(10)])
        wait_for(lambda: len(subscribers["alert"].attempts) >= 1, 30, "alert got nothing")
        pipeline.produce([record("dev-1", seq) for seq in range(10, 40)])
        # Far past alert's 3 buffered records, while alert has answered none.
        wait_for(lambda: delivered_ids(subscribers["aggregate"]) >= expected, 30,
                 "aggregate was held back by the stuck alert")
        assert len(subscribers["alert"].delivered) == 0
        assert len(subscribers["alert"].attempts) == 1
    finally:
        release.set()
    for sub in subscribers.values():
        wait_for(lambda s=sub: delivered_ids(s) >= expected, 60, "events were skipped")
        assert len(sub.attempts) == len(expected)  # none twice
    assert_in_order_per_device(subscribers["alert"], ["dev-1"], 40)  # alert's is ordered
    wait_for(lambda: sum(pipeline.committed("alert").values()) == len(expected), 30,
             "alert's offsets were not committed to the end")


def test_a_failing_trigger_over_many_partitions_holds_back_no_other(
        pipeline: Pipeline, subscribers: dict[str, Subscriber]) -> None:
    """alert answers 503 on every partition (retried with backoff), its lanes fill past the
    buffer, and aggregate still gets every event of every device at once; when alert
    recovers it gets them all, each device in order."""
    healthy = threading.Event()

    def failing(_event: RawEvent, _attempt: int) -> tuple[int, Mapping[str, str], bytes]:
        return (202 if healthy.is_set() else 503), {}, b""

    subscribers["alert"].answer = failing
    pipeline.start(max_queued=2)
    devices = [f"dev-{n}" for n in range(12)]
    expected = {f"{d}-{s}" for d in devices for s in range(15)}
    pipeline.produce([record(d, seq) for seq in range(15) for d in devices])
    wait_for(lambda: delivered_ids(subscribers["aggregate"]) >= expected, 30,
             "aggregate was held back by the failing alert")
    assert subscribers["alert"].delivered == []
    healthy.set()
    wait_for(lambda: delivered_ids(subscribers["alert"]) >= expected, 90, "alert lost events")
    assert_in_order_per_device(subscribers["alert"], devices, 15)
    assert len(subscribers["aggregate"].attempts) == len(expected)
    assert len(subscribers["alert"].delivered) == len(expected)


def test_a_restart_resumes_each_trigger_from_its_own_committed_offsets(
        pipeline: Pipeline, subscribers: dict[str, Subscriber]) -> None:
    """alert stopped halfway, aggregate at the end: after a restart the shared fetch starts
    from alert's offset, alert gets the rest in order, and aggregate (whose offsets are
    ahead) none of what it already had."""
    def halfway(event: RawEvent, _attempt: int) -> tuple[int, Mapping[str, str], bytes]:
        # Unavailable from the 11th on: retried until the dispatcher stops.
        return (503 if event.data["seq"] >= 10 else 202), {}, b""

    subscribers["alert"].answer = halfway
    pipeline.start()
    pipeline.produce([record("dev-1", seq) for seq in range(20)])
    expected = {f"dev-1-{s}" for s in range(20)}
    partition = partition_for(b"dev-1", 6)
    wait_for(lambda: delivered_ids(subscribers["aggregate"]) >= expected, 60, "aggregate")
    wait_for(lambda: pipeline.committed("aggregate").get(partition) == 20, 30,
             "aggregate's offsets were not committed")
    wait_for(lambda: pipeline.committed("alert").get(partition) == 10, 30,
             "alert's first ten were not committed")
    pipeline.stop()
    aggregate_attempts = len(subscribers["aggregate"].attempts)
    assert aggregate_attempts == 20

    subscribers["alert"].answer = lambda _e, _a: (202, {}, b"")
    pipeline.start()
    wait_for(lambda: delivered_ids(subscribers["alert"]) >= expected, 60, "alert lost events")
    assert_in_order_per_device(subscribers["alert"], ["dev-1"], 20)
    wait_for(lambda: pipeline.committed("alert").get(partition) == 20, 30, "alert's offsets")
    assert len(subscribers["aggregate"].attempts) == aggregate_attempts
