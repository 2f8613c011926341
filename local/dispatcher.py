"""Real-mode dispatcher: plays the KafkaSource, the Kafka Broker and its Triggers on real Kafka.

    python -m iot_telemetry.local.dispatcher --eventing eventing/ --bootstrap localhost:9092 \
        --subscriber aggregate=http://127.0.0.1:8003 --subscriber alert=http://127.0.0.1:8004

- The KafkaSource copies its topics (iot.telemetry) into the Broker topic
  (knative-broker-iot-iot-broker), record for record, keeping key and ce_* headers.
- One consumer (SharedReader) fetches the source topics and the Broker topic for the
  KafkaSource and every Trigger at once; each Broker record is decoded and run through every
  Trigger's filter once, and queued on a lane (a thread per Trigger and partition) of each
  Trigger it matches. Offsets stay per consumer group (knative-trigger-iot-<trigger> for a
  Trigger, the KafkaSource's own group): each group commits through a consumer of that name
  that never fetches; records a Trigger's filter rejects are committed for it once
  everything before them is done. After a restart the fetch starts at the lowest committed
  offset of a partition, and a group is not handed again what it had already done.
- A Trigger delivers in binary mode with the retries and backoff of its delivery spec
  (delivery.py, shared with the in-memory broker). Ordered: a partition's events one at a
  time in offset order. Unordered: up to 64 in flight per Trigger, and a window's offsets
  are committed only once all of it is done. Replies go back into the Broker topic; dead
  letters to the topic of the deadLetterSink.
- A slow Trigger (a subscriber down through its retries) keeps its records in its lanes; once
  one lane holds MAX_QUEUED, fetching of that partition pauses for every group until the
  lane is down to half. The others are held back only by that bounded buffer; nothing is
  skipped or lost.
- An offset is committed only once its record is done: delivered (and its reply written)
  or dead-lettered (and the dead letter written), at most COMMIT_INTERVAL late. A crash
  redelivers, never skips.
- Kafka is reached through librdkafka (confluent-kafka): its own native threads batch and
  fetch without the interpreter lock, and one Python thread serves the producer's
  acknowledgements. With kafka-python, a consumer per group (six) and its producer, the
  dispatcher used about 0.2 cores doing nothing and about 10 ms of CPU per telemetry event
  at 40 events/s (BENCHMARKS.md, "Dispatcher: one fetch for all Triggers, librdkafka").
- Each PingSource publishes its event into the Broker topic at each time of its cron
  schedule (pings.py), like the ingress does with posted events.
- Partitions are assigned to the reader directly, not through group membership: run
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

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
#: batches rather than a fetch round trip per record: kafka-python's cost is per fetch. At
#: 40 events/s this cut the dispatcher's CPU per data point from 443 to 319 us and Kafka's
#: from 95 to 74 (tests/benchmarks/pipeline_cpu.py; then one consumer per Trigger), for at
#: most 50 ms more per hop. An idle reader makes 20 fetches a second.
FETCH_MIN_BYTES: Final = 64 * 1024
FETCH_MAX_WAIT_MS: Final = 50
#: A group's lane holds at most this many fetched records; past it the partition's fetching
#: pauses (for every group) until the lane is down to half.
MAX_QUEUED: Final = 1000
#: How often done offsets are committed (seconds); a crash redelivers at most this much, which
#: every consumer deduplicates. Each commit is a request per consumer group, and a write
#: Kafka replicates: every 0.2 s it was 30 requests per second for six groups.
COMMIT_INTERVAL: Final = 1.0
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
    from confluent_kafka import KafkaException
    from kafka.errors import KafkaError  # the admin client creating topics

    return (KafkaException, KafkaError, BufferError, TimeoutError, OSError)


_kafka_log = logging.getLogger("iot_telemetry.local.kafka")


def _client_config(bootstrap: Sequence[str], client_id: str) -> dict[str, Any]:
    """What every librdkafka client here shares."""
    def error(err: Any) -> None:
        # Connection losses are reported here too; librdkafka reconnects on its own.
        _kafka_log.warning("kafka client error", extra={"client": client_id, "error": str(err)})

    return {"bootstrap.servers": ",".join(bootstrap), "client.id": client_id,
            "reconnect.backoff.max.ms": 2000, "logger": _kafka_log, "error_cb": error}


# --- writing --------------------------------------------------------------------------------

class _Acks:
    """Delivery reports of one write, set by the producer's poll thread."""

    def __init__(self, count: int) -> None:
        self.errors: list[Any] = [None] * count
        self._left = count
        self._lock = threading.Lock()
        self.done = threading.Event()
        if count == 0:
            self.done.set()

    def callback(self, index: int) -> Callable[[Any, Any], None]:
        def report(err: Any, _message: Any) -> None:
            self.errors[index] = err
            with self._lock:
                self._left -= 1
                if self._left == 0:
                    self.done.set()

        return report


