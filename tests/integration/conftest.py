"""Integration fixtures: the real Kafka and MongoDB-API servers that
`local/services/services.sh start` runs. A missing server is a failure, never a skip.

TEST_MONGO_URL is the store the proofs run on: one that keeps single-document atomicity
(mongo-java-server; tests/run.sh probes it first). TEST_FERRETDB_URL is FerretDB, the
compatibility lane (test_store_compat.py, marker `ferretdb`)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pymongo
import pytest
from kafka.admin import KafkaAdminClient, NewTopic

KAFKA = os.environ.get("TEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
MONGO = os.environ.get("TEST_MONGO_URL", "mongodb://127.0.0.1:27018")


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    if not _reachable(KAFKA):
        pytest.fail(f"Kafka is not running at {KAFKA}: run `bash local/services/services.sh "
                    "start` (tests/run.sh does)", pytrace=False)
    return KAFKA


def require_server(url: str, name: str) -> str:
    """URL, once something listens there; a test failure naming the server otherwise."""
    address = url.split("//", 1)[1].split("/", 1)[0]
    if not _reachable(address):
        pytest.fail(f"{name} is not running at {url}: run `bash "
                    "local/services/services.sh start` (tests/run.sh does)", pytrace=False)
    return url


@pytest.fixture(scope="session")
def mongo_url() -> str:
    return require_server(MONGO, "the MongoDB-API server (TEST_MONGO_URL)")


@pytest.fixture
def mongo_db(mongo_url: str) -> Iterator[str]:
    """A database of its own for each test, dropped afterwards."""
    name = f"iot_test_{uuid.uuid4().hex[:12]}"
    yield name
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_url)
    client.drop_database(name)
    client.close()


@pytest.fixture
def topic(kafka_bootstrap: str) -> Iterator[str]:
    """A fresh 3-partition topic for each test."""
    name = f"iot.test.{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])
    yield name
    admin.delete_topics([name])
    admin.close()
