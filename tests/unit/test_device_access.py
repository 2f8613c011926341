"""Device credentials and rate limits at ingest."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from iot_telemetry import events
from iot_telemetry.devices import Registry, matches, new_credential
from iot_telemetry.ratelimit import RateLimiter
from iot_telemetry.runtime import set_runtime
from iot_telemetry.store import DEVICES
from tests.conftest import Apps, make_runtime, telemetry


def post(apps, device, token=None, n=1, subject=None):
    now = datetime.now(UTC)
    batch = [telemetry(subject or device, now - timedelta(seconds=n - i), {"t": float(i)},
                       f"{device}-{now.timestamp()}-{i}") for i in range(n)]
    headers = {"Content-Type": events.BATCH}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return apps.ingest.post("/", data=events.to_batch(batch), headers=headers)


@pytest.fixture
def registered(runtime, sink):
    rt = make_runtime(INGEST_AUTH="registered", AUTH_CACHE_SECONDS="60")
    set_runtime(rt)
    return rt


def test_registered_mode(registered, sink) -> None:
    apps = Apps()
    registry = registered.registry
    token = registry.add("dev-1", "Lab", {"location": "bench"})
    other = registry.add("dev-2")
    assert post(apps, "dev-1", token).status_code == 202
    missing = post(apps, "dev-1")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert post(apps, "dev-1", token[:-2] + "xx").status_code == 401
    assert post(apps, "dev-1", "not-a-token").status_code == 401
    assert post(apps, "dev-3", "dev-3.abc").status_code == 401
    # a device cannot write for another, even with a valid token of its own
    response = post(apps, "dev-2", other, subject="dev-1")
    assert response.status_code == 403
    assert "cannot write for 'dev-1'" in response.get_json()["message"]
    assert len(sink.records) == 1


def test_the_token_is_stored_only_as_a_salted_hash(registered) -> None:
    token = registered.registry.add("dev-1")
    doc = registered.store.collection(DEVICES).find_one({"_id": "dev-1"})
    secret = token.split(".", 1)[1]
    assert secret not in json.dumps(doc, default=str)
    assert matches(secret, doc["token"])
    _, again = new_credential("dev-1")
    assert again["salt"] != doc["token"]["salt"]


def test_disable_and_rotate_take_effect(registered, sink) -> None:
    apps = Apps()
    registry = registered.registry
    token = registry.add("dev-1")
    assert post(apps, "dev-1", token).status_code == 202
    registry.set_enabled("dev-1", False)
    assert post(apps, "dev-1", token).status_code == 403
    registry.set_enabled("dev-1", True)
    new = registry.rotate("dev-1")
    assert post(apps, "dev-1", token).status_code == 401
    assert post(apps, "dev-1", new).status_code == 202


def test_a_revocation_elsewhere_is_seen_within_the_cache_time(registered) -> None:
    fast = Registry(registered.store, cache_seconds=0.0)
    slow = registered.registry
    token = slow.add("dev-1")
    assert fast.authenticate(token) == "dev-1"
    assert slow.authenticate(token) == "dev-1"
    Registry(registered.store).set_enabled("dev-1", False)  # another process
    assert slow.authenticate(token) == "dev-1"  # cached for AUTH_CACHE_SECONDS
    with pytest.raises(Exception, match="disabled"):
        fast.authenticate(token)


def test_open_mode_needs_no_token(apps, sink) -> None:
    assert post(apps, "dev-1").status_code == 202


def test_rate_limit_is_per_device_with_retry_after(runtime, sink) -> None:
    set_runtime(make_runtime(INGEST_RATE_LIMIT="1", INGEST_RATE_BURST="5"))
    apps = Apps()
    assert post(apps, "noisy", n=5).status_code == 202
    limited = post(apps, "noisy", n=2)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert post(apps, "quiet", n=5).status_code == 202  # others are not starved
    assert len(sink.records) == 10


def test_token_bucket_refills() -> None:
    limiter = RateLimiter(rate=10, burst=20)
    assert limiter.take("d", 20, now=0.0) == 0
    assert limiter.take("d", 1, now=0.0) == 1
    assert limiter.take("d", 10, now=1.0) == 0
    assert limiter.take("d", 30, now=100.0) > 0  # more than a burst never fits


def test_token_bucket_clock_read_before_another_thread_is_not_a_debt() -> None:
    # Two request threads read the clock, the later one takes the lock first: the earlier
    # reading must not refill negatively (with a high rate that rejected a fresh device).
    limiter = RateLimiter(rate=1e9, burst=20)
    assert limiter.take("d", 1, now=5.0) == 0
    assert limiter.take("d", 1, now=4.9) == 0
    assert limiter.take("d", 18, now=4.8) == 0
    assert limiter.take("d", 1, now=4.7) == 1  # the burst is spent, no refill from the past
