"""Real-mode dispatcher: plays the KafkaSource, the Kafka Broker and its Triggers on real Kafka.

    python -m iot_telemetry.local.dispatcher --eventing eventing/ --bootstrap localhost:9092 \
        --subscriber aggregate=http://127.0.0.1:8003 --subscriber alert=http://127.0.0.1:8004

- The KafkaSource copies its topics (iot.telemetry) into the Broker topic
  (knative-broker-iot-iot-broker), record for record, keeping key and ce_* headers.
- Each Trigger reads the Broker topic under its own consumer group
  (knative-trigger-iot-<trigger>), one thread per partition so a partition's events are
  delivered one at a time in offset order, filters, and delivers in binary mode with the
  retries and backoff of its delivery spec (delivery.py, shared with the in-memory broker).
  Replies go back into the Broker topic; dead letters to the topic of the deadLetterSink.
- An offset is committed only once its record is done: delivered (and its reply written)
  or dead-lettered (and the dead letter written). A crash redelivers, never skips.
- Each PingSource publishes its event into the Broker topic at each time of its cron
  schedule (pings.py), like the ingress does with posted events.
- Partitions are assigned to each consumer directly, not through group membership: run
  one dispatcher per Kafka cluster. A Kafka restart then needs no rebalance; the clients
  reconnect and everything resumes from where it was. Writes (to the Broker topic, replies,
  dead letters) are retried until Kafka acknowledges them, so an outage delays, never drops.
- A subscriber that does not answer (connection refused, reset, timeout) is retried like a
  5xx, within the Trigger's budget (10 retries from PT0.2S: about 409 s), and then
  dead-lettered, as the Kafka Broker does. A function killed and restarted within minutes
  therefore loses nothing and keeps its order (its partition waits); one down for longer
  has its events parked on iot.telemetry.dlq with knativeerrordest, from where they can be
  replayed. Retrying forever instead would make the local run behave unlike the cluster.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from iot_telemetry.errors import BadRequest, DependencyUnavailable
from iot_telemetry.events import JSON, KafkaRecord, from_kafka, to_kafka
from iot_telemetry.httpsession import HttpSession
from iot_telemetry.observability import configure_logging

from .delivery import (
    Aborted,
    DeadLettered,
    Delivered,
    IngressServer,
    TriggerCounters,
    TriggerStats,
    deliver,
    error_extensions,
    ingress_app,
    missing_attributes,
    text_attributes,
)
from .eventing import Eventing, Source, Trigger, load_eventing
from .layout import BROKER_PORT, EVENTING_DIR
from .pings import PingPlayer

log = logging.getLogger("iot_telemetry.local.dispatcher")

#: Fetches wait up to FETCH_MAX_WAIT_MS for FETCH_MIN_BYTES, so that a busy topic is read in
#: batches rather than a fetch round trip per record: kafka-python's cost is per fetch, and
#: five consumers (the source and four Triggers) read each event. At 40 events/s this cut the
#: dispatcher's CPU per data point from 443 to 319 us and Kafka's from 95 to 74
#: (tests/benchmarks/pipeline_cpu.py), for at most 50 ms more per hop.
FETCH_MIN_BYTES: Final = 64 * 1024
FETCH_MAX_WAIT_MS: Final = 50
#: A partition's worker holds at most this many fetched records; past it the partition pauses.
MAX_QUEUED: Final = 1000
#: How often done offsets are committed (seconds); a crash redelivers at most this much.
COMMIT_INTERVAL: Final = 0.2
#: Longest pause between two attempts to reach Kafka.
MAX_KAFKA_BACKOFF: Final = 5.0
#: Deliveries in flight at once for one unordered Trigger, over all its partitions (the
#: Kafka Broker's unordered dispatcher also keeps many in flight per partition).
UNORDERED_IN_FLIGHT: Final = 64
#: How often a consumer looks for partitions added to its topics (seconds).
PARTITION_CHECK_INTERVAL: Final = 30.0
#: How long the ingress waits for Kafka to acknowledge a posted event before answering 503.
INGRESS_ACK_TIMEOUT: Final = 10.0
ERROR_HEADERS: Final = frozenset({"ce_knativeerrordest", "ce_knativeerrorcode",
                                  "ce_knativeerrordata"})


class Stopped(Exception):
    """The dispatcher is stopping; the record at hand stays uncommitted."""


@dataclass(frozen=True)
class Naming:
    """Topic and consumer-group names; a suffix keeps test runs from sharing them."""

    suffix: str = ""

    def topic(self, name: str) -> str:
        return f"{name}{self.suffix}"

    def group(self, name: str) -> str:
        return f"{name}{self.suffix}"


def _kafka_errors() -> tuple[type[BaseException], ...]:
    from kafka.errors import KafkaError

    return (KafkaError, TimeoutError, OSError)


# --- writing --------------------------------------------------------------------------------

class RecordWriter:
    """One producer (acks=all) shared by every thread; writes until acknowledged."""

    def __init__(self, bootstrap: Sequence[str], client_id: str = "iot-dispatcher") -> None:
        self._options: dict[str, Any] = {
            "bootstrap_servers": list(bootstrap), "client_id": client_id, "acks": "all",
            "linger_ms": 2, "max_block_ms": 5000, "delivery_timeout_ms": 30000,
            "request_timeout_ms": 10000, "reconnect_backoff_max_ms": 2000,
            # kafka-python's idempotent producer stops sending for good once a retried
            # batch expires across a broker restart; a duplicate write is harmless here
            # (every consumer deduplicates), a wedged dispatcher is not.
            "enable_idempotence": False,
        }
        self._producer: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._producer is None:
                from kafka import KafkaProducer

                self._producer = KafkaProducer(**self._options)
            return self._producer

    def write(self, records: Sequence[KafkaRecord], stop: threading.Event,
              timeout: float | None = None) -> None:
        """Write records in order; retry until all are acknowledged.

        Raises Stopped if `stop` is set first, DependencyUnavailable once `timeout` passes.
        A record whose acknowledgement was lost may be written twice (at-least-once).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = list(records)
        delay = 0.2
        while pending:
            if stop.is_set():
                raise Stopped
            acked = 0
            try:
                producer = self._get()
                futures = [producer.send(r.topic, key=r.key, value=r.value,
                                         headers=list(r.headers)) for r in pending]
                for future in futures:
                    while not future.is_done:
                        if stop.is_set():
                            raise Stopped
                        if deadline is not None and time.monotonic() > deadline:
                            raise TimeoutError("no acknowledgement in time")
                        try:
                            future.get(timeout=0.5)
                        except _kafka_errors():
                            if future.is_done:
                                raise
                    future.get(timeout=0)  # raises the error of a failed write
                    acked += 1
                return
            except _kafka_errors() as exc:
                pending = pending[acked:]
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise DependencyUnavailable(f"Kafka did not acknowledge: {exc}") from None
                log.warning("kafka write failed, retrying", extra={
                    "error": f"{type(exc).__name__}: {exc}", "records": len(pending),
                    "retry_in_seconds": delay})
                if stop.wait(delay):
                    raise Stopped from None
                delay = min(delay * 2, MAX_KAFKA_BACKOFF)

    def ready(self) -> bool:
        try:
            return bool(self._get().bootstrap_connected())
        except Exception:
            return False

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None


