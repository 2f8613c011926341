"""The floors benchmark's arithmetic: what it reads from /metrics and how it splits an event."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from tests.benchmarks.common import metric_sum, metrics
from tests.benchmarks.floors import _report

METRICS = b"""# HELP iot_store_commands_total Commands sent to the store (round trips)
# TYPE iot_store_commands_total counter
iot_store_commands_total{command="findAndModify"} 600.0
iot_store_commands_total{command="update"} 1800.0
# HELP iot_store_commands_created Commands sent to the store (round trips)
# TYPE iot_store_commands_created gauge
iot_store_commands_created{command="update"} 1.7e+09
iot_events_processed_total{function="aggregate",outcome="applied"} 600.0
"""


@pytest.fixture
def metrics_url() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = 200 if self.path == "/metrics" else 404
            self.send_response(status)
            self.send_header("Content-Length", str(len(METRICS) if status == 200 else 0))
            self.end_headers()
            if status == 200:
                self.wfile.write(METRICS)

        def log_message(self, *_args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_store_commands_are_the_counter_samples_only(metrics_url: str) -> None:
    # Not the _created gauge, not other counters.
    assert metric_sum(metrics(metrics_url), "iot_store_commands_total") == 2400.0


def test_an_event_is_split_into_serving_floors_own_work_and_the_rest() -> None:
    report = _report(
        cpu={"ingest": [3000.0, 3400.0, 3200.0], "aggregate": [3100.0], "alert": [1800.0],
             "trivial": [250.0, 300.0, 280.0]},
        commands={"ingest": [0.0], "aggregate": [4.0], "alert": [1.1]},
        store={"ingest": [0.0], "aggregate": [2400.0], "alert": [1000.0]},
        floors={"kafka-python write": [2700.0], "thread hand-off": [170.0],
                "own aggregate": [400.0], "own alert": [250.0]})

    rows = report["functions"]
    # ingest: the trivial function's 280 (median), Kafka and one hand-off; no own figure.
    assert rows["ingest"]["floors_us"] == 280 + 2700 + 170
    assert rows["ingest"]["rest_us"] == 3200 - (280 + 2700 + 170)
    # aggregate: its store burst, no Kafka write, its own code apart.
    assert rows["aggregate"]["floors_us"] == 280 + 2400 + 170
    assert rows["aggregate"]["rest_us"] == 3100 - (280 + 2400 + 170) - 400
    assert rows["alert"]["per_trivial"] == pytest.approx(1800 / 280)
    assert report["total_us"] == 3200 + 3100 + 1800
    assert report["floors_total_us"] == (280 + 2700 + 170) + (280 + 2400 + 170) + (
        280 + 1000 + 170)
