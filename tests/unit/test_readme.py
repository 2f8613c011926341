"""The README is true: its settings table is the generated one, the examples it promises are
there (tests/readme/ runs them as pasted), and the figures it gives of test runs are dated."""

from __future__ import annotations

import re
from pathlib import Path

from iot_telemetry.local.cli import settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_settings_table_is_current() -> None:
    assert settings_table() in README.read_text(), (
        "README.md's settings table is stale: paste the output of `iot-telemetry settings`")


def test_the_readme_has_the_examples_it_promises() -> None:
    text = "\n".join(re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL))
    for promise in ("/proc/sys/kernel/random/uuid", "/ack", "curl -g", "devices add",
                    "INGEST_AUTH=registered iot-telemetry local", ". .venv/bin/activate"):
        assert promise in text, promise
    assert "uuidgen)" not in README.read_text()


def section(name: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {name}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else len(text)]


DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b|\b(January|February|March|April|May|June|July|August|"
                  r"September|October|November|December) 20\d\d\b")
RUN_FIGURE = re.compile(r"\b\d[\d,]* tests\b|\b\d+ min\b")


def test_figures_of_test_runs_are_dated() -> None:
    """Test counts and timings change with every round: each paragraph of Quick start and
    Development giving one says when it was measured (a table takes its introduction's
    date), or points at the file the run writes (issue 23: "about 660 tests", 792 ran)."""
    undated = []
    for name in ("Quick start", "Development"):
        previous = ""
        for paragraph in re.split(r"\n\s*\n", section(name)):
            table = paragraph.lstrip().startswith("|")
            for part in paragraph.strip().splitlines() if table else [paragraph]:
                dated = bool(DATE.search(part)) or (table and bool(DATE.search(previous)))
                if RUN_FIGURE.search(part) and not dated and "```" not in part:
                    undated.append(f"{name}: {part.strip()[:160]}")
            previous = paragraph
    assert not undated, "figures without a date:\n" + "\n".join(undated)
