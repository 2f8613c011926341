"""No device can show up in, or disturb, another device's records (issue 20, "What must hold").

A property test: hypothesis draws two devices (ids with `:`, `.`, `-`, and the names of the
functions' own records), events with sources and ids holding `:`, `|`, `/`, `.`, unicode and
those names, some without `time` (settled on receipt), some copying the other device's
(`source`, `id`), resent copies stamped at other times. Everything goes through the real
aggregate and alert apps, then an offline sweep and a retention sweep. What query shows of
each device (latest values, rollups at every step, alerts) must be what it shows when that
device's events alone were sent, and the sweeps must answer without a server error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iot_telemetry import events, store
from iot_telemetry.runtime import set_runtime
from iot_telemetry.telemetry import DEVICE_ID
from tests.conftest import Apps, iso, make_runtime
from tests.unit.test_alerting import SinkServer
from tests.unit.test_rollup_exact import ingested

#: Names the functions use for their own records, and separators of the ids built from
#: device-controlled strings.
INTERNAL = ("sweep", "sweeps", "rules", "layout", "layout:keyed-by-device", "device-offline",
            "temperature-high", "temperature-critical", "sweep:device-offline", "progress")
DEVICE_NAMES = (*INTERNAL, "a", "a:b", "a.b", "a-b", "a:temperature-high", "a:1",
                "sweep:temperature-high:1", "x" * 128)
TEXT = st.text(alphabet=st.sampled_from(":|/.-_aZ09é€\u00e4\U0001f600 "), min_size=1,
               max_size=12)
RULES = [
    {"name": "temperature-high", "metric": "temperature", "condition": ">", "threshold": 30.0,
     "clear_threshold": 28.0, "severity": "warning", "for_count": 2},
    {"name": "temperature-critical", "metric": "temperature", "condition": ">=",
     "threshold": 40.0, "clear_threshold": 37.0, "severity": "critical"},
    {"name": "device-offline", "condition": "offline", "severity": "warning"},
]
T0 = datetime(2026, 1, 1, tzinfo=UTC)  # replaced per run by a time two hours ago


@dataclass(frozen=True)
class Sent:
    """One delivery: a device's event, stamped by ingest (`stamp`) or with its own time."""

    device: str
    source: str
    event_id: str
    minute: int
    value: float
    timeless: bool


device_ids = st.one_of(st.sampled_from(DEVICE_NAMES),
                       st.from_regex(DEVICE_ID, fullmatch=True).filter(lambda d: len(d) <= 24))
sources = st.one_of(st.sampled_from(INTERNAL), TEXT, TEXT.map(lambda t: f"/devices/{t}"))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[str, str, list[Sent]]:
    a = draw(device_ids)
    b = draw(device_ids.filter(lambda d: d != a))
    sent: list[Sent] = []
    for _ in range(draw(st.integers(1, 5))):
        owner = draw(st.sampled_from((a, b)))
        source = draw(st.one_of(sources, st.just(f"/devices/{owner}"),
                                st.just(f"/devices/{a if owner == b else b}")))
        sent.append(Sent(owner, source, draw(st.one_of(TEXT, st.sampled_from(INTERNAL))),
                         draw(st.integers(0, 90)), draw(st.sampled_from((20.0, 35.0, 45.0))),
                         draw(st.booleans())))
    # The other device copies (`source`, `id`) of events already drawn; the owner resends.
    for s in list(sent):
        if draw(st.booleans()):
            other = a if s.device == b else b
            sent.append(Sent(other, s.source, s.event_id, draw(st.integers(0, 90)),
                             draw(st.sampled_from((20.0, 35.0, 45.0))), draw(st.booleans())))
        if s.timeless and draw(st.booleans()):
            sent.append(Sent(s.device, s.source, s.event_id, draw(st.integers(0, 90)),
                             s.value, True))
    order = draw(st.permutations(range(len(sent))))
    return a, b, [sent[i] for i in order]


