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
