"""`iot-telemetry`'s own behaviour: what it prints, how it stops, the ports it takes."""

from __future__ import annotations

from iot_telemetry.local.cli import _banner

URLS = {f: f"http://127.0.0.1:{p}/" for f, p in
        (("ingest", 8001), ("query", 8002), ("aggregate", 8003), ("alert", 8004))}


def test_banner_without_simulator_links_no_simulated_device() -> None:
    text = _banner("embedded", URLS, simulator=False, extra="")
    assert "sim-0001" not in text
    assert "post readings to http://127.0.0.1:8001/" in text
    assert "sim-0001" in _banner("embedded", URLS, simulator=True, extra="")
