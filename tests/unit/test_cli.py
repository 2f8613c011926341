"""`iot-telemetry`'s own behaviour: what it prints, how it stops, the ports it takes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from iot_telemetry.local.cli import _banner, main

URLS = {f: f"http://127.0.0.1:{p}/" for f, p in
        (("ingest", 8001), ("query", 8002), ("aggregate", 8003), ("alert", 8004))}


def test_banner_without_simulator_links_no_simulated_device() -> None:
    text = _banner("embedded", URLS, simulator=False, extra="")
    assert "sim-0001" not in text
    assert "post readings to http://127.0.0.1:8001/" in text
    assert "sim-0001" in _banner("embedded", URLS, simulator=True, extra="")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _any_ports() -> list[str]:
    return [arg for name in ("ingest", "query", "aggregate", "alert", "notify", "broker")
            for arg in (f"--{name}-port", "0")]


def _local(*args: str, env: dict[str, str] | None = None,
           ignore_sigint: bool = False) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "iot_telemetry.local.cli", "local", *args]
    if ignore_sigint:
        # what a shell does to `cmd &`: SIGINT ignored from the start
        command = ["bash", "-c", 'trap "" INT; exec "$@"', "bash", *command]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_background_local_run_stops_on_signal(signum: int) -> None:
    proc = _local("--no-simulator", *_any_ports(), ignore_sigint=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("iot-telemetry local (embedded)")
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_port_in_use_names_its_flag_and_variable() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        others = [a for n in ("ingest", "aggregate", "alert", "broker")
                  for a in (f"--{n}-port", "0")]
        proc = _local("--no-simulator", *others, env={"IOT_QUERY_PORT": str(port)})
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.count("\n") == 1, err
    assert f"port {port} (query) is already in use" in err
    assert "--query-port or IOT_QUERY_PORT" in err


def _time_wait_port() -> int:
    """A port whose last connection lingers in TIME_WAIT on the server side, nothing listening:
    what a stopped local run leaves for a minute after serving a request."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = int(server.getsockname()[1])
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the side that closes first keeps TIME_WAIT, on the server's port
        time.sleep(0.1)
        client.close()
    return port


