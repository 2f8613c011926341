"""The device simulator against a tiny recording ingest on 127.0.0.1."""

from __future__ import annotations

import io
import json
import random
import re
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from typing import Any

import pytest
from werkzeug.datastructures import Headers
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from iot_telemetry.events import BATCH, JSON, STRUCTURED, RawEvent, read_http
from iot_telemetry.local import simulator
from iot_telemetry.local.simulator import (
    Device,
    SimulationResult,
    SimulatorOptions,
    main,
    simulate,
)
from iot_telemetry.telemetry import Limits, TelemetryEvent, validate_all

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

# Answer for the n-th request (0-based): status, extra headers, body.
Responder = Callable[[int], tuple[int, dict[str, str], bytes]]


def accept_all(_n: int) -> tuple[int, dict[str, str], bytes]:
    return 202, {}, b""


class QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


@dataclass
class Received:
    headers: Headers
    body: bytes
    status: int

    def events(self) -> list[RawEvent]:
        return read_http(self.headers, self.body)


class IngestStub:
    """Records every request, in arrival order, and answers as `respond` says."""

    def __init__(self, respond: Responder = accept_all, port: int = 0) -> None:
        self.respond = respond
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self.server = make_server("127.0.0.1", port, self.app, threaded=True,
                                  request_handler=QuietHandler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/ingest"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        body = request.get_data()
        received = Received(Headers(request.headers), body, 0)
        with self.lock:
            self.requests.append(received)
            received.status, headers, reply = self.respond(len(self.requests) - 1)
        return Response(reply, status=received.status, headers=headers)(environ, start_response)

    @property
    def accepted(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.status < 300]

    def accepted_events(self) -> list[RawEvent]:
        return [event for r in self.accepted for event in r.events()]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ingest() -> Iterator[Callable[..., IngestStub]]:
    stubs: list[IngestStub] = []

    def start(respond: Responder = accept_all, port: int = 0) -> IngestStub:
        stubs.append(IngestStub(respond, port))
        return stubs[-1]

    yield start
    for stub in stubs:
        stub.close()


def run(url: str, **overrides: Any) -> SimulationResult:
    settings: dict[str, Any] = {"rate": 0, "duration": 20, "progress": False, "seed": 7}
    return simulate(SimulatorOptions(url=url, **{**settings, **overrides}))


def validated(events: list[RawEvent]) -> list[TelemetryEvent]:
    """The events as ingest would check them (raises BadRequest naming every problem)."""
    return validate_all(events, datetime.now(UTC), Limits())


@pytest.mark.parametrize("mode", ["binary", "structured", "batch"])
def test_every_mode_posts_valid_telemetry_cloudevents(
    ingest: Callable[..., IngestStub], mode: str
) -> None:
    stub = ingest()
    result = run(stub.url, mode=mode, devices=5, events=40, batch_size=7, concurrency=2)

    raw = stub.accepted_events()
    events = validated(raw)
    assert result.accepted_events == len(events) == 40
    assert result.accepted_points == sum(len(e.points) for e in events)
    assert result.rejected_events == 0 and result.errors == {}
    content_type = {"binary": JSON, "structured": STRUCTURED, "batch": BATCH}[mode]
    assert {r.headers["Content-Type"] for r in stub.requests} == {content_type}
    if mode == "batch":
        sizes = [len(r.events()) for r in stub.requests]
        assert max(sizes) > 1 and max(sizes) <= 7
    else:
        assert result.sent_requests == len(stub.requests) == 40
    assert len({(e.source, e.id) for e in events}) == 40
    for event in events:
        assert RFC3339_MS.match(event.attributes["time"])
        assert re.fullmatch(r"sim-\d{4}", event.device_id)
        assert event.source == f"/devices/{event.device_id}"
        assert event.attributes["type"] == "iot.telemetry.v1"
        assert event.attributes["datacontenttype"] == JSON
        assert {"temperature", "humidity"} <= set(event.data["metrics"])
        assert 18 <= event.data["metrics"]["temperature"] <= 50
        assert 30 <= event.data["metrics"]["humidity"] <= 100
    assert {e.device_id for e in events} == {f"sim-000{n}" for n in range(1, 6)}


def test_each_device_arrives_in_time_order(ingest: Callable[..., IngestStub]) -> None:
    stub = ingest()
    run(stub.url, devices=6, events=120, concurrency=3)

    times: dict[str, list[datetime]] = {}
    for event in validated(stub.accepted_events()):
        times.setdefault(event.device_id, []).append(event.time)
    assert len(times) == 6
    for series in times.values():
        assert series == sorted(series)


def test_samples_are_buffered_readings_between_events(ingest: Callable[..., IngestStub]) -> None:
    stub = ingest()
    start = datetime.now(UTC) - timedelta(minutes=1)
    result = run(stub.url, devices=2, events=10, samples=3, rate=50, start_time=start)

    events = validated(stub.accepted_events())
    assert result.accepted_points == sum(len(e.points) for e in events)
    previous: dict[str, datetime] = {}
    for event in events:
        samples = event.data["samples"]
        assert len(samples) == 3
        assert all(RFC3339_MS.match(s["time"]) for s in samples)
        times = [datetime.fromisoformat(s["time"]) for s in samples]
        assert all(a < b for a, b in pairwise(times))
        assert previous.get(event.device_id, start - timedelta(minutes=1)) < times[0]
        assert times[-1] < event.time
        previous[event.device_id] = event.time


@pytest.mark.parametrize("mode", ["binary", "batch"])
def test_record_holds_exactly_what_ingest_accepted(
    ingest: Callable[..., IngestStub], tmp_path: Any, mode: str
) -> None:
    def reject_second(n: int) -> tuple[int, dict[str, str], bytes]:
        return (400, {}, b'{"error": "invalid"}') if n == 1 else (202, {}, b"")

    stub = ingest(reject_second)
    record = tmp_path / "accepted.jsonl"
    result = run(stub.url, mode=mode, events=30, batch_size=4, samples=2, record=str(record))

    recorded = [json.loads(line) for line in record.read_text().splitlines()]
    accepted = [{"attributes": e.attributes, "data": e.data} for e in stub.accepted_events()]

    def by_id(item: dict[str, Any]) -> str:
        return str(item["attributes"]["id"])

    assert sorted(recorded, key=by_id) == sorted(accepted, key=by_id)
    assert len(recorded) == result.accepted_events == 30
    assert result.rejected_events == len(stub.requests[1].events()) > 0


@pytest.mark.parametrize("mode", ["binary", "batch"])
def test_503_with_retry_after_is_retried_with_the_same_events(
    ingest: Callable[..., IngestStub], tmp_path: Any, mode: str
) -> None:
    def unavailable_once(n: int) -> tuple[int, dict[str, str], bytes]:
        return (503, {"Retry-After": "1"}, b"kafka unavailable") if n == 0 else (202, {}, b"")

    stub = ingest(unavailable_once)
    record = tmp_path / "accepted.jsonl"
    started = time.monotonic()
    result = run(stub.url, mode=mode, devices=1, events=6, concurrency=1, record=str(record))

    assert time.monotonic() - started >= 1.0
    first, second = stub.requests[0], stub.requests[1]
    assert first.status == 503 and second.status == 202
    assert second.body == first.body
    assert [e.attributes["id"] for e in second.events()] == [
        e.attributes["id"] for e in first.events()
    ]
    assert result.retries == 1 and result.errors == {"503": 1}
    assert result.accepted_events == 6 and result.rejected_events == 0
    recorded = {json.loads(line)["attributes"]["id"] for line in record.read_text().splitlines()}
    assert recorded == {e.attributes["id"] for e in stub.accepted_events()}
    assert len(recorded) == 6


@pytest.mark.parametrize(("status", "retry_after"), [(429, "0"), (408, None), (500, None)])
def test_overload_timeouts_and_server_errors_are_retried(
    ingest: Callable[..., IngestStub], status: int, retry_after: str | None
) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}

    def fail_twice(n: int) -> tuple[int, dict[str, str], bytes]:
        return (status, headers, b"busy") if n < 2 else (202, {}, b"")

    stub = ingest(fail_twice)
    result = run(stub.url, devices=1, events=3, concurrency=1)

    assert result.retries == 2 and result.errors == {str(status): 2}
    assert result.accepted_events == 3 and result.rejected_events == 0
    assert stub.requests[0].body == stub.requests[1].body == stub.requests[2].body


