"""The dashboard in headless Chromium, against a running pipeline with simulated devices."""

from __future__ import annotations

import csv
import io
import json
import re
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Dashboard, screenshot
from tests.conftest import iso

pytestmark = pytest.mark.browser

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
PAGE_SIZE = 25  # alerts per page (static/js/alerts.js)
NEWER, OLDER = "\u2039 Newer", "Older \u203a"  # the pager's buttons


def open_view(page: Any, dashboard: Dashboard, fragment: str = "") -> None:
    page.goto(dashboard.url + fragment)
    expect(page.locator("#updated")).to_contain_text("Updated")


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def series(dashboard: Dashboard, device: str, metric: str, figure: Any) -> list[dict[str, Any]]:
    """The API's buckets, or raw readings, for what a chart says it shows (range and step)."""
    step = figure.get_attribute("data-step")
    query = urlencode({"metric": metric, "from": figure.get_attribute("data-from"),
                       "to": figure.get_attribute("data-to"), "step": step,
                       **({"limit": 10000} if step == "raw" else {})})
    answer = dashboard.api(f"devices/{device}/series?{query}")
    if step == "raw":
        assert answer["next_cursor"] is None
        return [{"t": r["t"], "avg": r["value"], "min": r["value"], "max": r["value"],
                 "count": 1} for r in answer["readings"]]
    buckets: list[dict[str, Any]] = answer["buckets"]
    return buckets


def test_query_serves_the_page_to_browsers_and_json_to_api_clients(dashboard: Dashboard) -> None:
    status, headers, body = fetch(dashboard.url, {"Accept": BROWSER_ACCEPT})
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<script type="module" src="assets/js/app.js">' in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "Accept" in headers["Vary"]
    for accept in ({}, {"Accept": "*/*"}, {"Accept": "application/json"}):
        status, headers, body = fetch(dashboard.url, accept)
        assert status == 200 and headers["Content-Type"] == "application/json", accept
        assert "/devices" in body.decode()

    status, headers, body = fetch(dashboard.url + "assets/js/app.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    again, _, _ = fetch(dashboard.url + "assets/js/app.js", {"If-None-Match": headers["ETag"]})
    assert again == 304
    status, headers, _ = fetch(dashboard.url + "assets/vendor/uplot/uPlot.iife.min.js")
    assert status == 200
    for hidden in ("assets/vendor/fetch.sh", "assets/vendor/README.md", "assets/../dashboard.py",
                   "assets/nothing.js"):
        status, headers, body = fetch(dashboard.url + hidden)
        assert status == 404 and headers["Content-Type"] == "application/json", hidden


def test_fleet_lists_what_the_api_lists(page: Any, dashboard: Dashboard) -> None:
    devices = dashboard.api("devices?limit=500")["devices"]
    assert len(devices) == 6
    open_view(page, dashboard)
    rows = page.locator("#fleet-body tr")
    expect(rows).to_have_count(len(devices))
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.device)") == [
        d["id"] for d in devices]
    for device in devices:
        row = page.locator(f'#fleet-body tr[data-device="{device["id"]}"]')
        expect(row.locator("td").first).to_contain_text(
            {"stale": "Stale", "reporting": "Reporting"}[device["state"]])
        for metric, reading in device["metrics"].items():
            shown = row.locator(f'td[data-metric="{metric}"]').inner_text()
            assert float(shown.replace(",", "")) == pytest.approx(reading["value"], abs=0.006)
        expect(row.locator("td").last).to_have_text(str(device["open_alerts"]))
    alerts = sum(d["open_alerts"] for d in devices)
    alerting = [d["id"] for d in devices if d["open_alerts"]]
    assert alerting, "the simulation left no open alert"
    expect(page.locator("#fleet-summary")).to_have_text(
        f"{len(devices)} devices: 0 offline, 0 stale, 0 never reported, {len(devices)} "
        f"reporting, 0 disabled; {len(alerting)} with open alerts ({alerts} open "
        f"alert{'' if alerts == 1 else 's'})")
    screenshot(page, "fleet")

    # Devices by state: each button shows its count and only those devices.
    page.get_by_role("button", name=f"With open alerts ({len(alerting)})").click()
    expect(rows).to_have_count(len(alerting))
    assert sorted(rows.evaluate_all("rows => rows.map(r => r.dataset.device)")) == alerting
    expect(page.locator('#fleet-states button[data-state="offline"]')).not_to_have_class(
        "attention")
    page.get_by_role("button", name="Stale (0)").click()
    expect(rows).to_have_count(0)
    expect(page.locator("#fleet-message")).to_have_text("No stale devices.")
    page.get_by_role("button", name=f"All ({len(devices)})").click()
    expect(rows).to_have_count(len(devices))

    page.get_by_label("Search devices").fill("0003")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-device", "sim-0003")
    expect(page.locator("#fleet-count")).to_have_text(f"1 of {len(devices)} shown")
    page.get_by_label("Search devices").fill("")
    expect(rows).to_have_count(len(devices))

    # Sorting by a column header, twice for descending: the most alerts first.
    header = page.get_by_role("button", name="Open alerts", exact=True)
    header.click()
    header.click()
    expect(page.locator("#fleet-table th[aria-sort]")).to_have_attribute("aria-sort", "descending")
    most = max(devices, key=lambda d: d["open_alerts"])
    expect(rows.first).to_have_attribute("data-device", most["id"])

    # Keyboard: a device link opens the device view.
    page.locator('a[data-key="device:sim-0002"]').focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"#/devices/sim-0002$"))
    expect(page.locator("#device-title")).to_have_text("sim-0002")


