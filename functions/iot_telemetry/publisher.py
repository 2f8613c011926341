"""Where ingest writes records: Kafka (acks=all), or the in-process broker of the local run."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .errors import DependencyUnavailable, PayloadTooLarge
from .events import KafkaRecord
from .settings import Settings

log = logging.getLogger(__name__)
_kafka_log = logging.getLogger("iot_telemetry.kafka")


class RecordSink(Protocol):
    """Takes records and returns only once every one of them is durably acknowledged."""

    def send(self, records: Sequence[KafkaRecord], timeout: float) -> None:
        """Write all records or raise DependencyUnavailable."""

    def ready(self) -> bool:
        """Whether the sink can take writes now."""

    def close(self) -> None:
        """Flush and release connections."""


class KafkaSink:
    """librdkafka producer (confluent-kafka) with acks=all, in-order retries, one per process.

    librdkafka, not kafka-python: an acknowledged single-record write costs the process
    about a fifth of kafka-python's CPU, lone (407 against 2,031 us) and with 16 in flight
    (89 against 467 us), at 2-3x the writes per second (BENCHMARKS.md, "Per-event cost").
    A thread of its own serves the delivery reports; a request waits for its records' own
    reports, so concurrent requests share produce requests (linger.ms).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        timeout_ms = int(settings.kafka_send_timeout_seconds * 1000)
        config: dict[str, Any] = {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "acks": "all",
            "linger.ms": 2,
            "retries": 5,
            "max.in.flight.requests.per.connection": 1,  # keeps each device's order on retry
            # Without idempotence a retry may write a record twice, which the consumers'
            # (source, id) dedup absorbs; an idempotent producer must be rebuilt after some
            # fatal errors (a broker restart mid-write), which would fail writes meanwhile.
            "enable.idempotence": False,
            "request.timeout.ms": timeout_ms,
            "message.timeout.ms": timeout_ms,
            "reconnect.backoff.max.ms": 2000,
            "client.id": "iot-ingest",
            # ingest refuses larger records itself (record_size, an upper bound), with a 413
            # naming the limit; the margin covers the batch framing librdkafka adds.
            "message.max.bytes": settings.kafka_max_record_bytes + 1024,
            "security.protocol": settings.kafka_security_protocol,
            # librdkafka's own log lines as JSON lines like ours (served by the poll thread);
            # connection losses come as errors too, and librdkafka reconnects on its own.
            "logger": _kafka_log,
            "error_cb": lambda err: _kafka_log.warning("kafka client error",
                                                       extra={"error": str(err)}),
        }
        if settings.kafka_security_protocol.startswith("SASL"):
            config.update({"sasl.mechanism": settings.kafka_sasl_mechanism,
                           "sasl.username": settings.kafka_sasl_username,
                           "sasl.password": settings.kafka_sasl_password})
        self._config = config
        self._producer: Any = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._retry_after = settings.ingest_retry_after_seconds

    def _get(self) -> Any:
        with self._lock:
            if self._producer is None:
                from confluent_kafka import KafkaException, Producer

                try:
                    self._producer = Producer(self._config)
                except KafkaException as exc:
                    raise DependencyUnavailable(
                        f"Kafka producer: {exc}", self._retry_after) from None
                threading.Thread(target=self._reports, args=(self._producer,), daemon=True,
                                 name="kafka-delivery-reports").start()
            return self._producer

    def _reports(self, producer: Any) -> None:
        """Serve delivery reports (they run the callbacks of _produce) until closed."""
        while not self._closed.is_set():
            producer.poll(0.1)

    def _produce(self, records: Sequence[KafkaRecord],
                 report: Callable[[int, Exception | None], None]) -> None:
        """Hand every record to librdkafka; `report(i, error)` is called once each is
        acknowledged (error None) or failed, on the delivery-report thread."""
        producer = self._get()
        for i, r in enumerate(records):
            def done(err: Any, _msg: Any, i: int = i) -> None:
                report(i, None if err is None else self._failure(err))
            try:
                producer.produce(r.topic, r.value, r.key, headers=list(r.headers),
                                 on_delivery=done)
            except BufferError:
                raise DependencyUnavailable(
                    "Kafka is not taking writes: the producer's queue is full",
                    self._retry_after) from None
            except Exception as exc:
                raise self._failure(getattr(exc, "args", [exc])[0]) from None

    def send(self, records: Sequence[KafkaRecord], timeout: float) -> None:
        finished = threading.Semaphore(0)
        errors: list[Exception] = []

        def report(_i: int, error: Exception | None) -> None:
            if error is not None:
                errors.append(error)
            finished.release()

        self._produce(records, report)
        for _ in records:
            if not finished.acquire(timeout=timeout):
                raise DependencyUnavailable("Kafka did not acknowledge the write in time",
                                            self._retry_after)
        if errors:
            raise errors[0]

    async def send_async(self, records: Sequence[KafkaRecord], timeout: float) -> None:
        """`send` for the event loop: the acknowledgements are awaited, no thread waits."""
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future() for _ in records]

        def settle(i: int, error: Exception | None) -> None:
            waiter = waiters[i]
            if not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)

        def report(i: int, error: Exception | None) -> None:
            loop.call_soon_threadsafe(settle, i, error)

        self._produce(records, report)
        try:
            await asyncio.wait_for(asyncio.gather(*waiters), timeout)
        except TimeoutError:
            raise DependencyUnavailable("Kafka did not acknowledge the write in time",
                                        self._retry_after) from None

    def _failure(self, error: Any) -> Exception:
        """What a failed write answers: 413 for a record Kafka refuses as too large, else 503."""
        from confluent_kafka import KafkaError

        code = error.code() if isinstance(error, KafkaError) else None
        if code in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE):
            # The topic takes less than KAFKA_MAX_RECORD_BYTES: resending cannot help.
            return PayloadTooLarge(
                f"Kafka refused a record as too large ({error}): the topic's "
                "max.message.bytes is below KAFKA_MAX_RECORD_BYTES "
                f"({self._settings.kafka_max_record_bytes})")
        return DependencyUnavailable(f"Kafka did not acknowledge the write: {error}",
                                     self._retry_after)

    def ready(self) -> bool:
        """Whether a bootstrap server accepts connections (fast: a probe waits 1 s at most)."""
        for server in self._settings.kafka_bootstrap_servers.split(","):
            host, _, port = server.strip().rpartition(":")
            try:
                with socket.create_connection((host or "localhost", int(port)), timeout=1):
                    return True
            except (OSError, ValueError):
                continue
        return False

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.flush(5)
                self._closed.set()
                self._producer = None


