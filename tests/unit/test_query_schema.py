"""The query API fuzzed from its own OpenAPI document (schemathesis): no 5xx, and every
response matches the documented schema; then the values a schema cannot describe."""

import base64
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
import schemathesis
from functions_framework import create_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from iot_telemetry import events, store
from iot_telemetry.runtime import set_runtime
from tests.conftest import REPO, Apps, make_runtime, record
from tests.strategies import UNICODE_DIGITS, almost, rfc3339

set_runtime(make_runtime())
# `format: date-time` drawn over the whole datetime range and every UTC offset, not only
# the times hypothesis-jsonschema writes by default (UTC, years 2000 and about).
schemathesis.openapi.format("date-time", st.one_of(rfc3339(), rfc3339(near_now=True)))
APP = create_app("query", str(REPO / "functions" / "query.py"), "http")
schema = schemathesis.openapi.from_wsgi("/openapi.json", APP)


@pytest.fixture(autouse=True)
def seeded() -> None:
    """A device with rollups and a resolved and an open alert, and an offline alert."""
    store.reset_embedded()
    set_runtime(make_runtime())
    apps = Apps()
    now = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)
    for i, v in enumerate([31, 32, 33, 34, 20, 31, 32, 33]):
        rec = record("dev-1", now + timedelta(seconds=10 * i), {"temperature": v}, f"s{i}")
        apps.deliver("aggregate", rec)
        apps.deliver("alert", rec)
    # dev-1 has been silent for half an hour: a PingSource tick raises device-offline
    headers, body = events.to_http({
        "specversion": "1.0", "type": events.PING_TYPE, "id": "tick",
        "source": "/apis/v1/namespaces/iot/pingsources/offline-sweep"}, {})
    assert apps.alert.post("/", data=body, headers=headers).status_code == 200


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_query_api_matches_its_openapi(case) -> None:
    # A schema-valid request may still be refused for what a schema cannot say (from after
    # to, more buckets than QUERY_MAX_BUCKETS, an unknown alert): those 4xx are not failures.
    case.call_and_validate(excluded_checks=[positive_data_acceptance])


def _cursor(time: str) -> str:
    raw = json.dumps([time, "dev-1:temperature-high"]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


SMALL = st.from_regex(r"[1-9][0-9]{0,2}", fullmatch=True)
# What a schema cannot describe: other scripts' digits, trailing newlines, and cursors
# (opaque to the schema) that carry any time at all.
WILD = {
    "limit": almost(SMALL) | st.text(UNICODE_DIGITS, min_size=1, max_size=3),
    "from": almost(rfc3339()), "to": almost(rfc3339()),
    "metric": almost(st.just("temperature")), "prefix": almost(st.just("dev")),
    "device_id": almost(st.just("dev-1")), "cursor": almost(rfc3339()).map(_cursor),
}
ROUTES = {"/devices": ("limit", "prefix"), "/alerts": ("limit", "cursor", "device_id"),
          "/devices/dev-1/series": ("metric", "from", "to")}


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(sorted(ROUTES)), data=st.data())
def test_values_no_schema_describes_are_a_200_or_a_400_naming_them(route, data) -> None:
    names = data.draw(st.sets(st.sampled_from(ROUTES[route]), min_size=1))
    params = {name: data.draw(WILD[name], label=name) for name in sorted(names)}
    if route.endswith("series"):
        params.setdefault("metric", "temperature")
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    response = APP.test_client().get(f"{route}?{query}")
    assert response.status_code in (200, 400), (response.status_code, response.data[:300])
    if response.status_code == 400:
        assert response.get_json()["message"].split(":")[0] in params
