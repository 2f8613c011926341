"""Two tenants, two scoped tokens: the page shows each only its own devices, counts and
alerts, keeps the token for the tab only, and forgets the first tenant's data on a change."""

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from iot_telemetry.devices import Registry
from iot_telemetry.runtime import Runtime, get_runtime, set_runtime
from iot_telemetry.settings import Settings
from tests.browser.conftest import LIVE_DEVICES, Dashboard, screenshot

pytestmark = pytest.mark.browser
TENANT_A = [f"sim-{n:04d}" for n in (1, 2, 3)]
TENANT_B = [f"sim-{n:04d}" for n in range(4, LIVE_DEVICES + 1)]


@pytest.fixture
def tenants(dashboard: Dashboard) -> Iterator[dict[str, str]]:
    """The module's pipeline with QUERY_AUTH=token, its devices split between two tenants by
    registry metadata, and a stored token for each tenant."""
    before = get_runtime()
    env = {"QUERY_AUTH": "token", "MONGO_URL": "memory://",
           "KAFKA_BOOTSTRAP_SERVERS": "memory://"}
    rt = Runtime(Settings.from_environ({}, env))
    set_runtime(rt)
    registry = Registry(rt.store)
    for tenant, ids in (("a", TENANT_A), ("b", TENANT_B)):
        for device_id in ids:
            registry.set_metadata(device_id, {"tenant": tenant})
    tokens = {tenant: rt.query_tokens.add(f"tenant-{tenant}", "operate",
                                          {"metadata": {"tenant": tenant}})
              for tenant in ("a", "b")}
    try:
        yield tokens
    finally:
        for tenant in ("a", "b"):
            rt.query_tokens.revoke(f"tenant-{tenant}")
        for device_id in TENANT_A + TENANT_B:
            registry.set_metadata(device_id, {"tenant": None})
        set_runtime(before)


def sign_in(page: Any, token: str) -> None:
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Use token").click()


def test_each_tenant_sees_only_its_devices(page: Any, dashboard: Dashboard,
                                           tenants: dict[str, str]) -> None:
    page.goto(dashboard.url)
    expect(page.locator("#token-form")).to_be_visible()
    sign_in(page, tenants["a"])
    expect(page.locator("#fleet-body tr")).to_have_count(len(TENANT_A))
    expect(page.locator("#fleet-summary")).to_contain_text(f"{len(TENANT_A)} devices")
    text = page.locator("body").inner_text()
    assert all(d in text for d in TENANT_A)
    assert not any(d in text for d in TENANT_B), "tenant a's page shows a device of b"
    screenshot(page, "tenant-a")

    page.goto(dashboard.url + "#/alerts?state=resolved")
    expect(page.locator("#alerts-body tr").first).to_be_visible()
    alerts = page.locator("#alerts-body").inner_text()
    assert not any(d in alerts for d in TENANT_B)
    options = page.locator("#device-ids option").evaluate_all("os => os.map(o => o.value)")
    assert sorted(options) == TENANT_A

    # A device of the other tenant answers as a device that does not exist.
    page.goto(dashboard.url + f"#/devices/{TENANT_B[0]}")
    expect(page.locator("#device-message")).to_contain_text(f"No device “{TENANT_B[0]}”")

    # Another token in the same tab: nothing of the first tenant stays on the page.
    page.goto(dashboard.url + "#/alerts?state=resolved")
    expect(page.locator("#alerts-body tr").first).to_be_visible()
    page.get_by_role("button", name="Change token").click()
    sign_in(page, tenants["b"])
    expect(page.locator("#alerts-body tr").first).to_be_visible()
    expect(page.locator("#device-ids option")).to_have_count(len(TENANT_B))
    assert not any(d in page.locator("body").inner_text() for d in TENANT_A)
    page.goto(dashboard.url + "#/")
    expect(page.locator("#fleet-body tr")).to_have_count(len(TENANT_B))
    expect(page.locator("#fleet-summary")).to_contain_text(f"{len(TENANT_B)} devices")
    assert not any(d in page.locator("body").inner_text() for d in TENANT_A)
    screenshot(page, "tenant-b")

    # The token is this tab's: in sessionStorage only, and a new tab asks again.
    assert page.evaluate("sessionStorage.getItem('iot-telemetry-token')") == tenants["b"]
    assert tenants["b"] not in str(page.evaluate("Object.values(localStorage)"))
    other = page.context.new_page()
    try:
        other.goto(dashboard.url)
        expect(other.locator("#token-form")).to_be_visible()
        expect(other.locator("#fleet-body tr")).to_have_count(0)
    finally:
        other.close()

    page.get_by_role("button", name="Forget token").click()
    expect(page.locator("#token-form")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('iot-telemetry-token')") is None
