"""What a chart must not hide (issue 23): a lone bucket shows its min-max band (a 41 °C spike
among 20 °C readings is not a dot at the average), the plot starts at the data instead of
showing empty time before a device's first reading, and the threshold labels stay inside the
plot, off the data and off each other (`humidity-low < 20.00` was cut off at the bottom).

The page draws the raw readings for a range of an hour or less (the spike is a point of its
own there); the bucket tests ask for a step of a minute, as the custom range does."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from playwright.sync_api import expect

from iot_telemetry.local.embedded import EmbeddedPipeline
from iot_telemetry.local.layout import FUNCTIONS
from tests.browser.conftest import Dashboard, screenshot
from tests.browser.test_dashboard_first_minutes import post

pytestmark = pytest.mark.browser

TEMPERATURES = (20.0, 20.0, 41.0)
HUMIDITIES = (18.0, 19.0, 22.0)


@pytest.fixture(scope="module")
def dashboard() -> Iterator[Dashboard]:
    """A device first seen just now: three readings, one of them a spike, in one minute."""
    with EmbeddedPipeline(ports=dict.fromkeys(FUNCTIONS, 0), broker_port=0,
                          environ={"LOG_LEVEL": "WARNING"}) as pipeline:
        for temperature, humidity in zip(TEMPERATURES, HUMIDITIES, strict=True):
            post(pipeline.url("ingest"), "spiky",
                 {"temperature": temperature, "humidity": humidity})
        assert pipeline.wait_idle(60)
        yield Dashboard(pipeline, {})


# What each chart drew, read from its uPlot instance and canvas (positions in CSS px).
DRAWN = """(figure) => {
  const chart = figure.chart, u = chart.plot, r = globalThis.devicePixelRatio || 1;
  const b = u.bbox;
  const buckets = chart.series.buckets.map((k) => {
    const t = Date.parse(k.t) / 1000;
    return { t, x: u.valToPos(t, "x", true) / r, top: u.valToPos(k.max, "y", true) / r,
             bottom: u.valToPos(k.min, "y", true) / r, min: k.min, max: k.max, avg: k.avg };
  });
  const pixel = (value) => {
    const k = chart.series.buckets[0];
    const x = Math.round(u.valToPos(Date.parse(k.t) / 1000, "x", true));
    return Array.from(u.ctx.getImageData(x, Math.round(u.valToPos(value, "y", true)), 1, 1).data);
  };
  const first = chart.series.buckets[0];
  return {
    plot: { left: b.left / r, top: b.top / r, right: (b.left + b.width) / r,
            bottom: (b.top + b.height) / r },
    xMin: u.scales.x.min, buckets, labels: chart.labelBoxes,
    inBand: pixel((first.avg + first.max) / 2),
    aboveBand: pixel(first.max + 0.3 * (first.max - first.min)),
  };
}"""


def buckets_view(dashboard: Dashboard) -> str:
    """The device page over the last five minutes in buckets of a minute (a custom range)."""
    now = datetime.now(UTC)
    query = urlencode({"range": "custom", "step": "1m",
                       "from": (now - timedelta(minutes=5)).isoformat(),
                       "to": (now + timedelta(minutes=1)).isoformat()})
    return f"{dashboard.url}#/devices/spiky?{query}"


def drawn(page: Any, metric: str) -> dict[str, Any]:
    figure = page.locator(f'figure[data-metric="{metric}"]')
    expect(figure).to_have_attribute("data-points", "1")
    return page.evaluate(DRAWN, figure.element_handle())


def band_coloured(rgba: list[int]) -> bool:
    """The band's blue (over white, or over an alert period's red shade), not empty canvas."""
    red, _green, blue, alpha = rgba
    return alpha > 0 and blue - red > 15


def test_a_lone_bucket_shows_its_band_and_the_plot_starts_at_it(page: Any,
                                                                 dashboard: Dashboard) -> None:
    # At the range the page picks (5 minutes) every reading is drawn: the spike is a point.
    page.goto(dashboard.url + "#/devices/spiky")
    expect(page.locator("#charts")).to_have_attribute("data-range", "5m")
    raw = page.locator('figure[data-metric="temperature"]')
    expect(raw).to_have_attribute("data-step", "raw")
    expect(raw).to_have_attribute("data-points", str(len(TEMPERATURES)))
    expect(raw.locator(".chart-meta")).to_contain_text("highest 41.00")
    page.goto(buckets_view(dashboard))
    expect(page.locator("#charts")).to_have_attribute("data-range", "custom")
    chart = drawn(page, "temperature")
    [bucket] = chart["buckets"]
    assert (bucket["min"], bucket["max"]) == (20.0, 41.0)
    # Between the average and the spike, at the bucket's time: the band, not empty canvas.
    assert band_coloured(chart["inBand"]), chart["inBand"]
    assert not band_coloured(chart["aboveBand"]), chart["aboveBand"]
    # The plot starts at most a bucket (a minute) before it, not 5 minutes back; the line
    # above the chart says why there is nothing earlier.
    assert bucket["t"] - 60 <= chart["xMin"] <= bucket["t"], (chart["xMin"], bucket["t"])
    assert chart["plot"]["left"] < bucket["x"] < chart["plot"]["right"]
    expect(page.locator('figure[data-metric="temperature"] .chart-meta')).to_contain_text(
        "none earlier in this range")
    screenshot(page, "device-lone-bucket-spike")


@pytest.mark.parametrize("metric", ["temperature", "humidity"])
def test_threshold_labels_stay_inside_the_plot_off_the_data(page: Any, dashboard: Dashboard,
                                                            metric: str) -> None:
    page.goto(buckets_view(dashboard))
    chart = drawn(page, metric)
    plot, labels = chart["plot"], chart["labels"]
    expected = {"temperature": ["temperature-high > 30.00", "clears ≤ 28.00",
                                "temperature-critical >= 40.00", "clears ≤ 37.00"],
                "humidity": ["humidity-high > 80.00", "clears ≤ 75.00",
                             "humidity-low < 20.00", "clears ≥ 25.00"]}[metric]
    assert sorted(x["text"] for x in labels) == sorted(expected)
    for label in labels:
        assert plot["left"] - 0.5 <= label["left"] and label["right"] <= plot["right"] + 0.5, label
        assert plot["top"] - 0.5 <= label["top"] and label["bottom"] <= plot["bottom"] + 0.5, (
            label, plot)
        for bucket in chart["buckets"]:  # the bucket's bar, at least 2 px either side
            assert not (label["left"] < bucket["x"] + 2 and bucket["x"] - 2 < label["right"]
                        and label["top"] < bucket["bottom"] and bucket["top"] < label["bottom"]), (
                label, bucket)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            assert not (a["left"] < b["right"] and b["left"] < a["right"]
                        and a["top"] < b["bottom"] and b["top"] < a["bottom"]), (a, b)