def test_each_chart_draws_one_point_per_bucket_of_the_api(page: Any, dashboard: Dashboard) -> None:
    device = dashboard.api("devices/sim-0001")
    metrics = sorted(device["metrics"])
    open_view(page, dashboard, "#/devices/sim-0001")
    expect(page.locator("#charts figure.chart")).to_have_count(len(metrics))
    for metric in metrics:
        row = page.locator(f'#device-latest tr[data-metric="{metric}"] td').first
        assert float(row.inner_text().replace(",", "")) == pytest.approx(
            device["metrics"][metric]["value"], abs=0.006)

    # An hour or less draws every reading (step=raw); longer ranges draw buckets.
    for label, range_, step, least in (("Last hour", "1h", "raw", 150),
                                       ("Last day", "1d", "1m", 100),
                                       ("Last week", "1w", "1h", 60)):
        page.get_by_label(label, exact=True).check()
        expect(page.locator("#charts")).to_have_attribute("data-range", range_)
        for metric in metrics:
            figure = page.locator(f'figure[data-metric="{metric}"]')
            expect(figure).to_have_attribute("data-step", step)
            expect(figure.locator("canvas").first).to_be_visible()
            buckets = series(dashboard, "sim-0001", metric, figure)
            assert len(buckets) >= least, (label, metric, len(buckets))
            assert figure.get_attribute("data-points") == str(len(buckets)), (label, metric)
        if range_ == "1h":
            screenshot(page, "device")
            # The chart's data as a table: one row per reading, the API's values.
            figure = page.locator('figure[data-metric="temperature"]')
            figure.get_by_text("temperature as a table").click()
            table_rows = figure.locator("details tbody tr")
            buckets = series(dashboard, "sim-0001", "temperature", figure)
            expect(table_rows).to_have_count(len(buckets))
            average = table_rows.first.locator("td").nth(2).inner_text()
            assert float(average) == pytest.approx(buckets[0]["avg"], abs=0.006)
        if range_ == "1w":
            screenshot(page, "device-week")

    # A custom range with a chosen step.
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    page.get_by_label("Custom", exact=True).check()
    local = "%Y-%m-%dT%H:%M"  # a datetime-local input's value; the browser runs in UTC
    page.get_by_label("From", exact=True).fill((now - timedelta(hours=30)).strftime(local))
    page.get_by_label("To", exact=True).fill((now - timedelta(hours=2)).strftime(local))
    page.get_by_label("Step", exact=True).select_option("1h")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile(r"range=custom"))
    expect(page.locator("#charts")).to_have_attribute("data-range", "custom")
    figure = page.locator('figure[data-metric="humidity"]')
    expect(figure).to_have_attribute("data-step", "1h")
    buckets = series(dashboard, "sim-0001", "humidity", figure)
    assert 20 <= len(buckets) <= 29
    assert figure.get_attribute("data-points") == str(len(buckets))


