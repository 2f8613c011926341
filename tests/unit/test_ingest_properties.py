"""Bad input tried by machine: every request gets 202 or a 4xx with a reason, never a 5xx,
and nothing of a rejected request reaches Kafka."""

import json
import math
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iot_telemetry import events
from tests.conftest import Apps, iso

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)
EDGE_NUMBERS = st.sampled_from([0, -0.0, 1e308, -1e308, 1e300, 1e301, 2**63, -(2**63), 10**400,
                                5e-324, math.nan, math.inf, -math.inf, True, None, "1"])
METRIC_NAMES = st.one_of(st.from_regex(r"^[a-z][a-z0-9_]{0,63}$", fullmatch=True),
                         st.text(max_size=70))
DEVICE_IDS = st.one_of(st.from_regex(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$", fullmatch=True),
                       st.text(max_size=140))
NOW = datetime.now(UTC)
TIME_OFFSETS = st.sampled_from([
    timedelta(0), -timedelta(days=7) + timedelta(minutes=1), -timedelta(days=7, seconds=1),
    timedelta(minutes=5) - timedelta(seconds=1), timedelta(minutes=5, seconds=1),
    -timedelta(days=3650), timedelta(days=3650)])
TIMES = st.one_of(TIME_OFFSETS.map(lambda d: iso(NOW + d)), st.text(max_size=30),
                  st.sampled_from(["2026-11-26T10:00:00", "2026-13-01T00:00:00Z", "now", ""]))


@st.composite
def events_(draw):
    attributes = {"specversion": "1.0", "type": "iot.telemetry.v1",
                  "source": draw(st.sampled_from(["/devices/a", "", "x" * 2000])),
                  "id": draw(st.text(min_size=0, max_size=300)),
                  "subject": draw(DEVICE_IDS), "time": draw(TIMES)}
    for key in draw(st.sets(st.sampled_from(list(attributes)), max_size=2)):
        attributes.pop(key)
    metrics = draw(st.dictionaries(METRIC_NAMES, st.one_of(EDGE_NUMBERS, JSON_VALUES),
                                   max_size=5))
    data = draw(st.sampled_from(["metrics", "samples", "both", "junk"]))
    body: object = {"metrics": metrics}
    if data in ("samples", "both"):
        sample = st.fixed_dictionaries({"time": TIMES, "metrics": st.just(metrics)})
        samples = draw(st.lists(sample, max_size=3))
        body = {"samples": samples} if data == "samples" else {**body, "samples": samples}
    elif data == "junk":
        body = draw(JSON_VALUES)
    return attributes, body


def check(response, sink, before):
    assert response.status_code == 202 or 400 <= response.status_code < 500, response.data
    if response.status_code != 202:
        assert response.get_json()["message"]
        assert len(sink.records) == before
    else:
        assert len(sink.records) > before


FIXTURES_OK = [HealthCheck.function_scoped_fixture]  # apps and sink are reset by check()


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES_OK)
@given(batch=st.lists(events_(), min_size=1, max_size=4),
       mode=st.sampled_from(["binary", "structured", "batch"]))
def test_any_event_gets_an_answer_and_rejects_store_nothing(apps: Apps, sink, batch, mode) -> None:
    before = len(sink.records)
    if mode == "batch":
        body = json.dumps([{**a, "data": d} for a, d in batch], default=str)
        response = apps.ingest.post("/", data=body, headers={"Content-Type": events.BATCH})
    elif mode == "structured":
        attributes, data = batch[0]
        body = json.dumps({**attributes, "data": data}, default=str)
        response = apps.ingest.post("/", data=body, headers={"Content-Type": events.STRUCTURED})
    else:
        attributes, data = batch[0]
        # HTTP cannot carry CR/LF in a header value, so neither does the test.
        headers = {f"ce-{k}": str(v).replace("\r", "").replace("\n", "")
                   .encode("utf-8", "replace").decode("latin-1", "replace")
                   for k, v in attributes.items()}
        headers["Content-Type"] = "application/json"
        response = apps.ingest.post("/", data=json.dumps(data, default=str), headers=headers)
    check(response, sink, before)


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURES_OK)
@given(body=st.binary(max_size=300), ctype=st.sampled_from([
    "application/json", events.STRUCTURED, events.BATCH, "text/plain", "", "application/json; x"]))
def test_arbitrary_bytes_never_crash_ingest(apps: Apps, sink, body, ctype) -> None:
    before = len(sink.records)
    headers = {"Content-Type": ctype, "ce-specversion": "1.0", "ce-type": "iot.telemetry.v1",
               "ce-source": "/d", "ce-id": "1", "ce-subject": "d"}
    check(apps.ingest.post("/", data=body, headers=headers), sink, before)


@settings(max_examples=20, deadline=None, suppress_health_check=FIXTURES_OK)
@given(size=st.sampled_from([1, 499, 500, 501, 1000]))
def test_batch_sizes_at_and_past_the_limit(apps: Apps, sink, size) -> None:
    before = len(sink.records)
    now = datetime.now(UTC)
    batch = [{"specversion": "1.0", "type": "iot.telemetry.v1", "source": "/d", "id": f"{i}",
              "subject": "d", "time": iso(now), "data": {"metrics": {"t": 1}}}
             for i in range(size)]
    response = apps.ingest.post("/", data=json.dumps(batch),
                                headers={"Content-Type": events.BATCH})
    check(response, sink, before)
    assert (response.status_code == 202) == (size <= 500)
