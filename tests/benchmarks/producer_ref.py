"""Reference of figure 1: the raw kafka-python producer writing the records ingest writes.

    python -m tests.benchmarks.producer_ref --bootstrap HOST:PORT --topic T --body FILE \
        --seconds S [--flush-every N]

Runs in its own process, as ingest does. The records are those ingest makes of the batch
body in FILE (same key, ce_* headers and value), built before the clock starts; the producer
has the options of ingest's KafkaSink (acks=all, linger, retries, one request in flight).
`--flush-every 0` streams (flush once at the end); N flushes and waits for every N records,
as one ingest request of N events does. `--threads N` is what single-event ingest asks of
kafka-python: N threads, each sending one record and waiting for its acknowledgement before the
next. Prints one JSON line: records, seconds, records/s, and the process's CPU per record.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from kafka import KafkaProducer

from iot_telemetry.events import read_http, to_kafka
from iot_telemetry.publisher import KafkaSink
from iot_telemetry.settings import Settings
from iot_telemetry.telemetry import format_time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.producer_ref")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--body", required=True, help="a cloudevents-batch+json body")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--flush-every", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="N threads, one record per send, each waiting for its ack")
    args = parser.parse_args(argv)

    raws = read_http({"Content-Type": "application/cloudevents-batch+json"},
                     Path(args.body).read_bytes())
    received = format_time(datetime.now(UTC))
    records = [to_kafka(args.topic, {**r.attributes, "partitionkey": r.attributes["subject"],
                                     "ingesttime": received}, r.data) for r in raws]
    settings = Settings.from_environ({"KAFKA_BOOTSTRAP_SERVERS": args.bootstrap,
                                      "KAFKA_TOPIC": args.topic})
    # The very options ingest's producer has (a private attribute: the point is sameness).
    options = dict(KafkaSink(settings)._options)
    producer = KafkaProducer(**options)
    producer.partitions_for(args.topic)  # connect and fetch metadata before the clock starts

    if args.threads:
        return _one_by_one(producer, records, args.threads, args.seconds, options)
    sent = failed = 0
    futures: list = []
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    stop_at = t0 + args.seconds
    while time.perf_counter() < stop_at:
        for r in records:
            futures.append(producer.send(r.topic, key=r.key, value=r.value,
                                         headers=list(r.headers)))
            sent += 1
            if args.flush_every and sent % args.flush_every == 0:
                producer.flush()
                failed += sum(1 for f in futures if f.failed())
                futures.clear()
        if not args.flush_every and len(futures) > 50_000:
            failed += sum(1 for f in futures if f.is_done and f.failed())
            futures = [f for f in futures if not f.is_done]
    producer.flush()
    failed += sum(1 for f in futures if f.failed())
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    producer.close()
    _report(sent - failed, failed, elapsed, cpu, options, flush_every=args.flush_every)
    return 0


def _one_by_one(producer: KafkaProducer, records: list, threads: int, seconds: float,
                options: dict) -> int:
    counts = [0] * threads
    failures = [0] * threads
    stop_at = time.perf_counter() + seconds

    def work(n: int) -> None:
        i = n
        while time.perf_counter() < stop_at:
            r = records[i % len(records)]
            i += threads
            try:
                producer.send(r.topic, key=r.key, value=r.value,
                              headers=list(r.headers)).get(timeout=30)
                counts[n] += 1
            except Exception:  # counted: the figure says how many failed
                failures[n] += 1

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    producer.close()
    _report(sum(counts), sum(failures), elapsed, cpu, options, threads=threads)
    return 0


def _report(records: int, failed: int, seconds: float, cpu: float, options: dict,
            **mode: int) -> None:
    print(json.dumps({"records": records, "failed": failed, "seconds": seconds,
                      "records_per_s": records / seconds,
                      "cpu_us_per_record": cpu * 1e6 / max(1, records),
                      "cpu_cores": cpu / seconds, **mode, "options": {
                          k: v for k, v in options.items() if k != "bootstrap_servers"}}))


if __name__ == "__main__":
    sys.exit(main())
