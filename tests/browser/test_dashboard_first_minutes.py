"""A device seen for the first time a minute ago: the dashboard picks a range that fits it,
shows the units the registry knows, two decimals everywhere, and says "1 reading" (a range of
an hour or less draws the raw readings)."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from playwright.sync_api import expect

from iot_telemetry.local.embedded import EmbeddedPipeline
from iot_telemetry.local.layout import FUNCTIONS
from iot_telemetry.runtime import get_runtime
from iot_telemetry.telemetry import format_time
from tests.browser.conftest import Dashboard, screenshot

pytestmark = pytest.mark.browser


def post(ingest: str, device: str, metrics: dict[str, float]) -> None:
    body = json.dumps({"specversion": "1.0", "type": "iot.telemetry.v1",
                       "source": f"/devices/{device}", "id": str(uuid.uuid4()),
                       "subject": device, "time": format_time(datetime.now(UTC)),
                       "datacontenttype": "application/json", "data": {"metrics": metrics}})
    request = urllib.request.Request(ingest, data=body.encode(),
                                     headers={"Content-Type": "application/cloudevents+json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202


@pytest.fixture(scope="module")
def dashboard() -> Iterator[Dashboard]:
    """A fresh pipeline: one registered device with units, one reading of each metric."""
    with EmbeddedPipeline(ports=dict.fromkeys(FUNCTIONS, 0), broker_port=0,
                          environ={"LOG_LEVEL": "WARNING"}) as pipeline:
        get_runtime().registry.add("boiler", "Boiler room",
                                   {"units": {"temperature": "celsius", "humidity": "percent"}})
        post(pipeline.url("ingest"), "boiler", {"temperature": 21.5, "humidity": 40.25})
        post(pipeline.url("ingest"), "fresh", {"temperature": 19.0})
        assert pipeline.wait_idle(60)
        yield Dashboard(pipeline, {})


def test_a_new_device_opens_on_a_range_that_fits_with_its_units(page: Any,
                                                                 dashboard: Dashboard) -> None:
    page.goto(dashboard.url + "#/devices/boiler")
    expect(page.locator("#charts")).to_have_attribute("data-range", "5m")
    expect(page.get_by_label("Last 5 minutes", exact=True)).to_be_checked()
    expect(page.locator('#device-latest tr[data-metric="temperature"] td').first).to_have_text(
        "21.50 °C")
    expect(page.locator('#device-latest tr[data-metric="humidity"] td').first).to_have_text(
        "40.25 %")
    figure = page.locator('figure[data-metric="temperature"]')
    expect(figure.locator("h3")).to_have_text("temperature (°C)")
    expect(figure.locator(".chart-meta")).to_contain_text(
        "1 reading · average 21.50 °C · lowest 21.50 °C · highest 21.50 °C")
    screenshot(page, "device-first-minutes")

    # A range chosen by hand stays chosen; a device without units shows bare numbers.
    page.get_by_label("Last 15 minutes", exact=True).check()
    expect(page.locator("#charts")).to_have_attribute("data-range", "15m")
    expect(page).to_have_url(re.compile(r"#/devices/boiler\?range=15m$"))
    page.goto(dashboard.url + "#/devices/fresh")
    expect(page.locator("#charts")).to_have_attribute("data-range", "5m")
    expect(page.locator('#device-latest tr[data-metric="temperature"] td').first).to_have_text(
        "19.00")


def test_the_fleet_shows_units_too(page: Any, dashboard: Dashboard) -> None:
    page.goto(dashboard.url)
    row = page.locator('#fleet-body tr[data-device="boiler"]')
    expect(row.locator('td[data-metric="temperature"]')).to_have_text("21.50 °C")
    expect(page.locator('#fleet-body tr[data-device="fresh"] td[data-metric="temperature"]')
           ).to_have_text("19.00")
