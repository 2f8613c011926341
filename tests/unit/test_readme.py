"""The README is true: its settings table is the generated one, and its shell examples of
the local run work as pasted (run here against `iot-telemetry local` on free ports)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from iot_telemetry.local.cli import PORT_OPTIONS, settings_table

README = Path(__file__).resolve().parents[2] / "README.md"
DEFAULT_PORTS = {name: default for name, (_flag, _var, default) in PORT_OPTIONS.items()}


def test_the_settings_table_is_current() -> None:
    assert settings_table() in README.read_text(), (
        "README.md's settings table is stale: paste the output of `iot-telemetry settings`")


def shell_examples() -> list[str]:
    """The README's bash blocks that talk to a local run (not real mode, not a cluster)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL)
    return [b for b in blocks if ("127.0.0.1:800" in b or "iot-telemetry devices" in b)
            and "services.sh" not in b]


def expected_statuses(block: str) -> list[str]:
    """For each `curl -i` command, the status it must answer: `# NNN` after it, else 2xx."""
    commands = block.replace("\\\n", " ").splitlines()
    return [(m.group(1) if (m := re.search(r"#\s*(\d{3})\b", c)) else "2xx")
            for c in commands if re.match(r"\s*curl\b", c) and re.search(r"\s-[a-z]*i\b", c)]


def free_ports() -> dict[str, int]:
    sockets = [socket.socket() for _ in DEFAULT_PORTS]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = {name: s.getsockname()[1] for name, s in zip(DEFAULT_PORTS, sockets, strict=True)}
    for s in sockets:
        s.close()
    return ports


def environment(ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MONGO_URL", "INGEST_AUTH")}
    env.update({PORT_OPTIONS[name][1]: str(port) for name, port in ports.items()})
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def on_ports(block: str, ports: dict[str, int]) -> str:
    for name, default in DEFAULT_PORTS.items():
        block = block.replace(f"127.0.0.1:{default}", f"127.0.0.1:{ports[name]}")
    return block


@pytest.fixture(scope="module")
def local_run() -> Iterator[dict[str, int]]:
    ports = free_ports()
    proc = subprocess.Popen([sys.executable, "-m", "iot_telemetry.local.cli", "local",
                             "--no-simulator"], env=environment(ports), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("iot-telemetry local"), "the local run did not start"
    yield ports
    proc.terminate()
    proc.wait(timeout=30)


def test_the_readme_has_the_examples_it_promises() -> None:
    text = "\n".join(shell_examples())
    for promise in ("/proc/sys/kernel/random/uuid", "/ack", "curl -g", "devices add",
                    "INGEST_AUTH=registered iot-telemetry local"):
        assert promise in text, promise
    assert "uuidgen)" not in README.read_text()


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's examples use curl")
@pytest.mark.parametrize("block", shell_examples(), ids=lambda b: b.splitlines()[0][:40])
def test_shell_example_runs_as_pasted(block: str, local_run: dict[str, int],
                                      tmp_path: Path) -> None:
    # An example that starts its own local run gets ports of its own.
    ports = free_ports() if "iot-telemetry local" in block else local_run
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", on_ports(block, ports)],
                          cwd=tmp_path, env=environment(ports), capture_output=True, text=True,
                          timeout=120, check=False)
    output = f"{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, output
    statuses = re.findall(r"HTTP/[\d.]+ (\d{3}) ", done.stdout)
    expected = expected_statuses(block)
    assert len(statuses) == len(expected), output
    for got, want in zip(statuses, expected, strict=True):
        assert got == want or (want == "2xx" and got.startswith("2")), output
