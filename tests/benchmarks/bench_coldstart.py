"""Figure 5: cold start, from process start to the first successful answer, per function.

What a scale-from-zero costs inside the container: Python start, imports, settings, the
gunicorn arbiter forking its worker, and the first request's lazy work (the Kafka producer's
connection and metadata, the store client's connection, index creation). It leaves out what
Knative adds before the process starts (scheduling the pod, pulling and starting the image).
Reference in the same run: the trivial functions-framework function of figure 1.
"""

from __future__ import annotations

import http.client
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from iot_telemetry.events import JSON, SPECVERSION, TELEMETRY_TYPE, to_http
from iot_telemetry.telemetry import format_time

from .common import FUNCTIONS_DIR, HERE, Context, FunctionServer, create_topic, fresh_db, median


def _request(function: str) -> tuple[str, str, dict[str, str], bytes, tuple[int, ...]]:
    if function == "query":
        return "GET", "/devices", {}, b"", (200,)
    attributes = {"specversion": SPECVERSION, "type": TELEMETRY_TYPE,
                  "source": "/devices/cold-1", "id": str(uuid.uuid4()), "subject": "cold-1",
                  "time": format_time(datetime.now(UTC)), "datacontenttype": JSON}
    headers, body = to_http(attributes, {"metrics": {"temperature": 21.5}})
    ok = (202,) if function in ("ingest", "trivial") else (200, 204)
    return "POST", "/", headers, body, ok


def first_success(server: FunctionServer, function: str, timeout: float = 60.0,
                  ) -> dict[str, float]:
    """Spawn the server; seconds until it first accepts a connection and first succeeds."""
    method, path, headers, body, ok = _request(function)
    t0 = time.perf_counter()
    proc = server.spawn()
    listening: float | None = None
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{function} exited with {proc.returncode} at start")
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            if listening is None:
                listening = time.perf_counter() - t0
            status = conn.getresponse().status
            if status in ok:
                return {"listening_s": listening, "first_success_s": time.perf_counter() - t0}
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.01)
    raise RuntimeError(f"{function}: no successful answer within {timeout:.0f}s")


def run(ctx: Context) -> None:
    starts = ctx.pick(3, 5)
    topic = ctx.name("cold").replace("_", ".")
    create_topic(ctx, topic)
    env = {"KAFKA_BOOTSTRAP_SERVERS": ctx.kafka, "KAFKA_TOPIC": topic, "MONGO_URL": ctx.mongo,
           "LOG_LEVEL": "INFO"}
    raw: dict[str, Any] = {"starts": starts}
    results: dict[str, list[dict[str, float]]] = {}
    functions = ("trivial", "ingest", "aggregate", "alert", "query")
    for n in range(starts):
        for function in functions:  # interleaved, so machine noise spreads over all
            source = (HERE / "trivial_function.py" if function == "trivial"
                      else FUNCTIONS_DIR / f"{function}.py")
            db = fresh_db(ctx, f"cold_{function}_{n}")
            server = FunctionServer(ctx, function, source, {**env, "MONGO_DB": db},
                                    label=f"cold-{function}-{n}")
            try:
                result = first_success(server, function)
            finally:
                server.stop()
            results.setdefault(function, []).append(result)
        ctx.say(f"fig 5: start {n + 1}/{starts}: " + ", ".join(
            f"{f} {results[f][-1]['first_success_s']:.2f}s" for f in functions))
    worst = 0.0
    for function in functions:
        first = median([r["first_success_s"] for r in results[function]])
        listen = median([r["listening_s"] for r in results[function]])
        label = ("  ref trivial function" if function == "trivial" else function)
        ctx.add("5", f"{label}: cold start to first success (median of {starts})",
                first, "s", f"listening after {listen:.2f} s")
        if function != "trivial":
            worst = max(worst, first)
    raw["results"] = results
    ctx.goal("cold start per function", "< 1 s", f"worst median {worst:.2f} s", worst < 1.0)
    ctx.raw["fig5_coldstart"] = raw
