"""Query API tokens (read / operate scopes) and CORS."""

from datetime import timedelta

import pytest

from iot_telemetry.runtime import set_runtime
from tests.conftest import Apps, make_runtime, record

READ, OPERATE = "r-" + "1" * 30, "o-" + "2" * 30


@pytest.fixture
def apps_with_tokens(runtime, now):
    set_runtime(make_runtime(QUERY_AUTH="token", QUERY_READ_TOKENS=f"other,{READ}",
                             QUERY_OPERATE_TOKENS=OPERATE,
                             QUERY_CORS_ORIGINS="https://ops.example.com"))
    apps = Apps()
    for i, v in enumerate([31, 32, 33]):
        apps.deliver("alert", record("dev-1", now + timedelta(seconds=10 * i),
                                     {"temperature": v}, f"a{i}"))
    return apps


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def test_tokens_and_scopes(apps_with_tokens) -> None:
    q = apps_with_tokens.query
    assert q.get("/devices").status_code == 401
    assert q.get("/devices").headers["WWW-Authenticate"].startswith("Bearer")
    assert q.get("/devices", headers=auth("nope")).status_code == 401
    assert q.get("/devices", headers={"Authorization": "Basic abc"}).status_code == 401
    assert q.get("/devices", headers=auth(READ)).status_code == 200
    [alert] = q.get("/alerts", headers=auth(READ)).get_json()["alerts"]
    ack = f"/alerts/{alert['id']}/ack"
    assert q.post(ack, headers=auth(READ)).status_code == 403
    assert q.post(ack).status_code == 401
    assert q.post(ack, headers=auth(OPERATE)).status_code == 200
    assert q.get("/alerts", headers=auth(OPERATE)).status_code == 200


def test_probes_page_and_description_need_no_token(apps_with_tokens) -> None:
    q = apps_with_tokens.query
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/"):
        assert q.get(path).status_code == 200, path
    assert q.get("/", headers={"Accept": "text/html"}).status_code == 200


def test_cors_is_an_allow_list(apps_with_tokens) -> None:
    q = apps_with_tokens.query
    allowed = {"Origin": "https://ops.example.com", **auth(READ)}
    response = q.get("/devices", headers=allowed)
    assert response.headers["Access-Control-Allow-Origin"] == "https://ops.example.com"
    other = q.get("/devices", headers={"Origin": "https://evil.example", **auth(READ)})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = q.options("/alerts/x/ack", headers={
        "Origin": "https://ops.example.com", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    refused = q.options("/devices", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_cors_is_closed_by_default(apps) -> None:
    response = apps.query.get("/devices", headers={"Origin": "https://ops.example.com"})
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers


def test_framework_errors_are_json(apps) -> None:
    response = apps.query.get("/devices/%0A")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


def test_token_mode_without_fleet_tokens_takes_stored_ones(runtime) -> None:
    """QUERY_AUTH=token with no QUERY_*_TOKENS starts: the tokens are then the store's."""
    set_runtime(make_runtime(QUERY_AUTH="token"))
    q = Apps().query
    assert q.get("/devices", headers=auth(READ)).status_code == 401
    from iot_telemetry.runtime import get_runtime

    token = get_runtime().query_tokens.add("viewer", "read")
    assert q.get("/devices", headers=auth(token)).status_code == 200


@pytest.mark.parametrize(("path", "headers", "status"), [
    ("/devices?limit=0", auth(READ), 400),
    ("/devices", {}, 401),
    ("/devices", auth("nope"), 401),
    ("/devices/nobody", auth(READ), 404),
    ("/no/such/route", auth(READ), 404),
])
def test_cors_headers_are_on_error_answers_too(apps_with_tokens, path, headers, status) -> None:
    # Without them a browser page sees a network error instead of the 4xx and its message.
    response = apps_with_tokens.query.get(path, headers={"Origin": "https://ops.example.com",
                                                         **headers})
    assert response.status_code == status
    assert response.headers["Access-Control-Allow-Origin"] == "https://ops.example.com"
    assert "Origin" in response.headers["Vary"]


def test_the_index_varies_on_both_accept_and_origin(apps_with_tokens) -> None:
    response = apps_with_tokens.query.get("/", headers={"Origin": "https://ops.example.com"})
    assert response.status_code == 200
    assert {v.strip() for v in response.headers["Vary"].split(",")} >= {"Accept", "Origin"}
    other = apps_with_tokens.query.get("/", headers={"Origin": "https://evil.example"})
    assert {v.strip() for v in other.headers["Vary"].split(",")} >= {"Accept", "Origin"}
    assert "Access-Control-Allow-Origin" not in other.headers
