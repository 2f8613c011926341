"""Real-mode dispatcher: plays the KafkaSource, the Kafka Broker and its Triggers on real Kafka.

    python -m iot_telemetry.local.eventing.dispatcher --eventing eventing/ \
        --bootstrap localhost:9092 --subscriber aggregate=http://127.0.0.1:8003 \
        --subscriber alert=http://127.0.0.1:8004

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
- A slow Trigger (a subscriber slow, failing or down through its retries) never holds the
  others back, as on the Kafka Broker, where each Trigger is a consumer group of its own:
  once one of its lanes holds MAX_QUEUED records, the shared fetch stops feeding that lane
  and goes on for the others; the Trigger's own catch-up consumer reads that partition
  again from where the lane stopped, as the lane drains, until it is back with the shared
  fetch (reader.py). Memory stays bounded, offsets per group; nothing is skipped or lost.
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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from iot_telemetry.errors import BadRequest, DependencyUnavailable
from iot_telemetry.events import JSON, KafkaRecord, from_kafka, to_kafka
from iot_telemetry.httpsession import HttpSession
from iot_telemetry.observability import configure_logging

from ..layout import BROKER_PORT, EVENTING_DIR
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
from .kafka_clients import MAX_KAFKA_BACKOFF, RecordWriter, Stopped, kafka_errors
from .lanes import Group, Process
from .manifests import Eventing, Source, Trigger, load_eventing
from .pings import PingPlayer
from .reader import MAX_QUEUED, SharedReader

log = logging.getLogger("iot_telemetry.local.dispatcher")

#: Deliveries in flight at once for one unordered Trigger, over all its partitions (the
#: Kafka Broker's unordered dispatcher also keeps many in flight per partition).
UNORDERED_IN_FLIGHT: Final = 64
#: How long the ingress waits for Kafka to acknowledge a posted event before answering 503.
INGRESS_ACK_TIMEOUT: Final = 10.0
ERROR_HEADERS: Final = frozenset({"ce_knativeerrordest", "ce_knativeerrorcode",
                                  "ce_knativeerrordata"})



@dataclass(frozen=True)
class Naming:
    """Topic and consumer-group names; a suffix keeps test runs from sharing them."""

    suffix: str = ""

    def topic(self, name: str) -> str:
        return f"{name}{self.suffix}"

    def group(self, name: str) -> str:
        return f"{name}{self.suffix}"


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
                 clock: Callable[[], float] = time.time, max_queued: int = MAX_QUEUED) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, not {max_queued}")
        missing = [s for s in eventing.services if s not in subscribers]
        if missing:
            raise ValueError(f"no URL for subscriber service(s) {', '.join(missing)}")
        self.eventing = eventing
        self.naming = naming or Naming()
        self._bootstrap = list(bootstrap)
        self._subscribers = dict(subscribers)
        self._max_queued = max_queued
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
                                    {self.broker_topic: _decode_all}, self._stop,
                                    capacity=self._max_queued)
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
            except kafka_errors() as exc:
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
                   naming: Naming | None = None, stop: threading.Event | None = None,
                   max_queued: int = MAX_QUEUED) -> None:
    """Run until SIGTERM/SIGINT (main thread) or until `stop` is set."""
    dispatcher = Dispatcher(load_eventing(eventing_dir), bootstrap, subscribers,
                            ingress_port=ingress_port, ingress_host=ingress_host, naming=naming,
                            max_queued=max_queued)
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
        prog="python -m iot_telemetry.local.eventing.dispatcher",
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
    parser.add_argument("--max-queued", type=int,
                        default=int(environ.get("IOT_DISPATCHER_MAX_QUEUED", MAX_QUEUED)),
                        help="records a Trigger holds fetched per partition before it reads on "
                             f"by itself (env IOT_DISPATCHER_MAX_QUEUED, default {MAX_QUEUED})")
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
                       naming=Naming(args.name_suffix), max_queued=args.max_queued)
    except (ValueError, NotImplementedError) as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