def record_size(record: KafkaRecord, limit: int | None = None) -> int:
    """Bytes of a record as the producer counts it against max.request.size: a batch of
    this one record, an upper bound (by at most 17 bytes) of what the broker checks against
    the topic's max.message.bytes.

    With `limit`, a cheaper bound that stays under it is returned instead of the count.
    """
    # Batch header and record overhead, key, value and header count: varints of <= 5 bytes.
    bound = 61 + 21 + 15 + len(record.key) + len(record.value) + sum(
        10 + 4 * len(name) + len(value) for name, value in record.headers)
    if limit is not None and bound <= limit:
        return bound
    from kafka.record.default_records import DefaultRecordBatchBuilder

    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(
        record.key, record.value, list(record.headers))
    return size


_memory_sink: RecordSink | None = None


def set_memory_sink(sink: RecordSink | None) -> None:
    """Install the in-process broker that `memory://` bootstrap servers write to."""
    global _memory_sink
    _memory_sink = sink


class MemorySink:
    """Forwards to the in-process broker the local runner installed."""

    def __init__(self, settings: Settings) -> None:
        self._retry_after = settings.ingest_retry_after_seconds

    def send(self, records: Sequence[KafkaRecord], timeout: float) -> None:
        if _memory_sink is None:
            raise DependencyUnavailable("no in-process broker is running", self._retry_after)
        _memory_sink.send(records, timeout)

    def ready(self) -> bool:
        return _memory_sink is not None and _memory_sink.ready()

    def close(self) -> None:
        return None


def make_sink(settings: Settings) -> RecordSink:
    return MemorySink(settings) if settings.embedded_broker else KafkaSink(settings)