class RecordWriter:
    """One producer (librdkafka, acks=all) shared by every thread; writes until acknowledged.

    librdkafka does the batching and network I/O on its own native threads; one Python
    thread serves the delivery reports and wakes each writer when its records are acked.
    Measured per acknowledged single-record write, paced 10 ms apart: about 300 us of CPU
    against 1,200-1,700 us with kafka-python (3.0 and 2.3 alike), most of it kafka-python's
    sender thread.
    """

    def __init__(self, bootstrap: Sequence[str], client_id: str = "iot-dispatcher") -> None:
        self._config: dict[str, Any] = {
            **_client_config(bootstrap, client_id), "acks": "all", "linger.ms": 2,
            "message.timeout.ms": 30000, "request.timeout.ms": 10000,
            # Java's (and kafka-python's, ingest's) partitioner: a device's key lands on the
            # same partition of every topic, whoever writes it.
            "partitioner": "murmur2_random",
            # A duplicate write is harmless here (every consumer deduplicates); the
            # idempotent producer's fatal errors across broker restarts are not.
            "enable.idempotence": False,
        }
        self._producer: Any = None
        self._closing = threading.Event()
        self._poller: threading.Thread | None = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._producer is None:
                from confluent_kafka import Producer

                self._producer = Producer(self._config)
                self._closing = threading.Event()
                self._poller = threading.Thread(
                    target=self._serve, args=(self._producer, self._closing),
                    name="kafka-acks", daemon=True)
                self._poller.start()
            return self._producer

    @staticmethod
    def _serve(producer: Any, closing: threading.Event) -> None:
        while not closing.is_set():
            producer.poll(0.5)

    def write(self, records: Sequence[KafkaRecord], stop: threading.Event,
              timeout: float | None = None) -> None:
        """Write records in order; retry until all are acknowledged.

        Raises Stopped if `stop` is set first, DependencyUnavailable once `timeout` passes.
        A record whose acknowledgement was lost may be written twice (at-least-once).
        """
        from confluent_kafka import KafkaException

        deadline = None if timeout is None else time.monotonic() + timeout
        pending = list(records)
        delay = 0.2
        while pending:
            if stop.is_set():
                raise Stopped
            acks = _Acks(len(pending))
            try:
                producer = self._get()
                for index, r in enumerate(pending):
                    producer.produce(r.topic, key=r.key, value=r.value,
                                     headers=list(r.headers), on_delivery=acks.callback(index))
                while not acks.done.wait(0.5):
                    if stop.is_set():
                        raise Stopped
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError("no acknowledgement in time")
            except _kafka_errors() as exc:  # not queued (queue full), or no ack in time
                error: BaseException = exc
            else:
                failed = next((i for i, e in enumerate(acks.errors) if e is not None), None)
                if failed is None:
                    return
                # Again from the first record not acknowledged on, in order.
                pending = pending[failed:]
                error = KafkaException(acks.errors[failed])
            if deadline is not None and time.monotonic() + delay > deadline:
                raise DependencyUnavailable(f"Kafka did not acknowledge: {error}") from None
            log.warning("kafka write failed, retrying", extra={
                "error": f"{type(error).__name__}: {error}", "records": len(pending),
                "retry_in_seconds": delay})
            if stop.wait(delay):
                raise Stopped from None
            delay = min(delay * 2, MAX_KAFKA_BACKOFF)

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.flush(5)
                self._closing.set()
                if self._poller is not None:
                    self._poller.join(5)
                self._producer = None
                self._poller = None


# --- consuming ------------------------------------------------------------------------------

#: Handles items of one partition in order; calls done(next_offset) as each is finished.
Process = Callable[[list[Any], Callable[[int], None], threading.Event], None]


class Part(NamedTuple):
    """A partition of a topic."""

    topic: str
    partition: int


