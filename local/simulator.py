"""Device-fleet simulator: posts telemetry CloudEvents over HTTP to ingest, like real devices.

Each device is a random walk (temperature, humidity, and a draining battery for some) that
now and then has an anomaly episode, so alerts raise and later resolve. Events are sent in
binary, structured or batch mode; a request is retried unchanged (same event ids) until ingest
accepts it, so nothing a device measured is lost while ingest or Kafka is restarting.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import queue
import random
import signal
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import IO, Any, Final
from urllib.parse import urlsplit

from iot_telemetry.events import (
    BATCH,
    JSON,
    SPECVERSION,
    STRUCTURED,
    TELEMETRY_TYPE,
    to_batch,
    to_http,
)
from iot_telemetry.telemetry import format_time

MODES: Final = ("binary", "structured", "batch")
# Knative's rules retry these 4xx; every other 4xx means the event itself is bad.
RETRYABLE_4XX: Final = frozenset({408, 429})
BACKOFF_START: Final = 0.1
BACKOFF_CAP: Final = 5.0
# A Retry-After beyond this is treated as this: a simulator should not sleep for an hour.
RETRY_AFTER_CAP: Final = 60.0
# Once generation has ended, in-flight requests keep being retried this long, then abandoned.
DRAIN_GRACE: Final = 30.0
# A batch is sent when full or when its first event has waited this long (gateway flush).
BATCH_LINGER: Final = 1.0
REQUEST_TIMEOUT: Final = 30.0
MAX_SAMPLES: Final = 1000
MAX_ERROR_KEYS: Final = 50
ABANDONED: Final = "abandoned at stop"
# Progress redraws in place on a terminal; into a file or pipe it is one line this often.
LIVE_INTERVAL: Final = 0.5
LOG_INTERVAL: Final = 5.0
USER_AGENT: Final = "iot-telemetry-simulator/1"


@dataclass(frozen=True)
class SimulatorOptions:
    """What to simulate and where to send it."""

    url: str = "http://127.0.0.1:8001/"
    devices: int = 10
    rate: float = 2.0  # events per second across the fleet (0 = as fast as possible)
    duration: float = 60.0  # seconds; 0 = until stopped
    events: int = 0  # stop after this many accepted events (0 = no limit)
    mode: str = "binary"  # binary | structured | batch
    batch_size: int = 20  # events per request in batch mode
    samples: int = 0  # buffered readings per event (data.samples)
    anomaly_rate: float = 0.02  # chance per reading that a device starts an anomaly episode
    duplicate_rate: float = 0.0  # chance an accepted request is sent again verbatim
    disorder: float = 0.0  # chance an event's time is shifted back 1-120 s (late reading)
    seed: int | None = None
    concurrency: int = 2  # worker threads posting
    progress: bool = True  # status on stderr (redrawn ~2x/s on a terminal, else a line per 5 s)
    record: str | None = None  # JSON-lines file of every accepted event
    start_time: datetime | None = None  # simulated clock start (default now)
    token: str | None = None  # sent as Authorization: Bearer
    # Per-device tokens (INGEST_AUTH=registered); a device not in it sends `token`.
    tokens: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        problems = []
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"url: {self.url!r} is not an http(s) URL")
        for name in ("devices", "batch_size", "concurrency"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be at least 1")
        for name in ("rate", "duration"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                problems.append(f"{name}: must be a finite number >= 0")
        if self.events < 0:
            problems.append("events: must be >= 0")
        if self.mode not in MODES:
            problems.append(f"mode: must be one of {', '.join(MODES)}")
        if not 0 <= self.samples <= MAX_SAMPLES:
            problems.append(f"samples: must be between 0 and {MAX_SAMPLES}")
        for name in ("anomaly_rate", "duplicate_rate", "disorder"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name}: must be a probability between 0 and 1")
        if problems:
            raise ValueError("invalid simulator options: " + "; ".join(problems))


@dataclass
class SimulationResult:
    """Counts of one run; `sent_requests` counts every HTTP attempt, retries included."""

    sent_requests: int = 0
    accepted_events: int = 0
    accepted_points: int = 0
    rejected_events: int = 0
    retries: int = 0
    duplicates_sent: int = 0
    elapsed: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Event:
    attributes: dict[str, Any]
    data: dict[str, Any]
    points: int


class Device:
    """One simulated device: readings follow a bounded random walk with anomaly episodes."""

    def __init__(self, device_id: str, rng: random.Random, worker: int) -> None:
        self.device_id, self.rng, self.worker = device_id, rng, worker
        self.temperature = rng.uniform(19.0, 25.0)
        self.humidity = rng.uniform(35.0, 55.0)
        self.battery: float | None = rng.uniform(60.0, 100.0) if rng.random() < 0.4 else None
        self.drain = rng.uniform(0.005, 0.05)
        self.anomaly_left = 0
        # Normal readings still due after an episode, so an alert can resolve before the next.
        self.calm_left = 0
        self.last_time: datetime | None = None

    def read(self, anomaly_rate: float) -> dict[str, float]:
        """Take one reading of every metric."""
        rng = self.rng
        # Mean-reverting walks keep the values in a realistic band (18-26 °C, 30-60 %).
        self.temperature += rng.gauss(0.0, 0.15) + 0.05 * (22.0 - self.temperature)
        self.temperature = min(26.0, max(18.0, self.temperature))
        self.humidity += rng.gauss(0.0, 0.5) + 0.05 * (45.0 - self.humidity)
        self.humidity = min(60.0, max(30.0, self.humidity))
        if self.anomaly_left == 0 and self.calm_left == 0 and rng.random() < anomaly_rate:
            self.anomaly_left = rng.randint(3, 8)
        if self.anomaly_left:
            self.anomaly_left -= 1
            if self.anomaly_left == 0:
                self.calm_left = rng.randint(3, 6)
            temperature, humidity = rng.uniform(41.0, 48.0), rng.uniform(86.0, 95.0)
        else:
            self.calm_left = max(0, self.calm_left - 1)
            temperature, humidity = self.temperature, self.humidity
        metrics = {"temperature": round(temperature, 2), "humidity": round(humidity, 1)}
        if self.battery is not None:
            self.battery -= self.drain
            if self.battery < 5.0:
                self.battery = 100.0  # battery swapped
            metrics["battery"] = round(self.battery, 1)
        return metrics

    def measure(self, at: datetime, samples: int, anomaly_rate: float,
                late: timedelta = timedelta(0)) -> dict[str, Any]:
        """Data of an event at `at`: `samples` readings buffered since the last event, then now."""
        # The first event pretends the device buffered one reading a second before it.
        previous = self.last_time or at - timedelta(seconds=samples)
        step = (at - previous) / (samples + 1)
        buffered = [
            {"time": format_time(previous + step * (i + 1) - late),
             "metrics": self.read(anomaly_rate)}
            for i in range(samples)
        ]
        self.last_time = at
        data: dict[str, Any] = {"metrics": self.read(anomaly_rate)}
        if buffered:
            data["samples"] = buffered
        return data


def device_ids(count: int) -> list[str]:
    """The ids of a simulated fleet: sim-0001, sim-0002, ..."""
    width = max(4, len(str(count)))
    return [f"sim-{n:0{width}d}" for n in range(1, count + 1)]


def _rng(seed: int | None, name: str) -> random.Random:
    """Randomness of the simulation (not of security), reproducible when seeded."""
    return random.Random(f"{seed}:{name}") if seed is not None else random.Random()  # noqa: S311


def _points(data: Mapping[str, Any]) -> int:
    return len(data.get("metrics", {})) + sum(len(s["metrics"]) for s in data.get("samples", []))


def _encode(mode: str, events: Sequence[_Event], token: str | None) -> tuple[dict[str, str], bytes]:
    if mode == "binary":
        headers, body = to_http(events[0].attributes, events[0].data)
    elif mode == "structured":
        headers = {"Content-Type": STRUCTURED}
        body = json.dumps({**events[0].attributes, "data": events[0].data},
                          separators=(",", ":")).encode()
    else:
        headers = {"Content-Type": BATCH}
        body = to_batch([(e.attributes, e.data) for e in events])
    headers["User-Agent"] = USER_AGENT
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers, body


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def _reason(body: bytes) -> str:
    """The server's explanation of a rejection, in one line."""
    text = body.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        text = str(payload.get("message") or payload.get("error") or text)
    line = " ".join(text.split())
    return line[:300] or "(no reason given)"


