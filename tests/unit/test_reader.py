"""The dispatcher's shared fetch and catch-up readers on an in-memory stand-in for librdkafka's
consumer: a slow group holds no other back, memory stays bounded, nothing is skipped or
handed twice. (On real Kafka: tests/integration/test_dispatcher.py.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from iot_telemetry.local.eventing import reader as reader_module
from iot_telemetry.local.eventing.kafka_clients import Stopped
from iot_telemetry.local.eventing.lanes import Group
from iot_telemetry.local.eventing.reader import SharedReader

TOPIC = "broker"
PARTITIONS = 2


class _Message:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes) -> None:
        self._t, self._p, self._o, self._v = topic, partition, offset, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes:
        return b""

    def value(self) -> bytes:
        return self._v

    def headers(self) -> list[tuple[str, bytes]]:
        return []


class _Meta:
    def __init__(self, partitions: int) -> None:
        self.partitions = dict.fromkeys(range(partitions))
        self.error = None


class FakeKafka:
    """Topics as lists per partition; consumers that fetch from them and commit offsets."""

    def __init__(self) -> None:
        self.logs: dict[tuple[str, int], list[bytes]] = {
            (TOPIC, p): [] for p in range(PARTITIONS)}
        self.committed: dict[tuple[str, str, int], int] = {}
        self.lock = threading.Lock()
        self.consumers: list[FakeConsumer] = []

    def produce(self, partition: int, values: list[bytes]) -> None:
        with self.lock:
            self.logs[(TOPIC, partition)].extend(values)

    def consumer(self, config: dict[str, Any]) -> FakeConsumer:
        consumer = FakeConsumer(self, config["group.id"], config["client.id"])
        self.consumers.append(consumer)
        return consumer


class FakeConsumer:
    def __init__(self, kafka: FakeKafka, group: str, client: str) -> None:
        self.kafka, self.group, self.client = kafka, group, client
        self.positions: dict[tuple[str, int], int] = {}
        self.paused: set[tuple[str, int]] = set()
        self.fetched = 0

    def list_topics(self, topic: str | None = None, timeout: float = 0) -> Any:
        return type("Metadata", (), {"topics": {TOPIC: _Meta(PARTITIONS)}})()

    def committed(self, tps: list[TopicPartition], timeout: float = 0) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition,
                               self.kafka.committed.get((self.group, tp.topic, tp.partition),
                                                        -1001)) for tp in tps]

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        for tp in offsets:
            self.kafka.committed[(self.group, tp.topic, tp.partition)] = tp.offset
        return offsets

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = 0) -> tuple[int, int]:
        return 0, len(self.kafka.logs[(tp.topic, tp.partition)])

    def assign(self, tps: list[TopicPartition]) -> None:
        self.positions = {(tp.topic, tp.partition): tp.offset for tp in tps}
        self.paused &= set(self.positions)

    def pause(self, tps: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in tps}

    def resume(self, tps: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in tps}

    def _next(self, limit: int) -> list[_Message]:
        out: list[_Message] = []
        with self.kafka.lock:
            for key, position in sorted(self.positions.items()):
                if key in self.paused:
                    continue
                log = self.kafka.logs[key]
                take = log[position:position + limit - len(out)]
                out += [_Message(key[0], key[1], position + i, v) for i, v in enumerate(take)]
                self.positions[key] = position + len(take)
        self.fetched += len(out)
        return out

    def poll(self, timeout: float) -> _Message | None:
        deadline = time.monotonic() + min(timeout, 0.05)
        while True:
            found = self._next(1)
            if found or time.monotonic() >= deadline:
                return found[0] if found else None
            time.sleep(0.005)

    def consume(self, num_messages: int, timeout: float) -> list[_Message]:
        return self._next(min(num_messages, 7))  # small batches: several hand-outs per test

    def close(self) -> None:
        pass


class Recorder:
    """A group's `process`: records what it handles; blocks while `held` is clear."""

    def __init__(self, held: bool = False) -> None:
        self.release = threading.Event()
        if not held:
            self.release.set()
        self.handled: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, batch: list[Any], done: Callable[[int], None],
                 stop: threading.Event) -> None:
        for record in batch:
            while not self.release.wait(0.05):
                if stop.is_set():
                    raise Stopped
            with self.lock:
                self.handled.append((record.partition, record.offset))
            done(record.offset + 1)


