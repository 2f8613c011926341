"""With QUERY_AUTH=token the page asks for a token, keeps it for the session, and uses it."""

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from iot_telemetry.runtime import Runtime, get_runtime, set_runtime
from iot_telemetry.settings import Settings
from tests.browser.conftest import Dashboard, screenshot

pytestmark = pytest.mark.browser
TOKEN = "read-" + "7" * 32


@pytest.fixture
def token_mode(dashboard: Dashboard) -> Iterator[None]:
    """The module's pipeline, its query API switched to bearer tokens for one test."""
    before = get_runtime()
    env = {"QUERY_AUTH": "token", "QUERY_READ_TOKENS": TOKEN,
           "MONGO_URL": "memory://", "KAFKA_BOOTSTRAP_SERVERS": "memory://"}
    set_runtime(Runtime(Settings.from_environ({}, env)))
    try:
        yield
    finally:
        set_runtime(before)


def test_the_page_asks_for_a_token_and_then_loads(page: Any, dashboard: Dashboard,
                                                  token_mode: None) -> None:
    page.goto(dashboard.url)
    form = page.locator("#token-form")
    expect(form).to_be_visible()
    expect(page.locator("#token-why")).to_contain_text("token")
    screenshot(page, "token")
    page.get_by_label("API token").fill("wrong-token")
    page.get_by_role("button", name="Use token").click()
    expect(form).to_be_visible()  # refused again: asked again
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Use token").click()
    expect(form).to_be_hidden()
    expect(page.locator("#fleet-body tr")).to_have_count(6)
    assert page.evaluate("sessionStorage.getItem('iot-telemetry-token')") == TOKEN
    assert page.evaluate("localStorage.length") == 0 or page.evaluate(
        "!Object.values(localStorage).includes('" + TOKEN + "')")


def test_downloads_send_the_token(page: Any, dashboard: Dashboard, token_mode: None) -> None:
    """A CSV download is a fetch with the session's token, not a link the API would refuse."""
    page.goto(dashboard.url)
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Use token").click()
    expect(page.locator("#fleet-body tr")).to_have_count(6)
    page.goto(dashboard.url + "#/alerts?state=resolved")
    expect(page.locator("#alerts-body tr").first).to_be_visible()
    with page.expect_request(lambda r: "format=csv" in r.url) as sent, \
            page.expect_download() as saved:
        page.get_by_role("button", name="Download CSV").click()
    assert sent.value.headers["authorization"] == f"Bearer {TOKEN}"
    text = saved.value.path().read_text(encoding="utf-8")
    assert text.startswith("id,device_id,device_name,")
    assert len(text.splitlines()) > 1

    page.goto(dashboard.url + "#/devices/sim-0001")
    figure = page.locator('figure[data-metric="temperature"]')
    expect(figure).to_have_attribute("data-step", "raw")  # the last hour: raw readings
    with page.expect_download() as saved:
        figure.get_by_role("button", name="Download temperature as CSV").click()
    assert saved.value.path().read_text(encoding="utf-8").startswith(
        "device_id,metric,t,value,event_id")
