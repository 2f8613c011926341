"""In-process broker of the embedded local run: KafkaSource + Kafka Broker + Triggers, no Kafka.
PingSources publish into it on their schedules.

ingest writes its Kafka-binding records here (RecordSink); the events are spread over the
Broker's partitions by key like Kafka would, and each Trigger delivers each partition in
order on its own thread, with the filters, retries, backoff and dead letters of eventing/.
Nothing is persistent: a process restart loses whatever was pending.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from kafka.partitioner.default import murmur2

from iot_telemetry.errors import BadRequest, DependencyUnavailable
from iot_telemetry.events import JSON, KafkaRecord, from_kafka, to_kafka
from iot_telemetry.httpsession import HttpSession

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
from .manifests import Eventing, Trigger
from .pings import PingPlayer

log = logging.getLogger(__name__)

#: Records kept per topic nobody consumes (KafkaSink topics, e.g. iot.alerts); oldest dropped.
TOPIC_RETENTION: Final = 10_000


@dataclass(frozen=True)
class DeadLetter:
    """An event a Trigger could not deliver, as its dead-letter sink received it."""

    trigger: str
    sink: str | None
    attributes: Mapping[str, Any]
    data: Any
    reason: str
    status: int | None
    attempts: int


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner: murmur2 of the key, so a device lands where Kafka puts it."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def event_key(attributes: Mapping[str, Any]) -> bytes:
    """The record key the Broker uses: the partitionkey extension (ingest sets the device id)."""
    key = attributes.get("partitionkey") or attributes.get("subject") or attributes.get("id") or ""
    return key if isinstance(key, bytes) else str(key).encode()


@dataclass
class _Item:
    attributes: dict[str, Any]
    data: Any


class _Lane:
    """One Trigger's queue for one partition, drained in order by one thread."""

    def __init__(self, broker: MemoryBroker, trigger: Trigger, partition: int) -> None:
        self.trigger = trigger
        self.partition = partition
        self.queue: deque[_Item] = deque()
        self.wakeup = threading.Condition(broker._lock)
        self.thread = threading.Thread(target=broker._drain, args=(self,), daemon=True,
                                       name=f"trigger-{trigger.name}-{partition}")


