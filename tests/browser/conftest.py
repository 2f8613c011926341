"""The dashboard in a real browser: an embedded pipeline with history, live simulated devices
and alerts, and headless Debian Chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from iot_telemetry import publisher
from iot_telemetry.events import BATCH, JSON, SPECVERSION, TELEMETRY_TYPE, to_batch
from iot_telemetry.local.embedded import EmbeddedPipeline
from iot_telemetry.local.layout import FUNCTIONS
from iot_telemetry.local.simulator import Device, SimulatorOptions, simulate
from iot_telemetry.runtime import set_runtime
from iot_telemetry.settings import Settings
from iot_telemetry.telemetry import format_time

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = os.environ.get("IOT_CHROMIUM", "/usr/bin/chromium")
# The machine's network is closed and the profile is thrown away: nothing phones home.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
LIVE_DEVICES = 6
HISTORY_DEVICES = 2  # sim-0001 and sim-0002 also have a week of history


@pytest.fixture(autouse=True)
def _isolate_environment(request: pytest.FixtureRequest,
                         monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The suite's fixture of this name, except that it leaves the runtime of the pipeline
    the module's tests share in place (the pipeline's stop() removes it)."""
    for name, _default, _doc in Settings.variables():
        monkeypatch.delenv(name, raising=False)
    yield
    if "dashboard" not in request.fixturenames:
        set_runtime(None)
        publisher.set_memory_sink(None)


def _post(url: str, body: bytes, content_type: str) -> None:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 202, response.read()


# Each history device's readings, oldest first: (readings apart, how many). Four a minute
# over the last hour, three an hour over the day before, one every 3 hours back to six days
# ago: several readings per bucket (so the min-max band shows) in each range of the page,
# and few buckets, because the embedded store scans whole collections.
HISTORY = ((timedelta(hours=3), 40), (timedelta(minutes=20), 72), (timedelta(seconds=15), 240))
SAMPLES_PER_EVENT = 20


def _reading_times(end: datetime) -> list[datetime]:
    times, t = [], end
    for every, count in reversed(HISTORY):
        for _ in range(count):
            times.append(t)
            t -= every
    return sorted(times)


def _history(device_id: str, end: datetime, rng: random.Random,
             ) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """A device's past readings up to `end`, as events of buffered samples."""
    device = Device(device_id, rng, 0)
    samples = [{"time": format_time(t), "metrics": device.read(0.0)}
               for t in _reading_times(end)]
    return [({"specversion": SPECVERSION, "type": TELEMETRY_TYPE, "id": str(uuid.uuid4()),
              "source": f"/devices/{device_id}", "subject": device_id,
              "time": chunk[-1]["time"], "datacontenttype": JSON},
             {"samples": chunk})
            for chunk in (samples[i:i + SAMPLES_PER_EVENT]
                          for i in range(0, len(samples), SAMPLES_PER_EVENT))]


def backfill(ingest: str, now: datetime) -> None:
    """History the live simulator cannot make (it measures in real time only)."""
    rng = random.Random(11)
    for n in range(1, HISTORY_DEVICES + 1):
        _post(ingest, to_batch(_history(f"sim-{n:04d}", now - timedelta(seconds=20), rng)),
              BATCH)


@dataclass
class Dashboard:
    """The running pipeline and how to reach its query function."""

    pipeline: EmbeddedPipeline
    timings: dict[str, float]

    @property
    def url(self) -> str:
        return str(self.pipeline.url("query"))

    def api(self, path: str, method: str = "GET", body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path.lstrip("/"), data=data, method=method,
                                         headers={"Accept": "application/json",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stop_query(self) -> None:
        """Take the query function off the network, as a crashed or unreachable service."""
        server = self.pipeline.servers["query"]
        server.shutdown()
        server.server_close()

    def start_query(self) -> None:
        """Serve the query function again on the same port."""
        from werkzeug.serving import make_server

        old = self.pipeline.servers["query"]
        server = make_server(self.pipeline.host, old.server_port, old.app, threaded=True)
        self.pipeline.servers["query"] = server
        threading.Thread(target=server.serve_forever, name="http-query-again",
                         daemon=True).start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_dashboard() -> Dashboard:
    """An embedded pipeline on free ports with history, then a few seconds of live devices."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    # A broker ingress (K_SINK) so that alert's second events have somewhere to go.
    pipeline = EmbeddedPipeline(ports=dict.fromkeys(FUNCTIONS, 0), broker_port=free_port(),
                                environ={"LOG_LEVEL": "WARNING"}).start()
    try:
        ingest = pipeline.url("ingest")
        backfill(ingest, datetime.now(UTC))
        assert pipeline.wait_idle(120), "the history was not delivered in time"
        timings["history"] = time.monotonic() - started
        mark = time.monotonic()
        # Seeded readings with frequent anomalies: alerts raise, and most resolve again.
        # A count, not a duration: under load the last scheduled event may miss a deadline.
        result = simulate(SimulatorOptions(
            url=ingest, devices=LIVE_DEVICES, rate=40, duration=0, events=200, anomaly_rate=0.12,
            seed=3,
            progress=False, mode="batch", batch_size=10))
        assert result.accepted_events == 200, result
        assert pipeline.wait_idle(120), "the simulated events were not delivered in time"
        timings["simulator"] = time.monotonic() - mark
    except BaseException:
        pipeline.stop()
        raise
    return Dashboard(pipeline, timings)


@pytest.fixture(scope="module")
def dashboard() -> Iterator[Dashboard]:
    board = start_dashboard()
    try:
        yield board
    finally:
        board.pipeline.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # A missing browser is a failure, never a skip: tests/run.sh installs both.
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not installed: run bash tests/browser/install.sh",
                    pytrace=False)
    try:
        import playwright.sync_api as playwright_api
    except ImportError:
        pytest.fail("playwright not installed: run bash tests/browser/install.sh", pytrace=False)
    profile = tempfile.mkdtemp(prefix="iot-chromium-")
    with playwright_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1360, "height": 900}, timezone_id="UTC", locale="en-GB")
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser: Any, dashboard: Dashboard) -> Iterator[Any]:
    """A fresh tab on the dashboard; fails the test on a script error or a console error
    (an API request refused or failing is the page's business and allowed; an asset is not)."""
    tab = browser.new_page()
    problems: list[str] = []

    def console(msg: Any) -> None:
        api_failure = (msg.text.startswith("Failed to load resource")
                       and "/assets/" not in msg.location.get("url", ""))
        if msg.type == "error" and not api_failure:
            problems.append(f"console {msg.type}: {msg.text} ({msg.location})")

    tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    tab.on("console", console)
    tab.set_default_timeout(15_000)
    yield tab
    tab.close()
    assert problems == []


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
