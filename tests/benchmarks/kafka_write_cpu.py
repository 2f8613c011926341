"""CPU per acknowledged write: kafka-python against librdkafka (confluent-kafka).

    python -m tests.benchmarks.kafka_write_cpu --bootstrap 127.0.0.1:9092 [--writes 400]
        [--in-flight N]

What one dispatcher write costs (a reply, a KafkaSink record, a dead letter): one record,
acks=all, waited for before the next, the writes paced 10 ms apart as at tens of events
a second (back to back, a client's per-request cost hides in its batching). Each client
runs in its own process; prints one line per client with the process's CPU per write.
With --in-flight N, N writers each write one record at a time back to back (as N ingest
requests in flight do: their records share produce requests).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

TOPIC = "iot.alerts"
VALUE = b'{"state":"raised","value":41.5}' * 4
HEADERS: list[tuple[str, str | bytes | None]] = [
    ("ce_id", b"dev-1:temperature-high:1/raised"), ("ce_type", b"iot.alert.v1")]


def _kafka_python(bootstrap: str) -> tuple[str, object]:
    from kafka import KafkaProducer, __version__

    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all", linger_ms=2,
                             enable_idempotence=False,  # ingest's options (publisher.py)
                             max_in_flight_requests_per_connection=1)

    def write() -> None:
        producer.send(TOPIC, key=b"dev-1", value=VALUE, headers=HEADERS).get(10)

    return f"kafka-python {__version__}", write


def _confluent(bootstrap: str) -> tuple[str, object]:
    from confluent_kafka import Producer, version

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 2,
                         "enable.idempotence": False})
    acked = threading.Event()
    errors: list[object] = []

    def report(err: object, _message: object) -> None:
        if err is not None:
            errors.append(err)
        acked.set()

    def serve() -> None:
        while True:
            producer.poll(0.5)

    threading.Thread(target=serve, daemon=True).start()

    def write() -> None:
        acked.clear()
        producer.produce(TOPIC, key=b"dev-1", value=VALUE, headers=HEADERS,
                         on_delivery=report)
        if not acked.wait(10) or errors:
            raise RuntimeError(f"not acknowledged: {errors}")

    return f"confluent-kafka {version()}", write


def _measure(client: str, bootstrap: str, writes: int, in_flight: int = 1) -> None:
    name, write = (_kafka_python if client == "kafka-python" else _confluent)(bootstrap)
    write()  # type: ignore[operator]  # connected, metadata known
    if in_flight > 1 and client != "kafka-python":
        raise SystemExit("--in-flight: kafka-python only (its futures wait per record)")
    before = os.times()
    if in_flight == 1:
        for _ in range(writes):
            write()  # type: ignore[operator]
            time.sleep(0.01)
        how = "10 ms apart"
    else:
        def writer() -> None:
            for _ in range(writes // in_flight):
                write()  # type: ignore[operator]

        threads = [threading.Thread(target=writer) for _ in range(in_flight)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        writes = writes // in_flight * in_flight
        how = f"{in_flight} writers back to back"
    after = os.times()
    cpu = (after.user + after.system) - (before.user + before.system)
    print(f"{name}: {cpu / writes * 1e6:.0f} us of CPU per acknowledged write "
          f"({writes} writes, {how})", flush=True)
    os._exit(0)  # the clients' threads need no orderly goodbye here


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.kafka_write_cpu")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--writes", type=int, default=400)
    parser.add_argument("--client", choices=("kafka-python", "confluent-kafka"))
    parser.add_argument("--in-flight", type=int, default=1)
    args = parser.parse_args(argv)
    if args.client:
        _measure(args.client, args.bootstrap, args.writes, args.in_flight)
        return 0
    for client in ("kafka-python", "confluent-kafka"):
        if args.in_flight > 1 and client != "kafka-python":
            continue
        subprocess.run([sys.executable, "-m", "tests.benchmarks.kafka_write_cpu", "--client",
                        client, "--bootstrap", args.bootstrap, "--writes", str(args.writes),
                        "--in-flight", str(args.in_flight)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