def test_acknowledging_an_alert_changes_it_in_the_api_and_on_the_page(
        page: Any, dashboard: Dashboard) -> None:
    open_alerts = dashboard.api("alerts?state=open")["alerts"]
    assert open_alerts, "the simulation left no open alert"
    open_view(page, dashboard, "#/alerts")
    rows = page.locator("#alerts-body tr")
    expect(rows).to_have_count(len(open_alerts))
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.alert)") == [
        a["id"] for a in open_alerts]
    critical = next(a for a in open_alerts if a["severity"] == "critical")
    row = page.locator(f'#alerts-body tr[data-alert="{critical["id"]}"]')
    expect(row.locator("td").first).to_have_text("▲ Critical")  # not colour alone
    screenshot(page, "alerts")

    # Paused, so that no refresh takes the row away (out of "Open") before it is checked.
    page.get_by_label("Auto-refresh every 5 s").uncheck()
    page.get_by_label("Acknowledge as").fill("ops on call")
    row.get_by_role("button", name=f"Acknowledge {critical['rule']} on {critical['device_id']}"
                    ).click()
    expect(row).to_have_attribute("data-state", "acknowledged")
    expect(row.locator(".state-cell")).to_contain_text("Acknowledged by ops on call")
    expect(page.locator("#status")).to_have_text(
        f"{critical['rule']} on {critical['device_id']} acknowledged by ops on call.")
    stored = dashboard.api(f"alerts/{quote(critical['id'], safe='')}")
    assert stored["state"] == "acknowledged" and stored["acknowledged_by"] == "ops on call"

    page.get_by_role("button", name="Refresh now").click()
    expect(row).to_have_count(0)
    expect(rows).to_have_count(len(open_alerts) - 1)
    page.get_by_role("tab", name="Acknowledged").click()
    expect(page).to_have_url(re.compile(r"#/alerts\?state=acknowledged$"))
    expect(row).to_have_attribute("data-state", "acknowledged")
    expect(row.get_by_role("button")).to_have_count(0)


def test_alerts_filter_and_page_with_the_api_cursor(page: Any, dashboard: Dashboard) -> None:
    pages, cursor = [], None
    while True:
        answer = dashboard.api("alerts?" + urlencode(
            {"state": "resolved", "limit": PAGE_SIZE, **({"cursor": cursor} if cursor else {})}))
        pages.append([a["id"] for a in answer["alerts"]])
        if not (cursor := answer["next_cursor"]):
            break
    assert len(pages) >= 2, "the simulation resolved too few alerts to page"
    open_view(page, dashboard, "#/alerts?state=resolved")
    rows = page.locator("#alerts-body tr")
    ids = "rows => rows.map(r => r.dataset.alert)"
    expect(rows).to_have_count(len(pages[0]))
    assert rows.evaluate_all(ids) == pages[0]
    expect(page.get_by_role("button", name=NEWER)).to_be_disabled()
    page.get_by_role("button", name=OLDER).click()
    expect(page.locator("#alerts-page")).to_have_text("Page 2")
    expect(rows).to_have_count(len(pages[1]))
    assert rows.evaluate_all(ids) == pages[1]
    page.get_by_role("button", name=NEWER).click()
    expect(page.locator("#alerts-page")).to_have_text("Page 1")
    expect(rows).to_have_count(len(pages[0]))

    page.get_by_label("Severity", exact=True).select_option("critical")
    expect(page).to_have_url(re.compile(r"severity=critical"))
    critical = dashboard.api(f"alerts?state=resolved&severity=critical&limit={PAGE_SIZE}")
    expect(rows).to_have_count(len(critical["alerts"]))
    assert rows.evaluate_all(ids) == [a["id"] for a in critical["alerts"]]
    page.get_by_label("Device", exact=True).fill("sim-0006")
    page.get_by_role("button", name="Filter", exact=True).click()
    expect(page).to_have_url(re.compile(r"device=sim-0006"))
    one = dashboard.api(
        f"alerts?state=resolved&severity=critical&device_id=sim-0006&limit={PAGE_SIZE}")
    expect(rows).to_have_count(len(one["alerts"]))
    for text in rows.all_inner_texts():
        assert "sim-0006" in text and "Critical" in text

    # Tabs follow the arrow keys.
    page.get_by_role("tab", name="Resolved").focus()
    page.keyboard.press("ArrowLeft")
    expect(page.get_by_role("tab", name="Acknowledged")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("tab", name="Acknowledged")).to_be_focused()