# --- consuming ------------------------------------------------------------------------------

#: Handles records of one partition in order; calls done(next_offset) as each is finished.
Process = Callable[[list[Any], Callable[[int], None], threading.Event], None]


class PartitionWorker:
    """Drains one partition's fetched records in order on its own thread."""

    def __init__(self, name: str, process: Process) -> None:
        self._process = process
        self._queue: deque[Any] = deque()
        self._cond = threading.Condition()
        self.stop = threading.Event()
        self._done: int | None = None
        self._committed: int | None = None
        self._batch: list[Any] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, records: list[Any]) -> None:
        with self._cond:
            self._queue.extend(records)
            self._cond.notify()

    @property
    def queued(self) -> int:
        """Records fetched for this partition and not yet done."""
        with self._cond:
            done = self._done
            busy = sum(1 for r in self._batch if done is None or r.offset >= done)
            return len(self._queue) + busy

    def take_done(self) -> int | None:
        """The next offset to commit if it moved since the last call."""
        with self._cond:
            if self._done is None or self._done == self._committed:
                return None
            return self._done

    def committed(self, offset: int) -> None:
        with self._cond:
            self._committed = offset

    def _mark(self, offset: int) -> None:
        with self._cond:
            self._done = offset

    def _run(self) -> None:
        while not self.stop.is_set():
            with self._cond:
                while not self._queue and not self.stop.is_set():
                    self._cond.wait(0.5)
                if self.stop.is_set():
                    return
                batch = list(self._queue)
                self._queue.clear()
                self._batch = batch
            delay = 1.0
            while batch and not self.stop.is_set():
                try:
                    self._process(batch, self._mark, self.stop)
                    batch = []
                except Stopped:
                    return
                except Exception:
                    # A bug, not a bad event: hold the partition rather than skip a record.
                    log.exception("record handling failed; retrying the same record",
                                  extra={"worker": self._thread.name, "retry_in_seconds": delay})
                    done = self._done
                    batch = [r for r in batch if done is None or r.offset >= done]
                    self.stop.wait(delay)
                    delay = min(delay * 2, 30.0)

    def shutdown(self, timeout: float) -> None:
        self.stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)


