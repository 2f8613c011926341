"""Restarts real mode's processes that exit, as a container's restart policy does on Knative.

A child that exits while the run is not stopping is restarted after a backoff that doubles
with each exit in a row (RESTART_BACKOFF, up to MAX_RESTART_BACKOFF) and starts again from
the first once the child has stayed up for STEADY_SECONDS, as the kubelet's does. Each exit
is reported with its status and each restart with the restart counts. A child that keeps
failing at start (exiting before it answered its health check GIVE_UP_STARTS times within
GIVE_UP_WINDOW seconds) is given up on: the supervisor reports why and calls `give_up`, and
the run stops. Stopping the run (Ctrl-C, SIGTERM) stops the supervisor first, so nothing is
restarted then.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Final

#: Wait before the first restart after an exit; doubled for each further exit in a row.
RESTART_BACKOFF: Final = 0.5
MAX_RESTART_BACKOFF: Final = 30.0
#: Up this long, a child's next exit is restarted after RESTART_BACKOFF again.
STEADY_SECONDS: Final = 60.0
#: Give up on a child that exits before it is healthy this many times within the window.
GIVE_UP_STARTS: Final = 5
GIVE_UP_WINDOW: Final = 60.0
#: How often the children are looked at.
POLL_INTERVAL: Final = 0.2


def exit_status(returncode: int) -> str:
    """A child's exit as a person reads it: 'exit status 1', 'killed by SIGKILL'."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@dataclass
class _Child:
    started: float
    healthy: bool = False
    exits_in_a_row: int = 0
    failed_starts: deque[float] = field(default_factory=deque)
    restart_at: float | None = None


class Supervisor:
    """Watches `processes` (by name, replaced in place on restart) on a thread of its own."""

    def __init__(self, processes: MutableMapping[str, subprocess.Popen[bytes]],
                 spawn: Callable[[str], subprocess.Popen[bytes]],
                 healthy: Callable[[str], bool], report: Callable[[str], None],
                 give_up: Callable[[str], None]) -> None:
        self._processes = processes
        self._spawn = spawn
        self._healthy = healthy
        self._report = report
        self._give_up = give_up
        self._children = {name: _Child(time.monotonic()) for name in processes}
        self._restarts = dict.fromkeys(processes, 0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    @property
    def restarts(self) -> Mapping[str, int]:
        """Restarts so far, by process name."""
        with self._lock:
            return dict(self._restarts)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Restart nothing from now on (returns once a restart under way is done)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(POLL_INTERVAL):
            for name in list(self._children):
                if self._stop.is_set():
                    return
                self._look_at(name, time.monotonic())

    def _look_at(self, name: str, now: float) -> None:
        child, proc = self._children[name], self._processes[name]
        if child.restart_at is not None:
            if now >= child.restart_at:
                self._restart(name, child, now)
            return
        returncode = proc.poll()
        if returncode is None:
            if not child.healthy and self._healthy(name):
                child.healthy = True
            if child.healthy and now - child.started >= STEADY_SECONDS:
                child.exits_in_a_row = 0
            return
        # Its gunicorn workers (or anything else in its session) go with it, so that the
        # restarted server can bind the port they would otherwise keep listening on.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        uptime = now - child.started
        if not child.healthy:
            child.failed_starts.append(now)
            while child.failed_starts and now - child.failed_starts[0] > GIVE_UP_WINDOW:
                child.failed_starts.popleft()
            if len(child.failed_starts) >= GIVE_UP_STARTS:
                why = (f"{name} failed at start {len(child.failed_starts)} times within "
                       f"{GIVE_UP_WINDOW:.0f} s (last: {exit_status(returncode)}); giving up "
                       "and stopping the run: see its log")
                self._report(why)
                self._stop.set()
                self._give_up(why)
                return
        delay = min(RESTART_BACKOFF * 2 ** child.exits_in_a_row, MAX_RESTART_BACKOFF)
        child.exits_in_a_row += 1
        child.restart_at = now + delay
        state = "" if child.healthy else " before it was healthy"
        self._report(f"{name} (pid {proc.pid}) exited{state}: {exit_status(returncode)} "
                     f"after {uptime:.1f} s; restarting in {delay:.1f} s")

    def _restart(self, name: str, child: _Child, now: float) -> None:
        child.restart_at = None
        child.started = now
        child.healthy = False
        try:
            self._processes[name] = self._spawn(name)
        except OSError as exc:  # cannot even be launched: a failed start like any other
            child.failed_starts.append(now)
            child.restart_at = now + MAX_RESTART_BACKOFF
            self._report(f"{name} could not be started: {exc}; again in "
                         f"{MAX_RESTART_BACKOFF:.0f} s")
            return
        with self._lock:
            self._restarts[name] += 1
            counts = ", ".join(f"{n} {c}" for n, c in self._restarts.items())
        self._report(f"{name} restarted (pid {self._processes[name].pid}); restarts: {counts}")
