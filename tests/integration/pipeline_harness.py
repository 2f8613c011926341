"""Harness of the whole-pipeline tests: the four functions and the dispatcher as real processes
(local/realmode.py) on the real Kafka and the atomic store, isolated per test, and the ground truth
they must match.

Isolation: each pipeline has its own MongoDB database (MONGO_DB), its own topics and consumer
groups (the dispatcher's --name-suffix; ingest's KAFKA_TOPIC carries the same suffix) and its
own free ports, so it shares nothing with a developer's `iot-telemetry local` (8001-8005) or
with another test.

Ground truth comes from what the simulator recorded as accepted (its `record=` file):
rollups from tests/truth.py, latest values by event time, and alerts by replaying
`iot_telemetry.alerting.evaluate` per (device, rule) over each device's events in the order
ingest accepted them, which is the order Kafka (keyed by device) delivers them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymongo
import pymongo.errors
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from iot_telemetry.alerting import RuleState, evaluate
from iot_telemetry.events import RawEvent, to_batch
from iot_telemetry.local.eventing import Eventing, load_eventing
from iot_telemetry.local.eventing.dispatcher import Naming
from iot_telemetry.local.layout import EVENTING_DIR, FUNCTIONS, SERVICES_DIR
from iot_telemetry.local.realmode import RealPipeline
from iot_telemetry.local.simulator import SimulationResult, SimulatorOptions, simulate
from iot_telemetry.rules import AlertRule, parse_rules
from iot_telemetry.settings import Settings
from iot_telemetry.telemetry import TelemetryEvent, format_time, validate
from tests.truth import STEPS, close, expected, points_of

# The rules the functions run with (the documented defaults, pinned here so the expected
# alerts do not depend on what the defaults become).
RULES_JSON = json.dumps([
    {"name": "temperature-high", "metric": "temperature", "condition": ">",
     "threshold": 30.0, "clear_threshold": 28.0, "severity": "warning", "for_count": 3},
    {"name": "temperature-critical", "metric": "temperature", "condition": ">=",
     "threshold": 40.0, "clear_threshold": 37.0, "severity": "critical"},
    {"name": "humidity-high", "metric": "humidity", "condition": ">",
     "threshold": 80.0, "clear_threshold": 75.0, "severity": "warning", "for_count": 3},
    {"name": "humidity-low", "metric": "humidity", "condition": "<",
     "threshold": 20.0, "clear_threshold": 25.0, "severity": "warning", "for_count": 3},
])
RULES: tuple[AlertRule, ...] = parse_rules(json.loads(RULES_JSON))

# Fields of an alert document compared with the truth (no acknowledgements in these tests).
ALERT_FIELDS = ("device_id", "metric", "rule", "severity", "state", "count", "peak",
                "last_value", "raised_at", "first_seen", "last_seen", "resolved_at",
                "resolved_value")

#: Accepted events per simulated run (8 devices, 3 readings each, so ~720 points per metric).
EVENTS = 240

Record = tuple[dict[str, Any], dict[str, Any]]  # (attributes, data) of one accepted event


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now (bound together so they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def day_boundary_start(spread: float) -> datetime:
    """A simulated clock start `spread / 2` seconds before today's UTC midnight.

    A run of `spread` seconds of event time then crosses a minute, an hour and a day bucket
    boundary, so every rollup level is checked across buckets.
    """
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - timedelta(seconds=spread / 2)


# --- services (the project's own scripts) -------------------------------------------------

def _port(address: str) -> str:
    return address.rsplit(":", 1)[1].split("/", 1)[0]


def service(name: str, action: str, timeout: float = 240.0) -> float:
    """Run `local/services/<name>.sh <action>`; return the seconds it took."""
    started = time.monotonic()
    done = subprocess.run(["bash", str(SERVICES_DIR / f"{name}.sh"), action],
                          capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name}.sh {action} failed ({done.returncode}): "
                           f"{done.stderr[-2000:]}{done.stdout[-1000:]}")
    return time.monotonic() - started


STORE = "mongo-java-server"  # the script that runs TEST_MONGO_URL's server


def kill_store() -> int:
    """SIGKILL the store's server process (no clean shutdown); return its pid once gone."""
    done = subprocess.run(["bash", str(SERVICES_DIR / f"{STORE}.sh"), "pid"],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{STORE}.sh pid: not running ({done.stderr.strip()})")
    pid = int(done.stdout.strip())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return pid
        if state in ("Z", "X"):  # dead; its parent has not reaped it yet
            return pid
        time.sleep(0.05)
    raise RuntimeError(f"{STORE} pid {pid} still alive 30 s after SIGKILL")


def check_scripts_drive(kafka: str | None, mongo: str) -> None:
    """Stopping a server through its script must stop the one the tests use, no other."""
    script_kafka = os.environ.get("KAFKA_PORT", "9092")
    script_mongo = os.environ.get("MJS_PORT", "27018")
    problems = []
    if kafka is not None and _port(kafka) != script_kafka:
        problems.append(f"tests use Kafka {kafka} but kafka.sh drives port {script_kafka} "
                        "(set KAFKA_PORT)")
    if _port(mongo.split("//", 1)[1]) != script_mongo:
        problems.append(f"tests use {mongo} but mongo-java-server.sh drives port "
                        f"{script_mongo} (set MJS_PORT)")
    if problems:
        raise RuntimeError("; ".join(problems))


# --- HTTP ---------------------------------------------------------------------------------

def http(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 30.0,
         ) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def get_json(url: str) -> Any:
    status, _headers, body = http("GET", url)
    if status != 200:
        raise AssertionError(f"GET {url} answered {status}: {body[:500]!r}")
    return json.loads(body)


# --- ground truth -------------------------------------------------------------------------

def read_records(path: Path) -> list[Record]:
    """Events the simulator recorded as accepted, in the order ingest accepted them."""
    with path.open(encoding="utf-8") as f:
        return [(line["attributes"], line["data"]) for line in map(json.loads, f)]


def first_occurrences(records: Iterable[Record]) -> list[Record]:
    """Each (source, id) once, at its first acceptance: the order its readings count in."""
    seen: set[tuple[str, str]] = set()
    out = []
    for attributes, data in records:
        key = (attributes["source"], attributes["id"])
        if key not in seen:
            seen.add(key)
            out.append((attributes, data))
    return out


def as_event(record: Record) -> TelemetryEvent:
    """The event as the consumers see it (times truncated to milliseconds, UTC)."""
    result = validate(RawEvent(dict(record[0]), record[1]), datetime.now(UTC), limits=None)
    if isinstance(result, list):
        raise AssertionError(f"recorded event {record[0]['id']} is invalid: {result}")
    return result


@dataclass
class Truth:
    """What the query API must show after the pipeline has drained."""

    rollups: dict[str, dict[tuple[str, str, str], dict[str, float]]]
    latest: dict[str, dict[str, dict[str, Any]]]
    alerts: dict[str, dict[str, Any]]
    points: int
    devices: list[str]
    metrics: dict[str, set[str]]
    first: datetime
    last: datetime

    @property
    def alert_events(self) -> set[str]:
        """Ids of the iot.alert.v1 events the alert function must have emitted."""
        out = set()
        for alert_id, doc in self.alerts.items():
            out.add(f"{alert_id}/raised")
            if doc["state"] == "resolved":
                out.add(f"{alert_id}/resolved")
        return out


def expected_alerts(events: Sequence[TelemetryEvent], rules: Sequence[AlertRule],
                    ) -> dict[str, dict[str, Any]]:
    """Replay the rules per (device, rule) over the events in delivery order."""
    states: dict[tuple[str, str], RuleState] = {}
    alerts: dict[str, dict[str, Any]] = {}
    for event in events:
        metrics = {p.metric for p in event.points}
        for rule in rules:
            if rule.metric not in metrics:
                continue
            key = (event.device_id, rule.name)
            state, effects = evaluate(rule, event.device_id, states.get(key, RuleState()),
                                      event.points, event.key)
            states[key] = state
            for e in effects:
                if e.kind == "raised":
                    assert e.first_seen is not None
                    alerts[e.alert_id] = {
                        "device_id": event.device_id, "metric": rule.metric, "rule": rule.name,
                        "severity": rule.severity, "state": "open", "count": e.count,
                        "peak": e.peak, "last_value": e.value, "raised_at": format_time(e.time),
                        "first_seen": format_time(e.first_seen),
                        "last_seen": format_time(e.time), "resolved_at": None,
                        "resolved_value": None}
                elif e.kind == "updated":
                    alerts[e.alert_id].update(count=e.count, peak=e.peak, last_value=e.value,
                                              last_seen=format_time(e.time))
                else:
                    alerts[e.alert_id].update(state="resolved", resolved_at=format_time(e.time),
                                              resolved_value=e.value)
    return alerts


def truth_of(records: Iterable[Record], rules: Sequence[AlertRule] = RULES) -> Truth:
    unique = first_occurrences(records)
    points = [p for attributes, data in unique for p in points_of(attributes, data)]
    events = [as_event(r) for r in unique]
    latest: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for event in events:
        # As the aggregate function keeps it: the newest event time wins, a tie keeps the
        # value that arrived first (within one event, the larger value).
        newest: dict[str, Any] = {}
        for p in event.points:
            cur = newest.get(p.metric)
            if cur is None or (p.time, p.value) > (cur.time, cur.value):
                newest[p.metric] = p
        for metric, p in newest.items():
            cur = latest[event.device_id].get(metric)
            if cur is None or p.time > cur["_time"]:
                latest[event.device_id][metric] = {"value": p.value, "time": format_time(p.time),
                                                   "_time": p.time}
    metrics: dict[str, set[str]] = defaultdict(set)
    for device, metric, _t, _v in points:
        metrics[device].add(metric)
    times = [p.time for e in events for p in e.points]
    return Truth(
        rollups={step: expected(points, step) for step in STEPS},
        latest={d: {m: {"value": v["value"], "time": v["time"]} for m, v in ms.items()}
                for d, ms in latest.items()},
        alerts=expected_alerts(events, rules),
        points=len(points),
        devices=sorted(metrics),
        metrics=dict(metrics),
        first=min(times),
        last=max(times),
    )


# --- the simulator in the background ------------------------------------------------------

class SimRun:
    """simulate() on a thread; `record` is the JSON-lines file of accepted events."""

    def __init__(self, options: SimulatorOptions) -> None:
        assert options.record is not None
        self.options = options
        self.record = Path(options.record)
        self.stop = threading.Event()
        self.result: SimulationResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="simulator", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = simulate(self.options, self.stop)
        except BaseException as exc:
            self.error = exc

    def accepted(self) -> int:
        try:
            with self.record.open("rb") as f:
                return sum(1 for _ in f)
        except FileNotFoundError:
            return 0

    def wait_accepted(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.accepted() < count:
            if not self._thread.is_alive():
                raise AssertionError(f"simulator ended after {self.accepted()} events, "
                                     f"before {count}: {self.result or self.error}")
            if time.monotonic() > deadline:
                raise AssertionError(f"simulator accepted {self.accepted()} events in "
                                     f"{timeout:.0f}s, not {count}")
            time.sleep(0.1)

    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> SimulationResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.stop.set()
            self._thread.join(60)
            raise AssertionError(f"simulator still running after {timeout:.0f}s")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


# --- the pipeline -------------------------------------------------------------------------

@dataclass
class Harness:
    """One isolated real-mode pipeline: processes, topics, groups, database, logs."""

    kafka: str
    mongo: str
    db: str
    log_dir: Path
    eventing_dir: Path = EVENTING_DIR
    extra_env: dict[str, str] = field(default_factory=dict)
    suffix: str = field(default_factory=lambda: f".t{uuid.uuid4().hex[:10]}")
    phases: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.eventing: Eventing = load_eventing(self.eventing_dir)
        self.naming = Naming(self.suffix)
        ports = free_ports(len(FUNCTIONS) + 1)
        self.pipeline = RealPipeline(
            kafka=self.kafka, mongo=self.mongo, ports=dict(zip(FUNCTIONS, ports, strict=False)),
            broker_port=ports[-1], eventing_dir=self.eventing_dir, environ=self._environ(),
            dispatcher_args=("--name-suffix", self.suffix), log_dir=self.log_dir)
        self._consumer: KafkaConsumer | None = None

    # names ---------------------------------------------------------------------------------

    @property
    def telemetry_topic(self) -> str:
        return str(self.naming.topic(self.eventing.sources[0].topics[0]))

    @property
    def broker_topic(self) -> str:
        return str(self.naming.topic(self.eventing.broker.topic))

    def sink_topic(self, sink: str) -> str:
        return str(self.naming.topic(self.eventing.sink_topic(sink)))

    @property
    def dead_letter_topic(self) -> str:
        sink = self.eventing.trigger("aggregate").delivery.dead_letter_sink
        assert sink is not None
        return self.sink_topic(sink)

    @property
    def alerts_topic(self) -> str:
        trigger = next(t for t in self.eventing.triggers if t.sink is not None)
        assert trigger.sink is not None
        return self.sink_topic(trigger.sink)

    def topics(self) -> list[str]:
        names = {self.telemetry_topic, self.broker_topic}
        names |= {self.sink_topic(s) for s in self.eventing.sinks}
        return sorted(names)

    def groups(self) -> dict[str, list[str]]:
        """Consumer group -> topics it reads (the KafkaSource's and each Trigger's)."""
        out = {self.naming.group(s.consumer_group): [self.naming.topic(t) for t in s.topics]
               for s in self.eventing.sources}
        out.update({self.naming.group(t.consumer_group): [self.broker_topic]
                    for t in self.eventing.triggers})
        return out

    def url(self, function: str) -> str:
        return str(self.pipeline.url(function))

    @property
    def broker_url(self) -> str:
        return f"http://127.0.0.1:{self.pipeline.broker_port}/"

    def _environ(self) -> dict[str, str]:
        settings = {name for name, _default, _doc in Settings.variables()}
        env = {k: v for k, v in os.environ.items() if k not in settings}
        env.update({
            "MONGO_DB": self.db,
            "KAFKA_TOPIC": self.telemetry_topic,
            "ALERT_RULES": RULES_JSON,
            # Short waits so a fault shows within seconds, not the production defaults.
            "KAFKA_SEND_TIMEOUT_SECONDS": "3",
            "INGEST_RETRY_AFTER_SECONDS": "1",
            # MONGO_TIMEOUT_MS stays at its default: a client timeout while the store still runs
            # the command is a fault of its own (see the kill tests), and a stopped store
            # refuses connections at once anyway.
            "LOG_LEVEL": "INFO",
            **self.extra_env,
        })
        return env

    # lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> Harness:
        started = time.monotonic()
        self.pipeline.start(timeout)
        self.wait_dispatcher_ready(timeout)
        self.phases["start_s"] = round(time.monotonic() - started, 1)
        return self

    def wait_dispatcher_ready(self, timeout: float) -> None:
        """Until the dispatcher's ingress says every consumer has its partitions."""
        deadline = time.monotonic() + timeout
        while True:
            proc = self.pipeline.processes["dispatcher"]
            if proc.poll() is not None:
                raise RuntimeError(f"dispatcher exited with {proc.returncode}:\n"
                                   + self.log_tail("dispatcher"))
            try:
                if http("GET", self.broker_url + "readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("dispatcher not ready:\n" + self.log_tail("dispatcher"))
            time.sleep(0.2)

    def stop(self) -> None:
        try:
            self.pipeline.stop()
        finally:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
            self._delete_kafka_state()

    def _delete_kafka_state(self) -> None:
        try:
            admin = KafkaAdminClient(bootstrap_servers=self.kafka, request_timeout_ms=10000)
        except Exception:
            return  # Kafka is gone; nothing to tidy
        try:
            existing = set(admin.list_topics())
            mine = [t for t in self.topics() if t in existing]
            if mine:
                admin.delete_topics(mine)
            groups = {g["group_id"] for g in admin.list_groups()}
            ours = [g for g in self.groups() if g in groups]
            if ours:
                admin.delete_groups(ours)
        except Exception:
            pass  # best effort: fresh names per test keep leftovers harmless
        finally:
            admin.close()

    def __enter__(self) -> Harness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def dump_store(self) -> None:
        """Write every collection of the test's database to the log directory (for a failure)."""
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            self.mongo, serverSelectionTimeoutMS=5000)
        try:
            db = client[self.db]
            self.log_dir.mkdir(parents=True, exist_ok=True)
            for name in db.list_collection_names():
                with (self.log_dir / f"store-{name}.jsonl").open("w", encoding="utf-8") as f:
                    for doc in db[name].find():
                        f.write(json.dumps(doc, default=str) + "\n")
        except pymongo.errors.PyMongoError:
            pass
        finally:
            client.close()

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return f"({path} missing)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def log_lines(self, name: str, contains: str) -> list[dict[str, Any]]:
        """JSON log lines of one process whose message contains `contains`."""
        path = self.log_dir / f"{name}.log"
        out = []
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and contains in str(entry.get("message", "")):
                    out.append(entry)
        return out

    # waiting for a condition, never for a fixed time ------------------------------------------

    def wait_until(self, what: str, condition: Callable[[], bool], timeout: float = 60.0,
                   ) -> float:
        """Poll `condition` until it holds; the seconds it took. Fails naming `what`."""
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout:
                raise AssertionError(f"not within {timeout:.0f}s: {what}\n"
                                     + self.log_tail("dispatcher"))
            time.sleep(0.1)
        return time.monotonic() - started

    def retried(self, trigger: str, reason: str = "") -> bool:
        """Whether the dispatcher has retried a delivery of `trigger` (for `reason`)."""
        return any(e.get("trigger") == trigger and reason in str(e.get("reason"))
                   for e in self.log_lines("dispatcher", "delivery failed, retrying"))

    def metric(self, function: str, sample: str) -> float:
        """The value of one sample (`name{labels}`) on a function's /metrics; 0 if absent."""
        _status, _headers, body = http("GET", self.url(function) + "metrics")
        for line in body.decode().splitlines():
            name, _, value = line.rpartition(" ")
            if name == sample:
                return float(value)
        return 0.0

    # driving -------------------------------------------------------------------------------

    def sim_options(self, record: Path, **overrides: Any) -> SimulatorOptions:
        options: dict[str, Any] = {
            "url": self.url("ingest"), "devices": 8, "rate": 40.0, "events": EVENTS,
            "duration": 0.0, "mode": "binary", "samples": 2, "anomaly_rate": 0.04,
            "seed": 7, "concurrency": 2, "progress": False, "record": str(record)}
        options.update(overrides)
        if "start_time" not in options:
            spread = options["events"] / options["rate"] if options["rate"] else 10.0
            options["start_time"] = day_boundary_start(spread)
        return SimulatorOptions(**options)

    def simulate(self, options: SimulatorOptions, timeout: float = 240.0) -> SimulationResult:
        started = time.monotonic()
        result = SimRun(options).join(timeout)
        self.phases["simulate_s"] = round(time.monotonic() - started, 1)
        return result

    def resend(self, records: Sequence[Record], batch: int = 100) -> None:
        """Post recorded events to ingest again, in batches, in the recorded order."""
        for i in range(0, len(records), batch):
            body = to_batch(records[i:i + batch])
            for _attempt in range(30):
                status, _h, reply = http("POST", self.url("ingest"), body,
                                         {"Content-Type": "application/cloudevents-batch+json"})
                if status != 503:
                    break
                time.sleep(1)
            assert status == 202, (status, reply[:500])

    def produce(self, records: Sequence[tuple[bytes, list[tuple[str, bytes]], bytes]],
                topic: str | None = None) -> None:
        """Write raw records (key, headers, value) onto the telemetry topic, bypassing ingest."""
        producer = KafkaProducer(bootstrap_servers=self.kafka, acks="all")
        try:
            for key, headers, value in records:
                producer.send(topic or self.telemetry_topic, key=key, value=value,
                              headers=headers).get(timeout=30)
        finally:
            producer.close()

    # Kafka observation ---------------------------------------------------------------------

    def _kafka_consumer(self) -> KafkaConsumer:
        if self._consumer is None:
            self._consumer = KafkaConsumer(bootstrap_servers=self.kafka,
                                           request_timeout_ms=15000, enable_auto_commit=False)
        return self._consumer

    def lag(self) -> dict[str, int]:
        """Per consumer group: records on its topics not yet committed as done."""
        admin = KafkaAdminClient(bootstrap_servers=self.kafka, request_timeout_ms=10000)
        try:
            consumer = self._kafka_consumer()
            out = {}
            for group, topics in self.groups().items():
                tps = [TopicPartition(t, p) for t in topics
                       for p in sorted(consumer.partitions_for_topic(t) or ())]
                if not tps:
                    out[group] = -1  # topic not there yet
                    continue
                ends = consumer.end_offsets(tps)
                committed = admin.list_group_offsets({group: None}).get(group, {})
                total = 0
                for tp in tps:
                    done = committed.get(tp)
                    offset = done.offset if done is not None and done.offset >= 0 else 0
                    total += max(0, ends[tp] - offset)
                out[group] = total
            return out
        finally:
            admin.close()

    def wait_drained(self, timeout: float = 180.0) -> float:
        """Until every consumer group has committed everything on its topics, twice in a row
        (an alert reply written at the end adds records to the broker topic)."""
        started = time.monotonic()
        deadline = started + timeout
        quiet = 0
        lag: dict[str, int] = {}
        while quiet < 2:
            try:
                lag = self.lag()
            except Exception as exc:  # Kafka coming back after a fault test
                lag = {f"(no answer: {type(exc).__name__}: {exc})": -1}
            quiet = quiet + 1 if lag and all(v == 0 for v in lag.values()) else 0
            if time.monotonic() > deadline:
                raise AssertionError(f"pipeline not drained after {timeout:.0f}s: lag {lag}\n"
                                     + self.log_tail("dispatcher"))
            time.sleep(0.5)
        took = time.monotonic() - started
        self.phases["drain_s"] = round(self.phases.get("drain_s", 0) + took, 1)
        return took

    def read_topic(self, topic: str, timeout_ms: int = 3000) -> list[Any]:
        consumer = KafkaConsumer(topic, bootstrap_servers=self.kafka,
                                 auto_offset_reset="earliest", enable_auto_commit=False,
                                 consumer_timeout_ms=timeout_ms)
        try:
            return list(consumer)
        finally:
            consumer.close()

    # query observation ---------------------------------------------------------------------

    def series(self, device: str, metric: str, step: str, first: datetime, last: datetime,
               ) -> list[dict[str, Any]]:
        margin = {"1m": timedelta(hours=1), "1h": timedelta(days=2), "1d": timedelta(days=30)}
        params = urllib.parse.urlencode({
            "metric": metric, "step": step, "from": format_time(first - margin[step]),
            "to": format_time(last + margin[step])})
        body = get_json(f"{self.url('query')}devices/{device}/series?{params}")
        buckets: list[dict[str, Any]] = body["buckets"]
        return buckets

    def observed_rollups(self, truth: Truth, step: str,
                         ) -> dict[tuple[str, str, str], dict[str, float]]:
        out = {}
        for device in truth.devices:
            for metric in sorted(truth.metrics[device]):
                for b in self.series(device, metric, step, truth.first, truth.last):
                    out[(device, metric, b["t"])] = {"count": b["count"], "sum": b["sum"],
                                                     "min": b["min"], "max": b["max"]}
        return out

    def devices(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        cursor = None
        while True:
            url = f"{self.url('query')}devices?limit=100" + (f"&cursor={cursor}" if cursor else "")
            body = get_json(url)
            out.update({d["id"]: d for d in body["devices"]})
            if not (cursor := body["next_cursor"]):
                return out

    def alerts(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        cursor = None
        while True:
            url = f"{self.url('query')}alerts?limit=200" + (f"&cursor={cursor}" if cursor else "")
            body = get_json(url)
            out.update({a["id"]: a for a in body["alerts"]})
            if not (cursor := body["next_cursor"]):
                return out

    # the exact check -----------------------------------------------------------------------

    def mismatches(self, truth: Truth) -> list[str]:
        """Every difference between what query shows and the truth (empty when exact)."""
        problems: list[str] = []
        for step in STEPS:
            got = self.observed_rollups(truth, step)
            want = truth.rollups[step]
            if not close(got, want):
                missing = sorted(set(want) - set(got))[:5]
                extra = sorted(set(got) - set(want))[:5]
                differ = [(k, got[k], want[k]) for k in sorted(set(got) & set(want))
                          if not close({k: got[k]}, {k: want[k]})][:5]
                problems.append(f"rollups {step}: {len(want)} buckets expected, {len(got)} "
                                f"seen; missing {missing}; extra {extra}; differ {differ}")
        devices = self.devices()
        shown = {d: {m: {"value": v["value"], "time": v["time"]}
                     for m, v in devices[d]["metrics"].items()} for d in devices}
        if shown != truth.latest:
            sample = {d: (shown.get(d), truth.latest.get(d)) for d in sorted(set(shown)
                      | set(truth.latest)) if shown.get(d) != truth.latest.get(d)}
            problems.append(f"latest values differ (seen, expected): {sample}")
        alerts = {a: {f: doc.get(f) for f in ALERT_FIELDS} for a, doc in self.alerts().items()}
        if alerts != truth.alerts:
            lost = sorted(set(truth.alerts) - set(alerts))
            more = sorted(set(alerts) - set(truth.alerts))
            wrong = [(a, {f: (alerts[a][f], truth.alerts[a][f]) for f in ALERT_FIELDS
                          if alerts[a][f] != truth.alerts[a][f]})
                     for a in sorted(set(alerts) & set(truth.alerts))
                     if alerts[a] != truth.alerts[a]]
            problems.append(f"alerts (seen, expected): {len(truth.alerts)} expected, "
                            f"{len(alerts)} seen; missing {lost[:5]}; extra {more[:5]}; "
                            f"differ {wrong[:3]}")
        return problems

    def assert_exact(self, records: Sequence[Record], timeout: float = 180.0) -> Truth:
        """Drain, then require query to show exactly the truth of `records`."""
        truth = truth_of(records)
        self.wait_drained(timeout)
        started = time.monotonic()
        problems = self.mismatches(truth)
        # Drained means every record was handled; a mismatch now is a real one, but give a
        # retried write that raced the lag check one more look before failing.
        if problems:
            time.sleep(2)
            self.wait_drained(timeout)
            problems = self.mismatches(truth)
        self.phases["check_s"] = round(time.monotonic() - started, 1)
        self.phases["truth"] = {"events": len(first_occurrences(records)),
                                "points": truth.points,
                                "buckets": {s: len(b) for s, b in truth.rollups.items()},
                                "alerts": len(truth.alerts),
                                "resolved": sum(a["state"] == "resolved"
                                                for a in truth.alerts.values())}
        assert not problems, "\n".join(problems)
        return truth

    def alert_event_ids(self) -> set[str]:
        """Ids of the iot.alert.v1 events that reached the alerts topic (via the Trigger)."""
        ids = set()
        for m in self.read_topic(self.alerts_topic):
            headers = dict(m.headers or ())
            assert headers.get("ce_type") == b"iot.alert.v1", headers
            ids.add(headers["ce_id"].decode())
        return ids

