"""Every id and name pattern matches the whole value: `$` alone also matches before a final
newline, so `dev-1\\n` once passed for `dev-1`-shaped and was stored as another device."""

import json
from datetime import UTC, datetime

import pytest

from iot_telemetry import devices, events, query
from iot_telemetry.errors import BadRequest, Unauthorized
from iot_telemetry.rules import parse_rule
from iot_telemetry.telemetry import validate
from tests.conftest import telemetry


def reading(**change):
    attributes, data = telemetry("dev-1", datetime.now(UTC), {"temperature": 1.0}, "n-1")
    return {**attributes, **change}, data


def test_a_subject_or_metric_with_a_trailing_newline_is_no_device_or_metric() -> None:
    now = datetime.now(UTC)
    problems = validate(events.RawEvent(*reading(subject="dev-1\n")), now, None)
    assert isinstance(problems, list) and problems[0].startswith("subject:")
    attributes, _ = reading()
    problems = validate(events.RawEvent(attributes, {"metrics": {"temperature\n": 1}}), now, None)
    assert isinstance(problems, list) and "temperature\n" in problems[0]


def test_ingest_refuses_them_in_every_mode(apps, sink) -> None:
    attributes, data = reading(subject="dev-1\n")
    response = apps.ingest.post("/", data=json.dumps({**attributes, "data": data}),
                                headers={"Content-Type": events.STRUCTURED})
    assert response.status_code == 400
    headers, body = events.to_http(*reading())
    response = apps.ingest.post("/", data=body, headers={**headers, "ce-subject": "dev-2%0A"})
    assert response.status_code == 400
    response = apps.ingest.post("/", data=b'{"metrics": {"temperature\\n": 1}}', headers=headers)
    assert response.status_code == 400
    assert sink.records == []


@pytest.mark.parametrize("url", [
    "/devices/dev-1/series?metric=temperature%0A",
    "/devices?cursor=dev-1%0A",
    "/devices?prefix=dev%0A",
    "/alerts?device_id=dev-1%0A",
])
def test_query_parameters_and_path_ids_with_a_trailing_newline_are_400(apps, url) -> None:
    response = apps.query.get(url)
    assert response.status_code == 400, (response.status_code, response.data[:200])


def test_path_ids_with_a_trailing_newline_are_400() -> None:
    # Over HTTP the framework's router already answers 404 for a path with a newline.
    with pytest.raises(BadRequest):
        query._device_id("dev-1\n")
    with pytest.raises(BadRequest):
        query._alert_id("dev-1:rule:1\n")


def test_an_actor_with_a_trailing_newline_is_400(apps) -> None:
    response = apps.query.post("/alerts/dev-1:rule:1/ack", data=json.dumps({"by": "ann\n"}),
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.get_json()["message"].startswith("by:")


@pytest.mark.parametrize(("field", "value"), [("name", "high\n"), ("metric", "temperature\n")])
def test_a_rule_name_or_metric_with_a_trailing_newline_is_refused(field, value) -> None:
    rule = {"name": "high", "metric": "temperature", "condition": ">", "threshold": 1,
            field: value}
    with pytest.raises(ValueError, match=f"rule.{field}: must match"):
        parse_rule(rule)


def test_device_registry_and_tokens_refuse_a_trailing_newline(runtime) -> None:
    with pytest.raises(BadRequest):
        devices.Registry(runtime.store).add("dev-1\n")
    with pytest.raises(Unauthorized):
        devices.split_token("dev-1\n.secret")
