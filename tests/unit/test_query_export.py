"""CSV downloads of the query API through its real app: same checks and limits as JSON,
RFC 4180 quoting, streamed, alerts read a page at a time; and GET /rules."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any

import pytest

from iot_telemetry.devices import Registry
from iot_telemetry.runtime import get_runtime, set_runtime
from iot_telemetry.store import ALERTS
from tests.conftest import Apps, iso, make_runtime, record
from tests.unit.test_query import seeded  # noqa: F401  (the same seeded store)

CSV_ACCEPT = {"Accept": "text/csv"}


def table(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/csv"
    text = response.get_data(as_text=True)
    assert text.endswith("\r\n")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def series_url(now: Any, extra: str = "") -> str:
    return (f"/devices/dev-1/series?metric=temperature&from={iso(now - timedelta(hours=1))}"
            f"&to={iso(now + timedelta(hours=1))}{extra}")


def test_a_series_as_csv_holds_the_json_buckets(seeded, now) -> None:  # noqa: F811
    body = seeded.query.get(series_url(now)).get_json()
    assert body["buckets"], "the seeded device has a reading in the range"
    for response in (seeded.query.get(series_url(now, "&format=csv")),
                     seeded.query.get(series_url(now), headers=CSV_ACCEPT)):
        rows = table(response)
        assert "Accept" in response.headers["Vary"]
        assert response.headers["Content-Disposition"] == (
            'attachment; filename="dev-1_temperature_1m_'
            f'{(now - timedelta(hours=1)).strftime("%Y%m%dT%H%MZ")}_'
            f'{(now + timedelta(hours=1)).strftime("%Y%m%dT%H%MZ")}.csv"')
        assert list(rows[0]) == ["device_id", "metric", "step", "t", "count", "min", "max",
                                 "avg", "sum", "first", "last", "last_value"]
        assert [r["t"] for r in rows] == [b["t"] for b in body["buckets"]]
        assert all(body["from"] <= r["t"] < body["to"] for r in rows)
        for row, bucket in zip(rows, body["buckets"], strict=True):
            assert (row["device_id"], row["metric"], row["step"]) == ("dev-1", "temperature", "1m")
            assert int(row["count"]) == bucket["count"]
            for key in ("min", "max", "avg", "sum", "last_value"):
                assert float(row[key]) == bucket[key]
            assert row["first"] == bucket["first"] and row["last"].endswith("Z")
    # Asking for JSON (or anything, as curl does) still gets JSON.
    for headers in ({}, {"Accept": "*/*"}, {"Accept": "application/json"}):
        as_json = seeded.query.get(series_url(now), headers=headers)
        assert as_json.is_json and "Accept" in as_json.headers["Vary"]
    assert seeded.query.get(series_url(now, "&format=json"), headers=CSV_ACCEPT).is_json


def test_an_empty_series_is_a_header_row(seeded, now) -> None:  # noqa: F811
    response = seeded.query.get(series_url(now - timedelta(days=3), "&format=csv"))
    assert table(response) == []
    assert response.get_data(as_text=True).count("\r\n") == 1


# Every request that JSON refuses is refused the same way as CSV (a 400 naming the problem,
# never a download of something else).
REFUSED = [
    "/alerts?device_id[$ne]=x", "/alerts?state[$ne]=open", "/alerts?device_id=$where",
    "/alerts?state=closed", "/alerts?severity=fatal", "/alerts?limit=0",
    "/alerts?limit=100000", "/alerts?limit=501", "/alerts?limit=-1", "/alerts?cursor=garbage",
    "/alerts?state=open&state=resolved", "/alerts?limit=",
    "/devices/dev-1/series", "/devices/dev-1/series?metric=Temperature",
    "/devices/dev-1/series?metric=temperature&step=5m",
    "/devices/dev-1/series?metric=temperature&from=yesterday",
    "/devices/dev-1/series?metric=temperature&from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
    "/devices/dev-1/series?metric=temperature&step=1m&from=2026-01-01T00:00:00Z"
    "&to=2026-01-04T00:00:00Z",  # 4320 buckets, past QUERY_MAX_BUCKETS
    "/devices/bad%20id/series?metric=temperature",
]


@pytest.mark.parametrize("url", REFUSED)
def test_what_json_refuses_csv_refuses(seeded, url) -> None:  # noqa: F811
    as_json = seeded.query.get(url)
    assert as_json.status_code == 400
    glue = "&" if "?" in url else "?"
    for response in (seeded.query.get(url + glue + "format=csv"),
                     seeded.query.get(url, headers=CSV_ACCEPT)):
        assert response.status_code == 400
        assert response.get_json()["message"] == as_json.get_json()["message"]


@pytest.mark.parametrize("url", ["/alerts?format=xml", "/alerts?format=", "/alerts?format=CSV",
                                 "/alerts?format=csv&format=json",
                                 "/devices/dev-1/series?metric=temperature&format=tsv"])
def test_an_unknown_format_is_400(seeded, url) -> None:  # noqa: F811
    response = seeded.query.get(url)
    assert response.status_code == 400 and "format" in response.get_json()["message"]


def _alerts_json(client: Any, query: str, limit: int) -> list[dict[str, Any]]:
    seen, cursor = [], None
    while True:
        page = client.get(f"/alerts?limit={limit}&{query}"
                          + (f"&cursor={cursor}" if cursor else "")).get_json()
        seen += page["alerts"]
        if not (cursor := page["next_cursor"]):
            return seen


class FindSpy:
    """Records the limit of every find on the alerts collection (pages, not everything)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.limits: list[int] = []
        store = get_runtime().store
        real = store.collection
        spy = self

        def collection(name: str) -> Any:
            coll = real(name)
            if name != ALERTS:
                return coll

            class Spied:
                def __getattr__(self, attr: str) -> Any:
                    return getattr(coll, attr)

                def find(self, *args: Any, **kwargs: Any) -> Any:
                    cursor = coll.find(*args, **kwargs)
                    limit = cursor.limit

                    def record_limit(n: int) -> Any:
                        spy.limits.append(n)
                        return limit(n)

                    cursor.limit = record_limit  # type: ignore[method-assign]
                    return cursor

            return Spied()

        monkeypatch.setattr(store, "collection", collection)