class Fetched(NamedTuple):
    """A fetched record (what kafka-python's ConsumerRecord held, as plain fields)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


class Lane:
    """One consumer group's share of one partition, handled in offset order on its own thread.

    The reader hands it the records its group's filter takes, and with each hand-off the
    offset up to which the partition was read: records the filter rejected are done once
    everything queued before them is, so the group's committed offset moves past them too.
    """

    def __init__(self, name: str, process: Process, first: int) -> None:
        self.name = name
        #: Records below it were done by this group before this session: not handed again.
        self.first = first
        self._process = process
        self._queue: deque[Any] = deque()  # records, and ints: "done up to here"
        self._pending = 0  # records queued or being handled
        self._busy = False
        self._cond = threading.Condition()
        self.stop = threading.Event()
        self._done: int | None = None
        self._committed: int | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, records: list[Any], upto: int) -> None:
        """Queue `records` (in offset order), all of this group's below `upto`."""
        with self._cond:
            if not records and not self._pending:
                # Nothing of this group's in front: the rejected records are done now,
                # without waking the thread.
                if self._done is None or upto > self._done:
                    self._done = upto
                return
            self._queue.extend(records)
            self._queue.append(upto)
            self._pending += len(records)
            if not self._busy:
                self._cond.notify()

    @property
    def queued(self) -> int:
        """Records handed to this lane and not yet done."""
        with self._cond:
            return self._pending

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
            if self._done is None or offset > self._done:
                self._done = offset

    def _run(self) -> None:
        while not self.stop.is_set():
            with self._cond:
                # No timeout: a put() or shutdown() notifies; an idle lane costs no wake-ups.
                while not self._queue and not self.stop.is_set():
                    self._cond.wait()
                if self.stop.is_set():
                    return
                batch = [r for r in self._queue if not isinstance(r, int)]
                upto = max(m for m in self._queue if isinstance(m, int))
                self._queue.clear()
                self._busy = True
            taken = len(batch)
            delay = 1.0
            while not self.stop.is_set():
                try:
                    if batch:
                        self._process(batch, self._mark, self.stop)
                    self._mark(upto)
                    break
                except Stopped:
                    return
                except Exception:
                    # A bug, not a bad event: hold the partition rather than skip a record.
                    log.exception("record handling failed; retrying the same record",
                                  extra={"worker": self.name, "retry_in_seconds": delay})
                    done = self._done
                    batch = [r for r in batch if done is None or r.offset >= done]
                    self.stop.wait(delay)
                    delay = min(delay * 2, 30.0)
            with self._cond:
                self._busy = False
                self._pending -= taken

    def shutdown(self, timeout: float) -> None:
        self.stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)


@dataclass
class Group:
    """A consumer group reading through the shared reader: the KafkaSource or one Trigger."""

    name: str
    group_id: str
    topics: tuple[str, ...]
    offset_reset: str
    process: Process
    #: Whether a (prepared) record is this group's to handle; the rest are only committed.
    wants: Callable[[Any], bool]
    lanes: dict[Any, Lane] = field(default_factory=dict)

    @property
    def queued(self) -> int:
        return sum(lane.queued for lane in list(self.lanes.values()))


#: Turns one topic's fetched records into what the groups' `wants` and `process` take.
Prepare = Callable[[list[Any]], list[Any]]


