"""`iot-telemetry`'s own behaviour: what it prints, how it stops, the ports it takes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from iot_telemetry.local.cli import _banner

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
    return [arg for name in ("ingest", "query", "aggregate", "alert", "broker")
            for arg in (f"--{name}-port", "0")]


def _local(*args: str, env: dict[str, str] | None = None,
           ignore_sigint: bool = False) -> subprocess.Popen[str]:
    def background_job() -> None:
        # what a shell does to `cmd &`: SIGINT ignored from the start
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen(
        [sys.executable, "-m", "iot_telemetry.local.cli", "local", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=background_job if ignore_sigint else None)


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
        others = [a for n in ("ingest", "aggregate", "alert", "broker") for a in (f"--{n}-port", "0")]
        proc = _local("--no-simulator", *others, env={"IOT_QUERY_PORT": str(port)})
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.count("\n") == 1, err
    assert f"port {port} (query) is already in use" in err
    assert "--query-port or IOT_QUERY_PORT" in err


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
ports = dict(zip(("ingest", "query", "aggregate", "alert"), map(int, sys.argv[1:5])))
pipeline = RealPipeline(kafka="127.0.0.1:9", mongo="mongodb://127.0.0.1:9", ports=ports,
                        broker_port=int(sys.argv[5]))
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
    ports = [str(_free_port()) for _ in range(5)]
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