class _Stats:
    """Thread-safe counters of a run, the record file, and the events-limit reservation."""

    def __init__(self, record: IO[str] | None, say: Callable[[str], None]) -> None:
        self.cond = threading.Condition()
        self.result = SimulationResult()
        self.pending = 0  # events generated but neither accepted nor rejected yet
        self.limited = False  # the generator waits for pending events under the events limit
        self.record, self.say = record, say
        self.reasons: set[str] = set()

    def reserve(self, limit: int, stop: threading.Event) -> bool:
        """Wait until one more event fits under the events limit; False when it never will."""
        with self.cond:
            try:
                while limit and self.result.accepted_events + self.pending >= limit:
                    if self.result.accepted_events >= limit or stop.is_set():
                        return False
                    self.limited = True
                    self.cond.wait(0.1)
            finally:
                self.limited = False
            self.pending += 1
            return True

    def _error(self, key: str, count: int = 1) -> None:
        errors = self.result.errors
        if key not in errors and len(errors) >= MAX_ERROR_KEYS:
            key = key.split(":", 1)[0] + ": (other)"
        errors[key] = errors.get(key, 0) + count

    def sent(self, retry: bool) -> None:
        with self.cond:
            self.result.sent_requests += 1
            self.result.retries += retry

    def error(self, key: str) -> None:
        with self.cond:
            self._error(key)

    def duplicate(self) -> None:
        with self.cond:
            self.result.duplicates_sent += 1

    def accepted(self, events: Sequence[_Event]) -> None:
        with self.cond:
            self.result.accepted_events += len(events)
            self.result.accepted_points += sum(e.points for e in events)
            self.pending -= len(events)
            if self.record is not None:
                for event in events:
                    line = {"attributes": event.attributes, "data": event.data}
                    self.record.write(json.dumps(line, separators=(",", ":")) + "\n")
                self.record.flush()
            self.cond.notify_all()

    def rejected(self, events: Sequence[_Event], status: int, reason: str) -> None:
        key = f"{status}: {reason}"
        with self.cond:
            self.result.rejected_events += len(events)
            self.pending -= len(events)
            self._error(key)
            first = key not in self.reasons
            self.reasons.add(key)
            self.cond.notify_all()
        if first:
            self.say(f"sim: ingest rejected {len(events)} event(s) with {key}")

    def abandoned(self, count: int) -> None:
        with self.cond:
            self.pending -= count
            self._error(ABANDONED, count)
            self.cond.notify_all()

    def snapshot(self, elapsed: float) -> SimulationResult:
        with self.cond:
            r = self.result
            return SimulationResult(r.sent_requests, r.accepted_events, r.accepted_points,
                                    r.rejected_events, r.retries, r.duplicates_sent, elapsed,
                                    dict(r.errors))