class SharedReader:
    """One consumer fetches every topic once for all groups; each group commits its own offsets.

    Each record is fetched and prepared (decoded) once, offered to every group of its topic,
    and queued on the lane of each group that wants it; the others only move that group's
    offset past it. Each group's offsets are committed under its own consumer group name by
    a consumer that never fetches, so they stay per group, as with one consumer per group.

    A slow group (a subscriber down through its retries) holds its records in its lanes;
    once one of its lanes holds MAX_QUEUED, that partition's fetching pauses for every group
    until the lane is down to half. The other groups go on with what was fetched before the
    pause and then wait: the stall is bounded by that buffer, and nothing is skipped or lost.
    """

    def __init__(self, bootstrap: Sequence[str], groups: Sequence[Group],
                 prepare: Mapping[str, Prepare], stop: threading.Event) -> None:
        self._bootstrap = list(bootstrap)
        self.groups = list(groups)
        self._topics = sorted({t for g in groups for t in g.topics})
        self._prepare = dict(prepare)
        self._stop = stop
        self._lock = threading.Lock()
        self._assigned = 0
        self._thread = threading.Thread(target=self._run, name="reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def assigned(self) -> int:
        with self._lock:
            return self._assigned

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                self._session()
                delay = 0.5
            except Exception as exc:
                log.warning("consumer session ended, reconnecting", extra={
                    "consumer": "reader", "error": f"{type(exc).__name__}: {exc}",
                    "retry_in_seconds": delay})
                self._stop.wait(delay)
                delay = min(delay * 2, MAX_KAFKA_BACKOFF)

    def _consumer(self, group_id: str, client_id: str, **extra: Any) -> Any:
        from confluent_kafka import Consumer

        return Consumer({**_client_config(self._bootstrap, client_id), "group.id": group_id,
                         "enable.auto.commit": False, "enable.auto.offset.store": False,
                         **extra})

    def _partitions(self, consumer: Any) -> list[Part]:
        parts = []
        for topic in self._topics:
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise RuntimeError(f"topic {topic} has no partitions (yet)")
            parts += [Part(topic, p) for p in sorted(meta.partitions)]
        return parts

    def _grown(self, consumer: Any, assigned: list[Part]) -> bool:
        # Metadata may be missing while Kafka restarts: only a larger count means new partitions.
        topics = consumer.list_topics(timeout=5).topics
        known = sum(len(topics[t].partitions) for t in self._topics if t in topics)
        return known > len(assigned)

    def _starts(self, consumer: Any, committer: Any, group: Group,
                parts: list[Part]) -> dict[Part, int]:
        """Where `group` goes on in each partition: its committed offset, else its reset."""
        from confluent_kafka import TopicPartition

        starts = {}
        for tp in committer.committed([TopicPartition(p.topic, p.partition) for p in parts],
                                      timeout=10):
            if tp.error is not None:
                raise RuntimeError(f"committed offset of {group.group_id}: {tp.error}")
            if tp.offset >= 0:
                starts[Part(tp.topic, tp.partition)] = tp.offset
        for part in parts:
            if part not in starts:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(part.topic, part.partition), timeout=10)
                starts[part] = low if group.offset_reset == "earliest" else high
        return starts

    def _session(self) -> None:
        from confluent_kafka import TopicPartition

        # The reader never commits: its group name only satisfies librdkafka.
        consumer = self._consumer(
            "iot-dispatcher-reader", "iot-dispatcher", **{
                "fetch.min.bytes": FETCH_MIN_BYTES, "fetch.wait.max.ms": FETCH_MAX_WAIT_MS,
                "queued.max.messages.kbytes": 16384, "enable.partition.eof": False})
        committers: dict[str, Any] = {}
        committer_thread: threading.Thread | None = None
        done = threading.Event()
        try:
            parts = self._partitions(consumer)
            lowest: dict[Part, int] = {}
            for group in self.groups:
                committers[group.group_id] = committer = self._consumer(
                    group.group_id, group.group_id)
                mine = [p for p in parts if p.topic in group.topics]
                starts = self._starts(consumer, committer, group, mine)
                group.lanes = {p: Lane(f"{group.name}-{p.partition}", group.process,
                                       starts[p]) for p in mine}
                for part, offset in starts.items():
                    lowest[part] = min(offset, lowest.get(part, offset))
            consumer.assign([TopicPartition(p.topic, p.partition, lowest[p]) for p in parts])
            by_topic = {t: [g for g in self.groups if t in g.topics] for t in self._topics}
            with self._lock:
                self._assigned = len(parts)
            log.info("consuming", extra={
                "consumer": "reader", "topics": self._topics, "partitions": len(parts),
                "groups": [g.group_id for g in self.groups]})
            committer_thread = threading.Thread(
                target=self._commit_loop, args=(committers, done), name="committer",
                daemon=True)
            committer_thread.start()
            paused: set[Part] = set()
            last_check = time.monotonic()
            while not self._stop.is_set():
                for part, records in self._fetch(consumer).items():
                    self._hand_out(part, records, by_topic[part.topic])
                    if any(g.lanes[part].queued >= MAX_QUEUED for g in by_topic[part.topic]):
                        # Fetching resumes at the next offset not yet handed out.
                        consumer.pause([TopicPartition(part.topic, part.partition)])
                        paused.add(part)
                for part in list(paused):
                    if all(g.lanes[part].queued < MAX_QUEUED // 2
                           for g in by_topic[part.topic]):
                        consumer.resume([TopicPartition(part.topic, part.partition)])
                        paused.discard(part)
                now = time.monotonic()
                if now - last_check >= PARTITION_CHECK_INTERVAL:
                    last_check = now
                    if self._grown(consumer, parts):
                        raise RuntimeError("partitions were added; reassigning")
        finally:
            with self._lock:
                self._assigned = 0
            done.set()
            if committer_thread is not None:
                committer_thread.join(30)
            lanes = [lane for g in self.groups for lane in g.lanes.values()]
            for lane in lanes:
                lane.stop.set()
            deadline = time.monotonic() + 15
            for lane in lanes:
                lane.shutdown(timeout=max(0.0, deadline - time.monotonic()))
            for group in self.groups:
                if group.group_id in committers:
                    self._commit(group, committers[group.group_id])
                group.lanes = {}
            for committer in committers.values():
                committer.close()
            consumer.close()

    def _fetch(self, consumer: Any) -> dict[Part, list[Fetched]]:
        """What the next fetch brought, by partition, in offset order."""
        fetched: dict[Part, list[Fetched]] = {}
        # consume() waits for its whole batch or its timeout: at a low rate every hop would
        # wait the full timeout (POST -> visible took 0.7 s at p50). Wait for one record, then
        # take what librdkafka already holds (its fetches wait FETCH_MAX_WAIT_MS at Kafka).
        first = consumer.poll(0.5)
        if first is None:
            return fetched
        for message in [first, *consumer.consume(num_messages=499, timeout=0)]:
            error = message.error()
            if error is not None:
                # librdkafka reports and then recovers from these on its own.
                _kafka_log.warning("fetch error", extra={"error": str(error)})
                continue
            part = Part(message.topic(), message.partition())
            fetched.setdefault(part, []).append(Fetched(
                part.topic, part.partition, message.offset(), message.key(), message.value(),
                tuple(message.headers() or ())))
        return fetched

    def _hand_out(self, part: Part, records: list[Fetched], groups: list[Group]) -> None:
        upto = records[-1].offset + 1
        items = self._prepare.get(part.topic, list)(records)
        for group in groups:
            lane = group.lanes[part]
            if upto <= lane.first:
                continue  # done by this group before this session
            fresh = items if items[0].offset >= lane.first else [
                i for i in items if i.offset >= lane.first]
            lane.put([i for i in fresh if group.wants(i)], upto)

    def _commit_loop(self, committers: Mapping[str, Any], done: threading.Event) -> None:
        while not done.wait(COMMIT_INTERVAL):
            for group in self.groups:
                committer = committers[group.group_id]
                # Serves its queued logs and error reports (a committer is never polled
                # for records), which would otherwise pile up through a long outage.
                committer.poll(0)
                self._commit(group, committer)

    def _commit(self, group: Group, committer: Any) -> None:
        from confluent_kafka import TopicPartition

        lanes = dict(group.lanes)
        offsets = {p: o for p, lane in lanes.items() if (o := lane.take_done()) is not None}
        if not offsets:
            return
        errors: tuple[type[BaseException], ...] = (*_kafka_errors(), RuntimeError)
        try:
            result = committer.commit(offsets=[TopicPartition(p.topic, p.partition, o)
                                               for p, o in offsets.items()],
                                      asynchronous=False)
            failed = [tp for tp in result or () if tp.error is not None]
            if failed:
                raise RuntimeError(f"{failed[0].topic}[{failed[0].partition}]: "
                                   f"{failed[0].error}")
        except errors as exc:
            log.warning("offset commit failed, will retry", extra={
                "consumer": group.name, "error": f"{type(exc).__name__}: {exc}"})
            return
        for part, offset in offsets.items():
            lanes[part].committed(offset)


