"""Rules per device group on the device page: each device's charts draw the thresholds of
the rules that apply to it, with its own values (GET /rules?device_id=)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from iot_telemetry.local.embedded import EmbeddedPipeline
from iot_telemetry.local.layout import FUNCTIONS
from iot_telemetry.runtime import get_runtime
from tests.browser.conftest import Dashboard, screenshot
from tests.browser.test_dashboard_first_minutes import post

pytestmark = pytest.mark.browser

RULES = [
    {"name": "warm", "metric": "temperature", "condition": ">", "threshold": 30,
     "clear_threshold": 28, "overrides": [
         {"match": {"metadata": {"location": "greenhouse-2"}}, "threshold": 35,
          "clear_threshold": 33}]},
    {"name": "cold", "metric": "temperature", "condition": "<", "threshold": 5,
     "clear_threshold": 7, "scope": {"prefix": "lab-"}},
]


@pytest.fixture(scope="module")
def dashboard() -> Iterator[Dashboard]:
    """gh-1 in greenhouse 2 (its own warm thresholds), lab-1 (the lab's cold rule too)."""
    with EmbeddedPipeline(ports=dict.fromkeys(FUNCTIONS, 0), broker_port=0,
                          environ={"LOG_LEVEL": "WARNING",
                                   "ALERT_RULES": json.dumps(RULES)}) as pipeline:
        get_runtime().registry.add("gh-1", "Greenhouse 2 probe", {"location": "greenhouse-2"})
        post(pipeline.url("ingest"), "gh-1", {"temperature": 24.0})
        post(pipeline.url("ingest"), "lab-1", {"temperature": 6.0})
        assert pipeline.wait_idle(60)
        yield Dashboard(pipeline, {})


@pytest.mark.parametrize(("device", "levels", "drawn", "not_drawn"), [
    ("gh-1", [33, 35], ["warm"], ["cold"]),
    ("lab-1", [5, 7, 28, 30], ["warm", "cold"], []),
])
def test_a_devices_charts_draw_the_thresholds_of_its_own_rules(
        page: Any, dashboard: Dashboard, device: str, levels: list[float], drawn: list[str],
        not_drawn: list[str]) -> None:
    page.goto(f"{dashboard.url}#/devices/{device}")
    figure = page.locator('figure[data-metric="temperature"]')
    expect(figure).to_have_attribute("data-thresholds", json.dumps(levels).replace(" ", ""))
    for name in drawn:
        expect(figure.locator(f'li[data-rule="{name}"]')).to_have_count(1)
    for name in not_drawn:
        expect(figure.locator(f'li[data-rule="{name}"]')).to_have_count(0)
    if device == "gh-1":
        expect(figure.locator('li[data-rule="warm"]')).to_contain_text("warm: > 35")
        screenshot(page, "device-rules-own-thresholds")