class PartitionedConsumer:
    """One consumer over every partition of some topics, a worker per partition, manual commits."""

    def __init__(self, name: str, bootstrap: Sequence[str], topics: Sequence[str], *,
                 group: str, offset_reset: str, process: Process, stop: threading.Event) -> None:
        self.name = name
        self._bootstrap = list(bootstrap)
        self._topics = list(topics)
        self._group = group
        self._offset_reset = offset_reset
        self._process = process
        self._stop = stop
        self._workers: dict[Any, PartitionWorker] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"consumer-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def queued(self) -> int:
        with self._lock:
            return sum(w.queued for w in self._workers.values())

    @property
    def assigned(self) -> int:
        with self._lock:
            return len(self._workers)

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                self._session()
                delay = 0.5
            except Exception as exc:
                log.warning("consumer session ended, reconnecting", extra={
                    "consumer": self.name, "error": f"{type(exc).__name__}: {exc}",
                    "retry_in_seconds": delay})
                self._stop.wait(delay)
                delay = min(delay * 2, MAX_KAFKA_BACKOFF)

    def _partitions(self, consumer: Any) -> list[Any]:
        from kafka import TopicPartition

        tps = []
        for topic in self._topics:
            ids = consumer.partitions_for_topic(topic)
            if not ids:
                raise RuntimeError(f"topic {topic} has no partitions (yet)")
            tps += [TopicPartition(topic, p) for p in sorted(ids)]
        return tps

    def _grown(self, consumer: Any, assigned: list[Any]) -> bool:
        # Metadata may be missing while Kafka restarts: only a larger count means new partitions.
        known = sum(len(consumer.partitions_for_topic(t) or ()) for t in self._topics)
        return known > len(assigned)

    def _session(self) -> None:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            bootstrap_servers=self._bootstrap, group_id=self._group, client_id=self._group,
            enable_auto_commit=False, auto_offset_reset=self._offset_reset,
            max_poll_records=500, reconnect_backoff_max_ms=2000, request_timeout_ms=30000,
            fetch_min_bytes=FETCH_MIN_BYTES, fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
        try:
            tps = self._partitions(consumer)
            consumer.assign(tps)
            with self._lock:
                self._workers = {tp: PartitionWorker(f"{self.name}-{tp.partition}",
                                                     self._process) for tp in tps}
            log.info("consuming", extra={"consumer": self.name, "group": self._group,
                                         "topics": self._topics, "partitions": len(tps)})
            paused: set[Any] = set()
            last_commit = last_check = time.monotonic()
            while not self._stop.is_set():
                for tp, records in consumer.poll(timeout_ms=200).items():
                    self._workers[tp].put(records)
                for tp, worker in self._workers.items():
                    backlog = worker.queued
                    if backlog >= MAX_QUEUED and tp not in paused:
                        consumer.pause(tp)
                        paused.add(tp)
                    elif backlog < MAX_QUEUED // 2 and tp in paused:
                        consumer.resume(tp)
                        paused.discard(tp)
                now = time.monotonic()
                if now - last_commit >= COMMIT_INTERVAL:
                    self._commit(consumer)
                    last_commit = now
                if now - last_check >= PARTITION_CHECK_INTERVAL:
                    last_check = now
                    if self._grown(consumer, tps):
                        raise RuntimeError("partitions were added; reassigning")
        finally:
            with self._lock:
                workers, self._workers = self._workers, {}
            for worker in workers.values():
                worker.stop.set()
            deadline = time.monotonic() + 15
            for worker in workers.values():
                worker.shutdown(timeout=max(0.0, deadline - time.monotonic()))
            self._commit(consumer, workers)
            consumer.close(autocommit=False)

    def _commit(self, consumer: Any, workers: Mapping[Any, PartitionWorker] | None = None,
                ) -> None:
        from kafka.structs import OffsetAndMetadata

        workers = self._workers if workers is None else workers
        offsets = {tp: o for tp, w in workers.items() if (o := w.take_done()) is not None}
        if not offsets:
            return
        try:
            consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()},
                            timeout_ms=5000)
        except _kafka_errors() as exc:
            log.warning("offset commit failed, will retry", extra={
                "consumer": self.name, "error": f"{type(exc).__name__}: {exc}"})
            return
        for tp, offset in offsets.items():
            workers[tp].committed(offset)