def format_status(result: SimulationResult, url: str, final: bool = False) -> str:
    """The progress line (or, with `final`, the summary line) of a run."""
    per_second = result.accepted_events / result.elapsed if result.elapsed > 0 else 0.0
    line = (f"sim {result.elapsed:5.1f}s  events {result.accepted_events} ({per_second:.1f}/s)"
            f"  points {result.accepted_points}  rejected {result.rejected_events}"
            f"  retries {result.retries}  → {url}")
    if final:
        line += f"  (requests {result.sent_requests}, duplicates {result.duplicates_sent})"
        if result.errors:
            line += "  errors " + ", ".join(f"{k} x{n}" for k, n in result.errors.items())
    return line


class _Run:
    """One simulation: a generator (the calling thread) feeding one queue per worker thread."""

    def __init__(self, options: SimulatorOptions, stop: threading.Event) -> None:
        self.options, self.stop = options, stop
        self.abort = threading.Event()  # second Ctrl-C, or a worker crashed: give up now
        self.generated = threading.Event()  # generation ended; workers drain their queues
        self.drain_deadline = math.inf
        self.started = time.monotonic()
        self.output_lock = threading.Lock()
        self.status_width = 0
        # A `\r` redraw only makes sense on a terminal: in a log file it makes one endless line.
        self.live = sys.stderr.isatty()
        seed = options.seed
        self.rng = _rng(seed, "fleet")
        self.devices = []
        for device_id in device_ids(options.devices):
            rng = _rng(seed, device_id)
            worker = zlib.crc32(device_id.encode()) % options.concurrency
            self.devices.append(Device(device_id, rng, worker))
        self.stats = _Stats(None, self.say)
        self.workers = [_Worker(self, i) for i in range(options.concurrency)]

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, message: str, status: bool = False) -> None:
        """Write to stderr; a status line is redrawn in place, other lines go above it."""
        with self.output_lock:
            if not self.live:
                sys.stderr.write(message + "\n")
                sys.stderr.flush()
                return
            pad = " " * max(0, self.status_width - len(message))
            sys.stderr.write(f"\r{message}{pad}" + ("" if status else "\n"))
            sys.stderr.flush()
            self.status_width = len(message) if status else 0

    def should_abandon(self) -> bool:
        return self.abort.is_set() or time.monotonic() > self.drain_deadline

    def pause(self, seconds: float) -> None:
        """Sleep before a retry, waking early when the run is being abandoned."""
        until = time.monotonic() + seconds
        while not self.should_abandon() and (left := until - time.monotonic()) > 0:
            self.abort.wait(min(left, 0.2))

    def execute(self) -> SimulationResult:
        options = self.options
        record = open(options.record, "w", encoding="utf-8") if options.record else None  # noqa: SIM115
        self.stats.record = record
        finished = threading.Event()
        reporter = threading.Thread(target=self._report, args=(finished,), daemon=True,
                                    name="sim-progress")
        try:
            for worker in self.workers:
                worker.start()
            if options.progress:
                reporter.start()
            try:
                self._generate()
            except KeyboardInterrupt:
                self.stop.set()
                self.say("sim: stopping after in-flight requests (Ctrl-C again abandons them)")
            except BaseException:
                self.abort.set()
                raise
            finally:
                self.drain_deadline = time.monotonic() + DRAIN_GRACE
                self.generated.set()
                self._join()
        finally:
            finished.set()
            if reporter.is_alive():
                reporter.join()
            if record is not None:
                record.close()
        result = self.stats.snapshot(self.elapsed())
        if options.progress:
            self.say(format_status(result, options.url, final=True))
        return result

    def _join(self) -> None:
        for worker in self.workers:
            while worker.is_alive():
                try:
                    worker.join(0.2)
                except KeyboardInterrupt:
                    self.abort.set()

    def _report(self, finished: threading.Event) -> None:
        while not finished.wait(LIVE_INTERVAL if self.live else LOG_INTERVAL):
            self.say(format_status(self.stats.snapshot(self.elapsed()), self.options.url), True)

    def _generate(self) -> None:
        """Measure on schedule, round-robin over the fleet, and queue each event to its worker."""
        options = self.options
        start = options.start_time or datetime.now(UTC)
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        count = 0
        while not self.stop.is_set() and not self.abort.is_set():
            now = self.elapsed()
            if options.duration and now >= options.duration:
                return
            if options.rate > 0:
                # Measurement times follow the schedule even when sending falls behind:
                # a device buffers its readings while ingest is slow and sends them later.
                offset = count / options.rate
                if options.duration and offset >= options.duration:
                    return
                if offset > now:
                    self.stop.wait(offset - now)
                    continue
            if not self.stats.reserve(options.events, self.stop):
                return
            if options.rate <= 0:
                offset = self.elapsed()
            device = self.devices[count % len(self.devices)]
            self._queue(device, self._event(device, start + timedelta(seconds=offset)))
            count += 1

    def _event(self, device: Device, at: datetime) -> _Event:
        options = self.options
        late = timedelta(0)
        if options.disorder and self.rng.random() < options.disorder:
            late = timedelta(seconds=self.rng.uniform(1.0, 120.0))
        data = device.measure(at, options.samples, options.anomaly_rate, late)
        attributes = {
            "specversion": SPECVERSION,
            "type": TELEMETRY_TYPE,
            "source": f"/devices/{device.device_id}",
            # Random, never seeded: ids must stay unique across runs or dedup drops the data.
            "id": str(uuid.uuid4()),
            "subject": device.device_id,
            "time": format_time(at - late),
            "datacontenttype": JSON,
        }
        return _Event(attributes, data, _points(data))

    def _queue(self, device: Device, event: _Event) -> None:
        target = self.workers[device.worker].queue
        while not self.abort.is_set():
            try:
                target.put(event, timeout=0.1)
                return
            except queue.Full:
                continue
        self.stats.abandoned(1)


