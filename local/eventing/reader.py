"""Reading Kafka for the dispatcher's consumer groups: one shared fetch, and a catch-up reader
for a group that fell behind it, so that no group holds another back."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from .kafka_clients import MAX_KAFKA_BACKOFF, client_config, kafka_errors, kafka_log
from .lanes import Fetched, Group, Lane, Part

log = logging.getLogger("iot_telemetry.local.dispatcher")

#: Fetches wait up to FETCH_MAX_WAIT_MS for FETCH_MIN_BYTES, so that a busy topic is read in
#: batches rather than a fetch round trip per record: kafka-python's cost is per fetch. At
#: 40 events/s this cut the dispatcher's CPU per data point from 443 to 319 us and Kafka's
#: from 95 to 74 (tests/benchmarks/pipeline_cpu.py; then one consumer per Trigger), for at
#: most 50 ms more per hop. An idle reader makes 20 fetches a second.
FETCH_MIN_BYTES: Final = 64 * 1024
FETCH_MAX_WAIT_MS: Final = 50
#: A group's lane holds at most this many fetched records (the memory bound per group and
#: partition); past it the group leaves the shared fetch for that partition, and its
#: catch-up reader reads on from there once the lane is down to half.
MAX_QUEUED: Final = 1000
#: How often done offsets are committed (seconds); a crash redelivers at most this much, which
#: every consumer deduplicates. Each commit is a request per consumer group, and a write
#: Kafka replicates: every 0.2 s it was 30 requests per second for six groups.
COMMIT_INTERVAL: Final = 1.0
#: How often a consumer looks for partitions added to its topics (seconds).
PARTITION_CHECK_INTERVAL: Final = 30.0
#: How often a catch-up reader whose lanes are all full looks whether they have room again.
CATCH_UP_IDLE: Final = 0.2

#: Turns one topic's fetched records into what the groups' `wants` and `process` take.
Prepare = Callable[[list[Any]], list[Any]]


def _consumer(bootstrap: Sequence[str], group_id: str, client_id: str, **extra: Any) -> Any:
    from confluent_kafka import Consumer

    return Consumer({**client_config(bootstrap, client_id), "group.id": group_id,
                     "enable.auto.commit": False, "enable.auto.offset.store": False, **extra})


def _fetching_consumer(bootstrap: Sequence[str], client_id: str) -> Any:
    # A fetching consumer never commits: its group name only satisfies librdkafka.
    return _consumer(bootstrap, "iot-dispatcher-reader", client_id, **{
        "fetch.min.bytes": FETCH_MIN_BYTES, "fetch.wait.max.ms": FETCH_MAX_WAIT_MS,
        "queued.max.messages.kbytes": 16384, "enable.partition.eof": False})


def _fetch(consumer: Any) -> dict[Part, list[Fetched]]:
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


def _offer(group: Group, lane: Lane, items: list[Any], upto: int) -> None:
    """Queue on `lane` what `group` wants of `items` (all below `upto`) that is not yet done."""
    if upto <= lane.first:
        return  # done by this group before this session
    fresh = items if not items or items[0].offset >= lane.first else [
        i for i in items if i.offset >= lane.first]
    lane.put([i for i in fresh if group.wants(i)], upto)


class SharedReader:
    """One consumer fetches every topic once for all groups; each group commits its own offsets.

    Each record is fetched and prepared (decoded) once, offered to every group of its topic,
    and queued on the lane of each group that wants it; the others only move that group's
    offset past it. Each group's offsets are committed under its own consumer group name by
    a consumer that never fetches, so they stay per group, as with one consumer per group.

    A slow group (a subscriber down through its retries) never holds the others back: once
    one of its lanes holds `capacity` records, the shared fetch stops feeding that lane (the
    lane is detached) and goes on for the others. The group's catch-up reader, a consumer of
    its own, reads that partition again from where the lane stopped, whenever the lane is
    down to half, until it is back where the shared fetch is; then the shared fetch feeds
    the lane again. Memory stays bounded by the lanes, offsets stay per group, nothing is
    skipped or handed twice. A partition every group of which is detached is paused.
    """

    def __init__(self, bootstrap: Sequence[str], groups: Sequence[Group],
                 prepare: Mapping[str, Prepare], stop: threading.Event,
                 capacity: int = MAX_QUEUED) -> None:
        self._bootstrap = list(bootstrap)
        self.groups = list(groups)
        self._topics = sorted({t for g in groups for t in g.topics})
        self._prepare = dict(prepare)
        self._stop = stop
        self.capacity = capacity
        self._lock = threading.Lock()
        self._assigned = 0
        #: Guards the hand-off: each lane's `detached` and `resume_at`, and `handed`.
        self.handoff = threading.Lock()
        #: Per partition, the next offset the shared fetch hands out.
        self.handed: dict[Part, int] = {}
        self._detached = 0  # lanes detached now (under handoff)
        self._catch_ups: dict[str, CatchUpReader] = {}
        self._thread = threading.Thread(target=self._run, name="reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def assigned(self) -> int:
        with self._lock:
            return self._assigned

    def prepare(self, part: Part, records: list[Fetched]) -> list[Any]:
        return self._prepare.get(part.topic, list)(records)

    def attach(self, lane: Lane) -> None:
        """The shared fetch feeds `lane` again (called under `handoff`)."""
        lane.detached = False
        self._detached -= 1
        log.info("lane caught up with the shared fetch", extra={
            "worker": lane.name, "offset": lane.resume_at})

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

        consumer = _fetching_consumer(self._bootstrap, "iot-dispatcher")
        committers: dict[str, Any] = {}
        committer_thread: threading.Thread | None = None
        done = threading.Event()
        try:
            parts = self._partitions(consumer)
            lowest: dict[Part, int] = {}
            for group in self.groups:
                committers[group.group_id] = committer = _consumer(
                    self._bootstrap, group.group_id, group.group_id)
                mine = [p for p in parts if p.topic in group.topics]
                starts = self._starts(consumer, committer, group, mine)
                group.lanes = {p: Lane(f"{group.name}-{p.partition}", group.process,
                                       starts[p]) for p in mine}
                for part, offset in starts.items():
                    lowest[part] = min(offset, lowest.get(part, offset))
            with self.handoff:
                self.handed = dict(lowest)
                self._detached = 0
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
                for part, records in _fetch(consumer).items():
                    self._hand_out(part, records, by_topic[part.topic])
                if self._detached or paused:
                    self._follow_up(consumer, by_topic, paused, done)
                now = time.monotonic()
                if now - last_check >= PARTITION_CHECK_INTERVAL:
                    last_check = now
                    if self._grown(consumer, parts):
                        raise RuntimeError("partitions were added; reassigning")
        finally:
            with self._lock:
                self._assigned = 0
            done.set()
            for catch_up in self._catch_ups.values():
                catch_up.join(15)
            self._catch_ups = {}
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

    def _hand_out(self, part: Part, records: list[Fetched], groups: list[Group]) -> None:
        upto = records[-1].offset + 1
        items = self.prepare(part, records)
        with self.handoff:
            self.handed[part] = upto
            for group in groups:
                lane = group.lanes[part]
                if lane.detached:
                    continue  # its catch-up reader hands it these later
                _offer(group, lane, items, upto)
                if lane.queued >= self.capacity:
                    lane.detached = True
                    lane.resume_at = upto
                    self._detached += 1
                    log.info("lane full: its group reads on by itself once it has room", extra={
                        "worker": lane.name, "queued": lane.queued, "offset": upto})

    def _follow_up(self, consumer: Any, by_topic: Mapping[str, list[Group]], paused: set[Part],
                   done: threading.Event) -> None:
        """Start the catch-up reader of each group with a detached lane; pause a partition no
        group follows any more, and resume it once one does."""
        from confluent_kafka import TopicPartition

        with self.handoff:
            for group in self.groups:
                if any(lane.detached for lane in group.lanes.values()):
                    catch_up = self._catch_ups.get(group.group_id)
                    if catch_up is None or catch_up.finished:
                        self._catch_ups[group.group_id] = CatchUpReader(
                            self, group, self._bootstrap, self._stop, done)
            unfollowed = set()
            if self._detached:
                for topic, groups in by_topic.items():
                    unfollowed |= {p for p in groups[0].lanes if p.topic == topic
                                   and all(g.lanes[p].detached for g in groups)}
        for part in unfollowed - paused:
            consumer.pause([TopicPartition(part.topic, part.partition)])
        for part in paused - unfollowed:
            # Fetching resumes at the next offset not yet handed out.
            consumer.resume([TopicPartition(part.topic, part.partition)])
        paused.clear()
        paused.update(unfollowed)

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


class CatchUpReader:
    """A group's own consumer for the partitions where its lanes left the shared fetch.

    It reads each such partition from the lane's `resume_at` while the lane has room (from
    half its capacity until full), and hands the lane what the shared fetch handed the other
    groups meanwhile; once it reaches the shared fetch's position, the lane is attached again.
    It ends (closing its consumer) when none of the group's lanes is detached.
    """

    def __init__(self, reader: SharedReader, group: Group, bootstrap: Sequence[str],
                 stop: threading.Event, session_done: threading.Event) -> None:
        self._reader = reader
        self._group = group
        self._bootstrap = list(bootstrap)
        self._stop = stop
        self._session_done = session_done
        #: Set under the reader's hand-off lock when it ends: a new one is then needed.
        self.finished = False
        self._thread = threading.Thread(target=self._run, name=f"catch-up-{group.name}",
                                        daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        delay = 0.5
        while not (self.finished or self._stop.is_set() or self._session_done.is_set()):
            try:
                self._read()
            except Exception as exc:
                log.warning("catch-up reader failed, again shortly", extra={
                    "consumer": self._group.name, "error": f"{type(exc).__name__}: {exc}",
                    "retry_in_seconds": delay})
                if self._session_done.wait(delay):
                    return
                delay = min(delay * 2, MAX_KAFKA_BACKOFF)

    def _wanted(self, reading: Mapping[Part, int]) -> dict[Part, int]:
        """Partitions to read now, from where; attaches lanes with nothing left to catch up
        and marks this reader finished when no lane is detached (under the hand-off lock)."""
        reader, capacity = self._reader, self._reader.capacity
        wanted = {}
        with reader.handoff:
            for part, lane in self._group.lanes.items():
                # Room: down to half to start reading, then until full (the memory bound).
                if not lane.detached or lane.queued >= (
                        capacity if part in reading else max(1, capacity // 2)):
                    continue
                if lane.resume_at >= reader.handed.get(part, lane.resume_at):
                    reader.attach(lane)  # the shared fetch has not gone past it
                else:
                    wanted[part] = lane.resume_at
            if not any(lane.detached for lane in self._group.lanes.values()):
                self.finished = True
        return wanted

    def _read(self) -> None:
        from confluent_kafka import TopicPartition

        consumer: Any = None
        reading: dict[Part, int] = {}
        try:
            while not (self._stop.is_set() or self._session_done.is_set()):
                wanted = self._wanted(reading)
                if self.finished:
                    return
                if wanted.keys() != reading.keys():
                    if consumer is None:
                        consumer = _fetching_consumer(self._bootstrap,
                                                      f"iot-dispatcher-{self._group.name}")
                    consumer.assign([TopicPartition(p.topic, p.partition, o)
                                     for p, o in wanted.items()])
                    reading = wanted
                if not reading:
                    self._session_done.wait(CATCH_UP_IDLE)
                    continue
                for part, records in _fetch(consumer).items():
                    if part in reading:
                        reading[part] = self._hand_over(part, records)
        finally:
            if consumer is not None:
                consumer.close()

    def _hand_over(self, part: Part, records: list[Fetched]) -> int:
        """Queue what the shared fetch handed the others of `records`; the next offset."""
        reader, group = self._reader, self._group
        lane = group.lanes[part]
        records = [r for r in records if r.offset >= lane.resume_at]
        if not records:
            return lane.resume_at
        items = reader.prepare(part, records)
        with reader.handoff:
            shared = reader.handed[part]
            upto = min(records[-1].offset + 1, shared)
            _offer(group, lane, [i for i in items if i.offset < upto], upto)
            lane.resume_at = upto
            if upto >= shared:
                reader.attach(lane)
        return upto