# --- the dispatcher -------------------------------------------------------------------------

class Dispatcher:
    """KafkaSource + Broker + Triggers of eventing/ on a real Kafka cluster."""

    def __init__(self, eventing: Eventing, bootstrap: Sequence[str],
                 subscribers: Mapping[str, str], *, ingress_port: int | None = BROKER_PORT,
                 ingress_host: str = "127.0.0.1", naming: Naming | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        missing = [s for s in eventing.services if s not in subscribers]
        if missing:
            raise ValueError(f"no URL for subscriber service(s) {', '.join(missing)}")
        self.eventing = eventing
        self.naming = naming or Naming()
        self._bootstrap = list(bootstrap)
        self._subscribers = dict(subscribers)
        self._stop = threading.Event()
        self._writer = RecordWriter(self._bootstrap)
        self._counters = {t.name: TriggerCounters() for t in eventing.triggers}
        self._pools: list[ThreadPoolExecutor] = []
        self._consumers: dict[str, PartitionedConsumer] = {}
        self._ingress_port = ingress_port
        self._ingress_host = ingress_host
        self._ingress: IngressServer | None = None
        self._started = False
        self._pings = PingPlayer(eventing.pings, self._publish, self._stop, clock=clock)

    @property
    def broker_topic(self) -> str:
        return self.naming.topic(self.eventing.broker.topic)

    def sink_topic(self, sink: str) -> str:
        return self.naming.topic(self.eventing.sink_topic(sink))

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Create missing topics (waiting for Kafka), then start consuming and the ingress."""
        if self._started:
            return
        self._started = True
        if self._ingress_port is not None:
            self._ingress = IngressServer(ingress_app(self._publish, self.ready),
                                          self._ingress_host, self._ingress_port)
            self._ingress.start()
            log.info("broker ingress listening", extra={"url": self._ingress.url})
        self._ensure_topics()
        if self._stop.is_set():
            return
        for source in self.eventing.sources:
            self._consumers[f"source/{source.name}"] = PartitionedConsumer(
                f"source-{source.name}", self._bootstrap,
                [self.naming.topic(t) for t in source.topics],
                group=self.naming.group(source.consumer_group),
                offset_reset=source.initial_offset, process=self._source_process(source),
                stop=self._stop)
        for trigger in self.eventing.triggers:
            # Earliest: a Trigger created before any event is consumed must see all of them.
            self._consumers[f"trigger/{trigger.name}"] = PartitionedConsumer(
                f"trigger-{trigger.name}", self._bootstrap, [self.broker_topic],
                group=self.naming.group(trigger.consumer_group), offset_reset="earliest",
                process=self._trigger_process(trigger), stop=self._stop)
        for consumer in self._consumers.values():
            consumer.start()
        self._pings.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop consuming: retries waiting are abandoned, done offsets committed, clients closed."""
        self._stop.set()
        if self._ingress is not None:
            self._ingress.stop()
            self._ingress = None
        deadline = time.monotonic() + timeout
        for consumer in self._consumers.values():
            consumer.join(max(0.0, deadline - time.monotonic()))
        self._pings.join(max(0.0, deadline - time.monotonic()))
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)
        self._writer.close()

    def request_stop(self) -> None:
        """Ask the dispatcher to stop (safe from a signal handler); stop() then finishes it."""
        self._stop.set()

    def wait(self) -> None:
        """Block until stop() (or a signal handler) ends the dispatcher."""
        while not self._stop.wait(0.5):
            pass

    def ready(self) -> bool:
        return (self._started and not self._stop.is_set() and bool(self._consumers)
                and all(c.assigned for c in self._consumers.values()))

    def stats(self) -> dict[str, TriggerStats]:
        stats = {}
        for name, counters in self._counters.items():
            snap = counters.snapshot()
            consumer = self._consumers.get(f"trigger/{name}")
            stats[name] = TriggerStats(snap.delivered, snap.retried, snap.dead_lettered,
                                       snap.filtered, consumer.queued if consumer else 0)
        return stats

    @property
    def ingress_url(self) -> str | None:
        return self._ingress.url if self._ingress is not None else None

    def sink_env(self, service: str) -> dict[str, str]:
        """Environment a SinkBinding of eventing/ gives `service` (K_SINK = this ingress)."""
        return self.eventing.sink_env(service, self.ingress_url)

    # --- topics -------------------------------------------------------------------------

    def _ensure_topics(self) -> None:
        broker = self.eventing.broker
        wanted: dict[str, tuple[int, int]] = {
            self.broker_topic: (broker.partitions, broker.replication_factor)}
        for sink in self.eventing.sinks.values():
            wanted[self.naming.topic(sink.topic)] = (
                sink.partitions or broker.partitions,
                sink.replication_factor or broker.replication_factor)
        for source in self.eventing.sources:
            # Normally created by whoever runs Kafka; created here so that ingest's first
            # write does not auto-create it with the cluster's default single partition.
            for topic in source.topics:
                wanted.setdefault(self.naming.topic(topic),
                                  (broker.partitions, broker.replication_factor))
        delay = 0.5
        while not self._stop.is_set():
            try:
                self._create_topics(wanted)
                return
            except _kafka_errors() as exc:
                log.warning("cannot reach Kafka to create topics, retrying", extra={
                    "error": f"{type(exc).__name__}: {exc}", "retry_in_seconds": delay})
                self._stop.wait(delay)
                delay = min(delay * 2, MAX_KAFKA_BACKOFF)

    def _create_topics(self, wanted: Mapping[str, tuple[int, int]]) -> None:
        from kafka.admin import KafkaAdminClient
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=self._bootstrap, client_id="iot-dispatcher")
        try:
            existing = set(admin.list_topics())
            brokers = max(1, len(admin.describe_cluster().get("brokers", [])))
            for topic, (partitions, replicas) in wanted.items():
                if topic in existing:
                    continue
                # A dev cluster has fewer brokers than production wants replicas.
                factor = min(replicas, brokers)
                try:
                    admin.create_topics({topic: {"num_partitions": partitions,
                                                 "replication_factor": factor}},
                                        wait_for_metadata=True)
                    log.info("created topic", extra={"topic": topic, "partitions": partitions,
                                                     "replication_factor": factor})
                except TopicAlreadyExistsError:
                    pass
        finally:
            admin.close()

    # --- the KafkaSource ----------------------------------------------------------------

    def _source_process(self, source: Source) -> Process:
        broker_topic = self.broker_topic

        def process(batch: list[Any], done: Callable[[int], None],
                    stop: threading.Event) -> None:
            # Same key, value and ce_* headers: the event ingest accepted, unchanged, and the
            # same key keeps a device on one partition of the broker topic too.
            records = [KafkaRecord(broker_topic, r.key or b"", tuple(r.headers or ()),
                                   r.value or b"") for r in batch]
            self._writer.write(records, stop)
            done(batch[-1].offset + 1)

        return process

    # --- the Triggers -------------------------------------------------------------------

    def _trigger_process(self, trigger: Trigger) -> Process:
        counters = self._counters[trigger.name]
        url = self._subscribers.get(trigger.service or "", "")
        local = threading.local()

        def dispatch(record: Any, stop: threading.Event) -> None:
            session = getattr(local, "session", None)
            if session is None:
                session = local.session = HttpSession()
            self._dispatch(trigger, record, url, session, counters=counters, stop=stop)

        def process(batch: list[Any], done: Callable[[int], None],
                    stop: threading.Event) -> None:
            for record in batch:
                dispatch(record, stop)
                done(record.offset + 1)

        if trigger.ordered:
            return process
        pool = ThreadPoolExecutor(UNORDERED_IN_FLIGHT, thread_name_prefix=f"deliver-{trigger.name}")
        self._pools.append(pool)

        def process_unordered(batch: list[Any], done: Callable[[int], None],
                              stop: threading.Event) -> None:
            # Many at once; the committed offset only moves past a window once every record
            # of it is done, so a crash redelivers, never skips.
            for start in range(0, len(batch), UNORDERED_IN_FLIGHT):
                window = batch[start:start + UNORDERED_IN_FLIGHT]
                futures = [pool.submit(dispatch, record, stop) for record in window]
                for future in futures:
                    future.result()
                done(window[-1].offset + 1)

        return process_unordered

    def _dispatch(self, trigger: Trigger, record: Any, url: str, session: HttpSession, *,
                  counters: TriggerCounters, stop: threading.Event) -> None:
        """Handle one record to the end (delivered, filtered or dead-lettered), or raise Stopped."""
        try:
            event = from_kafka(record.key, record.headers or (), record.value or b"")
            attributes = text_attributes(event.attributes)
            missing = missing_attributes(attributes)
            if missing:
                raise BadRequest(f"record lacks {', '.join(missing)}")
            attributes.setdefault("datacontenttype", JSON)
        except BadRequest as exc:
            self._dead_letter(trigger, record, DeadLettered(str(exc), None, 0), url, stop)
            counters.add(dead_lettered=1)
            return
        if not trigger.matches(attributes):
            counters.add(filtered=1)
            return
        if trigger.sink is not None:
            self._writer.write([to_kafka(self.sink_topic(trigger.sink), attributes, event.data)],
                               stop)
            counters.add(delivered=1)
            return
        outcome = deliver(trigger, attributes, event.data, url, session, stop=stop,
                          on_retry=lambda _n, _why: counters.add(retried=1))
        if isinstance(outcome, Aborted):
            raise Stopped
        if isinstance(outcome, Delivered):
            if outcome.reply is not None:
                self._writer.write([to_kafka(self.broker_topic, outcome.reply.attributes,
                                             outcome.reply.data)], stop)
            counters.add(delivered=1)
            return
        self._dead_letter(trigger, record, outcome, url, stop)
        counters.add(dead_lettered=1)

    def _dead_letter(self, trigger: Trigger, record: Any, outcome: DeadLettered, url: str,
                     stop: threading.Event) -> None:
        sink = trigger.delivery.dead_letter_sink
        event_id = next((v.decode("utf-8", "replace") for k, v in (record.headers or ())
                         if k == "ce_id"), None)
        log.warning("event dead-lettered", extra={
            "trigger": trigger.name, "event_id": event_id, "sink": sink, "reason": outcome.reason,
            "status": outcome.status, "attempts": outcome.attempts,
            "partition": record.partition, "offset": record.offset})
        if sink is None:
            log.error("no deadLetterSink: event dropped", extra={
                "trigger": trigger.name, "event_id": event_id})
            return
        # The original record, byte for byte, plus Knative's error extensions as headers.
        extensions = error_extensions(url or trigger.subscriber.name, outcome)
        headers = [(k, v) for k, v in (record.headers or ()) if k not in ERROR_HEADERS]
        headers += [(f"ce_{k}", v.encode()) for k, v in extensions.items()]
        self._writer.write([KafkaRecord(self.sink_topic(sink), record.key or b"",
                                        tuple(headers), record.value or b"")], stop)

    # --- the ingress --------------------------------------------------------------------

    def _publish(self, attributes: dict[str, Any], data: Any) -> None:
        try:
            self._writer.write([to_kafka(self.broker_topic, attributes, data)], self._stop,
                               timeout=INGRESS_ACK_TIMEOUT)
        except Stopped:
            raise DependencyUnavailable("the dispatcher is stopping") from None


