"""The README documents every configuration variable the code reads."""

from pathlib import Path

from iot_telemetry.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_variable_is_in_the_readme() -> None:
    text = README.read_text()
    missing = [name for name, _, _ in Settings.variables() if f"`{name}`" not in text]
    assert missing == []
