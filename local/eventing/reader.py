"""Reading Kafka for the dispatcher's consumer groups: lanes, groups and the shared fetch."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from .kafka_clients import MAX_KAFKA_BACKOFF, Stopped, client_config, kafka_errors, kafka_log

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
#: How often a consumer looks for partitions added to its topics (seconds).
PARTITION_CHECK_INTERVAL: Final = 30.0


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

        return Consumer({**client_config(self._bootstrap, client_id), "group.id": group_id,
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
                kafka_log.warning("fetch error", extra={"error": str(error)})
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
        errors: tuple[type[BaseException], ...] = (*kafka_errors(), RuntimeError)
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
