"""Shared fixtures: isolated environment, an embedded runtime, the functions' real HTTP apps."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import flask
import pytest
from functions_framework import create_app

from iot_telemetry import events, publisher, store
from iot_telemetry.errors import DependencyUnavailable
from iot_telemetry.events import KafkaRecord
from iot_telemetry.runtime import Runtime, set_runtime
from iot_telemetry.settings import Settings

from .asgi_client import AsgiClient

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolate_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts from the same environment and forgets what it changed."""
    for name, _default, _doc in Settings.variables():
        monkeypatch.delenv(name, raising=False)
    yield
    set_runtime(None)
    publisher.set_memory_sink(None)


class RecordingSink:
    """Stands in for the broker: keeps records, or fails like an unreachable Kafka."""

    def __init__(self) -> None:
        self.records: list[KafkaRecord] = []
        self.fail = False

    def send(self, records: Sequence[KafkaRecord], timeout: float) -> None:
        if self.fail:
            raise DependencyUnavailable("broker down", 7)
        self.records += records

    def ready(self) -> bool:
        return not self.fail

    def close(self) -> None:
        return None


def count_calls(monkeypatch: pytest.MonkeyPatch, on: store.Store, collection: str,
                methods: Sequence[str], when: Any = None) -> dict[str, int]:
    """Count the calls of `methods` on one collection of a store (those `when(*args,
    **kwargs)` accepts); the returned dict's "n" grows as they happen."""
    calls = {"n": 0}
    collection_of = type(on).collection

    class Counting:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, attr: str) -> Any:
            inner = getattr(self.inner, attr)
            if attr not in methods:
                return inner

            def counted(*args: Any, **kwargs: Any) -> Any:
                if when is None or when(*args, **kwargs):
                    calls["n"] += 1
                return inner(*args, **kwargs)
            return counted

    monkeypatch.setattr(type(on), "collection", lambda self, name: (
        Counting(collection_of(self, name)) if name == collection
        else collection_of(self, name)))
    return calls


def make_runtime(**env: str) -> Runtime:
    settings = Settings.from_environ({}, {"MONGO_URL": "memory://",
                                          "KAFKA_BOOTSTRAP_SERVERS": "memory://", **env})
    return Runtime(settings)


@pytest.fixture
def runtime() -> Runtime:
    store.reset_embedded()
    rt = make_runtime()
    set_runtime(rt)
    return rt


@pytest.fixture
def sink(runtime: Runtime) -> RecordingSink:
    s = RecordingSink()
    publisher.set_memory_sink(s)
    return s


def served_app(name: str) -> Any:
    """The app functions-framework serves a function with: Starlette (ASGI) for ingest,
    aggregate and alert, Flask for query."""
    return create_app(name, str(REPO / "functions" / f"{name}.py"), "http")


def test_client(app: Any) -> Any:
    return app.test_client() if isinstance(app, flask.Flask) else AsgiClient(app)


class Apps:
    """The real functions-framework apps of the four functions."""

    def __init__(self) -> None:
        self.clients = {name: test_client(served_app(name))
                        for name in ("ingest", "aggregate", "alert", "query")}

    def __getattr__(self, name: str) -> Any:
        try:
            return self.clients[name]
        except KeyError:
            raise AttributeError(name) from None

    def deliver(self, function: str, record: KafkaRecord, structured: bool = False) -> Any:
        """Deliver a Kafka record to a consumer function as the Broker would."""
        raw = events.from_kafka(record.key, record.headers, record.value)
        if structured:
            body = json.dumps({**raw.attributes, "data": raw.data})
            return self.clients[function].post(
                "/", data=body, headers={"Content-Type": events.STRUCTURED})
        headers, body_bytes = events.to_http(raw.attributes, raw.data)
        return self.clients[function].post("/", data=body_bytes, headers=headers)


@pytest.fixture
def apps(runtime: Runtime) -> Apps:
    return Apps()


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def telemetry(device: str, t: datetime, metrics: dict[str, float], event_id: str,
              samples: list[tuple[datetime, dict[str, float]]] | None = None,
              ) -> tuple[dict[str, str], dict[str, Any]]:
    attributes = {"specversion": "1.0", "type": "iot.telemetry.v1",
                  "source": f"/devices/{device}", "id": event_id, "subject": device,
                  "time": iso(t), "datacontenttype": "application/json"}
    data: dict[str, Any] = {"metrics": metrics} if metrics else {}
    if samples:
        data["samples"] = [{"time": iso(st), "metrics": m} for st, m in samples]
    return attributes, data


def record(device: str, t: datetime, metrics: dict[str, float], event_id: str,
           samples: list[tuple[datetime, dict[str, float]]] | None = None) -> KafkaRecord:
    attributes, data = telemetry(device, t, metrics, event_id, samples)
    return events.to_kafka("iot.telemetry", attributes, data)


@pytest.fixture
def now() -> datetime:
    t = datetime.now(UTC) - timedelta(hours=2)
    return t.replace(minute=0, second=0, microsecond=0)
