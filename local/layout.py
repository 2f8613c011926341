"""Where the repository's parts are, and the local ports (those of the seed's port-forwards)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR: Final = REPO / "functions"
EVENTING_DIR: Final = REPO / "eventing"
SERVICES_DIR: Final = Path(__file__).resolve().parent / "services"

PORTS: Final = {"ingest": 8001, "query": 8002, "aggregate": 8003, "alert": 8004, "notify": 8006}
BROKER_PORT: Final = 8005
FUNCTIONS: Final = tuple(PORTS)
#: THREADS of each function in real mode, as its Knative Service sets them
#: (knative/base/<function>.yaml; tests/deploy checks they agree). functions-framework's own
#: default, 4 per CPU of the host, would differ from one machine to the next.
THREADS: Final = {"ingest": 16, "query": 8, "aggregate": 32, "alert": 8, "notify": 8}


def source(function: str) -> Path:
    """The functions-framework source file of a function."""
    return FUNCTIONS_DIR / f"{function}.py"


def url(function: str, host: str = "127.0.0.1", ports: dict[str, int] | None = None) -> str:
    return f"http://{host}:{(ports or PORTS)[function]}/"