# --- entry point ----------------------------------------------------------------------------

def run_dispatcher(eventing_dir: Path, bootstrap: Sequence[str], subscribers: Mapping[str, str],
                   *, ingress_port: int | None = BROKER_PORT, ingress_host: str = "127.0.0.1",
                   naming: Naming | None = None, stop: threading.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (main thread) or until `stop` is set."""
    dispatcher = Dispatcher(load_eventing(eventing_dir), bootstrap, subscribers,
                            ingress_port=ingress_port, ingress_host=ingress_host, naming=naming)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: dispatcher.request_stop())
    if stop is not None:
        def relay(outer: threading.Event) -> None:
            outer.wait()
            dispatcher.request_stop()

        threading.Thread(target=relay, args=(stop,), daemon=True, name="dispatcher-stop").start()
    log.info("dispatcher starting", extra={
        "bootstrap": list(bootstrap), "broker_topic": dispatcher.broker_topic,
        "subscribers": dict(subscribers)})
    dispatcher.start()
    try:
        dispatcher.wait()
    finally:
        dispatcher.stop()
        log.info("dispatcher stopped", extra={
            "stats": {k: vars(v) for k, v in dispatcher.stats().items()}})


def _subscriber(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected SERVICE=http://host:port, got {text!r}")
    return name, url


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m iot_telemetry.local.dispatcher",
        description="Play the KafkaSource, Broker and Triggers of eventing/ on a real Kafka.")
    parser.add_argument("--eventing", default=environ.get("IOT_EVENTING_DIR", str(EVENTING_DIR)),
                        help="directory of the eventing manifests (env IOT_EVENTING_DIR)")
    parser.add_argument("--bootstrap", default=environ.get("KAFKA_BOOTSTRAP_SERVERS",
                                                           "localhost:9092"),
                        help="Kafka bootstrap servers, comma-separated "
                             "(env KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--subscriber", action="append", type=_subscriber, default=[],
                        metavar="SERVICE=URL",
                        help="URL of a Knative Service a Trigger subscribes; repeat per service "
                             "(env IOT_SUBSCRIBERS, comma-separated)")
    parser.add_argument("--ingress-port", type=int,
                        default=int(environ.get("IOT_BROKER_PORT", BROKER_PORT)),
                        help="broker ingress port, 0 = none (env IOT_BROKER_PORT)")
    parser.add_argument("--ingress-host", default=environ.get("IOT_BROKER_HOST", "127.0.0.1"),
                        help="broker ingress address (env IOT_BROKER_HOST)")
    parser.add_argument("--name-suffix", default=environ.get("IOT_DISPATCHER_NAME_SUFFIX", ""),
                        help="appended to every topic and consumer group, to isolate test runs "
                             "(env IOT_DISPATCHER_NAME_SUFFIX)")
    parser.add_argument("--log-level", default=environ.get("LOG_LEVEL", "INFO"),
                        help="DEBUG, INFO, WARNING or ERROR (env LOG_LEVEL)")
    args = parser.parse_args(argv)
    configure_logging(args.log_level.upper())
    try:
        subscribers = dict(_subscriber(s) for s in environ.get("IOT_SUBSCRIBERS", "").split(",")
                           if s)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"IOT_SUBSCRIBERS: {exc}")
    subscribers.update(dict(args.subscriber))
    try:
        run_dispatcher(Path(args.eventing), args.bootstrap.split(","), subscribers,
                       ingress_port=args.ingress_port or None, ingress_host=args.ingress_host,
                       naming=Naming(args.name_suffix))
    except (ValueError, NotImplementedError) as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