def test_idle_keep_alive_closed_by_server_is_reopened_quietly() -> None:
    bodies: list[bytes] = []

    class CloseAfterEachRequest(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()
            # Like a server whose keep-alive timeout expired: close without saying so.
            self.close_connection = True

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), CloseAfterEachRequest)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        result = run(f"http://127.0.0.1:{server.server_port}/", devices=1, events=5,
                     concurrency=1)
    finally:
        server.shutdown()
        server.server_close()

    assert result.accepted_events == len(bodies) == 5
    assert result.retries == 0 and result.errors == {}


def test_400_is_counted_as_rejected_and_its_reason_printed_once(
    ingest: Callable[..., IngestStub], capsys: pytest.CaptureFixture[str]
) -> None:
    reason = b'{"error": "invalid", "message": "time: older than 7 days"}'

    def reject_first_two(n: int) -> tuple[int, dict[str, str], bytes]:
        return (400, {}, reason) if n < 2 else (202, {}, b"")

    stub = ingest(reject_first_two)
    result = run(stub.url, devices=1, events=5, concurrency=1)

    assert result.rejected_events == 2
    assert result.accepted_events == 5 and len(stub.requests) == 7
    assert result.retries == 0
    assert result.errors == {"400: time: older than 7 days": 2}
    rejected_bodies = {r.body for r in stub.requests[:2]}
    assert not rejected_bodies & {r.body for r in stub.accepted}
    assert capsys.readouterr().err.count("time: older than 7 days") == 1


