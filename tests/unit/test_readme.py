"""The README's configuration table is the one the code generates."""

from pathlib import Path

from iot_telemetry.local.cli import settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_settings_table_is_current() -> None:
    assert settings_table() in README.read_text(), (
        "README.md's settings table is stale: paste the output of `iot-telemetry settings`")
