"""ingest, aggregate and alert as functions-framework serves them: its ASGI mode (Starlette
under gunicorn's uvicorn worker). The probes, /metrics, JSON errors and graceful shutdown
keep working there."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from tests.conftest import REPO, served_app
from tests.unit.test_ingest import binary, now_event

EVENT_PATH = ("ingest", "aggregate", "alert")


def test_the_event_path_is_served_as_asgi_and_query_as_flask(runtime) -> None:
    import flask

    for name in EVENT_PATH:
        assert isinstance(served_app(name), Starlette), name
    assert isinstance(served_app("query"), flask.Flask)


@pytest.mark.parametrize("function", EVENT_PATH)
def test_probes_and_metrics(apps, sink, function) -> None:
    client = getattr(apps, function)
    assert client.get("/healthz").get_json() == {"status": "ok", "function": function}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["ready"] is True
    if function == "ingest":
        assert apps.ingest.post("/", **binary(*now_event())).status_code == 202
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["Content-Type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(metrics.data.decode())}
    assert "iot_processing_seconds" in families
    if function == "ingest":
        [accepted] = [s for s in families["iot_events_accepted"].samples
                      if s.name.endswith("_total") and s.labels == {"mode": "binary"}]
        assert accepted.value >= 1
    assert client.post("/metrics").status_code == 405


def test_a_probe_answers_503_json_when_a_dependency_is_down(apps, sink) -> None:
    sink.fail = True
    ready = apps.ingest.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json() == {"ready": False, "checks": {"kafka": False}}


@pytest.mark.parametrize("function", EVENT_PATH)
@pytest.mark.parametrize("path", ["/robots.txt", "/favicon.ico", "/nowhere"])
def test_framework_and_unknown_routes_answer_json(apps, function, path) -> None:
    response = getattr(apps, function).get(path)
    assert response.status_code in (404, 405)
    assert response.mimetype == "application/json"
    assert response.get_json()["message"]


@pytest.mark.parametrize("function", EVENT_PATH)
def test_a_bad_request_is_400_json_not_500(apps, sink, function) -> None:
    headers = {"Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": "x",
               "ce-source": "/d", "ce-type": "iot.telemetry.v1", "ce-subject": "d",
               "ce-time": "2026-01-01T00:00:00Z"}
    for body in (b"{not json", b'{"metrics": {"t": "hot"}}', b"[1, 2]"):
        response = getattr(apps, function).post("/", data=body, headers=headers)
        assert response.status_code == 400, (body, response.data)
        assert response.mimetype == "application/json"
        assert response.get_json()["message"]
    assert sink.records == []


@pytest.mark.parametrize("function", EVENT_PATH)
def test_a_bug_is_a_json_500_and_logged(apps, sink, monkeypatch, caplog, function) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("iot_telemetry.ingest.read_http", broken)
    monkeypatch.setattr("iot_telemetry.aggregate.read_delivery", broken)
    monkeypatch.setattr("iot_telemetry.alert.read_delivery", broken)
    response = getattr(apps, function).post("/", **binary(*now_event()))
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal", "message": "internal error"}
    assert "unhandled error" in caplog.text


def test_an_oversize_body_is_413_before_it_is_read_whole(runtime, sink) -> None:
    from iot_telemetry.runtime import set_runtime
    from tests.conftest import Apps, make_runtime

    set_runtime(make_runtime(INGEST_MAX_BODY_BYTES="100"))
    apps = Apps()
    attributes, data = now_event()
    data["metrics"]["padding_metric"] = 1.0
    response = apps.ingest.post("/", **binary(attributes, {**data, "x": "y" * 200}))
    assert response.status_code == 413
    assert response.mimetype == "application/json"
    assert sink.records == []


# --- graceful shutdown, in a real functions-framework process ------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_slow_ingest(tmp_path: Path, seconds: float) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "memory://", "MONGO_URL": "memory://",
           "DRAIN_SECONDS": str(seconds), "DRAIN_RECORDS": str(tmp_path / "records"),
           "PYTHONPATH": str(REPO), "THREADS": "4"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "functions_framework", "--target", "ingest",
         "--source", str(Path(__file__).parent / "drain_ingest.py"),
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "log", "wb"))  # noqa: SIM115
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError((tmp_path / "log").read_text()) from None
            time.sleep(0.2)


def test_sigterm_drains_requests_in_flight(tmp_path) -> None:
    """SIGTERM (Knative's, to PID 1: gunicorn's arbiter) while two requests wait for their
    write: both are answered 202 and written, the server then exits cleanly."""
    proc, port = _serve_slow_ingest(tmp_path, seconds=2.0)
    answers: list[int | str] = []

    def post(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            attributes, data = now_event(i, device=f"dev-{i}")
            request = binary(attributes, data)
            conn.request("POST", "/", request["data"], request["headers"])
            answers.append(conn.getresponse().status)
        except OSError as exc:
            answers.append(repr(exc))
        finally:
            conn.close()

    try:
        clients = [threading.Thread(target=post, args=(i,)) for i in range(2)]
        for c in clients:
            c.start()
        time.sleep(0.8)  # both are in flight: the broker takes 2 s
        proc.send_signal(signal.SIGTERM)
        for c in clients:
            c.join(30)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert answers == [202, 202], (tmp_path / "log").read_text()
    written = (tmp_path / "records").read_text().split()
    assert sorted(written) == sorted(now_event(i)[0]["id"] for i in range(2))
