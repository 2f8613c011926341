"""The README's examples run as a newcomer runs them (issue 23): every fenced bash block of
the sections they follow (examples.SECTIONS), in order, from the repository root, in a
terminal where the venv is active, against a fresh `iot-telemetry local` on its default
ports (8001-8005), twice in a row, the second pass right after the first stopped.

How to mark a block or state what it prints: tests/readme/examples.py. A failure names the
pass, the section, the block, its line in README.md, the command, and what was expected
against what it printed.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from iot_telemetry.local.cli import PORT_OPTIONS
from iot_telemetry.settings import Settings
from tests.readme.examples import (
    README,
    SECTIONS,
    Block,
    first_unmatched,
    missing_sections,
    newcomer_blocks,
)

ROOT = README.parent
PASSES = 2
BLOCK_TIMEOUT = 120.0
READY_TIMEOUT = 60.0
PORTS = [default for _flag, _variable, default in PORT_OPTIONS.values()]


def newcomer_environment() -> dict[str, str]:
    """This machine's environment as a new terminal has it, with the venv activated: none of
    the project's own variables (they change what the examples do), the venv's bin first."""
    ours = {name for name, _default, _doc in Settings.variables()}
    env = {k: v for k, v in os.environ.items()
           if k not in ours and not k.startswith(("IOT_", "LOCAL_", "SIM_", "TEST_"))}
    bin_dir = Path(sys.executable).parent
    env.update(PATH=f"{bin_dir}:{env.get('PATH', '')}", VIRTUAL_ENV=str(bin_dir.parent),
               TERM="dumb", PYTHONUNBUFFERED="1")
    return env


def normalise(raw: bytes) -> str:
    """A terminal's output as lines: CR LF as LF; a bare CR (a progress line redrawn) too."""
    return raw.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")