def test_a_port_in_time_wait_is_free_as_the_servers_judge_it() -> None:
    """Issue 20 item 12: a port whose only trace is a TIME_WAIT connection of the previous
    run is taken, as the servers themselves (SO_REUSEADDR) take it, not refused as busy."""
    port = _time_wait_port()
    others = [a for n in ("ingest", "aggregate", "alert", "notify", "broker")
              for a in (f"--{n}-port", "0")]
    proc = _local("--no-simulator", "--query-port", str(port), *others)
    try:
        assert proc.stdout is not None
        banner = [proc.stdout.readline() for _ in range(3)]
        assert banner[2].split() == ["query", f"http://127.0.0.1:{port}/"], (
            banner, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.status == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def _health_until_server_closes(port: int) -> bytes:
    """GET /healthz over HTTP/1.0 and read until the server closes: its side of the
    connection then lingers in TIME_WAIT, as after a browser's or the simulator's requests."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        return answer


def test_the_whole_run_restarted_right_after_stopping_serves_within_seconds() -> None:
    """Stop a run that has served requests and start it again at once on the same ports:
    the second run serves within seconds (it waited a minute for TIME_WAIT to pass)."""
    ports = {name: _free_port() for name in ("ingest", "query", "aggregate", "alert", "broker")}
    args = [a for name, port in ports.items() for a in (f"--{name}-port", str(port))]
    for run in range(2):
        started = time.monotonic()
        proc = _local("--no-simulator", *args)
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert first.startswith("iot-telemetry local"), (
                run, first, proc.stderr.read() if proc.stderr and proc.poll() is not None else "")
            for function in ("ingest", "query", "aggregate", "alert"):
                assert _health_until_server_closes(ports[function]).startswith(b"HTTP/1.")
            assert time.monotonic() - started < 20
        finally:
            proc.terminate()
            assert proc.wait(timeout=30) == 0


def test_ports_are_chosen_by_flag_or_variable() -> None:
    ingest, query = _free_port(), _free_port()
    ports = [a for n in ("aggregate", "alert", "broker") for a in (f"--{n}-port", "0")]
    proc = _local("--no-simulator", "--ingest-port", str(ingest), *ports,
                  env={"IOT_QUERY_PORT": str(query)})
    try:
        assert proc.stdout is not None
        banner = [proc.stdout.readline() for _ in range(3)]
        assert banner[1].split() == ["ingest", f"http://127.0.0.1:{ingest}/"]
        assert banner[2].split() == ["query", f"http://127.0.0.1:{query}/"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


_REAL_MODE_PARENT = """
import sys, time
from iot_telemetry.local.realmode import RealPipeline
ports = dict(zip(("ingest", "query", "aggregate", "alert", "notify"),
                map(int, sys.argv[1:6])))
pipeline = RealPipeline(kafka="127.0.0.1:9", mongo="mongodb://127.0.0.1:9", ports=ports,
                        broker_port=int(sys.argv[6]))
for function in ("ingest", "query"):
    pipeline.start_function(function)
pipeline.wait_healthy(["ingest", "query"], 60)
pipeline.start_dispatcher()
print(*(p.pid for p in pipeline.processes.values()), flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_real_mode_children_do_not_outlive_a_killed_parent() -> None:
    ports = [str(_free_port()) for _ in range(6)]
    parent = subprocess.Popen([sys.executable, "-c", _REAL_MODE_PARENT, *ports],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert parent.stdout is not None
    children = [int(pid) for pid in parent.stdout.readline().split()]
    try:
        assert len(children) == 3 and all(map(_running, children))
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while any(map(_running, children)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_running, children)), "a child outlived its killed parent"
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


@pytest.mark.parametrize("mode", [(), ("--kafka", "127.0.0.1:9", "--mongo", "mongodb://127.0.0.1:9")],
                         ids=["embedded", "real"])
def test_a_bad_setting_is_one_line_before_anything_starts(mode: tuple[str, ...]) -> None:
    proc = _local("--no-simulator", *_any_ports(), *mode, env={"INGEST_AUTH": "bogus"})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip() == "configuration error: INGEST_AUTH: must be `open` or `registered`"
    assert out == ""


def test_a_function_that_exits_at_the_first_real_start_stops_the_run_in_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from iot_telemetry.local.realmode import RealPipeline

    started: list[subprocess.Popen[bytes]] = []
    real_command = RealPipeline.function_command
    real_start = RealPipeline.start_function

    def command(self: RealPipeline, function: str) -> list[str]:
        if function == "alert":  # dies as a function with a broken deployment would
            return [sys.executable, "-c", "import sys; sys.exit(3)"]
        return real_command(self, function)

    def start_function(self: RealPipeline, function: str) -> subprocess.Popen[bytes]:
        proc = real_start(self, function)
        started.append(proc)
        return proc

    monkeypatch.setattr(RealPipeline, "function_command", command)
    monkeypatch.setattr(RealPipeline, "start_function", start_function)

    code = main(["local", "--no-simulator", *_any_ports(), "--kafka", "127.0.0.1:9",
                 "--mongo", "mongodb://127.0.0.1:9"])

    assert code == 1
    err = capsys.readouterr().err
    assert "iot-telemetry local: alert exited with 3 at start (see its output above)" in err
    assert "Traceback" not in err
    # Everything the run started is stopped again: no function is left serving.
    assert len(started) == 5
    assert all(proc.poll() is not None for proc in started)


# ---------------------------------------------------------------- devices of the local run

def _post(url: str, device: str, token: str | None) -> int:
    headers = {"Content-Type": "application/json", "ce-specversion": "1.0",
               "ce-type": "iot.telemetry.v1", "ce-source": f"/devices/{device}",
               "ce-id": str(uuid.uuid4()), "ce-subject": device}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=b'{"metrics": {"temperature": 21.5}}',
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def registered_run(monkeypatch: pytest.MonkeyPatch):
    from iot_telemetry.local.embedded import EmbeddedPipeline

    ports = dict.fromkeys(("ingest", "query", "aggregate", "alert", "notify"), 0)
    with EmbeddedPipeline(ports=ports, broker_port=0,
                          environ={"LOG_LEVEL": "WARNING", "INGEST_AUTH": "registered"}) as p:
        monkeypatch.setenv("IOT_QUERY_PORT", str(p.servers["query"].server_port))
        monkeypatch.delenv("MONGO_URL", raising=False)
        yield p


def test_devices_commands_manage_the_local_runs_registry(
    registered_run, capsys: pytest.CaptureFixture[str]
) -> None:
    ingest = registered_run.url("ingest")
    assert main(["devices", "add", "dev-42", "--unit", "temperature=celsius"]) == 0
    token = capsys.readouterr().out.splitlines()[-1]
    assert _post(ingest, "dev-42", token) == 202
    assert _post(ingest, "dev-42", None) == 401

    assert registered_run.wait_idle()
    assert main(["devices", "list"]) == 0
    # As the query API writes them: the time in RFC 3339 with Z, the metadata as JSON.
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("dev-42 "))
    assert re.search(r" last seen \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", line), line
    assert line.endswith(' {"units": {"temperature": "celsius"}}'), line
    assert main(["devices", "rotate-token", "dev-42"]) == 0
    assert _post(ingest, "dev-42", capsys.readouterr().out.splitlines()[-1]) == 202
    assert main(["devices", "disable", "nope"]) == 1
    assert capsys.readouterr().err == "error: 127.0.0.1:{}: device 'nope' not found\n".format(
        registered_run.servers["query"].server_port)


def test_devices_without_a_local_run_say_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IOT_QUERY_PORT", str(_free_port()))
    monkeypatch.delenv("MONGO_URL", raising=False)
    assert main(["devices", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no `iot-telemetry local` answers" in err
    assert "MONGO_URL" in err


def test_devices_with_an_unreachable_store_fail_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MONGO_URL", f"mongodb://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("MONGO_TIMEOUT_MS", "300")
    assert main(["devices", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: the store at MONGO_URL=")
    assert "Traceback" not in err and "(is it running?)" in err


def test_registered_local_run_registers_the_simulated_devices() -> None:
    proc = _local("--devices", "2", "--rate", "20", *_any_ports(),
                  env={"INGEST_AUTH": "registered"})
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        query = lines[2].split()[1]
        deadline = time.monotonic() + 60
        seen: list[str] = []
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            with urllib.request.urlopen(query + "devices", timeout=10) as response:
                devices = json.loads(response.read())["devices"]
            seen = [d["id"] for d in devices if d.get("last_seen")]
        assert sorted(seen) == ["sim-0001", "sim-0002"]
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert "rejected 0" in err.splitlines()[-1], err


# ---------------------------------------------------------------- rules check

GROUP_RULES = [
    {"name": "warm", "metric": "temperature", "condition": ">", "threshold": 30,
     "clear_threshold": 28, "scope": {"prefix": "gh-"},
     "overrides": [{"match": {"device": "gh-9"}, "threshold": 40},
                   {"match": {"metadata": {"location": "greenhouse-2"}}, "threshold": 35,
                    "clear_threshold": 33}]},
    {"name": "damp", "metric": "humidity", "condition": ">", "threshold": 80,
     "scope": {"metadata": {"location": "cellar"}}},
    {"name": "gone", "condition": "offline", "overrides": [
        {"match": {"glob": "gh-*"}, "for_seconds": 900}]},
]


def test_rules_check_says_which_rules_apply_to_a_device_and_why(
    registered_run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ALERT_RULES", json.dumps(GROUP_RULES))
    assert main(["devices", "add", "gh-1", "--location", "greenhouse-2"]) == 0
    capsys.readouterr()
    assert main(["rules", "check", "gh-1"]) == 0
    port = registered_run.servers["query"].server_port
    lines = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == (f'gh-1: metadata {{"location": "greenhouse-2"}} (from the local run '
                        f"on 127.0.0.1:{port})")
    assert lines[3:] == [
        "applies:",
        "  warm                   temperature > 35 (clears at 33), warning",
        "                         matched by prefix 'gh-'",
        "                         override #1 (metadata location=greenhouse-2): "
        "threshold 30 -> 35, clear_threshold 28 -> 33",
        "  gone                   offline after 900 s of silence, warning",
        "                         matched by all devices",
        "                         override #0 (glob 'gh-*'): "
        "for_seconds DEVICE_STALE_SECONDS -> 900",
        "",
        "does not apply:",
        "  damp                   scope metadata location=cellar: metadata has "
        "location=greenhouse-2, not location=cellar"]
    # the device moves to the cellar: the cellar's rule applies, the greenhouse's override not
    assert main(["devices", "set-metadata", "gh-1", "location=cellar", "floor=-1"]) == 0
    assert capsys.readouterr().out == 'gh-1 metadata: {"floor": "-1", "location": "cellar"}\n'
    assert main(["rules", "check", "gh-1"]) == 0
    out = capsys.readouterr().out
    assert "  warm                   temperature > 30 (clears at 28), warning" in out
    assert "  damp                   humidity > 80 (clears at 80), warning" in out
    assert main(["devices", "set-metadata", "gh-1", "floor="]) == 0
    assert capsys.readouterr().out == 'gh-1 metadata: {"location": "cellar"}\n'
    assert main(["devices", "set-metadata", "gh-1", "a.b=1"]) == 1
    assert "metadata keys must match" in capsys.readouterr().err
    assert main(["devices", "set-metadata", "nope", "a=1"]) == 1
    assert "device 'nope' not found" in capsys.readouterr().err
    # a device the registry does not know has no metadata
    assert main(["rules", "check", "ab-1"]) == 0
    out = capsys.readouterr().out
    assert "(not registered in the local run" in out
    assert "  warm                   scope prefix 'gh-': id does not start with 'gh-'" in out


def test_rules_check_with_given_metadata_and_its_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ALERT_RULES", json.dumps(GROUP_RULES))
    assert main(["rules", "check", "x-1", "--metadata", '{"location": "cellar"}']) == 0
    out = capsys.readouterr().out
    assert "  damp                   humidity > 80 (clears at 80), warning" in out
    assert "matched by metadata location=cellar" in out
    assert main(["rules", "check", "x-1", "--metadata", '["cellar"]']) == 2
    assert "--metadata: must be a JSON object" in capsys.readouterr().err
    assert main(["rules", "check", "x 1", "--metadata", "{}"]) == 2
    assert "device id must match" in capsys.readouterr().err
    monkeypatch.setenv("ALERT_RULES", json.dumps([{**GROUP_RULES[0], "scope": {"prefx": "a"}}]))
    assert main(["rules", "check", "x-1", "--metadata", "{}"]) == 1
    assert capsys.readouterr().err == (
        "error: ALERT_RULES: rules[0].scope.prefx: unknown field (use device, prefix, glob, "
        "metadata)\n")