def _record(s: Sent, t0: datetime) -> events.KafkaRecord:
    at = t0 + timedelta(minutes=s.minute)
    attributes: dict[str, Any] = {
        "specversion": "1.0", "type": "iot.telemetry.v1", "source": s.source,
        "id": s.event_id, "subject": s.device, "datacontenttype": "application/json"}
    if not s.timeless:
        attributes["time"] = iso(at)
    return ingested(attributes, {"metrics": {"temperature": s.value}}, at)


def _tick(kind: str, tick_id: str, at: datetime) -> tuple[dict[str, str], bytes]:
    return events.to_http({"specversion": "1.0", "type": events.PING_TYPE, "id": tick_id,
                           "source": f"/apis/v1/namespaces/iot/pingsources/{kind}",
                           "time": iso(at), "datacontenttype": "application/json"},
                          {"sweep": kind})


def observed(sent: Sequence[Sent], devices: Sequence[str], sink: str, t0: datetime,
             fresh_store: Callable[[], dict[str, str]] = lambda: {},
             ) -> dict[str, Any]:
    """What query shows of each device after `sent` went through aggregate and alert, an
    offline sweep and a retention sweep, on a store of their own (the embedded one, or
    the settings `fresh_store` returns after emptying it)."""
    store.reset_embedded()
    set_runtime(make_runtime(K_SINK=sink, ALERT_RULES=json.dumps(RULES), **fresh_store()))
    apps = Apps()
    for s in sent:
        record = _record(s, t0)
        assert apps.deliver("aggregate", record).status_code == 204
        assert apps.deliver("alert", record).status_code in (200, 204)
    # Offline sweeps before and after the devices fall silent: the later ones read what
    # the earlier recorded of their progress.
    for kind, function, tick, at in (
            ("offline-sweep", "alert", "tick-0", timedelta(minutes=-1)),
            ("offline-sweep", "alert", "tick-1", timedelta(hours=3)),
            ("offline-sweep", "alert", "tick-2", timedelta(hours=3, minutes=1)),
            ("rollup-retention", "aggregate", "tick-1", timedelta(hours=3))):
        headers, body = _tick(kind, tick, t0 + at)
        response = apps.clients[function].post("/", data=body, headers=headers)
        assert response.status_code in (200, 204), (kind, tick, response.get_data())
    out: dict[str, Any] = {}
    for device in devices:
        view = apps.query.get(f"/devices/{device}")
        shown: dict[str, Any] = {"status": view.status_code}
        if view.status_code == 200:
            doc = view.get_json()
            shown["device"] = {k: doc[k] for k in ("metrics", "first_seen", "last_event_time",
                                                   "last_seen")}
            for step, span in (("1m", timedelta(hours=4)), ("1h", timedelta(days=1)),
                               ("1d", timedelta(days=1))):
                series = apps.query.get(
                    f"/devices/{device}/series?metric=temperature&step={step}"
                    f"&from={iso(t0 - span)}&to={iso(t0 + span)}")
                assert series.status_code == 200, series.get_json()
                shown[step] = series.get_json()["buckets"]
        alerts = apps.query.get(f"/alerts?device_id={device}&limit=100")
        assert alerts.status_code == 200
        # An offline alert's times follow the clock of the sweep; a threshold alert's the
        # readings'.
        shown["alerts"] = sorted(
            ({k: a.get(k) for k in ("id", "rule", "state", "count", "peak", "last_value",
                                    *(() if a["rule"] == "device-offline"
                                      else ("raised_at", "resolved_at")))}
             for a in alerts.get_json()["alerts"]), key=lambda a: a["id"])
        out[device] = shown
    return out


def check_isolation(scenario: tuple[str, str, list[Sent]],
                    fresh_store: Callable[[], dict[str, str]] = lambda: {}) -> None:
    """Each device of `scenario` shows the same sent with the other device as alone."""
    a, b, sent = scenario
    t0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    sink = SinkServer()
    try:
        together = observed(sent, (a, b), sink.url, t0, fresh_store)
        for device in (a, b):
            alone = observed([s for s in sent if s.device == device], (device,), sink.url, t0,
                             fresh_store)
            assert together[device] == alone[device], device
    finally:
        sink.server.shutdown()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scenarios())
def test_nothing_of_one_device_shows_up_in_or_disturbs_another(scenario) -> None:
    check_isolation(scenario)
