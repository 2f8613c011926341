"""`iot-telemetry local` in real mode as a user runs it: restarted right after a stop, it serves
again within seconds (issue 24 item 4, issue 20 item 12)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

pytestmark = pytest.mark.integration

PROCESSES = ("ingest", "query", "aggregate", "alert", "broker")


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _get_until_server_closes(port: int, path: str) -> bytes:
    """GET over HTTP/1.0, read until the server closes: its side then lingers in TIME_WAIT."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        return answer


def test_the_real_run_restarted_right_after_stopping_serves_within_seconds(
        kafka_bootstrap: str, mongo_url: str) -> None:
    ports = dict(zip(PROCESSES, _free_ports(len(PROCESSES)), strict=True))
    args = [a for name, port in ports.items() for a in (f"--{name}-port", str(port))]
    env = {**os.environ, "MONGO_DB": f"restart_{uuid.uuid4().hex[:8]}"}
    took = []
    for _run in range(2):
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "iot_telemetry.local.cli", "local", "--no-simulator",
             "--kafka", kafka_bootstrap, "--mongo", mongo_url, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert first.startswith("iot-telemetry local (real mode)"), (
                first, proc.stderr.read() if proc.stderr and proc.poll() is not None else "")
            for name in ("ingest", "query", "aggregate", "alert"):
                assert _get_until_server_closes(ports[name], "/healthz").startswith(b"HTTP/1.")
            deadline = time.monotonic() + 30
            while True:  # the broker ingress answers once the dispatcher has its partitions
                try:
                    url = f"http://127.0.0.1:{ports['broker']}/readyz"
                    with urllib.request.urlopen(url, timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "the dispatcher never got ready"
                time.sleep(0.2)
            took.append(time.monotonic() - started)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
    # The second run, started at once on the same ports, serves as soon as the first did
    # (a minute of "already in use" before), within seconds on this loaded machine.
    assert took[1] < 30, took
