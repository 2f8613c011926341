"""Query tokens kept in the store: only a hash kept, bad input refused whole, revocation and
scope changes within AUTH_CACHE_SECONDS on every instance, `last used` without a write per
request, never logged or in a metric."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import pytest

from iot_telemetry.devices import Registry
from iot_telemetry.errors import BadRequest, Conflict, NotFound
from iot_telemetry.query_tokens import LAST_USED_EVERY, TokenBook
from iot_telemetry.runtime import Runtime, set_runtime
from iot_telemetry.store import DEVICES, QUERY_TOKENS
from tests.conftest import Apps, count_calls, make_runtime, record


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def scoped(runtime, now) -> tuple[Runtime, Apps]:
    rt = make_runtime(QUERY_AUTH="token", AUTH_CACHE_SECONDS="0.2")
    set_runtime(rt)
    apps = Apps()
    for device, value in (("acme-1", 35), ("acme-2", 20), ("globex-1", 36)):
        for i in range(3):  # the default rule raises after 3 readings past its threshold
            at = now + timedelta(seconds=10 * i)
            for function in ("aggregate", "alert"):
                apps.deliver(function, record(device, at, {"temperature": value},
                                              f"e-{device}-{i}"))
    return rt, apps


def test_only_a_hash_is_kept_and_the_token_is_shown_once(scoped) -> None:
    rt, _apps = scoped
    token = rt.query_tokens.add("acme-viewer", "read", {"prefix": "acme-"})
    name, _, secret = token.partition(".")
    assert name == "acme-viewer" and len(secret) >= 40
    doc = rt.store.collection(QUERY_TOKENS).find_one({"_id": "acme-viewer"})
    assert secret not in repr(doc) and token not in repr(doc)
    assert doc["hash"]["scheme"] == "hmac-sha256"
    [info] = rt.query_tokens.list()
    assert (info.name, info.role, info.scope) == ("acme-viewer", "read", {"prefix": "acme-"})
    assert secret not in repr(info)
    with pytest.raises(Conflict, match="acme-viewer"):
        rt.query_tokens.add("acme-viewer", "read")


@pytest.mark.parametrize(("name", "role", "scope", "named"), [
    ("t1", "admin", None, "role 'admin'"),
    ("t1", "read", {"tenant": "acme"}, "scope.tenant: unknown field"),
    ("t1", "read", {"metadata": {"a.b": "x"}}, "key 'a.b'"),
    ("t1", "read", {}, "scope: must be an object"),
    ("bad name", "read", None, "token name 'bad name'"),
    ("t.1", "read", None, "token name 't.1'"),
])
def test_bad_input_is_refused_naming_it_and_changes_nothing(scoped, name, role, scope,
                                                            named) -> None:
    rt, _apps = scoped
    with pytest.raises(BadRequest) as raised:
        rt.query_tokens.add(name, role, scope)
    assert named in str(raised.value.payload())
    assert rt.store.collection(QUERY_TOKENS).count_documents({}) == 0


def test_a_scoped_token_sees_its_devices_only(scoped) -> None:
    rt, apps = scoped
    q = apps.query
    acme = rt.query_tokens.add("acme", "operate", {"prefix": "acme-"})
    devices = q.get("/devices", headers=auth(acme)).get_json()["devices"]
    assert [d["id"] for d in devices] == ["acme-1", "acme-2"]
    assert q.get("/fleet", headers=auth(acme)).get_json()["devices"] == 2
    outside = q.get("/devices/globex-1", headers=auth(acme))
    absent = q.get("/devices/globex-9", headers=auth(acme))
    assert outside.status_code == absent.status_code == 404
    assert outside.get_json()["message"] == absent.get_json()["message"].replace(
        "globex-9", "globex-1")
    [theirs] = rt.store.collection("alerts").find({"device_id": "globex-1"})
    ack = q.post(f"/alerts/{theirs['_id']}/ack", headers=auth(acme))
    assert ack.status_code == 404
    assert rt.store.collection("alerts").find_one({"_id": theirs["_id"]})["state"] == "open"
    [mine] = rt.store.collection("alerts").find({"device_id": "acme-1"})
    assert q.post(f"/alerts/{mine['_id']}/ack", headers=auth(acme)).status_code == 200
    reader = rt.query_tokens.add("acme-read", "read", {"prefix": "acme-"})
    assert q.post(f"/alerts/{mine['_id']}/ack", headers=auth(reader)).status_code == 403


def test_the_scope_is_a_filter_of_the_store_query(scoped, monkeypatch) -> None:
    """The devices of a scope go into the store's query, not a filter over everything read."""
    rt, apps = scoped
    token = rt.query_tokens.add("acme", "read", {"prefix": "acme-"})
    filters: list[dict] = []
    calls = count_calls(monkeypatch, rt.store, "alerts", ["find"],
                        lambda *a, **k: filters.append(a[0]) or True)
    apps.query.get("/alerts", headers=auth(token))
    assert calls["n"] == 1
    assert filters[0] == {"device_id": {"$in": ["acme-1", "acme-2"]}}