class _Worker(threading.Thread):
    """Posts the events of its devices, in order, over one keep-alive connection."""

    def __init__(self, run: _Run, index: int) -> None:
        super().__init__(name=f"sim-worker-{index}", daemon=True)
        self.run_, self.options, self.stats = run, run.options, run.stats
        self.queue: queue.Queue[_Event] = queue.Queue(maxsize=max(64, 4 * run.options.batch_size))
        seed = run.options.seed
        self.rng = _rng(seed, f"worker-{index}")
        parts = urlsplit(run.options.url)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.connection: http.client.HTTPConnection | None = None
        self.reused = False

    def run(self) -> None:
        try:
            while events := self._take():
                self._deliver(events)
        except Exception as exc:  # a bug here must not leave the generator waiting forever
            self.stats.error(f"internal: {exc!r}")
            self.run_.say(f"sim: worker crashed: {exc!r}")
            self.run_.abort.set()
        finally:
            self._close()

    def _take(self) -> list[_Event]:
        """The next request's events: one, or in batch mode up to a full or lingering batch."""
        limit = self.options.batch_size if self.options.mode == "batch" else 1
        events: list[_Event] = []
        deadline = math.inf
        while len(events) < limit and (left := deadline - time.monotonic()) > 0:
            try:
                events.append(self.queue.get(timeout=min(left, 0.1)))
            except queue.Empty:
                # Nothing more will come soon: send what there is rather than linger.
                if self.run_.generated.is_set() or (events and self.stats.limited):
                    break
                continue
            if deadline == math.inf:
                deadline = time.monotonic() + BATCH_LINGER
        return events

    def _deliver(self, events: list[_Event]) -> None:
        token = self.options.token
        if self.options.tokens:
            token = self.options.tokens.get(events[0].attributes["subject"], token)
        headers, body = _encode(self.options.mode, events, token)
        outcome = self._send(headers, body)
        if outcome is None:
            self.stats.abandoned(len(events))
            return
        status, reply = outcome
        if 200 <= status < 300:
            self.stats.accepted(events)
            if self.options.duplicate_rate and self.rng.random() < self.options.duplicate_rate:
                self.stats.duplicate()
                again = self._send(headers, body)
                if again is not None and not 200 <= again[0] < 300:
                    self.stats.error(f"{again[0]} (duplicate): {_reason(again[1])}")
        elif status == 413 and len(events) > 1:
            # Too large for ingest: send each half rather than lose the readings.
            half = len(events) // 2
            self._deliver(events[:half])
            self._deliver(events[half:])
        else:
            self.stats.rejected(events, status, _reason(reply))

    def _send(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes] | None:
        """Post until answered with anything but a retryable status; None when abandoned."""
        backoff = BACKOFF_START
        attempt = 0
        while not self.run_.should_abandon():
            self.stats.sent(retry=attempt > 0)
            attempt += 1
            try:
                status, retry_after, reply = self._post(headers, body)
            except (OSError, http.client.HTTPException) as exc:
                self._close()
                self.stats.error(f"connection: {type(exc).__name__}")
                self.run_.pause(backoff)
                backoff = min(backoff * 2, BACKOFF_CAP)
                continue
            if status >= 500 or status in RETRYABLE_4XX:
                self.stats.error(str(status))
                delay = _retry_after(retry_after)
                self.run_.pause(min(RETRY_AFTER_CAP, backoff if delay is None else delay))
                backoff = min(backoff * 2, BACKOFF_CAP)
                continue
            return status, reply
        return None

    def _post(self, headers: dict[str, str], body: bytes) -> tuple[int, str | None, bytes]:
        if self.connection is None:
            parts = urlsplit(self.options.url)
            factory = (http.client.HTTPSConnection if parts.scheme == "https"
                       else http.client.HTTPConnection)
            self.connection = factory(parts.hostname or "", parts.port, timeout=REQUEST_TIMEOUT)
            self.reused = False
        try:
            self.connection.request("POST", self.path, body=body, headers=headers)
            response = self.connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not self.reused:
                raise
            # The server closed an idle keep-alive connection: reconnect once, silently.
            self._close()
            return self._post(headers, body)
        self.reused = not response.will_close
        return response.status, response.getheader("Retry-After"), response.read()

    def _close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def simulate(options: SimulatorOptions, stop: threading.Event | None = None) -> SimulationResult:
    """Run a simulated fleet until `stop`, the duration, the events limit or Ctrl-C."""
    return _Run(options, stop or threading.Event()).execute()


