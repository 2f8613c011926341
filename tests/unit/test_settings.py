import json

import pytest

from iot_telemetry.rules import default_rules
from iot_telemetry.settings import ConfigError, Settings


def test_defaults_follow_the_seed() -> None:
    s = Settings.from_environ({})
    assert s.kafka_topic == "iot.telemetry"
    assert s.mongo_url == "mongodb://localhost:27017"
    assert s.alert_rules == default_rules()
    assert {r.metric for r in s.rules} == {"temperature", "humidity"}


@pytest.mark.parametrize(("name", "value"), [
    ("INGEST_MAX_BODY_BYTES", "lots"),
    ("INGEST_MAX_BODY_BYTES", "0"),
    ("KAFKA_SEND_TIMEOUT_SECONDS", "-1"),
    ("LOG_LEVEL", "LOUD"),
    ("MONGO_URL", "postgres://x"),
    ("KAFKA_SECURITY_PROTOCOL", "TLS"),
    ("ALERT_RULES", "{not json"),
    ("ALERT_RULES", '[{"name": "x", "metric": "t", "condition": "~", "threshold": 1}]'),
    ("ALERT_RULES_FILE", "/nonexistent/rules.json"),
])
def test_a_bad_variable_fails_with_its_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_environ({name: value})
    assert info.value.variable == name
    assert name in str(info.value)


def test_rules_from_a_mounted_file(tmp_path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps([{"name": "co2-high", "metric": "co2", "condition": ">",
                                 "threshold": 1000, "clear_threshold": 800,
                                 "severity": "critical", "for_seconds": 60}]))
    s = Settings.from_environ({"ALERT_RULES_FILE": str(path)})
    assert [r.name for r in s.rules] == ["co2-high"]
    assert s.rules[0].for_seconds == 60


def test_an_empty_rule_list_means_no_rules() -> None:
    assert Settings.from_environ({"ALERT_RULES": "[]"}).rules == ()


def test_rule_problems_are_all_listed() -> None:
    bad = [{"name": "Bad Name", "metric": "Temp", "condition": ">", "threshold": 10,
            "clear_threshold": 12, "severity": "fatal", "extra": 1}]
    with pytest.raises(ConfigError) as info:
        Settings.from_environ({"ALERT_RULES": json.dumps(bad)})
    message = str(info.value)
    for part in ("name", "metric", "severity", "clear_threshold", "extra"):
        assert part in message


def test_every_variable_is_documented() -> None:
    rows = Settings.variables()
    assert len({name for name, _, _ in rows}) == len(rows)
    assert all(doc for _, _, doc in rows)