def test_the_page_says_when_the_data_is_stale(page: Any, dashboard: Dashboard) -> None:
    # Staleness is the API's verdict (DEVICE_STALE_SECONDS); here it says so of every device
    # (none of which has an offline alert: tests/browser/test_dashboard_fleet_states.py).
    def every_device_stale(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        for device in body["devices"]:
            device["stale"], device["state"] = True, "stale"
        route.fulfill(response=response, json=body)

    page.route(re.compile(r"/devices\?"), every_device_stale)
    open_view(page, dashboard)
    banner = page.locator("#banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Data is stale. Every device is stale")
    expect(page.locator("#fleet-body tr.stale")).to_have_count(6)
    expect(page.locator("#fleet-body tr").first.locator("td").first).to_have_text("○ Stale")
    expect(page.locator("#fleet-summary")).to_contain_text(
        "6 devices: 0 offline, 6 stale, 0 never reported, 0 reporting, 0 disabled; ")
    expect(page.get_by_role("button", name="Reporting (0)")).to_be_visible()
    page.get_by_role("button", name="Stale (6)").click()
    expect(page.locator("#fleet-body tr")).to_have_count(6)
    screenshot(page, "stale")


def test_the_page_says_when_the_api_is_unreachable(page: Any, dashboard: Dashboard) -> None:
    open_view(page, dashboard)
    banner = page.locator("#banner")
    expect(banner).to_be_hidden()
    dashboard.stop_query()
    try:
        expect(banner).to_be_visible(timeout=20_000)
        expect(banner).to_contain_text("The API cannot be reached")
        expect(page.locator("body")).to_have_attribute("data-api", "unreachable")
        expect(page.locator("#fleet-body tr")).to_have_count(6)  # the last data stays
        screenshot(page, "unreachable")
    finally:
        dashboard.start_query()
    expect(banner).to_be_hidden(timeout=20_000)
    expect(page.locator("body")).to_have_attribute("data-api", "ok")


def download(page: Any, button: Any) -> tuple[str, list[dict[str, str]]]:
    """Click a download button; the file's suggested name and its CSV rows."""
    with page.expect_download() as info:
        button.click()
    text = info.value.path().read_bytes().decode("utf-8")
    assert text.endswith("\r\n"), "RFC 4180 line ends"
    return info.value.suggested_filename, list(csv.DictReader(io.StringIO(text, newline="")))


def test_a_chart_downloads_the_csv_of_what_it_shows(page: Any, dashboard: Dashboard) -> None:
    open_view(page, dashboard, "#/devices/sim-0001?range=1d")
    figure = page.locator('figure[data-metric="temperature"]')
    expect(figure).to_have_attribute("data-step", "1m")
    buckets = series(dashboard, "sim-0001", "temperature", figure)
    name, rows = download(page, figure.get_by_role("button", name="Download temperature as CSV"))
    assert name.startswith("sim-0001_temperature_1m_") and name.endswith(".csv")
    assert [r["t"] for r in rows] == [b["t"] for b in buckets]
    assert [float(r["avg"]) for r in rows] == [b["avg"] for b in buckets]
    expect(page.locator("#status")).to_have_text(f"Downloaded {name}.")


def test_the_alerts_view_downloads_every_alert_of_its_filters(
        page: Any, dashboard: Dashboard) -> None:
    resolved, cursor = [], None
    while True:
        answer = dashboard.api("alerts?" + urlencode(
            {"state": "resolved", "limit": 500, **({"cursor": cursor} if cursor else {})}))
        resolved += answer["alerts"]
        if not (cursor := answer["next_cursor"]):
            break
    assert len(resolved) > PAGE_SIZE, "the download should hold more than the page shows"
    open_view(page, dashboard, "#/alerts?state=resolved")
    expect(page.locator("#alerts-body tr")).to_have_count(PAGE_SIZE)
    name, rows = download(page, page.get_by_role("button", name="Download CSV"))
    assert name == "alerts_resolved.csv"
    assert [r["id"] for r in rows] == [a["id"] for a in resolved]
    assert {r["state"] for r in rows} == {"resolved"}
    assert all(r["resolved_at"].endswith("Z") for r in rows)

    device = resolved[0]["device_id"]
    open_view(page, dashboard, f"#/alerts?state=resolved&severity=warning&device={device}")
    name, rows = download(page, page.get_by_role("button", name="Download CSV"))
    assert name == f"alerts_resolved_warning_{device}.csv"
    assert [r["id"] for r in rows] == [a["id"] for a in resolved
                                       if a["severity"] == "warning" and a["device_id"] == device]


def test_charts_draw_the_rules_and_shade_when_alerts_were_open(
        page: Any, dashboard: Dashboard) -> None:
    rules = dashboard.api("rules")["rules"]
    alerts = dashboard.api("alerts?limit=500")["alerts"]
    on_temperature = [a for a in alerts if a["metric"] == "temperature"]
    device = max({a["device_id"] for a in on_temperature},
                 key=lambda d: sum(a["device_id"] == d for a in on_temperature))
    open_view(page, dashboard, f"#/devices/{device}")
    for metric in ("temperature", "humidity"):
        figure = page.locator(f'figure[data-metric="{metric}"]')
        expect(figure).to_have_attribute("data-step", "raw")  # the last hour: every reading
        levels = sorted({v for r in rules if r["metric"] == metric
                         for v in (r["threshold"], r["clear_threshold"])})
        assert levels, metric
        expect(figure).to_have_attribute("data-thresholds", re.compile(r"^\[.+"))
        assert json.loads(figure.get_attribute("data-thresholds")) == levels
        for r in rules:
            if r["metric"] == metric:
                expect(figure.locator(f'li[data-rule="{r["name"]}"]')).to_contain_text(
                    f"{r['name']}: {r['condition']} ")
        start = datetime.fromisoformat(figure.get_attribute("data-from")).timestamp()
        end = datetime.fromisoformat(figure.get_attribute("data-to")).timestamp()
        expected = []
        for a in dashboard.api(f"alerts?device_id={device}&limit=500")["alerts"]:
            if a["metric"] != metric:
                continue
            since = datetime.fromisoformat(a["raised_at"]).timestamp()
            until = (datetime.fromisoformat(a["resolved_at"]).timestamp()
                     if a["resolved_at"] else end)
            if until >= start and since <= end:
                expected.append([max(since, start), min(until, end)])
        drawn = json.loads(figure.get_attribute("data-alert-periods"))
        assert len(drawn) == len(expected), metric
        assert [t for p in drawn for t in p] == pytest.approx(
            [t for p in expected for t in p], abs=0.002), metric
        if metric == "temperature":
            assert drawn, "the device's temperature alerts fall in the last hour"
    # The threshold lines are inside the value axis: it spans up to the highest threshold.
    screenshot(page, "device-rules")


@pytest.mark.parametrize(("reason", "shown", "device"), [
    ("rule_removed", "(rule removed)", "gone-1"),
    ("rule_out_of_scope", "(rule no longer applies)", "gone-2")])
def test_an_alert_resolved_because_its_rule_was_removed_says_so(
        page: Any, dashboard: Dashboard, reason: str, shown: str, device: str) -> None:
    from iot_telemetry.runtime import get_runtime

    # As alert leaves it when a rule is removed or renamed (tests/unit/test_alerting.py), or
    # no longer applies to the device (tests/unit/test_rule_scopes.py).
    raised = datetime.now(UTC) - timedelta(days=6)
    get_runtime().store.collection("alerts").insert_one({
        "_id": f"{device}:old-rule:1", "device_id": device, "metric": "temperature",
        "rule": "old-rule", "severity": "warning", "condition": ">", "threshold": 30.0,
        "clear_threshold": 28.0, "state": "resolved", "raised_at": raised,
        "first_seen": raised, "last_seen": raised, "count": 3, "peak": 33.0,
        "last_value": 33.0, "acknowledged_at": None, "acknowledged_by": None,
        "resolved_at": raised + timedelta(hours=1), "resolved_value": None,
        "resolved_reason": reason})
    [alert] = dashboard.api(f"alerts?state=resolved&device_id={device}")["alerts"]
    assert alert["resolved_reason"] == reason
    open_view(page, dashboard, f"#/alerts?state=resolved&device={device}")
    row = page.locator(f'#alerts-body tr[data-alert="{device}:old-rule:1"]')
    expect(row.locator(".state-cell")).to_contain_text("Resolved")
    expect(row.locator(".state-cell")).to_contain_text(shown)


def test_an_offline_alert_says_how_long_the_device_has_been_silent(
        page: Any, dashboard: Dashboard) -> None:
    # An offline alert as GET /alerts gives it (metric null, condition offline): silent
    # since 12 minutes ago, window 5 minutes. Injected so the fleet of the other tests stays.
    since = datetime.now(UTC) - timedelta(minutes=12, seconds=5)
    offline = {
        "id": "dev-quiet:device-offline:1", "device_id": "dev-quiet", "metric": None,
        "rule": "device-offline", "severity": "warning", "condition": "offline",
        "window_seconds": 300, "state": "open", "raised_at": iso(since + timedelta(minutes=6)),
        "first_seen": iso(since), "last_seen": iso(since), "count": 1,
        "acknowledged_at": None, "acknowledged_by": None, "resolved_at": None,
        "resolved_value": None, "resolved_reason": None}

    def with_offline(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        body["alerts"] = [offline, *body["alerts"]]
        route.fulfill(response=response, json=body)

    page.route(re.compile(r"/alerts\?"), with_offline)
    open_view(page, dashboard, "#/alerts")
    row = page.locator('#alerts-body tr[data-alert="dev-quiet:device-offline:1"]')
    expect(row).to_contain_text("device-offline")
    expect(row).to_contain_text("offline: no report for 5 min")
    expect(row).to_contain_text("Open · offline for 12 min")
    expect(row).not_to_contain_text("null")
    screenshot(page, "alert-offline")