# (option field, flag, type, help); each flag also reads the environment variable SIM_<FIELD>.
_FLAGS: Final[tuple[tuple[str, str, Callable[[str], Any], str], ...]] = (
    ("url", "--url", str, "ingest URL to post events to"),
    ("devices", "--devices", int, "number of simulated devices"),
    ("rate", "--rate", float, "events per second across the fleet (0 = as fast as possible)"),
    ("duration", "--duration", float, "seconds to run (0 = until stopped)"),
    ("events", "--events", int, "stop after this many accepted events (0 = no limit)"),
    ("mode", "--mode", str, "HTTP binding mode"),
    ("batch_size", "--batch-size", int, "events per request in batch mode"),
    ("samples", "--samples", int, "buffered readings per event (data.samples)"),
    ("anomaly_rate", "--anomaly-rate", float, "chance per reading that an anomaly starts"),
    ("duplicate_rate", "--duplicate-rate", float, "chance an accepted request is sent again"),
    ("disorder", "--disorder", float, "chance an event's time is shifted back 1-120 s"),
    ("seed", "--seed", int, "random seed of the readings (event ids stay random)"),
    ("concurrency", "--concurrency", int, "worker threads posting events"),
    ("record", "--record", str, "write every accepted event to this JSON-lines file"),
    ("token", "--token", str, "bearer token (the variable is safer: flags show in ps)"),
)
_TRUE: Final = frozenset({"1", "true", "yes", "on"})


