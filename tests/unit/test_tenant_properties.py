"""Machine-made tenants: devices with metadata, tokens with generated scopes, and every query
route called with every token. A scoped token's answers carry, count and reveal only the
devices of its scope (a device outside answers as one that does not exist), and every device
inside is reachable."""

from __future__ import annotations

import csv
import fnmatch
import io
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iot_telemetry import store
from iot_telemetry.runtime import set_runtime
from iot_telemetry.store import ALERTS, DEVICES
from tests.conftest import Apps, make_runtime

NOW = datetime.now(UTC).replace(microsecond=0)
FLEET_TOKEN = "fleet-" + "9" * 30
NOBODY = "zz-nobody"  # an id no strategy makes: what "does not exist" answers

DEVICE_IDS = st.builds(lambda head, n: f"{head}{n}",
                       st.sampled_from(["a-", "ab-", "b-", "b.x-", "c_"]),
                       st.integers(0, 30))
METADATA = st.dictionaries(st.sampled_from(["tenant", "site"]),
                           st.sampled_from(["acme", "globex", "1", "2"]), max_size=2)
DEVICES_ = st.dictionaries(DEVICE_IDS, st.tuples(METADATA, st.booleans(),
                                                 st.sampled_from([None, 60, 3600])),
                           min_size=1, max_size=12)
SELECTORS = st.fixed_dictionaries({}, optional={
    "prefix": st.sampled_from(["a-", "ab", "b", "b.x-", "c_1"]),
    "glob": st.sampled_from(["*-1*", "a?-*", "[ab]*", "*x*", "c_[!0]*"]),
    "device": DEVICE_IDS,
    "metadata": st.dictionaries(st.sampled_from(["tenant", "site"]),
                                st.sampled_from(["acme", "globex", "1"]), min_size=1,
                                max_size=2),
}).filter(bool)


def selected(selector: dict[str, Any], device_id: str, metadata: dict[str, str]) -> bool:
    """The oracle: a selector's meaning, written apart from scopes.py."""
    return ((selector.get("device") in (None, device_id))
            and device_id.startswith(selector.get("prefix", ""))
            and fnmatch.fnmatchcase(device_id, selector.get("glob", "*"))
            and all(metadata.get(k) == v for k, v in selector.get("metadata", {}).items()))


