"""Real mode: each function its own functions-framework process, plus the dispatcher, each
restarted when it exits (supervisor.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .eventing import load_eventing
from .layout import BROKER_PORT, EVENTING_DIR, FUNCTIONS, PORTS, THREADS, source
from .supervisor import Supervisor

log = logging.getLogger(__name__)


def _to_stderr(line: str) -> None:
    print(f"iot-telemetry local: {line}", file=sys.stderr, flush=True)


class StartError(RuntimeError):
    """A function did not come up at the first start; what was started is stopped again."""


@dataclass
class RealPipeline:
    """The functions served by functions-framework (gunicorn) and the dispatcher.

    Each is a child process of its own; once started, one that exits (killed, crashed) is
    restarted by the supervisor, as Knative's kubelet restarts a container.
    """

    kafka: str
    mongo: str
    ports: Mapping[str, int] = field(default_factory=lambda: dict(PORTS))
    broker_port: int = BROKER_PORT
    host: str = "127.0.0.1"
    eventing_dir: Path = EVENTING_DIR
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    dispatcher_args: tuple[str, ...] = ()
    log_dir: Path | None = None
    #: Restart what exits (off: a process that exits stays down).
    supervise: bool = True
    #: Where exits and restarts are reported (a line each).
    report: Callable[[str], None] = _to_stderr
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: Set when the supervisor gave up on a process: why (the run should stop).
    gave_up: str | None = None
    supervisor: Supervisor | None = None

    def url(self, function: str) -> str:
        return f"http://{self.host}:{self.ports[function]}/"

    def _env(self, function: str | None = None) -> dict[str, str]:
        env = {**self.environ, "KAFKA_BOOTSTRAP_SERVERS": self.kafka, "MONGO_URL": self.mongo,
               "PYTHONUNBUFFERED": "1"}
        env.pop("K_SINK", None)
        if function in THREADS:
            env.setdefault("THREADS", str(THREADS[function]))
        if function is not None:
            # As a SinkBinding of eventing/ injects it: the dispatcher's ingress is the Broker.
            env.update(load_eventing(self.eventing_dir).sink_env(
                function, f"http://{self.host}:{self.broker_port}/"))
        return env

    def _output(self, name: str) -> int | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return os.open(self.log_dir / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start a child in a session of its own that dies with this process."""
        lifeline = [sys.executable, "-m", "iot_telemetry.local.lifeline", str(os.getpid())]
        out = self._output(name)
        proc = self.processes[name] = subprocess.Popen(
            [*lifeline, *cmd], env=env, stdout=out, stderr=out, start_new_session=True)
        if out is not None:
            os.close(out)
        return proc

    def function_command(self, function: str) -> list[str]:
        """The command line that serves one function."""
        return [sys.executable, "-m", "functions_framework", "--target", function,
                "--source", str(source(function)), "--signature-type", "http",
                "--host", self.host, "--port", str(self.ports[function])]

    def start_function(self, function: str) -> subprocess.Popen[bytes]:
        return self._spawn(function, self.function_command(function), self._env(function))

    def start_dispatcher(self) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "iot_telemetry.local.eventing.dispatcher",
               "--eventing", str(self.eventing_dir), "--bootstrap", self.kafka,
               "--ingress-port", str(self.broker_port),
               "--subscriber", f"aggregate={self.url('aggregate')}",
               "--subscriber", f"alert={self.url('alert')}",
               "--subscriber", f"notify={self.url('notify')}", *self.dispatcher_args]
        return self._spawn("dispatcher", cmd, self._env())

    def _start_process(self, name: str) -> subprocess.Popen[bytes]:
        return self.start_dispatcher() if name == "dispatcher" else self.start_function(name)

    def start(self, timeout: float = 60.0) -> RealPipeline:
        """Start every function, then the dispatcher and the supervisor; StartError (every
        process stopped again) when a function exits or stays unhealthy at this first start:
        a fault to report, not to restart forever."""
        try:
            for function in FUNCTIONS:
                self.start_function(function)
            self.wait_healthy(FUNCTIONS, timeout)
        except RuntimeError as exc:
            self.stop()
            where = (f"its log: {self.log_dir}" if self.log_dir is not None
                     else "its output above")
            raise StartError(f"{exc} (see {where})") from None
        self.start_dispatcher()
        if self.supervise:
            self.supervisor = Supervisor(self.processes, self._start_process, self.healthy,
                                         self.report, self._give_up).start()
        return self

    def _give_up(self, why: str) -> None:
        self.gave_up = why

    @property
    def restarts(self) -> Mapping[str, int]:
        """Restarts so far by process name (all 0 without supervision)."""
        if self.supervisor is None:
            return dict.fromkeys(self.processes, 0)
        return self.supervisor.restarts

    def healthy(self, name: str) -> bool:
        """Whether a process answers its /healthz (the dispatcher: its broker ingress's)."""
        base = (f"http://{self.host}:{self.broker_port}/" if name == "dispatcher"
                else self.url(name))
        try:
            with urllib.request.urlopen(base + "healthz", timeout=1):  # noqa: S310
                return True
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, functions: tuple[str, ...] | list[str], timeout: float) -> None:
        """Wait until each function answers /healthz; fail naming the one that did not."""
        deadline = time.monotonic() + timeout
        for function in functions:
            while True:
                proc = self.processes[function]
                if proc.poll() is not None:
                    raise RuntimeError(f"{function} exited with {proc.returncode} at start")
                try:
                    with urllib.request.urlopen(self.url(function) + "healthz", timeout=2):  # noqa: S310
                        break
                except (urllib.error.URLError, OSError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{function} did not become healthy") from None
                    time.sleep(0.2)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill one process (and its gunicorn children) without letting it clean up; under
        supervision it is restarted like any process that exits."""
        proc = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()  # first: nothing is restarted while the run stops
        for name in list(self.processes):
            proc = self.processes[name]
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    self.kill(name)
        self.processes.clear()

    def __enter__(self) -> RealPipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