class MemoryBroker:
    """The Broker, its KafkaSource and Triggers played in-process (a RecordSink for ingest)."""

    def __init__(self, eventing: Eventing, subscribers: Mapping[str, str],
                 ingress_port: int | None = 8005, *, ingress_host: str = "127.0.0.1",
                 clock: Callable[[], float] = time.time) -> None:
        missing = [s for s in eventing.services if s not in subscribers]
        if missing:
            raise ValueError(f"no URL for subscriber service(s) {', '.join(missing)}")
        self._eventing = eventing
        self._subscribers = dict(subscribers)
        self._partitions = eventing.broker.partitions
        self._source_topics = {t for s in eventing.sources for t in s.topics}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._started = False
        self._closed = False
        self._lanes = {(t.name, p): _Lane(self, t, p)
                       for t in eventing.triggers for p in range(self._partitions)}
        self._counters = {t.name: TriggerCounters() for t in eventing.triggers}
        self._dead: deque[DeadLetter] = deque(maxlen=TOPIC_RETENTION)
        self._topics: dict[str, deque[KafkaRecord]] = {}
        self._ingress_port = ingress_port
        self._ingress_host = ingress_host
        self._ingress: IngressServer | None = None
        self._pings = PingPlayer(eventing.pings, self.publish, self._stop, clock=clock)

    # --- RecordSink ---------------------------------------------------------------------

    def send(self, records: Sequence[KafkaRecord], timeout: float) -> None:
        """Take records as ingest writes them to Kafka; the KafkaSource moves them in."""
        if self._closed:
            raise DependencyUnavailable("the in-process broker is stopped")
        for record in records:
            if record.topic not in self._source_topics:
                self._keep(record)
                continue
            try:
                event = from_kafka(record.key, record.headers, record.value)
                attributes = text_attributes(event.attributes)
                missing = missing_attributes(attributes)
                if missing:
                    raise BadRequest(f"record lacks {', '.join(missing)}")
            except BadRequest as exc:
                # A KafkaSource cannot turn it into an event; keep it visible, do not stop.
                log.error("record on %s is not a CloudEvent: %s", record.topic, exc)
                with self._lock:
                    self._dead.append(DeadLetter("", None, {}, record.value, str(exc), None, 0))
                continue
            self.publish(attributes, event.data, key=record.key or None)

    def ready(self) -> bool:
        return self._started and not self._closed

    def close(self) -> None:
        self.stop()

    # --- broker -------------------------------------------------------------------------

    def publish(self, attributes: Mapping[str, Any], data: Any, *, key: bytes | None = None,
                ) -> None:
        """Put one event into the Broker: every Trigger whose filter matches gets it, in order."""
        if self._closed:
            raise DependencyUnavailable("the in-process broker is stopped")
        attrs = text_attributes(attributes)
        attrs.setdefault("datacontenttype", JSON)
        partition = partition_for(key or event_key(attrs), self._partitions)
        with self._lock:
            for trigger in self._eventing.triggers:
                if not trigger.matches(attrs):
                    self._counters[trigger.name].add(filtered=1)
                    continue
                lane = self._lanes[(trigger.name, partition)]
                lane.queue.append(_Item(attrs, data))
                lane.wakeup.notify()

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for lane in self._lanes.values():
            lane.thread.start()
        if self._ingress_port is not None:
            self._ingress = IngressServer(
                ingress_app(self.publish, self.ready),
                self._ingress_host, self._ingress_port)
            self._ingress.start()
            log.info("broker ingress listening", extra={"url": self._ingress.url})
        self._pings.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop delivering (retries waiting are abandoned) and close the ingress."""
        self._closed = True
        self._stop.set()
        with self._lock:
            for lane in self._lanes.values():
                lane.wakeup.notify_all()
            self._idle.notify_all()
        if self._ingress is not None:
            self._ingress.stop()
            self._ingress = None
        for lane in self._lanes.values():
            if lane.thread.is_alive():
                lane.thread.join(timeout)
        self._pings.join(timeout)

    @property
    def ingress_url(self) -> str | None:
        """Where to POST events into the Broker (K_SINK of the alert function)."""
        return self._ingress.url if self._ingress is not None else None

    def sink_env(self, service: str) -> dict[str, str]:
        """Environment a SinkBinding of eventing/ gives `service` (K_SINK = this ingress)."""
        return self._eventing.sink_env(service, self.ingress_url)

    def wait_idle(self, timeout: float) -> bool:
        """Block until every Trigger's queues are drained (replies included); False on timeout."""
        def drained() -> bool:
            return not any(lane.queue for lane in self._lanes.values())

        with self._idle:
            self._idle.wait_for(lambda: self._stop.is_set() or drained(), timeout)
            return drained()

    def stats(self) -> dict[str, TriggerStats]:
        with self._lock:
            pending = {name: 0 for name in self._counters}
            for (name, _), lane in self._lanes.items():
                pending[name] += len(lane.queue)
        stats = {}
        for name, counters in self._counters.items():
            snap = counters.snapshot()
            stats[name] = TriggerStats(snap.delivered, snap.retried, snap.dead_lettered,
                                       snap.filtered, pending[name])
        return stats

    def dead_letters(self, name: str | None = None) -> list[DeadLetter]:
        """Dead letters, all or those of one Trigger or one dead-letter sink name."""
        with self._lock:
            return [d for d in self._dead if name is None or name in (d.trigger, d.sink)]

    def sink_records(self, name: str) -> list[KafkaRecord]:
        """Records a KafkaSink wrote to its topic (e.g. iot-alerts, iot-dead-letters)."""
        return self.topic_records(self._eventing.sink_topic(name))

    def topic_records(self, topic: str) -> list[KafkaRecord]:
        with self._lock:
            return list(self._topics.get(topic, ()))

    # --- internals ----------------------------------------------------------------------

    def _keep(self, record: KafkaRecord) -> None:
        with self._lock:
            self._topics.setdefault(record.topic, deque(maxlen=TOPIC_RETENTION)).append(record)

    def _drain(self, lane: _Lane) -> None:
        session = HttpSession()
        try:
            while True:
                with self._lock:
                    while not lane.queue and not self._stop.is_set():
                        lane.wakeup.wait()
                    if self._stop.is_set():
                        return
                    item = lane.queue[0]
                try:
                    if not self._handle(lane.trigger, item, session):
                        return
                except Exception as exc:
                    # A bug, not a bad event: park it so the lane (and wait_idle) move on.
                    log.exception("delivery failed unexpectedly", extra={
                        "trigger": lane.trigger.name, "event_id": item.attributes.get("id")})
                    self._dead_letter(lane.trigger, item, "",
                                      DeadLettered(f"internal error: {exc!r}", None, 0))
                with self._lock:
                    lane.queue.popleft()
                    if not lane.queue:
                        self._idle.notify_all()
        finally:
            session.close()

    def _handle(self, trigger: Trigger, item: _Item, session: HttpSession) -> bool:
        """Deliver one event; False if stopped before it was done."""
        counters = self._counters[trigger.name]
        if trigger.sink is not None:
            self._keep(to_kafka(self._eventing.sink_topic(trigger.sink), item.attributes,
                                item.data))
            counters.add(delivered=1)
            return True
        url = self._subscribers[str(trigger.service)]
        outcome = deliver(trigger, item.attributes, item.data, url, session, stop=self._stop,
                          on_retry=lambda _n, _why: counters.add(retried=1))
        if isinstance(outcome, Aborted):
            return False
        if isinstance(outcome, Delivered):
            counters.add(delivered=1)
            if outcome.reply is not None:
                try:
                    self.publish(outcome.reply.attributes, outcome.reply.data)
                except DependencyUnavailable:
                    return False  # stopped meanwhile: the reply is lost with everything pending
            return True
        self._dead_letter(trigger, item, url, outcome)
        counters.add(dead_lettered=1)
        return True

    def _dead_letter(self, trigger: Trigger, item: _Item, url: str, outcome: DeadLettered,
                     ) -> None:
        sink = trigger.delivery.dead_letter_sink
        log.warning("event dead-lettered", extra={
            "trigger": trigger.name, "event_id": item.attributes.get("id"), "sink": sink,
            "reason": outcome.reason, "status": outcome.status, "attempts": outcome.attempts})
        with self._lock:
            self._dead.append(DeadLetter(trigger.name, sink, item.attributes, item.data,
                                         outcome.reason, outcome.status, outcome.attempts))
        if sink is not None:
            extensions = error_extensions(url, outcome)
            self._keep(to_kafka(self._eventing.sink_topic(sink),
                                {**item.attributes, **extensions}, item.data))
