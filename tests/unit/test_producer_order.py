"""Every Kafka producer of the project keeps a partition's order when it retries a write.

Without idempotence (both producers turn it off: its fatal errors across broker restarts),
a client that has several produce requests in flight to a broker may retry a failed one
after a later one succeeded: a device's events then sit out of order in the topic, and an
ordered Trigger (alert) delivers them so. CI saw it once with the dispatcher's producer on a
topic created a moment before (a device's last event first, on the broker topic). One
request in flight per connection is what keeps the order on retry; the clients themselves
cannot be made to fail a request on cue here, so their settings are what is checked.
"""

from __future__ import annotations

from typing import Any

from iot_telemetry.local.eventing.kafka_clients import RecordWriter
from iot_telemetry.publisher import KafkaSink
from iot_telemetry.settings import Settings


def test_the_dispatchers_producer_keeps_a_partitions_order_on_retry() -> None:
    config: dict[str, Any] = RecordWriter(["127.0.0.1:9"])._config

    assert config["enable.idempotence"] is False
    assert config["max.in.flight.requests.per.connection"] == 1
    assert config["acks"] == "all"


def test_ingests_producer_keeps_a_partitions_order_on_retry() -> None:
    options: dict[str, Any] = KafkaSink(Settings.from_environ({}))._options

    assert options["enable_idempotence"] is False
    assert options["max_in_flight_requests_per_connection"] == 1
    assert options["acks"] == "all"
