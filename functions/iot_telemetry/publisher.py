"""Where ingest writes records: Kafka (acks=all), or the in-process broker of the local run."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from .errors import DependencyUnavailable, PayloadTooLarge
from .events import KafkaRecord
from .settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Runs a blocking call off the event loop (asgi.blocking with the process's threads).
Offload = Callable[[Callable[[], T]], Awaitable[T]]


class RecordSink(Protocol):
    """Takes records and returns only once every one of them is durably acknowledged."""

    def send(self, records: Sequence[KafkaRecord], timeout: float) -> None:
        """Write all records or raise DependencyUnavailable."""

    def ready(self) -> bool:
        """Whether the sink can take writes now."""

    def close(self) -> None:
        """Flush and release connections."""


class KafkaSink:
    """kafka-python producer with acks=all, in-order retries, one per process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        timeout_ms = int(settings.kafka_send_timeout_seconds * 1000)
        options: dict[str, Any] = {
            "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
            "acks": "all",
            "linger_ms": 2,
            "retries": 5,
            "max_in_flight_requests_per_connection": 1,  # keeps each device's order on retry
            # kafka-python (3.0.x) enables idempotence by default, and its idempotent producer
            # never sends again once a batch that was in retry expires (a Kafka restart during
            # a write): it resets its producer id and every later send waits forever, so ingest
            # would answer 503 until restarted. Without it a retry may write a record twice,
            # which the consumers' (source, id) dedup absorbs.
            "enable_idempotence": False,
            "request_timeout_ms": timeout_ms,
            "delivery_timeout_ms": timeout_ms + 100,
            "max_block_ms": timeout_ms,
            "bootstrap_timeout_ms": timeout_ms,
            "reconnect_backoff_max_ms": 2000,
            "client_id": "iot-ingest",
            # ingest refuses larger records itself (record_size), with a 413 naming the limit.
            "max_request_size": settings.kafka_max_record_bytes,
            "security_protocol": settings.kafka_security_protocol,
        }
        if settings.kafka_security_protocol.startswith("SASL"):
            options.update(
                sasl_mechanism=settings.kafka_sasl_mechanism,
                sasl_plain_username=settings.kafka_sasl_username,
                sasl_plain_password=settings.kafka_sasl_password,
            )
        self._options = options
        self._producer: Any = None
        self._lock = threading.Lock()
        self._retry_after = settings.ingest_retry_after_seconds

    def _get(self) -> Any:
        from kafka.errors import KafkaError

        with self._lock:
            if self._producer is None:
                try:
                    from kafka import KafkaProducer

                    self._producer = KafkaProducer(**self._options)
                except KafkaError as exc:
                    raise DependencyUnavailable(
                        f"Kafka is unreachable: {exc}", self._retry_after
                    ) from None
            return self._producer

    def send(self, records: Sequence[KafkaRecord], timeout: float) -> None:
        # No flush(): it would send every batch at once, also other requests' records, and
        # wait for all of them. Waiting on our own futures lets linger_ms gather the records
        # of concurrent requests into one produce request.
        try:
            for future in self._send(self._get(), records):
                future.get(timeout=timeout)
        except Exception as exc:
            raise self._failure(exc) from None

    async def send_async(self, records: Sequence[KafkaRecord], timeout: float,
                         offload: Offload[None]) -> None:
        """`send` for the event loop: the acknowledgements are awaited, no thread waits.

        The producer's first write of a topic may block (bootstrap, the topic's metadata),
        so that one runs through `offload`; later ones only append to the producer's buffer.
        """
        producer = self._producer
        if producer is None or any(producer._metadata.partitions_for_topic(r.topic) is None
                                   for r in records):
            await offload(functools.partial(self.send, records, timeout))
            return
        loop = asyncio.get_running_loop()
        try:
            acks = [_awaitable(loop, f) for f in self._send(producer, records)]
            await asyncio.wait_for(asyncio.gather(*acks), timeout)
        except Exception as exc:
            raise self._failure(exc) from None

    @staticmethod
    def _send(producer: Any, records: Sequence[KafkaRecord]) -> list[Any]:
        return [producer.send(r.topic, key=r.key, value=r.value, headers=list(r.headers))
                for r in records]

    def _failure(self, exc: Exception) -> Exception:
        """What a failed write answers: 413 for a record Kafka refuses as too large, 503."""
        from kafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

        if isinstance(exc, MessageSizeTooLargeError | RecordListTooLargeError):
            # The topic takes less than KAFKA_MAX_RECORD_BYTES: resending cannot help.
            return PayloadTooLarge(
                f"Kafka refused a record as too large ({type(exc).__name__}): the topic's "
                "max.message.bytes is below KAFKA_MAX_RECORD_BYTES "
                f"({self._settings.kafka_max_record_bytes})")
        if isinstance(exc, KafkaError | TimeoutError | DependencyUnavailable):
            if isinstance(exc, DependencyUnavailable):
                return exc
            return DependencyUnavailable(
                f"Kafka did not acknowledge the write: {type(exc).__name__}: {exc}",
                self._retry_after)
        return exc

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
                self._producer.close(timeout=5)
                self._producer = None


def _awaitable(loop: asyncio.AbstractEventLoop, future: Any) -> asyncio.Future[Any]:
    """An asyncio future settled when a kafka-python future is (on the producer's thread)."""
    waiter: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any) -> None:
        if not waiter.done():
            if isinstance(value, BaseException):
                waiter.set_exception(value)
            else:
                waiter.set_result(value)

    future.add_both(lambda value: loop.call_soon_threadsafe(settle, value))
    return waiter


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