def test_batch_too_large_for_ingest_is_split_not_dropped(
    ingest: Callable[..., IngestStub],
) -> None:
    def at_most_three(n: int) -> tuple[int, dict[str, str], bytes]:
        return (413, {}, b"too large") if stub.requests[n].body.count(b'"specversion"') > 3 else (
            202, {}, b"")

    stub = ingest(at_most_three)
    result = run(stub.url, mode="batch", devices=1, events=10, batch_size=10, concurrency=1)

    assert result.accepted_events == 10 and result.rejected_events == 0
    assert len(stub.accepted_events()) == 10
    assert stub.requests[0].status == 413


@pytest.mark.parametrize(("mode", "concurrency"), [("binary", 4), ("batch", 3)])
def test_events_limit_is_honoured(
    ingest: Callable[..., IngestStub], mode: str, concurrency: int
) -> None:
    stub = ingest()
    result = run(stub.url, mode=mode, devices=7, events=25, batch_size=10,
                 concurrency=concurrency)

    assert result.accepted_events == 25
    assert len(stub.accepted_events()) == 25


def test_duplicate_rate_resends_identical_requests(ingest: Callable[..., IngestStub]) -> None:
    stub = ingest()
    result = run(stub.url, devices=3, events=6, duplicate_rate=1.0)

    assert result.duplicates_sent == 6 and result.accepted_events == 6
    assert len(stub.requests) == 12
    assert set(Counter(r.body for r in stub.requests).values()) == {2}
    for body in {r.body for r in stub.requests}:
        copies = [r.headers for r in stub.requests if r.body == body]
        assert copies[0]["Ce-Id"] == copies[1]["Ce-Id"]