# --- the dispatcher -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Decoded:
    """A Broker-topic record decoded once for every Trigger; `attributes` None = not a valid
    CloudEvent (`error` says why), which each Trigger dead-letters."""

    record: Any
    attributes: dict[str, Any] | None
    data: Any = None
    error: str = ""

    @property
    def offset(self) -> int:
        return int(self.record.offset)


def _decode(record: Any) -> Decoded:
    try:
        event = from_kafka(record.key, record.headers or (), record.value or b"")
        attributes = text_attributes(event.attributes)
        missing = missing_attributes(attributes)
        if missing:
            raise BadRequest(f"record lacks {', '.join(missing)}")
    except BadRequest as exc:
        return Decoded(record, None, error=str(exc))
    attributes.setdefault("datacontenttype", JSON)
    return Decoded(record, attributes, event.data)


def _decode_all(records: list[Any]) -> list[Any]:
    return [_decode(r) for r in records]


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
        self._groups: dict[str, Group] = {}
        self._reader: SharedReader | None = None
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
            self._groups[f"source/{source.name}"] = Group(
                f"source-{source.name}", self.naming.group(source.consumer_group),
                tuple(self.naming.topic(t) for t in source.topics), source.initial_offset,
                self._source_process(source), wants=lambda _record: True)
        for trigger in self.eventing.triggers:
            # Earliest: a Trigger created before any event is consumed must see all of them.
            self._groups[f"trigger/{trigger.name}"] = Group(
                f"trigger-{trigger.name}", self.naming.group(trigger.consumer_group),
                (self.broker_topic,), "earliest", self._trigger_process(trigger),
                wants=self._trigger_wants(trigger))
        self._reader = SharedReader(self._bootstrap, list(self._groups.values()),
                                    {self.broker_topic: _decode_all}, self._stop)
        self._reader.start()
        self._pings.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop consuming: retries waiting are abandoned, done offsets committed, clients closed."""
        self._stop.set()
        if self._ingress is not None:
            self._ingress.stop()
            self._ingress = None
        deadline = time.monotonic() + timeout
        if self._reader is not None:
            self._reader.join(max(0.0, deadline - time.monotonic()))
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
        return (self._started and not self._stop.is_set() and self._reader is not None
                and bool(self._reader.assigned))

    def stats(self) -> dict[str, TriggerStats]:
        stats = {}
        for name, counters in self._counters.items():
            snap = counters.snapshot()
            group = self._groups.get(f"trigger/{name}")
            stats[name] = TriggerStats(snap.delivered, snap.retried, snap.dead_lettered,
                                       snap.filtered, group.queued if group else 0)
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

    def _trigger_wants(self, trigger: Trigger) -> Callable[[Decoded], bool]:
        counters = self._counters[trigger.name]

        def wants(decoded: Decoded) -> bool:
            # A record that is not a CloudEvent is every Trigger's, to dead-letter.
            if decoded.attributes is None or trigger.matches(decoded.attributes):
                return True
            counters.add(filtered=1)
            return False

        return wants

    def _trigger_process(self, trigger: Trigger) -> Process:
        counters = self._counters[trigger.name]
        url = self._subscribers.get(trigger.service or "", "")
        local = threading.local()

        def dispatch(record: Decoded, stop: threading.Event) -> None:
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
        in_flight = threading.BoundedSemaphore(UNORDERED_IN_FLIGHT)

        def bounded(record: Decoded, stop: threading.Event) -> None:
            # The pool's threads and each partition's lane share the Trigger's budget.
            with in_flight:
                dispatch(record, stop)

        def process_unordered(batch: list[Any], done: Callable[[int], None],
                              stop: threading.Event) -> None:
            # Many at once; the committed offset only moves past a window once every record
            # of it is done, so a crash redelivers, never skips.
            for start in range(0, len(batch), UNORDERED_IN_FLIGHT):
                window = batch[start:start + UNORDERED_IN_FLIGHT]
                futures = [pool.submit(bounded, record, stop) for record in window[:-1]]
                # The last one on this thread: a lone record costs no hand-off to the pool.
                bounded(window[-1], stop)
                for future in futures:
                    future.result()
                done(window[-1].offset + 1)

        return process_unordered

    def _dispatch(self, trigger: Trigger, decoded: Decoded, url: str, session: HttpSession, *,
                  counters: TriggerCounters, stop: threading.Event) -> None:
        """Handle one record the Trigger's filter took to the end (delivered or dead-lettered),
        or raise Stopped."""
        record, attributes = decoded.record, decoded.attributes
        if attributes is None:
            self._dead_letter(trigger, record, DeadLettered(decoded.error, None, 0), url, stop)
            counters.add(dead_lettered=1)
            return
        if trigger.sink is not None:
            self._writer.write([to_kafka(self.sink_topic(trigger.sink), attributes,
                                         decoded.data)], stop)
            counters.add(delivered=1)
            return
        outcome = deliver(trigger, attributes, decoded.data, url, session, stop=stop,
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
