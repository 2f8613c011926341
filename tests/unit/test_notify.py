"""notify: channels, at-least-once delivery per channel, floods, acknowledgement events;
against a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections import defaultdict, deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import flask
import pytest

from iot_telemetry import notify, store
from iot_telemetry.alertevents import alert_event
from iot_telemetry.channels import SIGNATURE_HEADER, parse_channels, verify
from iot_telemetry.events import PING_TYPE, STRUCTURED, to_http
from iot_telemetry.observability import NOTIFY_FOLDED, metrics_body
from iot_telemetry.runtime import Runtime, set_runtime
from iot_telemetry.settings import ConfigError, Settings
from tests.conftest import make_runtime

T0 = datetime(2026, 12, 7, 10, 42, 5, tzinfo=UTC)


class Receiver:
    """A webhook receiver: answers each path with the statuses scripted for it (then 200),
    and records every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: dict[str, deque[int]] = defaultdict(deque)
        self.delay = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.delay:
                    threading.Event().wait(receiver.delay)
                queue = receiver.script[self.path]
                status = queue.popleft() if queue else 200
                receiver.requests.append({
                    "path": self.path, "status": status, "body": body,
                    "headers": {k.lower(): v for k, v in self.headers.items()}})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_port}"

    def taken(self, path: str) -> list[dict[str, Any]]:
        """The requests to `path` answered 2xx."""
        return [r for r in self.requests if r["path"] == path and r["status"] < 300]

    def to(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


class Clock:
    def __init__(self, at: datetime = T0) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


class Notify:
    """The notify handler behind a real Flask app, with a clock the test moves."""

    def __init__(self, rt: Runtime, clock: Clock) -> None:
        self.rt, self.clock = rt, clock
        app = flask.Flask("notify-test")

        @app.route("/", methods=["POST"])
        def root() -> flask.Response:
            return notify.handle(flask.request, rt, clock)

        self.client = app.test_client()

    def deliver(self, attributes: dict[str, Any], data: dict[str, Any]) -> Any:
        headers, body = to_http(attributes, data)
        return self.client.post("/", data=body, headers=headers)

    def tick(self, at: datetime) -> Any:
        self.clock.at = at
        stamp = at.isoformat().replace("+00:00", "Z")
        return self.client.post("/", data=b'{"sweep": "notify-summaries"}', headers={
            "ce-specversion": "1.0", "ce-type": PING_TYPE, "ce-id": f"tick-{stamp}",
            "ce-source": "/apis/v1/namespaces/iot/pingsources/notify-summaries",
            "ce-time": stamp, "Content-Type": "application/json"})


def channels_json(receiver: Receiver, *channels: dict[str, Any]) -> str:
    return json.dumps([{"url": f"{receiver.base}/{c['name']}", **c} for c in channels])


def setup(receiver: Receiver, *channels: dict[str, Any], **env: str) -> Notify:
    store.reset_embedded()
    rt = make_runtime(NOTIFY_CHANNELS=channels_json(receiver, *channels), **env)
    set_runtime(rt)
    return Notify(rt, Clock())


def alert(n: int | str = 1, state: str = "raised", device: str = "dev-1",
          severity: str = "warning", rule: str = "temperature-high",
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    raised = "2026-12-07T10:42:00Z"
    doc = {"id": f"{device}:{rule}:{n}", "device_id": device, "metric": "temperature",
           "rule": rule, "severity": severity, "condition": ">", "threshold": 30.0,
           "clear_threshold": 28.0, "state": "open", "raised_at": raised, "last_value": 31.5,
           "peak": 33.0, "acknowledged_at": None, "acknowledged_by": None,
           "resolved_at": None, "resolved_value": None, "resolved_reason": None}
    if state == "acknowledged":
        doc.update(state="acknowledged", acknowledged_at="2026-12-07T10:43:00Z",
                   acknowledged_by="ana")
    if state == "resolved":
        doc.update(state="resolved", resolved_at="2026-12-07T10:44:00Z", resolved_value=27.0)
    return alert_event({"transition": state, "alert": doc})


def bodies(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [json.loads(r["body"]) for r in requests]


# --- channels ------------------------------------------------------------------------------

def test_a_bad_channel_fails_at_start_naming_the_channel_and_field() -> None:
    bad = json.dumps([{"name": "ops", "url": "ftp://x", "format": "json"},
                      {"name": "chat", "url": "https://hooks.example/x", "format": "teams",
                       "severity": "high", "lifecycle": ["raised", "closed"]},
                      {"name": "pager", "url_env": "PAGER_URL"}])
    with pytest.raises(ConfigError) as err:
        Settings.from_environ({"NOTIFY_CHANNELS": bad})
    text = str(err.value)
    assert text.startswith("NOTIFY_CHANNELS: ")
    for part in ("channel 'ops'.url: must be an http", "channel 'chat'.format",
                 "channel 'chat'.severity", "channel 'chat'.lifecycle",
                 "channel 'pager'.url_env: variable PAGER_URL is not set"):
        assert part in text


def test_urls_and_secrets_come_from_the_variables_a_channel_names() -> None:
    settings = Settings.from_environ({
        "NOTIFY_CHANNELS": json.dumps([{"name": "ops", "url_env": "OPS_URL",
                                        "secret_env": "OPS_SECRET", "scope": {"prefix": "gh-"},
                                        "severity": "critical", "lifecycle": ["raised"]}]),
        "OPS_URL": "https://hooks.example/ops", "OPS_SECRET": "s3cret"})
    [ops] = settings.notify_channels
    assert (ops.url, ops.secret, ops.scope.prefix, ops.severity, ops.lifecycle) == (
        "https://hooks.example/ops", "s3cret", "gh-", "critical", ("raised",))
    assert "s3cret" not in repr(ops) and "hooks.example" not in repr(ops)


def test_duplicate_names_unknown_fields_and_unsigned_formats_are_refused() -> None:
    with pytest.raises(ValueError) as err:
        parse_channels([{"name": "a", "url": "http://x/"}, {"name": "a", "url": "http://y/",
                                                            "format": "slack", "secret": "s",
                                                            "retries": 3}], {})
    text = str(err.value)
    assert "used twice" in text and "retries: unknown field" in text
    assert "only json channels are signed" in text


# --- delivery ------------------------------------------------------------------------------

def test_the_json_format_is_the_alert_event_in_structured_mode_with_its_idempotency_key(
        receiver: Receiver) -> None:
    n = setup(receiver, {"name": "ops", "format": "json"})
    attributes, data = alert(1)
    assert n.deliver(attributes, data).status_code == 204
    [req] = receiver.taken("/ops")
    assert req["headers"]["content-type"] == STRUCTURED
    assert req["headers"]["idempotency-key"] == attributes["id"]
    assert attributes["id"] == "dev-1:temperature-high:1/raised"
    body = json.loads(req["body"])
    assert {k: body[k] for k in ("specversion", "type", "id", "subject")} == {
        "specversion": "1.0", "type": "iot.alert.v1", "id": attributes["id"], "subject": "dev-1"}
    assert body["data"]["state"] == "raised" and body["data"]["rule"] == "temperature-high"
    assert SIGNATURE_HEADER.lower() not in req["headers"]  # no secret: not signed


def test_a_signed_channel_signs_timestamp_and_body_with_hmac_sha256(receiver: Receiver) -> None:
    n = setup(receiver, {"name": "ops", "secret": "s3cret"})
    assert n.deliver(*alert(1)).status_code == 204
    [req] = receiver.taken("/ops")
    header = req["headers"][SIGNATURE_HEADER.lower()]
    # What the README tells a receiver to do, written out independently of channels.py:
    parts = dict(p.split("=", 1) for p in header.split(","))
    expected = hmac.new(b"s3cret", parts["t"].encode() + b"." + req["body"],
                        hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected)
    now = int(parts["t"])
    assert verify("s3cret", header, req["body"], now)
    assert not verify("other", header, req["body"], now)
    assert not verify("s3cret", header, req["body"] + b" ", now)
    assert not verify("s3cret", header, req["body"], now + 301)  # replayed too late


def test_the_readmes_verification_code_accepts_our_signature_and_nothing_else(
        receiver: Receiver) -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    [code] = re.findall(r"```python\n(.*?)```", readme[readme.index("## Notifications"):],
                        re.DOTALL)[:1]
    scope: dict[str, Any] = {}
    exec(code, scope)  # the README's own example
    n = setup(receiver, {"name": "ops", "secret": "s3cret"})
    n.deliver(*alert(1))
    [req] = receiver.taken("/ops")
    header = req["headers"][SIGNATURE_HEADER.lower()]
    assert scope["verified"](b"s3cret", header, req["body"])
    assert not scope["verified"](b"s3cret", header, req["body"].replace(b"31.5", b"99.9"))
    assert not scope["verified"](b"other", header, req["body"])
    stale = "t=1," + header.split(",", 1)[1]
    assert not scope["verified"](b"s3cret", stale, req["body"])


def test_slack_gets_text_and_blocks_with_device_rule_value_threshold_and_a_link(
        receiver: Receiver) -> None:
    n = setup(receiver, {"name": "chat", "format": "slack"},
              DASHBOARD_URL="https://iot.example.com/")
    assert n.deliver(*alert(1, device="gh-7")).status_code == 204
    [body] = bodies(receiver.taken("/chat"))
    assert body["text"].startswith("WARNING alert raised: temperature-high on gh-7")
    fields = " ".join(f["text"] for f in body["blocks"][1]["fields"])
    for part in ("*Device*\ngh-7", "*Rule*\ntemperature-high", "*Severity*\nwarning",
                 "*Value*\n31.5 (temperature)", "*Threshold*\n&gt; 30.0"):
        assert part in fields
    assert "https://iot.example.com/#/devices/gh-7" in json.dumps(body["blocks"][2])


def test_scope_severity_and_lifecycle_filters_hold(receiver: Receiver) -> None:
    n = setup(receiver, {"name": "all"},
              {"name": "gh", "scope": {"prefix": "gh-"}},
              {"name": "critical", "severity": "critical"},
              {"name": "raises", "lifecycle": ["raised"]},
              {"name": "located", "scope": {"metadata": {"location": "north"}}})
    n.rt.registry.add("gh-1", "greenhouse 1", {"location": "north"})
    for attributes, data in (alert(1, device="gh-1"), alert(2, device="dev-2"),
                             alert(3, device="dev-3", severity="critical"),
                             alert(1, "resolved", device="gh-1")):
        assert n.deliver(attributes, data).status_code == 204

    def got(path: str) -> list[str]:
        return [b["id"] for b in bodies(receiver.taken(path))]

    assert got("/all") == ["gh-1:temperature-high:1/raised", "dev-2:temperature-high:2/raised",
                           "dev-3:temperature-high:3/raised", "gh-1:temperature-high:1/resolved"]
    assert got("/gh") == ["gh-1:temperature-high:1/raised", "gh-1:temperature-high:1/resolved"]
    assert got("/critical") == ["dev-3:temperature-high:3/raised"]
    assert got("/raises") == got("/all")[:3]
    assert got("/located") == got("/gh")


def test_a_503_then_200_is_retried_with_the_same_idempotency_key_and_only_to_that_channel(
        receiver: Receiver) -> None:
    n = setup(receiver, {"name": "ops"}, {"name": "chat", "format": "slack"})
    receiver.script["/ops"].extend([503, 429])
    attributes, data = alert(1)
    first = n.deliver(attributes, data)
    assert first.status_code == 503 and "channel ops: HTTP 503" in first.get_json()["message"]
    assert "127.0.0.1" not in first.get_json()["message"]  # no URL in answers
    assert n.deliver(attributes, data).status_code == 503  # 429: retried too
    assert n.deliver(attributes, data).status_code == 204
    assert [r["status"] for r in receiver.to("/ops")] == [503, 429, 200]
    assert {r["headers"]["idempotency-key"] for r in receiver.to("/ops")} == {attributes["id"]}
    assert len(receiver.to("/chat")) == 1  # took it the first time; never sent again
    assert n.deliver(attributes, data).status_code == 204  # a redelivery sends nothing
    assert len(receiver.requests) == 4


def test_a_channel_that_does_not_answer_in_time_is_retried(receiver: Receiver) -> None:
    n = setup(receiver, {"name": "ops"}, NOTIFY_TIMEOUT_SECONDS="0.2")
    receiver.delay = 0.5
    assert n.deliver(*alert(1)).status_code == 503
    receiver.delay = 0
    assert n.deliver(*alert(1)).status_code == 204


def test_a_400_is_dead_lettered_once_the_other_channels_have_it(receiver: Receiver) -> None:
    n = setup(receiver, {"name": "broken"}, {"name": "ops"})
    receiver.script["/broken"].append(400)
    receiver.script["/ops"].append(502)
    attributes, data = alert(1)
    # ops must get its retries first: answering 400 now would park the event without them
    assert n.deliver(attributes, data).status_code == 503
    refused = n.deliver(attributes, data)
    assert refused.status_code == 400
    assert refused.get_json()["problems"] == [
        "channel broken refused the notification (HTTP 400); not retried"]
    # A redelivery answers the same, and sends to neither again.
    assert n.deliver(attributes, data).status_code == 400
    assert [r["status"] for r in receiver.to("/broken")] == [400]
    assert [r["status"] for r in receiver.to("/ops")] == [502, 200]
    text = metrics_body("notify")[0].decode()
    assert 'iot_notify_failed_total{channel="broken",kind="permanent"}' in text
    assert 'iot_notify_failed_total{channel="ops",kind="retried"}' in text
    assert "127.0.0.1" not in text


def test_two_instances_delivering_one_event_at_once_send_it_once(receiver: Receiver) -> None:
    n = setup(receiver, {"name": "ops"})
    receiver.delay = 0.3
    attributes, data = alert(1)
    answers: list[int] = []
    other = Notify(n.rt, n.clock)  # a second app on the same store

    def run(app: Notify) -> None:
        answers.append(app.deliver(attributes, data).status_code)

    threads = [threading.Thread(target=run, args=(a,)) for a in (n, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [204, 503]  # the second is retried later, and finds it sent
    assert len(receiver.requests) == 1
    assert n.deliver(attributes, data).status_code == 204
    assert len(receiver.requests) == 1


def test_a_store_outage_before_sending_frees_the_delivery_for_the_retry(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    from iot_telemetry.errors import DependencyUnavailable
    from iot_telemetry.notifications import NotificationBook

    n = setup(receiver, {"name": "ops"})
    take_slot = NotificationBook.take_slot
    calls = {"n": 0}

    def failing_once(self: NotificationBook, *args: Any) -> bool:
        calls["n"] += 1
        if calls["n"] == 1:
            raise DependencyUnavailable("store unreachable")
        return take_slot(self, *args)

    monkeypatch.setattr(NotificationBook, "take_slot", failing_once)
    assert n.deliver(*alert(1)).status_code == 503
    # The Trigger's first retry comes within a second, long before the lease would end.
    assert n.deliver(*alert(1)).status_code == 204
    assert len(receiver.taken("/ops")) == 1


def test_a_bad_alert_event_is_refused_with_every_problem() -> None:
    store.reset_embedded()
    rt = make_runtime()
    answer = Notify(rt, Clock()).deliver(
        {"specversion": "1.0", "type": "iot.telemetry.v1", "id": "x", "source": "/s"},
        {"id": "a", "state": "open"})
    assert answer.status_code == 400
    problems = " ".join(answer.get_json()["problems"])
    assert "type: notify takes iot.alert.v1" in problems
    assert "data.device_id: required" in problems and "data.state: must be one of" in problems


# --- floods ---------------------------------------------------------------------------------

def test_a_flood_is_folded_into_one_summary_per_minute_exactly_under_redelivery(
        receiver: Receiver) -> None:
    n = setup(receiver, {"name": "ops"}, {"name": "chat", "format": "slack"},
              NOTIFY_MAX_PER_MINUTE="3")
    # The counter is the process's: other tests (and other runs on channel "ops") count too.
    folded_before = NOTIFY_FOLDED.labels("ops")._value.get()
    events = [alert(i, device=f"dev-{i:02d}") for i in range(10)]
    events.append(alert(0, "resolved", device="dev-00"))
    for attributes, data in events:
        n.clock.at += timedelta(seconds=1)
        assert n.deliver(attributes, data).status_code == 204
    for attributes, data in events:  # every one redelivered: nothing more is sent or counted
        assert n.deliver(attributes, data).status_code == 204
    assert [b["id"] for b in bodies(receiver.taken("/ops"))] == [e[0]["id"] for e in events[:3]]
    assert len(receiver.taken("/chat")) == 3
    # Still inside the minute: no summary yet.
    assert n.tick(T0 + timedelta(seconds=30)).status_code == 204
    assert len(receiver.requests) == 6
    assert n.tick(datetime(2026, 12, 7, 10, 43, tzinfo=UTC)).status_code == 204
    [summary] = bodies(receiver.taken("/ops"))[3:]
    assert summary["type"] == "iot.alert.summary.v1"
    assert summary["data"]["count"] == 8
    assert summary["data"]["by_transition"] == {"raised": 7, "resolved": 1}
    assert summary["data"]["text"].startswith(
        "8 more alerts in the minute 10:42 UTC (7 raised, 1 resolved): dev-03 "
        "temperature-high (warning, raised), dev-04")
    assert summary["data"]["text"].endswith(" and 3 more")
    assert summary["id"] == "summary/ops/2026-12-07T10:42:00Z/1"
    [chat] = bodies(receiver.taken("/chat"))[3:]
    assert chat["text"].startswith("8 more alerts in the minute 10:42 UTC")
    # A redelivered tick, a later one, and the events once more: nothing is sent again.
    n.tick(datetime(2026, 12, 7, 10, 43, tzinfo=UTC))
    n.tick(datetime(2026, 12, 7, 10, 44, tzinfo=UTC))
    for attributes, data in events:
        n.deliver(attributes, data)
    n.tick(datetime(2026, 12, 7, 10, 45, tzinfo=UTC))
    assert len(receiver.requests) == 8
    assert NOTIFY_FOLDED.labels("ops")._value.get() - folded_before == 8
    assert 'iot_notify_folded_total{channel="ops"}' in metrics_body("notify")[0].decode()


def test_a_summary_the_channel_did_not_take_is_sent_again_with_the_same_key(
        receiver: Receiver) -> None:
    n = setup(receiver, {"name": "ops"}, NOTIFY_MAX_PER_MINUTE="1")
    for i in range(3):
        n.deliver(*alert(i))
    receiver.script["/ops"].append(503)
    assert n.tick(datetime(2026, 12, 7, 10, 43, tzinfo=UTC)).status_code == 503
    assert n.tick(datetime(2026, 12, 7, 10, 43, 0, 500000, tzinfo=UTC)).status_code == 204
    first, second = receiver.to("/ops")[1:]
    assert first["headers"]["idempotency-key"] == second["headers"]["idempotency-key"]
    assert json.loads(second["body"])["data"]["count"] == 2


def test_a_fold_landing_after_its_minutes_summary_gets_a_summary_of_its_own(
        receiver: Receiver) -> None:
    n = setup(receiver, {"name": "ops"}, NOTIFY_MAX_PER_MINUTE="1")
    n.deliver(*alert(0))
    n.deliver(*alert(1))
    n.tick(datetime(2026, 12, 7, 10, 43, tzinfo=UTC))
    # A delivery that stalled across the minute folds into 10:42 after its summary went out.
    book = notify._book(n.rt)
    late_attributes, late = alert(2)
    claim = book.claim("ops", late_attributes, late, T0)
    assert not book.take_slot("ops", claim.doc["_id"], claim.doc["minute"])
    book.fold(claim.doc["_id"], "ops", T0)
    n.tick(datetime(2026, 12, 7, 10, 44, tzinfo=UTC))
    summaries = bodies(receiver.taken("/ops"))[1:]
    assert [(s["id"], s["data"]["count"]) for s in summaries] == [
        ("summary/ops/2026-12-07T10:42:00Z/1", 1), ("summary/ops/2026-12-07T10:42:00Z/2", 1)]


# --- acknowledgements ----------------------------------------------------------------------

def test_an_acknowledgement_posts_its_alert_event_before_acknowledging(
        receiver: Receiver) -> None:
    from iot_telemetry import query
    from iot_telemetry.store import ALERTS

    store.reset_embedded()
    sink = f"{receiver.base}/broker"
    rt = make_runtime(K_SINK=sink)
    set_runtime(rt)
    rt.store.collection(ALERTS).insert_one({
        "_id": "dev-1:temperature-high:1", "device_id": "dev-1", "rule": "temperature-high",
        "metric": "temperature", "severity": "warning", "state": "open",
        "raised_at": T0, "threshold": 30.0})
    app = flask.Flask("query-test")

    @app.route("/<path:path>", methods=["GET", "POST"])
    def route(path: str) -> flask.Response:
        return query.handle(flask.request, rt)

    client = app.test_client()
    receiver.script["/broker"].append(503)  # the Broker is down: nothing is acknowledged
    down = client.post("/alerts/dev-1:temperature-high:1/ack", json={"by": "ana"})
    assert down.status_code == 503
    assert rt.store.collection(ALERTS).find_one()["state"] == "open"
    done = client.post("/alerts/dev-1:temperature-high:1/ack", json={"by": "ana"})
    assert done.status_code == 200 and done.get_json()["state"] == "acknowledged"
    again = client.post("/alerts/dev-1:temperature-high:1/ack", json={"by": "bo"})
    assert again.status_code == 200
    posted = receiver.taken("/broker")
    assert len(posted) == 1  # the repeat acknowledged nothing, so it announced nothing
    headers = posted[0]["headers"]
    assert (headers["ce-type"], headers["ce-id"], headers["ce-subject"]) == (
        "iot.alert.v1", "dev-1:temperature-high:1/acknowledged", "dev-1")
    data = json.loads(posted[0]["body"])
    assert (data["state"], data["acknowledged_by"]) == ("acknowledged", "ana")


# --- iot-telemetry notify test --------------------------------------------------------------

def test_notify_test_sends_a_sample_to_the_channel_and_says_what_it_answered(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from iot_telemetry.local.cli import main

    monkeypatch.setenv("NOTIFY_CHANNELS", channels_json(
        receiver, {"name": "ops", "secret_env": "OPS_SECRET"}, {"name": "chat",
                                                              "format": "slack"}))
    monkeypatch.setenv("OPS_SECRET", "s3cret")
    assert main(["notify", "test", "ops"]) == 0
    assert "sent a sample alert to channel ops (json, signed): HTTP 200" in capsys.readouterr().out
    [req] = receiver.taken("/ops")
    assert verify("s3cret", req["headers"][SIGNATURE_HEADER.lower()], req["body"],
                  int(req["headers"][SIGNATURE_HEADER.lower()].split(",")[0][2:]))
    receiver.script["/chat"].append(404)
    assert main(["notify", "test", "chat"]) == 1
    assert "did not take the sample alert: HTTP 404" in capsys.readouterr().err
    assert main(["notify", "test", "pager"]) == 2
    assert "no channel 'pager' in NOTIFY_CHANNELS (channels: ops, chat)" in (
        capsys.readouterr().err)
