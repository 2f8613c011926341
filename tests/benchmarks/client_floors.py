"""What one store command and one Kafka record cost a Python process, with nothing around them.

    python -m tests.benchmarks.client_floors --kafka 127.0.0.1:9092 \
        --mongo mongodb://127.0.0.1:27018 [--rounds 4]

The floors under every function and the local dispatcher, in CPU time of this process
(the server's is apart), each the median and minimum of `--rounds` rounds run in turn:
- pymongo: an update_one by `_id`, with the functions' client options, with and without the
  command listener behind iot_store_commands_total;
- kafka-python: a record produced the way ingest produces (acks=all, batches of 20 flushed);
  a record consumed in 64 KiB fetches; an idle consumer's cost per second (the fetch wait
  of the local dispatcher: 50 ms).
A data point of figure 3's stream (23 per event) cannot cost less than these shares of its
event's hops. On a fresh topic and collection, removed afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import pymongo

from iot_telemetry.store import _CommandCounter


def rounds(n: int, **cases: Callable[[], float]) -> dict[str, list[float]]:
    """Each case once per round, in turn, so a busy moment of the machine hits them alike."""
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(n):
        for name, case in cases.items():
            out[name].append(case())
    return out


def pymongo_case(url: str, listener: bool, calls: int = 1500, *, burst: int = 1,
                 paused: bool = False) -> Callable[[], float]:
    """us of CPU per `burst` update_one calls by `_id` with the functions' client options;
    `paused`: each burst after a 10 ms sleep (not counted), as a lone event's commands come."""
    def run() -> float:
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            url, tz_aware=True, retryWrites=False,
            event_listeners=[_CommandCounter()] if listener else [])
        collection = client["bench_floors"]["x"]
        collection.update_one({"_id": 1}, {"$inc": {"n": 1}}, upsert=True)
        bursts, cpu = max(1, calls // burst), 0.0
        t0 = time.process_time()
        for _ in range(bursts):
            if paused:
                cpu += time.process_time() - t0
                time.sleep(0.01)
                t0 = time.process_time()
            for _ in range(burst):
                collection.update_one({"_id": 1}, {"$inc": {"n": 1}})
        cpu += time.process_time() - t0
        client.drop_database("bench_floors")
        client.close()
        return cpu / bursts * 1e6
    return run


def produce_case(bootstrap: str, topic: str, batches: int = 300) -> Callable[[], float]:
    from kafka import KafkaProducer

    value = b"x" * 900  # figure 3's events are about this size

    def run() -> float:
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2,
                                 enable_idempotence=False,
                                 max_in_flight_requests_per_connection=1)
        producer.send(topic, value=value).get(10)
        t0 = time.process_time()
        for _ in range(batches):
            futures = [producer.send(topic, key=b"k%d" % i, value=value) for i in range(20)]
            producer.flush(10)
            for future in futures:
                future.get(10)
        cpu = (time.process_time() - t0) / (batches * 20)
        producer.close()
        return cpu * 1e6
    return run


def _consumer(bootstrap: str, topic: str, from_start: bool) -> Any:
    """A consumer of the topic's one partition, fetching as the old dispatcher did."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             fetch_min_bytes=64 * 1024, fetch_max_wait_ms=50)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    if from_start:
        consumer.seek(tp, 0)
    else:
        consumer.seek_to_end(tp)
    return consumer


def consume_case(bootstrap: str, topic: str, records: int = 5000) -> Callable[[], float]:
    def run() -> float:
        consumer = _consumer(bootstrap, topic, from_start=True)
        n, t0 = 0, time.process_time()
        while n < records:
            for batch in consumer.poll(timeout_ms=1000).values():
                n += len(batch)
        cpu = (time.process_time() - t0) / n
        consumer.close()
        return cpu * 1e6
    return run


def idle_case(bootstrap: str, topic: str, seconds: float = 5.0) -> Callable[[], float]:
    def run() -> float:
        consumer = _consumer(bootstrap, topic, from_start=False)
        consumer.poll(timeout_ms=200)
        t0, w0 = time.process_time(), time.monotonic()
        while time.monotonic() - w0 < seconds:
            consumer.poll(timeout_ms=200)
        cpu = (time.process_time() - t0) / (time.monotonic() - w0)
        consumer.close()
        return cpu * 1e3
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.client_floors")
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--mongo", default="mongodb://127.0.0.1:27018")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"bench-floors-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=args.kafka, request_timeout_ms=20000)
    admin.create_topics([NewTopic(topic, 1, 1)])
    try:
        results = [
            ("pymongo update_one by _id, us CPU", rounds(
                args.rounds, **{"with the command listener": pymongo_case(args.mongo, True),
                                "without": pymongo_case(args.mongo, False)})),
            ("kafka-python, us CPU per record", rounds(
                args.rounds, **{"produced (acks=all, batches of 20)":
                                produce_case(args.kafka, topic),
                                "consumed (64 KiB fetches)": consume_case(args.kafka, topic)})),
            ("kafka-python, an idle consumer (fetch wait 50 ms), ms CPU per second", rounds(
                args.rounds, idle=idle_case(args.kafka, topic))),
        ]
    finally:
        admin.delete_topics([topic])
        admin.close()
    for title, cases in results:
        print(title)
        for name, values in cases.items():
            print(f"  {name}: median {statistics.median(values):.1f}, min {min(values):.1f} "
                  f"({len(values)} rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
