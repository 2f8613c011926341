"""The local run's registry routes (`/local/devices` on its query port): the CLI's only
(issue 20, suspected item c: they minted and rotated tokens for anyone, whatever QUERY_AUTH
said, and a page in a browser could post to them)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from local.registry_endpoint import PREFIX, with_registry
from werkzeug.test import Client
from werkzeug.wrappers import Response

from iot_telemetry import store
from iot_telemetry.runtime import get_runtime, set_runtime
from tests.conftest import make_runtime


def client(**env: str) -> Client:
    store.reset_embedded()
    set_runtime(make_runtime(**env))

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        return Response("query", 200)(environ, start_response)

    return Client(with_registry(app, get_runtime))


def add(c: Client, device: str, **headers: str) -> Any:
    return c.post(PREFIX, data=json.dumps({"id": device}),
                  headers={"Content-Type": "application/json", **headers})


@pytest.fixture
def guarded() -> Client:
    return client(QUERY_AUTH="token", QUERY_READ_TOKENS="reader",
                  QUERY_OPERATE_TOKENS="operator")


def test_with_query_auth_the_registry_needs_an_operate_token_to_change(guarded) -> None:
    assert add(guarded, "d1").status_code == 401
    assert add(guarded, "d1", Authorization="Bearer wrong").status_code == 401
    read = add(guarded, "d1", Authorization="Bearer reader")
    assert read.status_code == 403 and "register devices" in read.get_json()["message"]
    assert guarded.post(f"{PREFIX}/d1/rotate-token", data="{}", headers={
        "Content-Type": "application/json", "Authorization": "Bearer reader"}).status_code == 403
    assert guarded.get(PREFIX).status_code == 401
    assert guarded.get(PREFIX, headers={"Authorization": "Bearer reader"}).get_json() == {
        "devices": []}
    made = add(guarded, "d1", Authorization="Bearer operator")
    assert made.status_code == 201 and made.get_json()["token"].startswith("d1.")


def test_whatever_query_auth_says_a_browser_cannot_use_the_registry() -> None:
    c = client()  # QUERY_AUTH=open, the local run's default
    page = add(c, "d1", Origin="http://evil.example")
    assert page.status_code == 403 and "not for browsers" in page.get_json()["message"]
    assert add(c, "d1", **{"Sec-Fetch-Site": "cross-site"}).status_code == 403
    form = c.post(PREFIX, data="id=d1", headers={
        "Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    assert c.post(f"{PREFIX}/d1/rotate-token", data="{}",
                  headers={"Content-Type": "text/plain"}).status_code == 415
    assert get_runtime().registry.list() == []
    assert add(c, "d1").status_code == 201  # the CLI: JSON, no Origin


def test_the_cli_sends_the_operate_token_of_its_environment(monkeypatch) -> None:
    from local.registry_endpoint import RemoteRegistry, RemoteTokens, local_run_token

    monkeypatch.setenv("QUERY_AUTH", "token")
    monkeypatch.setenv("QUERY_READ_TOKENS", "reader")
    monkeypatch.setenv("QUERY_OPERATE_TOKENS", "operator,other")
    assert local_run_token() == "operator"
    # Every call of the CLI to the local run (devices, import, tokens) carries it.
    assert RemoteRegistry("http://127.0.0.1:1/").token == "operator"
    assert RemoteTokens("http://127.0.0.1:1/").token == "operator"
    monkeypatch.delenv("QUERY_OPERATE_TOKENS")
    assert local_run_token() == "reader"