def env_name(option: str) -> str:
    """The environment variable twin of an option, e.g. SIM_BATCH_SIZE."""
    return f"SIM_{option.upper()}"


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    defaults = SimulatorOptions()
    parser = argparse.ArgumentParser(
        prog="python -m iot_telemetry.local.simulator",
        description="Simulate a fleet of devices posting telemetry CloudEvents to ingest.",
        epilog="Every option can also be set by its environment variable (shown in brackets);"
               " a flag wins over its variable. Exit status: 0, or 1 when events were"
               " rejected or abandoned.",
    )
    for name, flag, convert, text in _FLAGS:
        default = getattr(defaults, name)
        raw = environ.get(env_name(name))
        if raw is not None and raw != "":
            try:
                default = convert(raw)
            except ValueError:
                parser.error(f"{env_name(name)}: invalid value {raw!r}")
        choices = MODES if name == "mode" else None
        parser.add_argument(flag, dest=name, type=convert, default=default, choices=choices,
                            metavar=None if choices else name.upper(),
                            help=f"{text} [{env_name(name)}, default {getattr(defaults, name)}]")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        default=environ.get("SIM_NO_PROGRESS", "").lower() not in _TRUE,
                        help="no live status line, only the summary [SIM_NO_PROGRESS=1]")
    return parser


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Command line: run the simulator; Ctrl-C or SIGTERM stops it after in-flight requests."""
    parser = _parser(os.environ if environ is None else environ)
    args = parser.parse_args(argv)
    try:
        options = SimulatorOptions(**vars(args))
    except ValueError as exc:
        parser.error(str(exc))
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM acts as Ctrl-C: finish in-flight requests, a second one abandons them.
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = simulate(options)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if not options.progress:
        print(format_status(result, options.url, final=True), file=sys.stderr)
    return 1 if result.rejected_events or ABANDONED in result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
