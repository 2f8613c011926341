"""The fleet page by device state: a fleet with reporting, stale, offline, never-reported and
disabled devices (offline through a real sweep of alert), shown and counted as the API says."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.sync_api import expect

from iot_telemetry import events
from iot_telemetry.local.embedded import EmbeddedPipeline
from iot_telemetry.local.layout import FUNCTIONS
from iot_telemetry.runtime import get_runtime
from iot_telemetry.store import ALERT_STATE, DEVICES
from iot_telemetry.telemetry import format_time
from tests.browser.conftest import Dashboard, screenshot

pytestmark = pytest.mark.browser

# Stale after 10 minutes, offline after 30: wide enough that a module's run (and the
# pipeline's own PingSource ticks, one a minute) change no device's state.
STALE_SECONDS = 600
RULES = [{"name": "device-offline", "condition": "offline", "severity": "warning",
          "for_seconds": 1800}]
LABELS = {"offline": "Offline", "stale": "Stale", "never_reported": "Never reported",
          "reporting": "Reporting", "disabled": "Disabled"}
ICONS = {"offline": "✕", "stale": "○", "never_reported": "◌", "reporting": "●",
         "disabled": "⊘"}


def post(url: str, attributes: dict[str, str], data: Any, binary: bool = False) -> bytes:
    if binary:
        headers, body = events.to_http(attributes, data)
    else:
        headers = {"Content-Type": "application/cloudevents+json"}
        body = json.dumps({**attributes, "data": data}).encode()
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status in (200, 202, 204)
        return bytes(response.read())


def report(ingest: str, device: str) -> None:
    post(ingest, {"specversion": "1.0", "type": "iot.telemetry.v1",
                  "source": f"/devices/{device}", "id": str(uuid.uuid4()), "subject": device,
                  "time": format_time(datetime.now(UTC)),
                  "datacontenttype": "application/json"}, {"metrics": {"temperature": 21.5}})


def silent_since(device: str, ago: timedelta) -> None:
    """Move a device's last report back: the pipeline records reports at their arrival, in
    aggregate's device (`last_seen`) and in alert's offline states (`heard`)."""
    at = datetime.now(UTC) - ago
    store = get_runtime().store
    store.collection(DEVICES).update_one({"_id": device}, {"$set": {"last_seen": at}})
    store.collection(ALERT_STATE).update_many({"device_id": device, "heard": {"$exists": True}},
                                              {"$set": {"heard": at}})


@pytest.fixture(scope="module")
def dashboard() -> Iterator[Dashboard]:
    with EmbeddedPipeline(ports=dict.fromkeys(FUNCTIONS, 0), broker_port=0, environ={
            "LOG_LEVEL": "WARNING", "DEVICE_STALE_SECONDS": str(STALE_SECONDS),
            "ALERT_RULES": json.dumps(RULES)}) as pipeline:
        ingest = pipeline.url("ingest")
        registry = get_runtime().registry
        registry.add("new-1", "Never switched on")
        for device in ("up-1", "up-2", "quiet", "late", "off"):
            report(ingest, device)
        assert pipeline.wait_idle(60)
        silent_since("quiet", timedelta(hours=1))
        # A PingSource tick as the Broker delivers it: alert's sweep raises quiet's alert.
        post(pipeline.url("alert"), {
            "specversion": "1.0", "type": events.PING_TYPE, "id": str(uuid.uuid4()),
            "source": "/apis/v1/namespaces/iot/pingsources/offline-sweep",
            "time": format_time(datetime.now(UTC)), "datacontenttype": "application/json"},
            {"sweep": "offline"}, binary=True)
        silent_since("late", timedelta(minutes=15))  # stale, not yet silent for 30 minutes
        registry.set_enabled("off", False)
        yield Dashboard(pipeline, {})


EXPECTED = {"quiet": "offline", "late": "stale", "new-1": "never_reported",
            "up-1": "reporting", "up-2": "reporting", "off": "disabled"}


def test_the_fleet_shows_each_state_and_counts_the_devices_by_state(
        page: Any, dashboard: Dashboard) -> None:
    devices = dashboard.api("devices?limit=500")["devices"]
    assert {d["id"]: d["state"] for d in devices} == EXPECTED
    counts = dashboard.api("fleet")["states"]
    assert counts == {"offline": 1, "stale": 1, "never_reported": 1, "reporting": 2,
                      "disabled": 1}

    page.goto(dashboard.url)
    rows = page.locator("#fleet-body tr")
    expect(rows).to_have_count(6)
    # Offline first, then by state (stale, never reported, reporting, disabled), then by id.
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.device)") == [
        "quiet", "late", "new-1", "up-1", "up-2", "off"]
    expect(page.locator("#fleet-table th[aria-sort]")).to_contain_text("Status")
    for device, state in EXPECTED.items():
        row = page.locator(f'#fleet-body tr[data-device="{device}"]')
        expect(row).to_have_attribute("data-state", state)
        badge = row.locator(".badge")
        # Text and a symbol, not colour alone; the symbol is hidden from screen readers.
        expect(badge).to_have_text(f"{ICONS[state]} {LABELS[state]}")
        expect(badge.locator('[aria-hidden="true"]')).to_have_text(f"{ICONS[state]} ")
        expect(badge).to_have_attribute("title", re.compile(r"\w"))
    offline, stale = (page.locator(f'tr[data-device="{d}"] .badge') for d in ("quiet", "late"))
    colours = [b.evaluate("b => [getComputedStyle(b).color, getComputedStyle(b).backgroundColor]")
               for b in (offline, stale)]
    assert colours[0] != colours[1], colours
    expect(page.locator('tr[data-device="quiet"] td').last).to_have_text("1")
    # While any device is offline its button stands out (its text says how many).
    expect(page.locator('#fleet-states button[data-state="offline"]')).to_have_class("attention")
    expect(page.locator('#fleet-states button[data-state="stale"]')).not_to_have_class(
        "attention")
    expect(page.locator("#fleet-summary")).to_have_text(
        "6 devices: 1 offline, 1 stale, 1 never reported, 2 reporting, 1 disabled; "
        "1 with open alerts (1 open alert)")
    screenshot(page, "fleet-states")

    # Each state's button: its count, only its devices, and its pressed state for assistive
    # technology.
    for state, n in counts.items():
        button = page.get_by_role("button", name=f"{LABELS[state]} ({n})", exact=True)
        button.click()
        expect(button).to_have_attribute("aria-pressed", "true")
        expect(rows).to_have_count(n)
        assert sorted(rows.evaluate_all("rows => rows.map(r => r.dataset.device)")) == sorted(
            d for d, s in EXPECTED.items() if s == state)
        expect(page.locator("#fleet-count")).to_have_text(f"{n} of 6 shown")
        if state == "offline":
            screenshot(page, "fleet-offline")
    expect(page.get_by_role("button", name="All (6)")).to_have_attribute("aria-pressed", "false")


def test_past_the_lists_cap_the_counts_come_from_the_api(page: Any, dashboard: Dashboard) -> None:
    """The page lists at most 5000 devices; its counts are then GET /fleet's, for every one."""
    listed = [{"id": f"many-{n:05d}", "state": "reporting", "stale": False, "metrics": {},
               "last_seen": format_time(datetime.now(UTC)), "open_alerts": 0}
              for n in range(5000)]

    def capped(route: Any) -> None:
        route.fulfill(json={"devices": listed, "next_cursor": listed[-1]["id"]})

    page.route(re.compile(r"/devices\?"), capped)
    with page.expect_request(re.compile(r"/fleet$")):
        page.goto(dashboard.url)
    expect(page.locator("#fleet-body tr")).to_have_count(5000)
    expect(page.locator("#fleet-summary")).to_have_text(
        "6 devices: 1 offline, 1 stale, 1 never reported, 2 reporting, 1 disabled; "
        "0+ with open alerts (0+ open alerts)")
    expect(page.get_by_role("button", name="Offline (1)", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="With open alerts (0+)", exact=True)).to_be_visible()
    expect(page.locator("#fleet-message")).to_have_text("Showing the first 5000 devices only.")


def test_a_device_page_shows_the_devices_own_state(page: Any, dashboard: Dashboard) -> None:
    """The device page's badge is the API's state too: an offline device is not "Stale"."""
    for device, state in (("quiet", "offline"), ("late", "stale"), ("up-1", "reporting")):
        page.goto(f"{dashboard.url}#/devices/{device}")
        expect(page.locator("#device-status .badge")).to_have_text(
            f"{ICONS[state]} {LABELS[state]}")