def kill_group(proc: subprocess.Popen[bytes], first: int = signal.SIGTERM) -> None:
    """End the process group this test started for `proc` (its own session), leader and
    whatever it left running (a job in the background)."""
    for signum, grace in ((first, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


@dataclass
class Ran:
    returncode: int | None  # None: timed out
    output: str
    failed_command: str


def run_in_terminal(block: Block, env: dict[str, str]) -> Ran:
    """The block in bash on a terminal of its own (a pseudo-terminal: curl and the CLI
    print what a person sees), stopping at the first failing command."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    with tempfile.NamedTemporaryFile("r", suffix=".cmd") as failed:
        script = ("set -eo pipefail\n"
                  f"trap 'printf \"%s %s\\n\" $LINENO \"$BASH_COMMAND\" > {failed.name}' ERR\n"
                  + block.code)
        proc = subprocess.Popen(["bash", "-c", script], stdin=slave, stdout=slave,
                                stderr=slave, cwd=ROOT, env=env, start_new_session=True)
        os.close(slave)
        chunks: list[bytes] = []

        def read() -> None:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: no writer left
                    return
                if not data:
                    return
                chunks.append(data)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        returncode: int | None = None
        try:
            returncode = proc.wait(BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        finally:  # also when the test is interrupted: nothing of the block keeps running
            kill_group(proc)
            reader.join(5)
            os.close(master)
        return Ran(returncode, normalise(b"".join(chunks)), failing(block, failed.read()))


def failing(block: Block, trapped: str) -> str:
    """The command the ERR trap named, with the line of the block it ran on."""
    number, _, command = trapped.strip().partition(" ")
    lines = block.code.splitlines()
    n = int(number) - 2 if number.isdigit() else 0  # the script's first two lines are ours
    if 1 <= n <= len(lines):
        first = n
        while first > 1 and lines[first - 2].endswith("\\"):  # a continued command
            first -= 1
        text = " ".join(x.rstrip("\\").strip() for x in lines[first - 1:n])
        return f"{text}  (line {first} of the block; bash: {command})"
    return command


class Foreground:
    """A block that runs until Ctrl-C, in a terminal of its own (`iot-telemetry local`)."""

    def __init__(self, block: Block, env: dict[str, str]) -> None:
        self.block = block
        self.log = tempfile.NamedTemporaryFile("w+b", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(["bash", "-c", block.code], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env=env, start_new_session=True)

    def output(self) -> str:
        self.log.seek(0)
        return normalise(self.log.read())

    def wait_ready(self, url: str) -> str | None:
        """None once `url` answers 2xx; else why not."""
        deadline = time.monotonic() + READY_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"it ended (status {self.proc.returncode}) before {url} answered"
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    if 200 <= reply.status < 300:
                        return None
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.5)
        return f"{url} did not answer 2xx within {READY_TIMEOUT:.0f} s (last: {last})"

    def stop(self) -> str | None:
        """Ctrl-C; None once it ended with status 0, else why not."""
        if self.proc.poll() is not None:
            problem = f"it had already ended (status {self.proc.returncode})"
        else:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
                problem = None if self.proc.returncode == 0 else (
                    f"Ctrl-C ended it with status {self.proc.returncode}")
            except subprocess.TimeoutExpired:
                problem = "it did not stop within 30 s of Ctrl-C"
        kill_group(self.proc, signal.SIGKILL)
        return problem


def report(pass_no: int, block: Block, problem: str, output: str, command: str = "") -> str:
    shown = (f"  command: {command}" if command else
             "  block:\n" + "".join(f"    {line}\n" for line in block.code.splitlines()).rstrip())
    return (f"README example failed: pass {pass_no} of {PASSES}, {block.where}\n"
            f"{shown}\n  {problem}\n"
            f"--- what the block printed ---\n{output.rstrip()}\n--- end ---\n"
            "(fix the command or its expected ```text output, or mark the block: "
            "tests/readme/examples.py says how)")


def check(block: Block, ran: Ran) -> tuple[str, str] | None:
    """(problem, command) if the block did not do what the README says; None if it did."""
    if ran.returncode is None:
        return f"did not finish within {BLOCK_TIMEOUT:.0f} s", ""
    if ran.returncode != 0:
        return f"exited with status {ran.returncode}", ran.failed_command
    got = re.findall(r"^HTTP/[\d.]+ (\d{3})\b", ran.output, re.MULTILINE)
    wanted = block.expected_statuses()
    if len(got) != len(wanted):
        return (f"expected {len(wanted)} HTTP status line(s) from its `curl -i` commands, "
                f"got {len(got)}: {got}"), ""
    for (command, want), status in zip(wanted, got, strict=True):
        if not (status == want or (want == "2xx" and status.startswith("2"))):
            return f"expected HTTP status {want}, got {status}", command
    missing = first_unmatched(block.expected, ran.output)
    if missing:
        n, line = missing
        return (f"expected output line {n} of the ```text block after it was not printed "
                f"(in order; `...` = any text):\n    expected: {line}"), ""
    if ran.output and not ran.output.endswith("\n"):
        return ("its output does not end with a newline (the next prompt would run on): "
                f"{ran.output.splitlines()[-1]!r}"), ""
    return None


def ports_in_use() -> list[int]:
    busy = []
    for port in PORTS:
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


@pytest.fixture
def newcomer() -> Iterator[dict[str, str]]:
    if shutil.which("curl") is None:
        pytest.fail("the README's examples use curl: install it (apt-get install -y curl)")
    env = newcomer_environment()
    if shutil.which("iot-telemetry", path=env["PATH"]) is None:
        pytest.fail(f"iot-telemetry is not installed beside {sys.executable} "
                    "(pip install -e . in that venv)")
    busy = ports_in_use()
    if busy:
        pytest.fail(f"ports {busy} are in use: the README's examples run on the local run's "
                    "default ports (8001-8005); stop what listens there "
                    "(another `iot-telemetry local`?)", pytrace=False)
    yield env


def run_pass(pass_no: int, blocks: list[Block], env: dict[str, str]) -> None:
    foreground: Foreground | None = None
    try:
        for block in blocks:
            if block.skip_reason is not None:
                continue
            if block.stops_foreground and foreground is not None:
                problem = foreground.stop()
                if problem:
                    pytest.fail(report(pass_no, foreground.block, problem,
                                       foreground.output()), pytrace=False)
                foreground = None
            if block.ready_url:
                assert foreground is None, f"{block.where}: a foreground run is already running"
                foreground = Foreground(block, env)
                problem = foreground.wait_ready(block.ready_url)
                if problem:
                    pytest.fail(report(pass_no, block, problem, foreground.output()),
                                pytrace=False)
                continue
            ran = run_in_terminal(block, env)
            failed = check(block, ran)
            if failed:
                problem, command = failed
                extra = (f"\n--- the foreground run's output ---\n{foreground.output()[-3000:]}"
                         if foreground is not None else "")
                pytest.fail(report(pass_no, block, problem, ran.output, command) + extra,
                            pytrace=False)
        if foreground is not None:
            problem = foreground.stop()
            if problem:
                pytest.fail(report(pass_no, foreground.block, problem, foreground.output()),
                            pytrace=False)
            foreground = None
    finally:
        if foreground is not None:
            kill_group(foreground.proc, signal.SIGKILL)


def test_the_newcomer_sections_are_there_and_marked_sensibly() -> None:
    assert not missing_sections(), (
        f"README.md lost the sections {missing_sections()}: update examples.SECTIONS")
    blocks = newcomer_blocks()
    problems = [p for b in blocks if (p := b.directive_problem())]
    problems += [f"{b.where}: `# NNN` on a command the test cannot check, `{c}` (use curl -i "
                 "or show the status in a ```text block after it)"
                 for b in blocks for c in b.unchecked_status_comments()]
    assert not problems, "\n".join(problems)
    assert any(b.ready_url for b in blocks), "no block starts the local run (foreground)"


def test_the_readme_examples_run_as_pasted_twice_in_a_row(newcomer) -> None:
    blocks = newcomer_blocks()
    for pass_no in range(1, PASSES + 1):
        run_pass(pass_no, blocks, newcomer)
        busy = ports_in_use()
        assert not busy, f"pass {pass_no} left ports {busy} taken"


def _block(code: str, expected: tuple[str, ...] = ()) -> Block:
    return Block("Query API", "", 2, 400, code, expected=list(expected))


def test_a_block_is_held_to_its_statuses_output_and_final_newline() -> None:
    """What the run checks, on made-up output (the run itself takes a minute)."""
    block = _block("curl -i 'http://127.0.0.1:8002/fleet'\n"
                   "curl -g -i 'http://127.0.0.1:8002/devices?device_id[$ne]=x'   # 400\n",
                   ("HTTP/1.1 200 OK", "...", '{"devices": ..., "states": {...}}'))
    good = 'HTTP/1.1 200 OK\nA: b\n\n{"devices": 3, "states": {"x": 1}}\nHTTP/1.1 400 BAD\n'
    assert check(block, Ran(0, good, "")) is None
    wrong = good.replace("400 BAD", "200 OK")
    assert check(block, Ran(0, wrong, "")) == (
        "expected HTTP status 400, got 200",
        "curl -g -i 'http://127.0.0.1:8002/devices?device_id[$ne]=x'   # 400")
    problem, _ = check(block, Ran(0, good.replace('"states"', '"counts"'), "")) or ("", "")
    assert "expected output line 3" in problem and '"states": {...}' in problem
    problem, _ = check(block, Ran(0, good.rstrip("\n"), "")) or ("", "")
    assert problem.startswith("its output does not end with a newline")
    assert check(block, Ran(7, good, "curl -i x")) == ("exited with status 7", "curl -i x")
    assert check(block, Ran(None, "", ""))[0].startswith("did not finish")  # type: ignore[index]


def test_marks_and_status_comments_are_read_as_documented() -> None:
    text = "\n".join([
        "## Quick start", "<!-- readme-test: skip (a cluster) -->", "```bash", "kubectl x", "```",
        "<!-- readme-test: foreground; ready when http://127.0.0.1:8002/healthz answers -->",
        "```bash", "iot-telemetry local", "```", "", "prints the devices:", "", "```text",
        "one", "```", "## Security", "<!-- readme-test: stop the foreground run first -->",
        "```bash", "iot-telemetry devices disable d   # 403 from now on", "```",
        "<!-- readme-test: sometimes -->", "```bash", "true", "```",
        "## Deploying on Knative", "```bash", "kn service create", "```"])
    skip, foreground, stop, odd = newcomer_blocks(text)
    assert skip.skip_reason == "a cluster" and skip.where.startswith('section "Quick start"')
    assert foreground.ready_url == "http://127.0.0.1:8002/healthz"
    assert foreground.expected == ["one"]
    assert stop.stops_foreground and stop.unchecked_status_comments() == [
        "iot-telemetry devices disable d   # 403 from now on"]
    assert "unknown mark" in (odd.directive_problem() or "")
    assert missing_sections(text) == [s for s in SECTIONS if s not in ("Quick start", "Security")]


def test_the_background_example_gives_up_with_the_runs_own_error(newcomer) -> None:
    """Issue 23: `until curl ...; do sleep 1; done` looped for good when the run had failed to
    start. The README's own lines, up to its wait, with the ingest port taken: they end
    within seconds and show why."""
    [block] = [b for b in newcomer_blocks()
               if "INGEST_AUTH=registered iot-telemetry local" in b.code]
    lines = block.code.splitlines()
    wait = next(i for i, line in enumerate(lines) if "|| tail" in line)
    head = Block(block.section, block.subsection, block.index, block.line,
                 "\n".join(lines[:wait + 1]) + "\n")
    with socket.socket() as taken:
        # a listener (the address reused: an earlier run's connections may be in TIME_WAIT)
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", PORTS[0]))
        taken.listen()
        started = time.monotonic()
        ran = run_in_terminal(head, newcomer)
        took = time.monotonic() - started
    assert ran.returncode == 0, ran
    assert f"port {PORTS[0]} (ingest) is already in use" in ran.output, ran.output
    assert took < 30, f"the wait took {took:.0f} s to give up"
