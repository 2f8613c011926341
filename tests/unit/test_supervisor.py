"""The real-mode supervisor on plain child processes: restarts with backoff, reports, gives up
on a process that keeps failing at start, restarts nothing once stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from iot_telemetry.local import supervisor as supervisor_module
from iot_telemetry.local.supervisor import Supervisor, exit_status


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


class Children:
    """Children started with `command`, with the supervisor's hooks and what it reported."""

    def __init__(self, command: list[str], healthy: bool = True) -> None:
        self.command = command
        self.is_healthy = healthy
        self.lines: list[str] = []
        self.gave_up: list[str] = []
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.command, start_new_session=True)
        self.processes[name] = proc
        return proc

    def supervise(self, *names: str) -> Supervisor:
        for name in names:
            self.spawn(name)
        return Supervisor(self.processes, self.spawn, lambda _name: self.is_healthy,
                          self.lines.append, self.gave_up.append).start()

    def stop_all(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_module, "RESTART_BACKOFF", 0.05)
    monkeypatch.setattr(supervisor_module, "POLL_INTERVAL", 0.02)


@pytest.fixture
def sleepers() -> Iterator[Children]:
    children = Children(["sleep", "300"])
    yield children
    children.stop_all()


def test_a_killed_process_is_restarted_and_reported(sleepers: Children) -> None:
    supervisor = sleepers.supervise("aggregate", "alert")
    try:
        first = sleepers.processes["alert"]
        os.kill(first.pid, signal.SIGKILL)
        _wait_for(lambda: supervisor.restarts["alert"] == 1, 10, "alert not restarted")
        second = sleepers.processes["alert"]
        assert second.pid != first.pid and second.poll() is None
        assert supervisor.restarts == {"aggregate": 0, "alert": 1}
        assert any(f"alert (pid {first.pid}) exited" in line and "killed by SIGKILL" in line
                   for line in sleepers.lines), sleepers.lines
        assert any(line.startswith(f"alert restarted (pid {second.pid}); restarts: aggregate 0, "
                                   "alert 1") for line in sleepers.lines), sleepers.lines
        assert sleepers.gave_up == []
    finally:
        supervisor.stop()


def test_the_backoff_doubles_with_each_exit_in_a_row(sleepers: Children, quick: None) -> None:
    supervisor = sleepers.supervise("alert")
    try:
        for restarts in (1, 2, 3):
            os.kill(sleepers.processes["alert"].pid, signal.SIGTERM)
            _wait_for(lambda r=restarts: supervisor.restarts["alert"] == r, 10, "no restart")
        delays = [line.rsplit("restarting in ", 1)[1] for line in sleepers.lines
                  if "restarting in" in line]
        assert delays == ["0.1 s", "0.1 s", "0.2 s"]  # 0.05, 0.1, 0.2 rounded
        assert all("killed by SIGTERM" in line for line in sleepers.lines if "exited" in line)
    finally:
        supervisor.stop()


def test_a_process_failing_at_start_five_times_is_given_up_on(quick: None) -> None:
    children = Children(["sh", "-c", "exit 3"], healthy=False)
    supervisor = children.supervise("dispatcher")
    try:
        _wait_for(lambda: bool(children.gave_up), 20, "never gave up")
        assert supervisor.restarts["dispatcher"] == 4  # started once, restarted four times
        [why] = children.gave_up
        assert why.startswith("dispatcher failed at start 5 times within 60 s "
                              "(last: exit status 3); giving up")
        assert sum("exited before it was healthy: exit status 3" in line
                   for line in children.lines) == 4
        time.sleep(0.5)
        assert supervisor.restarts["dispatcher"] == 4  # and nothing more after giving up
    finally:
        supervisor.stop()


def test_a_process_that_was_healthy_is_restarted_however_often_it_exits(
        sleepers: Children, quick: None) -> None:
    supervisor = sleepers.supervise("ingest")
    try:
        for restarts in range(1, 7):
            os.kill(sleepers.processes["ingest"].pid, signal.SIGKILL)
            _wait_for(lambda r=restarts: supervisor.restarts["ingest"] == r, 20, "no restart")
        assert sleepers.gave_up == []
    finally:
        supervisor.stop()


def test_nothing_is_restarted_once_stopped(sleepers: Children) -> None:
    supervisor = sleepers.supervise("query")
    supervisor.stop()
    proc = sleepers.processes["query"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    assert sleepers.processes["query"] is proc
    assert supervisor.restarts == {"query": 0}


def test_exit_statuses_read_as_a_person_says_them() -> None:
    assert exit_status(1) == "exit status 1"
    assert exit_status(-9) == "killed by SIGKILL"
    assert exit_status(-15) == "killed by SIGTERM"