@pytest.fixture
def many_alerts(runtime, now):
    """23 alerts on three devices; pages of at most 4, a CSV of at most 10 rows."""
    set_runtime(make_runtime(QUERY_MAX_LIMIT="4", QUERY_DEFAULT_LIMIT="3",
                             QUERY_EXPORT_MAX_ROWS="10"))
    alerts = get_runtime().store.collection(ALERTS)
    for i in range(23):
        alerts.insert_one({"_id": f"dev-{i % 3}:rule:{i:02d}", "device_id": f"dev-{i % 3}",
                           "metric": "temperature", "rule": "rule", "count": 1 + i,
                           "severity": "critical" if i % 4 == 0 else "warning",
                           "state": "resolved" if i < 8 else "open",
                           # pairs raised at the same time: the cursor's tie-break on _id
                           "raised_at": now + timedelta(minutes=i // 2)})
    return Apps()


def test_an_alerts_csv_pages_through_the_store_up_to_its_maximum(
        many_alerts, monkeypatch) -> None:
    q = many_alerts.query
    everything = _alerts_json(q, "", 4)
    assert len(everything) == 23
    spy = FindSpy(monkeypatch)
    response = q.get("/alerts?format=csv", buffered=False)
    assert response.headers["Content-Disposition"] == 'attachment; filename="alerts.csv"'
    # Streamed: the answer starts after the first page is read (so a store outage is a 503),
    # the other pages are read as the body is sent.
    assert "Content-Length" not in response.headers
    assert spy.limits == [4]
    rows = table(response)
    # QUERY_EXPORT_MAX_ROWS rows, newest first, as the JSON pages list them; read in pages
    # of QUERY_MAX_LIMIT, never more.
    assert [r["id"] for r in rows] == [a["id"] for a in everything[:10]]
    assert spy.limits == [4, 4, 2]
    assert [int(r["count"]) for r in rows] == [a["count"] for a in everything[:10]]
    assert all(r["raised_at"].endswith("Z") for r in rows)


@pytest.mark.parametrize("query", ["state=open", "severity=critical", "device_id=dev-2",
                                   "state=resolved&device_id=dev-1", "state=acknowledged"])
def test_an_alerts_csv_has_the_filters_of_json(many_alerts, query) -> None:
    q = many_alerts.query
    expected = [a["id"] for a in _alerts_json(q, query, 4)][:10]
    rows = table(q.get(f"/alerts?{query}", headers=CSV_ACCEPT))
    assert [r["id"] for r in rows] == expected


def test_limit_and_cursor_bound_an_alerts_csv(many_alerts) -> None:
    q = many_alerts.query
    everything = [a["id"] for a in _alerts_json(q, "", 4)]
    assert [r["id"] for r in table(q.get("/alerts?format=csv&limit=3"))] == everything[:3]
    first = q.get("/alerts?limit=4").get_json()
    after = table(q.get(f"/alerts?format=csv&cursor={first['next_cursor']}"))
    assert [r["id"] for r in after] == everything[4:14]
    assert table(q.get("/alerts?format=csv&device_id=nobody")) == []


def test_quoting_survives_commas_quotes_and_newlines_in_metadata(seeded, runtime) -> None:  # noqa: F811
    name = 'Boiler, "north"\nroom 2'
    metadata = {"location": "basement, row 3", "note": 'say "hi"\r\nbye', "floor": -1}
    Registry(runtime.store).add("dev-0", name=name, metadata=metadata)
    Registry(runtime.store).add("dev-1", name="=HYPERLINK(\"http://x\")", metadata={})
    rows = table(seeded.query.get("/alerts?format=csv&device_id=dev-0"))
    assert len(rows) == 4
    for row in rows:
        assert row["device_name"] == name
        assert json.loads(row["device_metadata"]) == metadata
    # A spreadsheet must not run a name as a formula.
    rows = table(seeded.query.get("/alerts?format=csv&device_id=dev-1"))
    assert rows and all(r["device_name"] == "'=HYPERLINK(\"http://x\")" for r in rows)
    raw = seeded.query.get("/alerts?format=csv&device_id=dev-0").get_data(as_text=True)
    assert '"Boiler, ""north""\nroom 2"' in raw


def test_csv_needs_the_same_token_as_json(runtime, now) -> None:
    set_runtime(make_runtime(QUERY_AUTH="token", QUERY_READ_TOKENS="r-" + "1" * 30))
    apps = Apps()
    apps.deliver("aggregate", record("dev-1", now, {"temperature": 20.0}, "e1"))
    url = f"/devices/dev-1/series?metric=temperature&to={iso(now + timedelta(minutes=5))}"
    assert apps.query.get(url + "&format=csv").status_code == 401
    assert apps.query.get("/alerts", headers=CSV_ACCEPT).status_code == 401
    ok = apps.query.get(url + "&format=csv", headers={"Authorization": "Bearer r-" + "1" * 30})
    assert len(table(ok)) == 1


def test_rules_lists_the_alert_rules(seeded) -> None:  # noqa: F811
    rules = seeded.query.get("/rules").get_json()["rules"]
    assert [r["name"] for r in rules] == ["temperature-high", "temperature-critical",
                                          "humidity-high", "humidity-low"]
    assert rules[0] == {"name": "temperature-high", "metric": "temperature", "condition": ">",
                        "threshold": 30.0, "clear_threshold": 28.0, "severity": "warning",
                        "for_count": 3, "for_seconds": 0.0}
    humidity = seeded.query.get("/rules?metric=humidity&device_id=dev-1").get_json()["rules"]
    assert [r["name"] for r in humidity] == ["humidity-high", "humidity-low"]
    assert seeded.query.get("/rules?metric=pressure").get_json() == {"rules": []}
    for bad in ("/rules?metric=Temp", "/rules?device_id=bad%20id", "/rules?x=1",
                "/rules?metric="):
        assert seeded.query.get(bad).status_code == 400, bad


def test_rules_are_the_configured_ones(runtime) -> None:
    rule = {"name": "pressure-low", "metric": "pressure", "condition": "<", "threshold": 950,
            "clear_threshold": 960, "severity": "critical"}
    set_runtime(make_runtime(ALERT_RULES=json.dumps([rule])))
    [shown] = Apps().query.get("/rules").get_json()["rules"]
    assert shown["name"] == "pressure-low" and shown["clear_threshold"] == 960


def test_a_store_outage_is_a_503_before_and_a_cut_download_during(
        many_alerts, monkeypatch) -> None:
    from pymongo.errors import ServerSelectionTimeoutError

    from iot_telemetry.errors import DependencyUnavailable

    store = get_runtime().store
    real = store.collection
    finds = {"left": 0}

    def collection(name: str) -> Any:
        coll = real(name)
        if name != ALERTS:
            return coll

        class Failing:
            def find(self, *args: Any, **kwargs: Any) -> Any:
                if finds["left"] <= 0:
                    raise ServerSelectionTimeoutError("store down")
                finds["left"] -= 1
                return coll.find(*args, **kwargs)

        return Failing()

    monkeypatch.setattr(store, "collection", collection)
    down = many_alerts.query.get("/alerts?format=csv")
    assert down.status_code == 503 and down.headers["Retry-After"]
    # Down after the first page: the body stops with an error instead of ending like a
    # complete file (a client sees a failed download, not a silently short one).
    finds["left"] = 1
    response = many_alerts.query.get("/alerts?format=csv", buffered=False)
    assert response.status_code == 200
    with pytest.raises(DependencyUnavailable):
        response.get_data()
