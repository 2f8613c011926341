"""Raw readings (issue 22): each reading once through the real apps, pages and cursors, CSV,
turned off, and documents bounded at the rate limit."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import bson
import pytest

from iot_telemetry import raw
from iot_telemetry.observability import RAW_DROPPED
from iot_telemetry.rollup import RollupWriter, event_hash
from iot_telemetry.store import RAW_READINGS, reset_embedded
from tests.conftest import iso, make_runtime, record
from tests.unit.test_rollup_exact import event_of


@pytest.fixture
def recent() -> datetime:
    """Twenty minutes ago, at a whole ten minutes: readings span three windows."""
    t = datetime.now(UTC) - timedelta(minutes=40)
    return t.replace(minute=t.minute // 10 * 10, second=0, microsecond=0)


def series(apps, device: str, metric: str, start: datetime, to: datetime, extra: str = ""):
    return apps.query.get(f"/devices/{device}/series?metric={metric}&step=raw"
                          f"&from={iso(start)}&to={iso(to)}{extra}")


def deliver_all(apps, recent: datetime) -> list[tuple[str, float, str]]:
    """Events of one reading each and one with samples across windows, each delivered twice,
    newest first; what the API should answer for `temperature`."""
    want = []
    for i in range(12):
        t = recent + timedelta(minutes=2 * i, seconds=7)
        rec = record("dev-raw", t, {"temperature": 20.0 + i, "humidity": 40.0}, f"ev-{i}")
        want.append((iso(t), 20.0 + i, f"ev-{i}"))
        for _ in range(2):
            assert apps.deliver("aggregate", rec).status_code == 204
    samples = [(recent + timedelta(minutes=m, milliseconds=5), {"temperature": -m * 1.5})
               for m in (1, 11, 21)]
    rec = record("dev-raw", recent + timedelta(minutes=25), {}, "batch-1", samples)
    for _ in range(3):
        assert apps.deliver("aggregate", rec).status_code == 204
    want += [(iso(t), m["temperature"], "batch-1") for t, m in samples]
    return sorted(want)


def test_each_reading_once_in_time_order_however_often_delivered(apps, recent) -> None:
    want = deliver_all(apps, recent)
    body = series(apps, "dev-raw", "temperature", recent, recent + timedelta(hours=1)).get_json()
    got = [(r["t"], r["value"], r["event_id"]) for r in body["readings"]]
    assert got == want
    assert body["step"] == "raw" and body["complete"] is True and body["next_cursor"] is None
    # Another metric of the same events, and the range's ends: [from, to).
    hum = series(apps, "dev-raw", "humidity", recent + timedelta(minutes=2, seconds=7),
                 recent + timedelta(minutes=6, seconds=7)).get_json()
    assert [r["event_id"] for r in hum["readings"]] == ["ev-1", "ev-2"]


def test_pages_and_cursors_cover_every_reading_exactly_once(apps, recent) -> None:
    want = deliver_all(apps, recent)
    seen, cursor, pages = [], None, 0
    while True:
        page = series(apps, "dev-raw", "temperature", recent, recent + timedelta(hours=1),
                      "&limit=4" + (f"&cursor={cursor}" if cursor else "")).get_json()
        seen += [(r["t"], r["value"], r["event_id"]) for r in page["readings"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == want and pages == -(-len(want) // 4)


def test_csv_holds_the_same_readings(apps, recent) -> None:
    want = deliver_all(apps, recent)
    answer = series(apps, "dev-raw", "temperature", recent, recent + timedelta(hours=1),
                    "&format=csv")
    assert answer.status_code == 200 and answer.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(answer.get_data(as_text=True))))
    assert rows[0] == ["device_id", "metric", "t", "value", "event_id"]
    assert [(r[2], float(r[3]), r[4]) for r in rows[1:]] == want


@pytest.mark.parametrize(("extra", "problem"), [
    ("&cursor=abc", "cursor"),
    ("&cursor=MjAyNi0xMi0wNlQxMDowMHwkbmU", "cursor"),
    ("&limit=0", "limit"),
    (f"&limit={raw.MAX_LIMIT + 1}", "limit"),
    ("&limit=1x", "limit"),
])
def test_bad_paging_is_a_400_naming_it(apps, recent, extra, problem) -> None:
    answer = series(apps, "dev-raw", "temperature", recent, recent + timedelta(hours=1), extra)
    assert answer.status_code == 400 and problem in answer.get_json()["message"]


def test_paging_parameters_belong_to_raw_only(apps, recent) -> None:
    answer = apps.query.get(f"/devices/d/series?metric=temperature&step=1m&limit=5"
                            f"&from={iso(recent)}")
    assert answer.status_code == 400 and "step=raw" in answer.get_json()["message"]


def test_readings_older_than_the_retention_are_neither_kept_nor_answered(apps, runtime,
                                                                         recent) -> None:
    old = datetime.now(UTC) - timedelta(hours=50)
    assert apps.deliver("aggregate", record("dev-old", old, {"temperature": 1.0},
                                            "old-1")).status_code == 204
    assert runtime.store.collection(RAW_READINGS).count_documents({}) == 0
    body = series(apps, "dev-old", "temperature", old - timedelta(hours=1),
                  datetime.now(UTC)).get_json()
    assert body["readings"] == []
    assert body["kept_from"] > iso(old)  # says why: the window starts after that reading


def test_turned_off_nothing_is_written_and_the_step_says_so(monkeypatch, recent) -> None:
    from functions_framework import create_app

    from iot_telemetry.runtime import Runtime, set_runtime
    from iot_telemetry.settings import Settings
    from tests.conftest import REPO

    reset_embedded()
    monkeypatch.setenv("MONGO_URL", "memory://")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "memory://")
    monkeypatch.setenv("RAW_RETENTION_HOURS", "0")
    rt = Runtime(Settings.from_environ())
    set_runtime(rt)
    calls: list[str] = []
    bulk = type(rt.store).bulk
    monkeypatch.setattr(type(rt.store), "bulk", lambda self, name, *a, **k: (
        calls.append(name), bulk(self, name, *a, **k))[1])
    rt.rollups.apply(event_of("dev-off", recent, {"temperature": 1.0}, "off-1"))
    assert RAW_READINGS not in calls
    assert rt.store.collection(RAW_READINGS).count_documents({}) == 0
    query = create_app("query", str(REPO / "functions" / "query.py"), "http").test_client()
    answer = query.get(f"/devices/dev-off/series?metric=temperature&step=raw&from={iso(recent)}")
    assert answer.status_code == 400 and "RAW_RETENTION_HOURS" in answer.get_json()["message"]


def test_the_setting_is_checked_at_start() -> None:
    from iot_telemetry.settings import ConfigError

    for bad in ("-1", "two"):
        with pytest.raises(ConfigError, match="RAW_RETENTION_HOURS"):
            make_runtime(RAW_RETENTION_HOURS=bad)
    assert make_runtime(RAW_RETENTION_HOURS="0").retention.raw is None
    assert make_runtime(RAW_RETENTION_HOURS="6").retention.raw == timedelta(hours=6)


# --- bounded documents --------------------------------------------------------------------

def _window_document(events: int, metrics: int, start: datetime) -> tuple[dict, int]:
    """The document `events` single-reading events of `metrics` metrics make in one window
    (every update's `$set` applied), and its `b`."""
    doc: dict = {"_id": raw.window_id("dev-full", start), "device_id": "dev-full", "t": start,
                 "exp": start, "b": 0, "r": {}, "e": {}}
    step = raw.WINDOW / events
    for i in range(events):
        ev = event_of("dev-full", start + i * step, {f"m{k}": 20.0 + k + i / 7
                                                    for k in range(metrics)},
                      f"6f1c2a9e-0b7d-4c51-9a3e-{i:012d}")
        [write] = raw.updates(0, ev, event_hash(ev.key), timedelta(hours=48), start)
        doc["b"] += write.update.update["$inc"]["b"]
        for path, value in write.update.update["$set"].items():
            top, name, *rest = path.split(".")
            doc[top].setdefault(name, {}) if rest else None
            if rest:
                doc[top][name][rest[0]] = value
            else:
                doc[top][name] = value
    return doc, doc["b"]


def test_a_window_at_the_rate_limit_stays_well_under_the_cap(recent) -> None:
    """50 events/s (the default per-device rate limit) of three metrics for ten minutes:
    the stored size is what `b` says or less, and under MAX_BYTES, so nothing is dropped."""
    doc, counted = _window_document(50 * 600, 3, recent)
    size = len(bson.encode(doc))
    assert size <= counted < raw.MAX_BYTES, (size, counted)
    # One event a second, the usual fleet: under 100 KiB.
    small, _ = _window_document(600, 3, recent)
    assert len(bson.encode(small)) < 100 * 1024


def test_past_the_cap_readings_are_dropped_counted_and_the_read_says_incomplete(
        runtime, recent, monkeypatch) -> None:
    monkeypatch.setattr(raw, "MAX_BYTES", 600)
    writer = RollupWriter(runtime.store)
    before = RAW_DROPPED._value.get()
    for i in range(12):
        assert writer.apply(event_of("dev-cap", recent + timedelta(seconds=i),
                                     {"a": float(i), "b": 1.0}, f"cap-{i}"))
    doc = runtime.store.collection(RAW_READINGS).find_one({})
    kept = len(doc["r"]["a"])
    assert 0 < kept < 12 and doc["b"] < 600 + 2 * 200
    assert RAW_DROPPED._value.get() - before == 2 * (12 - kept)
    page = raw.read(runtime.store, "dev-cap", "a", start=recent,
                    to=recent + timedelta(minutes=1), after=None, limit=100)
    assert len(page.readings) == kept and page.complete is False
    # The rollups counted every reading all the same.
    [minute] = runtime.store.collection("rollup_hours").find({})
    assert minute["tot"]["a"]["c"] == 12
