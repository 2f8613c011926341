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


def test_wrong_secrets_cost_the_same_for_known_and_unknown_devices(registered) -> None:
    import statistics
    import time

    from iot_telemetry.errors import Unauthorized

    registry = Registry(registered.store, cache_seconds=0)
    token = registry.add("dev-known")
    wrong_secret = "x" * len(token.split(".", 1)[1])
    timings: dict[str, list[float]] = {"dev-known": [], "dev-unknown": []}
    for _ in range(200):  # interleaved, so load on the machine hits both alike
        for device, spent in timings.items():
            start = time.perf_counter()
            with pytest.raises(Unauthorized):
                registry.authenticate(f"{device}.{wrong_secret}")
            spent.append(time.perf_counter() - start)
    known, unknown = (statistics.median(timings[d]) for d in ("dev-known", "dev-unknown"))
    ratio = known / unknown
    print(f"wrong secret: known device {known * 1e3:.3f} ms, unknown {unknown * 1e3:.3f} ms, "
          f"ratio {ratio:.2f}")
    # scrypt made this ratio about 1000; an attacker must not tell the two apart
    assert 0.5 < ratio < 2.0


def test_scrypt_records_of_earlier_versions_still_verify_and_are_rehashed(registered) -> None:
    import base64
    import hashlib

    secret = "s" * 43
    salt = b"0123456789abcdef"
    legacy = {"salt": base64.b64encode(salt).decode(), "n": 2**14, "r": 8, "p": 1,
              "hash": base64.b64encode(hashlib.scrypt(secret.encode(), salt=salt, n=2**14, r=8,
                                                      p=1, dklen=32)).decode()}
    devices = registered.store.collection(DEVICES)
    devices.insert_one({"_id": "dev-old", "enabled": True, "token": legacy})
    registry = Registry(registered.store, cache_seconds=0)
    assert registry.authenticate(f"dev-old.{secret}") == "dev-old"
    stored = devices.find_one({"_id": "dev-old"})["token"]
    assert stored["scheme"] == "hmac-sha256" and "n" not in stored
    assert registry.authenticate(f"dev-old.{secret}") == "dev-old"


def test_failed_authentications_are_limited_per_client_before_any_token_work(
        runtime, sink, monkeypatch) -> None:
    rt = make_runtime(INGEST_AUTH="registered", INGEST_AUTH_FAILURES_PER_MINUTE="3")
    set_runtime(rt)
    apps = Apps()
    token = rt.registry.add("dev-1")
    checked = []
    original = Registry.authenticate
    monkeypatch.setattr(Registry, "authenticate",
                        lambda self, t: checked.append(t) or original(self, t))

    def from_client(address, bearer, forged=""):
        forwarded = f"{forged}{address}, 10.1.2.3, 127.0.0.1"  # ingress, activator, queue-proxy
        return apps.ingest.post("/", data=events.to_batch([telemetry(
            "dev-1", datetime.now(UTC), {"t": 1.0}, f"e-{address}-{len(checked)}")]),
            headers={"Content-Type": events.BATCH, "Authorization": f"Bearer {bearer}",
                     "X-Forwarded-For": forwarded})

    for _ in range(3):
        assert from_client("203.0.113.7", "dev-1.wrong").status_code == 401
    assert len(checked) == 3
    refused = from_client("203.0.113.7", token)  # even a right token: no work for this client
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert from_client("203.0.113.7", token, forged="198.51.100.1, ").status_code == 429
    assert len(checked) == 3
    assert from_client("203.0.113.8", token).status_code == 202  # other clients unaffected


def test_client_address_skips_trusted_proxies_only() -> None:
    from iot_telemetry.clients import client_address, parse_networks

    proxies = parse_networks("127.0.0.0/8,10.0.0.0/8")
    assert client_address("127.0.0.1", {"X-Forwarded-For": "1.2.3.4, 10.0.0.9"}, proxies) == \
        "1.2.3.4"
    assert client_address("127.0.0.1", {"X-Forwarded-For": "6.6.6.6, 1.2.3.4"}, proxies) == \
        "1.2.3.4"
    assert client_address("5.6.7.8", {"X-Forwarded-For": "1.2.3.4"}, proxies) == "5.6.7.8"
    assert client_address("127.0.0.1", {}, proxies) == "127.0.0.1"
    with pytest.raises(ValueError, match="not an IP network"):
        parse_networks("10.0.0.0/8,nonsense")