def seed(devices: dict[str, tuple[dict[str, str], bool, int | None]]) -> list[str]:
    """The devices and two alerts each (one open, one resolved); the alert ids."""
    db = store.Store(make_runtime().settings)
    alerts = []
    for n, (device_id, (metadata, enabled, silent)) in enumerate(sorted(devices.items())):
        doc: dict[str, Any] = {"_id": device_id, "name": f"name of {device_id}",
                               "metadata": metadata, "enabled": enabled, "latest": {}}
        if silent is not None:
            doc.update(first_seen=NOW - timedelta(days=1),
                       last_seen=NOW - timedelta(seconds=silent))
        db.collection(DEVICES).insert_one(doc)
        for k, state in enumerate(("open", "resolved")):
            alert_id = f"al-{n}-{k}"
            alerts.append(alert_id)
            db.collection(ALERTS).insert_one({
                "_id": alert_id, "device_id": device_id, "rule": "hot", "metric": "temperature",
                "condition": ">", "severity": "warning", "state": state, "threshold": 30.0,
                "value": 31.0, "peak": 31.0, "count": 1,
                "raised_at": NOW - timedelta(minutes=n + k), "last_seen": NOW})
    return alerts


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def every_device_listed(q: Any, token: str, prefix: str = "") -> list[str]:
    ids, cursor = [], None
    while True:
        page = q.get("/devices?limit=2" + (f"&cursor={cursor}" if cursor else "")
                     + (f"&prefix={prefix}" if prefix else ""), headers=auth(token)).get_json()
        ids += [d["id"] for d in page["devices"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


def absent_answer(q: Any, path: str, token: str, device_id: str) -> tuple[int, str]:
    """What `path` answers for a device that does not exist, worded for `device_id`."""
    response = q.get(path.replace("{id}", NOBODY), headers=auth(token))
    return response.status_code, response.get_data(as_text=True).replace(NOBODY, device_id)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(devices=DEVICES_, scopes=st.lists(SELECTORS, min_size=1, max_size=3),
       operate=st.booleans())
def test_a_scoped_token_sees_exactly_its_devices(devices, scopes, operate) -> None:
    store.reset_embedded()
    rt = make_runtime(QUERY_AUTH="token", QUERY_READ_TOKENS=FLEET_TOKEN)
    set_runtime(rt)
    alert_ids = seed(devices)
    q = Apps().query
    metadata = {d: m for d, (m, _e, _s) in devices.items()}
    alert_device = {f"al-{n}-{k}": d for n, d in enumerate(sorted(devices)) for k in (0, 1)}
    tokens = {rt.query_tokens.add(f"t{i}", "operate" if operate else "read", scope): scope
              for i, scope in enumerate(scopes)}
    tokens[FLEET_TOKEN] = {}
    for token, scope in tokens.items():
        inside = {d for d in devices if selected(scope, d, metadata[d])}
        outside = set(devices) - inside

        assert every_device_listed(q, token) == sorted(inside)
        for prefix in ("a", "ab-", "b.", "c_1"):
            assert every_device_listed(q, token, prefix) == sorted(
                d for d in inside if d.startswith(prefix))
        counts = q.get("/fleet", headers=auth(token)).get_json()
        assert counts["devices"] == sum(counts["states"].values()) == len(inside)
        listed = q.get("/devices?limit=500", headers=auth(token)).get_json()["devices"]
        by_state: dict[str, int] = {}
        for d in listed:
            by_state[d["state"]] = by_state.get(d["state"], 0) + 1
        assert {k: v for k, v in counts["states"].items() if v} == by_state

        alerts = q.get("/alerts?limit=500", headers=auth(token)).get_json()["alerts"]
        assert {a["device_id"] for a in alerts} == inside
        assert len(alerts) == 2 * len(inside)
        rows = list(csv.DictReader(io.StringIO(q.get(
            "/alerts?format=csv", headers=auth(token)).get_data(as_text=True))))
        assert {r["device_id"] for r in rows} == inside and len(rows) == 2 * len(inside)

        for device_id in sorted(devices):
            paths = ["/devices/{id}", "/devices/{id}/series?metric=temperature",
                     "/devices/{id}/series?metric=temperature&format=csv",
                     "/rules?device_id={id}", "/alerts?device_id={id}",
                     "/alerts?device_id={id}&format=csv"]
            for path in paths:
                response = q.get(path.replace("{id}", device_id), headers=auth(token))
                if device_id in inside:
                    assert response.status_code == 200, (path, response.get_json())
                else:
                    assert (response.status_code, response.get_data(as_text=True)) == \
                        absent_answer(q, path, token, device_id), path
            if token != FLEET_TOKEN:
                assert device_id not in q.get("/rules", headers=auth(token)).get_data(
                    as_text=True)

        for alert_id in alert_ids:
            response = q.get(f"/alerts/{alert_id}", headers=auth(token))
            absent = q.get("/alerts/al-none", headers=auth(token))
            if alert_device[alert_id] in inside:
                assert response.status_code == 200
            else:
                assert response.status_code == 404
                assert response.get_data(as_text=True) == absent.get_data(
                    as_text=True).replace("al-none", alert_id)
            if operate and token != FLEET_TOKEN and alert_id.endswith("-0"):
                before = rt.store.collection(ALERTS).find_one({"_id": alert_id})
                ack = q.post(f"/alerts/{alert_id}/ack", headers=auth(token))
                after = rt.store.collection(ALERTS).find_one({"_id": alert_id})
                if alert_device[alert_id] in inside:
                    assert ack.status_code == 200 and after["state"] == "acknowledged"
                else:
                    assert ack.status_code == 404 and after == before
                    assert ack.get_data(as_text=True) == q.post(
                        "/alerts/al-none/ack", headers=auth(token)).get_data(
                        as_text=True).replace("al-none", alert_id)
                    for name in outside:
                        assert name not in ack.get_data(as_text=True)
