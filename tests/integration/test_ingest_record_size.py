"""ingest against the real Kafka at the record size limits: 413 for a record that can never
be written, never a 503 with Retry-After that a device would retry forever."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic

from iot_telemetry import events
from iot_telemetry.publisher import record_size
from iot_telemetry.runtime import Runtime, set_runtime
from iot_telemetry.settings import Settings
from tests.conftest import Apps, telemetry

pytestmark = pytest.mark.integration
# The topic's max.message.bytes, which bounds a record batch. record_size is the producer's
# own estimate of a batch holding one record: an upper bound (by at most 17 bytes), so a
# record ingest lets through at KAFKA_MAX_RECORD_BYTES = max.message.bytes always fits.
TOPIC_LIMIT = 20_000


@pytest.fixture
def small_topic(kafka_bootstrap: str) -> Iterator[str]:
    name = f"iot.test.size.{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1,
                                  topic_configs={"max.message.bytes": str(TOPIC_LIMIT)})])
    yield name
    admin.delete_topics([name])
    admin.close()


def ingest_app(kafka: str, topic: str, **env: str) -> Apps:
    rt = Runtime(Settings.from_environ({}, {"MONGO_URL": "memory://", "KAFKA_TOPIC": topic,
                                            "KAFKA_BOOTSTRAP_SERVERS": kafka,
                                            "KAFKA_SEND_TIMEOUT_SECONDS": "10", **env}))
    set_runtime(rt)
    return Apps()


def padded(i: int, pad: int) -> tuple[dict[str, str], dict[str, object]]:
    attributes, data = telemetry("dev-1", datetime.now(UTC) - timedelta(seconds=5),
                                 {"temperature": 21.5}, f"size-{i}")
    return {**attributes, "pad": "x" * pad}, data


def post(apps: Apps, event: tuple[dict[str, str], dict[str, object]]):
    attributes, data = event
    return apps.ingest.post("/", data=json.dumps({**attributes, "data": data}),
                            headers={"Content-Type": events.STRUCTURED})


def written(kafka: str, topic: str) -> list[bytes]:
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka, auto_offset_reset="earliest",
                             consumer_timeout_ms=3000)
    ids = [dict(m.headers)["ce_id"] for m in consumer]
    consumer.close()
    return ids


def sizes(pad: int) -> int:
    """The record size of padded(i, pad), as ingest would write it."""
    attributes, data = padded(0, pad)
    record = events.to_kafka("t", {**attributes, "partitionkey": "dev-1",
                                   "ingesttime": "2026-11-26T10:00:00.000Z"}, data)
    return record_size(record)


def test_the_largest_record_kafka_takes_is_written_one_byte_more_is_413(kafka_bootstrap,
                                                                       small_topic) -> None:
    apps = ingest_app(kafka_bootstrap, small_topic, KAFKA_MAX_RECORD_BYTES=str(TOPIC_LIMIT))
    pad = next(p for p in range(TOPIC_LIMIT - sizes(0), 0, -1) if sizes(p) <= TOPIC_LIMIT)
    assert sizes(pad) == TOPIC_LIMIT
    response = post(apps, padded(1, pad))
    assert response.status_code == 202, response.get_json()
    response = post(apps, padded(2, pad + 1))
    assert response.status_code == 413, response.get_json()
    assert "KAFKA_MAX_RECORD_BYTES" in response.get_json()["message"]
    assert "Retry-After" not in response.headers
    assert written(kafka_bootstrap, small_topic) == [b"size-1"]


def test_a_topic_smaller_than_kafka_max_record_bytes_is_413_too(kafka_bootstrap,
                                                                small_topic) -> None:
    # Misconfigured: ingest's own check lets the record through, the broker refuses it.
    apps = ingest_app(kafka_bootstrap, small_topic,
                      KAFKA_MAX_RECORD_BYTES=str(TOPIC_LIMIT * 2))
    response = post(apps, padded(3, TOPIC_LIMIT))
    assert response.status_code == 413, response.get_json()
    assert "max.message.bytes" in response.get_json()["message"]
    # The producer is still usable afterwards.
    assert post(apps, padded(4, 10)).status_code == 202
    assert written(kafka_bootstrap, small_topic) == [b"size-4"]


def test_default_limits_a_body_within_ingest_max_body_bytes_that_grows_is_413(
        kafka_bootstrap, topic) -> None:
    # Defaults: INGEST_MAX_BODY_BYTES 1 MiB, KAFKA_MAX_RECORD_BYTES 1000000, the producer's
    # max.request.size the same, the topic's max.message.bytes Kafka's 1048588. 1e15 is 4
    # bytes in the body and 18 in the record (1000000000000000.0).
    apps = ingest_app(kafka_bootstrap, topic)
    attributes, _ = telemetry("dev-1", datetime.now(UTC), {}, "big")
    headers, _ = events.to_http(attributes, None)
    metrics = ",".join(f'"m{i}":1e15' for i in range(70_000))
    body = f'{{"metrics":{{{metrics}}}}}'.encode()
    assert len(body) < 1_048_576
    response = apps.ingest.post("/", data=body, headers=headers)
    assert response.status_code == 413, response.get_json()
    assert "KAFKA_MAX_RECORD_BYTES (1000000)" in response.get_json()["message"]
    assert written(kafka_bootstrap, topic) == []
