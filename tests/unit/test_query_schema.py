"""The query API fuzzed from its own OpenAPI document (schemathesis): no 5xx, and every
response matches the documented schema."""

from datetime import UTC, datetime, timedelta

import pytest
import schemathesis
from functions_framework import create_app
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from iot_telemetry import events, store
from iot_telemetry.runtime import set_runtime
from tests.conftest import REPO, Apps, make_runtime, record

set_runtime(make_runtime())
schema = schemathesis.openapi.from_wsgi(
    "/openapi.json", create_app("query", str(REPO / "functions" / "query.py"), "http"))


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