def test_connection_errors_are_retried_until_ingest_comes_up(
    ingest: Callable[..., IngestStub],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results: list[SimulationResult] = []
    thread = threading.Thread(target=lambda: results.append(
        run(f"http://127.0.0.1:{port}/", devices=2, events=4)))
    thread.start()
    time.sleep(0.6)
    stub = ingest(port=port)
    thread.join(timeout=20)

    (result,) = results
    assert result.accepted_events == 4 and len(stub.accepted_events()) == 4
    assert result.retries > 0
    assert result.errors.get("connection: ConnectionRefusedError", 0) > 0


def test_rate_paces_measurements_on_schedule(ingest: Callable[..., IngestStub]) -> None:
    stub = ingest()
    start = datetime.now(UTC) - timedelta(minutes=5)
    result = run(stub.url, devices=3, rate=20, duration=0.6, start_time=start)

    times = sorted(e.time for e in validated(stub.accepted_events()))
    assert 6 <= result.accepted_events <= 12
    # Measurement times follow the schedule: one event every 1/rate seconds across the fleet.
    assert abs(times[0] - start) < timedelta(milliseconds=1)
    assert all(timedelta(milliseconds=49) <= b - a <= timedelta(milliseconds=51)
               for a, b in pairwise(times))


def test_disorder_sends_late_readings(ingest: Callable[..., IngestStub]) -> None:
    stub = ingest()
    start = datetime.now(UTC)
    run(stub.url, devices=2, events=20, disorder=1.0, start_time=start)

    for event in validated(stub.accepted_events()):
        assert start - timedelta(seconds=121) <= event.time <= start + timedelta(seconds=9)


def test_token_is_sent_as_bearer(ingest: Callable[..., IngestStub]) -> None:
    stub = ingest()
    run(stub.url, events=2, token="s3cret")

    assert {r.headers["Authorization"] for r in stub.requests} == {"Bearer s3cret"}


def test_stop_event_ends_an_unbounded_run(ingest: Callable[..., IngestStub]) -> None:
    stub = ingest()
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    result = simulate(SimulatorOptions(url=stub.url, rate=40, duration=0, progress=False), stop)

    assert time.monotonic() - started < 5
    assert result.accepted_events == len(stub.accepted_events()) > 0
    assert result.errors == {}


def test_progress_line_and_summary_go_to_stderr(
    ingest: Callable[..., IngestStub], capsys: pytest.CaptureFixture[str]
) -> None:
    stub = ingest()
    run(stub.url, events=3, progress=True)

    err = capsys.readouterr().err
    assert re.search(r"sim +\d+\.\ds  events 3 \([\d.]+/s\)  points \d+  rejected 0  retries 0"
                     rf"  → {re.escape(stub.url)}", err)
    assert err.endswith("\n")


def test_progress_into_a_file_is_one_line_every_few_seconds(
    ingest: Callable[..., IngestStub], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(simulator, "LOG_INTERVAL", 0.05)
    stub = ingest()
    run(stub.url, rate=20, duration=1.0, progress=True)

    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert len([line for line in lines if "(requests" not in line]) >= 2, err
    assert "(requests" in lines[-1]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_redrawn_in_place(
    ingest: Callable[..., IngestStub], monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    stub = ingest()
    run(stub.url, rate=20, duration=1.0, progress=True)

    out = terminal.getvalue()
    assert out.count("\r") >= 2 and out.count("\n") == 1


def test_device_readings_are_realistic_and_anomalies_clear() -> None:
    calm = Device("sim-0001", random.Random(1), 0)
    readings = [calm.read(anomaly_rate=0.0) for _ in range(2000)]
    assert all(18 <= r["temperature"] <= 26 and 30 <= r["humidity"] <= 60 for r in readings)

    wild = Device("sim-0002", random.Random(2), 0)
    hot = [wild.read(anomaly_rate=1.0)["temperature"] > 40 for _ in range(200)]
    assert any(hot) and not all(hot)
    # Every episode lasts several readings and is followed by normal ones, so alerts resolve.
    episodes = re.findall(r"H+", "".join("H" if h else "." for h in hot))
    assert all(len(e) >= 3 for e in episodes[:-1])
    assert ".." in "".join("H" if h else "." for h in hot)


def test_some_devices_report_a_draining_battery() -> None:
    devices = [Device(f"sim-{n:04d}", random.Random(n), 0) for n in range(20)]
    with_battery = [d for d in devices if d.battery is not None]
    assert 0 < len(with_battery) < len(devices)
    levels = [with_battery[0].read(0.0)["battery"] for _ in range(50)]
    assert levels[-1] < levels[0]


def test_main_reads_environment_twins_and_flags_win(
    ingest: Callable[..., IngestStub], capsys: pytest.CaptureFixture[str]
) -> None:
    stub = ingest()
    environ = {"SIM_URL": stub.url, "SIM_EVENTS": "9", "SIM_RATE": "0", "SIM_MODE": "batch",
               "SIM_DEVICES": "2", "SIM_NO_PROGRESS": "1"}

    assert main(["--events", "4"], environ=environ) == 0
    assert len(stub.accepted_events()) == 4
    assert {r.headers["Content-Type"] for r in stub.requests} == {BATCH}
    assert "events 4" in capsys.readouterr().err


def test_main_exits_1_when_events_are_rejected(ingest: Callable[..., IngestStub]) -> None:
    stub = ingest(lambda _n: (400, {}, b"bad"))
    assert main(["--url", stub.url, "--events", "2", "--duration", "0.3", "--rate", "20",
                 "--no-progress"], environ={}) == 1


def test_help_lists_every_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"], environ={})
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("URL", "DEVICES", "RATE", "DURATION", "EVENTS", "MODE", "BATCH_SIZE",
                 "SAMPLES", "ANOMALY_RATE", "DUPLICATE_RATE", "DISORDER", "SEED", "CONCURRENCY",
                 "NO_PROGRESS", "RECORD", "TOKEN"):
        assert f"SIM_{name}" in out


def test_invalid_environment_value_names_the_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([], environ={"SIM_DEVICES": "many"})
    assert exit_info.value.code == 2
    assert "SIM_DEVICES" in capsys.readouterr().err


def test_invalid_options_name_every_problem() -> None:
    with pytest.raises(ValueError, match="devices") as error:
        SimulatorOptions(devices=0, mode="carrier-pigeon", disorder=2.0, url="ftp://x")
    for name in ("mode", "disorder", "url"):
        assert name in str(error.value)
