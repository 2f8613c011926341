"""local/services: a start that fails leaves nothing running (issue 20 item 13).

Each server is started on a port another socket holds bound (not listening, so the scripts'
"port in use" check passes and the server's own bind fails, as in a race with another
program), in a data dir of its own: the start must fail, and nothing of that data dir may
keep running; once the port is free, the next start must work.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from iot_telemetry.local.layout import SERVICES_DIR

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _bound_not_listening(port: int) -> Iterator[None]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        yield


def _running_in(data_dir: Path) -> list[str]:
    """Command lines of the processes that name `data_dir` (the server of that data dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(data_dir) in cmdline:
            found.append(f"{entry.name}: {cmdline[:300]}")
    return found


def _script(name: str, action: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SERVICES_DIR / f"{name}.sh"), action], env=env,
                          capture_output=True, text=True, timeout=240, check=False)


# kafka.sh goes through the same start (common.sh); its case took three minutes (a fresh
# KRaft format and a 60 s readiness wait), too long to run each time.
@pytest.mark.parametrize("service,port_variable", [
    ("mongo-java-server", "MJS_PORT"), ("ferretdb", "FERRETDB_PORT")])
def test_a_start_that_cannot_bind_leaves_nothing_running(tmp_path: Path, service: str,
                                                         port_variable: str) -> None:
    port = _free_port()
    env = {**os.environ, "IOT_DATA_DIR": str(tmp_path), port_variable: str(port),
           "MJS_START_TIMEOUT": "20", "FERRETDB_START_TIMEOUT": "20"}
    try:
        with _bound_not_listening(port):
            failed = _script(service, "start", env)
            assert failed.returncode != 0, failed.stderr
            assert "failed to start" in failed.stderr or "exited" in failed.stderr, failed.stderr
            assert _running_in(tmp_path) == []
            assert _script(service, "status", env).returncode == 3  # stopped, no stale pid
        started = _script(service, "start", env)
        assert started.returncode == 0, started.stderr
        assert _running_in(tmp_path) != []
    finally:
        _script(service, "stop", env)
    assert _running_in(tmp_path) == []