@pytest.fixture
def kafka(monkeypatch: pytest.MonkeyPatch) -> FakeKafka:
    fake = FakeKafka()

    def make(bootstrap: Any, group_id: str, client_id: str, **extra: Any) -> FakeConsumer:
        return fake.consumer({"group.id": group_id, "client.id": client_id})

    monkeypatch.setattr(reader_module, "_consumer", make)
    monkeypatch.setattr(reader_module, "CATCH_UP_IDLE", 0.01)
    return fake


@pytest.fixture
def run(kafka: FakeKafka) -> Iterator[Callable[..., tuple[SharedReader, dict[str, Group]]]]:
    stop = threading.Event()
    readers: list[SharedReader] = []

    def start(recorders: dict[str, Recorder], capacity: int) -> tuple[SharedReader,
                                                                       dict[str, Group]]:
        groups = {name: Group(name, f"group-{name}", (TOPIC,), "earliest", process,
                              wants=lambda _r: True) for name, process in recorders.items()}
        reader = SharedReader(["fake:9092"], list(groups.values()), {}, stop,
                              capacity=capacity)
        reader.start()
        readers.append(reader)
        _wait(lambda: reader.assigned == PARTITIONS, "no partitions")
        return reader, groups

    yield start
    stop.set()
    for reader in readers:
        reader.join(20)


def _wait(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _all(count: int) -> list[tuple[int, int]]:
    return [(p, o) for p in range(PARTITIONS) for o in range(count)]


def test_a_held_group_holds_the_other_back_not_at_all_and_catches_up_exactly(
        kafka: FakeKafka, run: Callable[..., Any]) -> None:
    fast, slow = Recorder(), Recorder(held=True)
    _reader, groups = run({"fast": fast, "slow": slow}, capacity=5)
    for partition in range(PARTITIONS):
        kafka.produce(partition, [b"x"] * 200)
    _wait(lambda: sorted(fast.handled) == _all(200), "the fast group was held back")
    # The held group's lanes stayed bounded: capacity plus at most one fetched batch.
    assert all(lane.queued <= 5 + 7 for lane in groups["slow"].lanes.values())
    assert all(lane.detached for lane in groups["slow"].lanes.values())
    slow.release.set()
    _wait(lambda: len(slow.handled) >= 400, "the held group did not catch up")
    time.sleep(0.2)
    for recorder in (fast, slow):
        assert len(recorder.handled) == 400  # none twice
        for partition in range(PARTITIONS):  # each partition in offset order
            assert [o for p, o in recorder.handled if p == partition] == list(range(200))
    # Caught up: the shared fetch feeds the slow group again and its catch-up reader is gone.
    _wait(lambda: not any(lane.detached for lane in groups["slow"].lanes.values()), "attached")
    kafka.produce(0, [b"y"] * 10)
    _wait(lambda: len(slow.handled) == 410 and len(fast.handled) == 410, "after catching up")
    _wait(lambda: all(kafka.committed.get((f"group-{n}", TOPIC, p)) == (210 if p == 0 else 200)
                      for n in groups for p in range(PARTITIONS)), "offsets not committed")


def test_when_every_group_lags_the_partition_pauses_and_memory_stays_bounded(
        kafka: FakeKafka, run: Callable[..., Any]) -> None:
    first, second = Recorder(held=True), Recorder(held=True)
    _reader, _groups = run({"first": first, "second": second}, capacity=4)
    for partition in range(PARTITIONS):
        kafka.produce(partition, [b"x"] * 300)
    shared = next(c for c in kafka.consumers if c.group == "iot-dispatcher-reader"
                  and c.client == "iot-dispatcher")
    _wait(lambda: len(shared.paused) == PARTITIONS, "the partitions were not paused")
    time.sleep(0.3)
    assert shared.fetched < 2 * (4 + 7) * PARTITIONS  # it stopped fetching
    first.release.set()
    second.release.set()
    _wait(lambda: len(first.handled) == 600 and len(second.handled) == 600, "not all handled")
    for recorder in (first, second):
        for partition in range(PARTITIONS):
            assert [o for p, o in recorder.handled if p == partition] == list(range(300))