def test_revocation_and_scope_changes_reach_every_instance_within_the_cache(scoped) -> None:
    rt, apps = scoped
    other = make_runtime(QUERY_AUTH="token", AUTH_CACHE_SECONDS="0.2")  # a second instance
    token = rt.query_tokens.add("acme", "read", {"prefix": "acme-"})
    q = apps.query
    set_runtime(other)
    assert q.get("/devices", headers=auth(token)).status_code == 200
    rt.query_tokens.set_scope("acme", {"prefix": "globex-"})
    rt.query_tokens.revoke("acme")
    assert q.get("/devices", headers=auth(token)).status_code == 200  # within its cache
    time.sleep(0.3)
    assert q.get("/devices", headers=auth(token)).status_code == 401
    with pytest.raises(NotFound):
        rt.query_tokens.revoke("acme")


def test_a_scope_follows_registry_metadata(scoped) -> None:
    rt, apps = scoped
    token = rt.query_tokens.add("tenant-a", "read", {"metadata": {"tenant": "a"}})
    q = apps.query

    def seen() -> list[str]:
        return [d["id"] for d in q.get("/devices", headers=auth(token)).get_json()["devices"]]

    assert seen() == []
    Registry(rt.store).set_metadata("globex-1", {"tenant": "a"})
    time.sleep(0.3)
    assert seen() == ["globex-1"]
    Registry(rt.store).set_metadata("globex-1", {"tenant": None})
    time.sleep(0.3)
    assert seen() == []


def test_last_used_is_written_once_a_minute_not_per_request(scoped, monkeypatch) -> None:
    rt, apps = scoped
    token = rt.query_tokens.add("acme", "read")
    writes = count_calls(monkeypatch, rt.store, QUERY_TOKENS, ["update_one"])
    for _ in range(20):
        assert apps.query.get("/devices", headers=auth(token)).status_code == 200
    assert writes["n"] == 1
    assert rt.query_tokens.list()[0].last_used_at is not None
    book = rt.query_tokens
    book._touched = {k: v - LAST_USED_EVERY for k, v in book._touched.items()}
    apps.query.get("/devices", headers=auth(token))
    assert writes["n"] == 2


def test_a_name_that_does_not_exist_costs_the_same_check(scoped, monkeypatch) -> None:
    rt, _apps = scoped
    token = rt.query_tokens.add("acme", "read")
    checked: list[object] = []
    import iot_telemetry.query_tokens as module

    real = module.matches
    monkeypatch.setattr(module, "matches", lambda s, r: checked.append(r) or real(s, r))
    book = TokenBook(rt.store)
    assert book.verify(token) is not None
    assert book.verify("nobody." + token.partition(".")[2]) is None
    assert book.verify(token + "x") is None
    assert len(checked) == 3 and checked[1]["scheme"] == checked[0]["scheme"]


def test_tokens_are_never_logged_nor_in_metrics(scoped, caplog) -> None:
    rt, apps = scoped
    token = rt.query_tokens.add("acme", "operate", {"prefix": "acme-"})
    caplog.set_level(logging.DEBUG)
    q = apps.query
    for path in ("/devices", "/devices/globex-1", "/fleet", "/alerts", "/alerts/x",
                 "/devices/acme-1/series?metric=temperature", "/rules?device_id=x"):
        q.get(path, headers=auth(token))
        q.get(path, headers=auth(token + "wrong"))
    q.post("/alerts/x/ack", headers=auth(token))
    text = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    secret = token.partition(".")[2]
    assert secret not in text
    assert secret not in q.get("/metrics").get_data(as_text=True)


def test_the_fleet_tokens_keep_working_beside_stored_ones(runtime, now) -> None:
    set_runtime(make_runtime(QUERY_AUTH="token", QUERY_READ_TOKENS="fleet-" + "1" * 30))
    apps = Apps()
    apps.deliver("aggregate", record("dev-1", now + timedelta(seconds=1), {"t": 1.0}, "e1"))
    got = apps.query.get("/devices", headers=auth("fleet-" + "1" * 30))
    assert [d["id"] for d in got.get_json()["devices"]] == ["dev-1"]
    assert apps.query.get("/devices", headers=auth("fleet-" + "2" * 30)).status_code == 401
    assert runtime.store.collection(DEVICES).count_documents({}) == 1
