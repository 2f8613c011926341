"""What every benchmark shares: the run context, servers, load generators, figures, profiles."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[2]
FUNCTIONS_DIR: Final = REPO / "functions"
HERE: Final = Path(__file__).resolve().parent
#: First port the benchmarks use; 8001-8005 belong to `iot-telemetry local`.
BASE_PORT: Final = 19001


# --- the run --------------------------------------------------------------------------------

@dataclass
class Context:
    """One benchmark run: options, fresh names, ports, logs, and the figures gathered."""

    quick: bool
    kafka: str
    mongo: str
    out_dir: Path
    profile: bool = False
    #: Figure 3's variants, ORDER:THREADS (bench_pipeline.Variant), and its first rate.
    pipeline_variants: tuple[str, ...] = ("as-is:8",)
    pipeline_start_rate: float = 1.0
    #: Figure 3's stream (bench_pipeline.STREAMS): `gateway` or `single`.
    pipeline_stream: str = "gateway"
    #: Figure 4 also serves query from this checkout's functions/, interleaved (before/after).
    query_baseline: Path | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    started: float = field(default_factory=time.monotonic)
    rows: list[Row] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    _next_port: int = BASE_PORT
    _cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def log_dir(self) -> Path:
        path = self.out_dir / "benchmark-logs" / self.run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def name(self, what: str) -> str:
        """A database, topic or group name used by this run only."""
        return f"bench_{self.run_id}_{what}"

    def port(self) -> int:
        """The next free port at or above 19001."""
        while True:
            port = self._next_port
            self._next_port += 1
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port

    def say(self, message: str) -> None:
        """A progress line on stderr, stamped with the run's elapsed time."""
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full

    def add(self, figure: str, name: str, value: float | None, unit: str, note: str = "") -> None:
        self.rows.append(Row(figure, name, value, unit, note))

    def goal(self, goal: str, target: str, measured: str, met: bool | None, note: str = "") -> None:
        self.goals.append(Goal(goal, target, measured, met, note))

    def on_exit(self, fn: Callable[[], None]) -> None:
        self._cleanup.append(fn)

    def cleanup(self) -> None:
        while self._cleanup:
            with contextlib.suppress(Exception):
                self._cleanup.pop()()


@dataclass(frozen=True)
class Row:
    """One printed figure."""

    figure: str
    name: str
    value: float | None
    unit: str
    note: str = ""


@dataclass(frozen=True)
class Goal:
    """One goal of the issue and where the run stands against it."""

    goal: str
    target: str
    measured: str
    met: bool | None  # None: not measured in this run
    note: str = ""


def service_arguments(parser: argparse.ArgumentParser, out: str, base_port: int,
                      profile: str) -> None:
    """The options of a one-purpose benchmark that starts functions against the services."""
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--mongo", default="mongodb://127.0.0.1:27018")
    parser.add_argument("--out", default=out)
    parser.add_argument("--base-port", type=int, default=base_port)
    parser.add_argument("--profile", action="store_true", help=profile)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


# --- the machine ----------------------------------------------------------------------------

def _first(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text, re.MULTILINE)
    return match.group(1).strip() if match else None


def machine_info(mongo: str) -> dict[str, Any]:
    """What the figures came from: hardware, software versions, commit, load at start."""
    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    meminfo = Path("/proc/meminfo").read_text(encoding="utf-8")
    mem_kb = int(_first(r"^MemTotal:\s+(\d+)", meminfo) or 0)
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "cpu_model": _first(r"^model name\s*:\s*(.+)$", cpuinfo) or platform.processor(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }
    for package in ("kafka-python", "pymongo", "functions-framework", "gunicorn", "flask",
                    "cloudevents"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            info[package] = version(package)
    with contextlib.suppress(Exception):
        status = subprocess.run(["bash", str(REPO / "local/services/kafka.sh"), "status"],
                                capture_output=True, text=True, timeout=30, check=False)
        info["kafka"] = _first(r"version ([\w.\-]+)", status.stdout + status.stderr)
    with contextlib.suppress(Exception):
        import pymongo

        client: Any = pymongo.MongoClient(mongo, serverSelectionTimeoutMS=3000)
        build = client.admin.command("buildInfo")
        info["store_version"] = build.get("ferretdbVersion") or build.get("version")
        client.close()
    info["store"] = store_server(mongo)[0] or "?"
    info["store_backend"] = store_backend(mongo)
    info["wrk"] = shutil.which("wrk") is not None
    info["py-spy"] = shutil.which("py-spy") is not None
    return info


def store_backend(mongo: str) -> str:
    """The backend of the store serving `mongo` on this machine (FerretDB: sqlite,
    postgresql; mongo-java-server: h2, memory); else ''."""
    kind, pid = store_server(mongo)
    if kind == "ferretdb":
        return ferretdb_flags(mongo).get("handler", "")
    if kind == "mongo-java-server" and pid is not None:
        args = _cmdline(pid)
        return args[args.index("--backend") + 1] if "--backend" in args[:-1] else ""
    return ""


def store_label(machine: Mapping[str, Any]) -> str:
    """'mongo-java-server 4.4.0 on h2' for the report lines."""
    return (f"{machine.get('store', '?')} {machine.get('store_version') or ''} on "
            f"{machine.get('store_backend') or '?'}")


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=False).stdout.strip()

    changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
               if line]
    return {"commit": git("rev-parse", "HEAD"), "describe": git("log", "-1", "--format=%h %s"),
            "uncommitted_changes": len(changed)}


# --- processes ------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    """Direct child processes of `pid` (gunicorn's workers under its arbiter)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text(encoding="utf-8")
            out += [int(x) for x in text.split()]
    return out


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB; empty if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return {}
    return {key: int(_first(rf"^{key}:\s+(\d+)", text) or 0) for key in ("VmRSS", "VmHWM")}


_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds a process has used so far (all its threads); 0 if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return 0.0, 0.0
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) / _CLOCK_TICKS, int(fields[12]) / _CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (all its threads); 0 if gone."""
    return sum(cpu_split(pid))



def descendants(pid: int) -> list[int]:
    """`pid` and every process under it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def listener_pid(port: int) -> int | None:
    """The process listening on 127.0.0.1/0.0.0.0:`port` (TCP, IPv4 or IPv6), if any."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text(encoding="utf-8").splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                        return int(entry)
    return None


def _listener(address: str) -> int | None:
    """The process listening on the port of `host:port` or a URL holding one."""
    host = address.split(",", maxsplit=1)[0].rsplit("@", maxsplit=1)[-1]
    m = re.search(r":(\d+)(?:[/?]|$)", host)
    return listener_pid(int(m.group(1))) if m else None


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\x00")
    except OSError:
        return []


def store_server(mongo: str) -> tuple[str, int | None]:
    """(kind, pid) of the server listening on `mongo`'s port on this machine: kind is
    "ferretdb", "mongo-java-server" (the launcher of local/services/), "store" for another
    server, or "" when nothing listens here."""
    pid = _listener(mongo)
    if pid is None:
        return "", None
    args = _cmdline(pid)
    if any(a.startswith("-Diot.mjs.dir=") for a in args) or "Launcher" in args:
        return "mongo-java-server", pid
    if any(Path(a).name == "ferretdb" for a in args[:1]):
        return "ferretdb", pid
    return "store", pid


def ferretdb_flags(mongo: str) -> dict[str, str]:
    """The `--name=value` flags of the FerretDB serving `mongo` on this machine; {} if none."""
    pid = _listener(mongo)
    if pid is None:
        return {}
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return {}
    flags = (arg[2:].split("=", 1) for arg in cmdline.split("\x00") if arg.startswith("--"))
    return {"pid": str(pid), **{f[0]: f[1] for f in flags if len(f) == 2}}


def service_pids(kafka: str, mongo: str) -> dict[str, list[int]]:
    """The processes of the Kafka broker and the store server this run uses, by their ports.

    The store counts under its kind (store_server); with FerretDB on PostgreSQL,
    PostgreSQL's server and backends count as "postgresql".
    """
    found: dict[str, list[int]] = {}
    pid = _listener(kafka)
    if pid:
        found["kafka"] = [pid]
    kind, store = store_server(mongo)
    if store is None:
        return found
    found[kind] = [store]
    flags = ferretdb_flags(mongo) if kind == "ferretdb" else {}
    pg = _listener(flags["postgresql-url"]) if flags.get("handler") == "postgresql" else None
    if pg:
        found["postgresql"] = descendants(pg)
    return found


def store_cpu_seconds(mongo: str) -> float:
    """CPU seconds the store serving `mongo` has used so far (with PostgreSQL behind
    FerretDB); 0 when it does not run on this machine. Read before and after a phase: the
    difference over the phase's operations is the store's CPU per operation."""
    return sum(cpu_seconds(p) for name, pids in service_pids("", mongo).items()
               if name != "kafka" for p in pids)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text(encoding="utf-8").splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / _CLOCK_TICKS


class CpuMeter:
    """Where the machine's CPU goes during a phase, in cores, by process group.

    Groups: each root's process tree (the functions, the dispatcher), the services of this run
    found by their ports (Kafka, the store, PostgreSQL behind FerretDB), this process (the load
    generator), and the whole machine. A process that exits during the phase drops out of its
    group's sum.
    """

    def __init__(self, roots: Mapping[str, int], kafka: str = "", mongo: str = "") -> None:
        self.roots = dict(roots)
        self.kafka, self.mongo = kafka, mongo

    def snapshot(self) -> dict[str, float]:
        out = {name: sum(cpu_seconds(p) for p in descendants(pid))
               for name, pid in self.roots.items()}
        for name, pids in service_pids(self.kafka, self.mongo).items():
            out[name] = sum(cpu_seconds(p) for p in pids)
        out["load generator"] = cpu_seconds(os.getpid())
        out["machine"] = machine_busy_seconds()
        out["at"] = time.monotonic()
        return out

    @staticmethod
    def cores(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        """Cores used by each group between two snapshots (1.0 = one core all the time)."""
        seconds = max(1e-6, after["at"] - before["at"])
        return {k: round(max(0.0, after[k] - before.get(k, 0.0)) / seconds, 2)
                for k in after if k != "at"}


def cpu_summary(cores: Mapping[str, float], top: int = 6) -> str:
    """'ferretdb 1.10, kafka 0.20, ... of 1.90 busy' for a report row."""
    parts = sorted(((v, k) for k, v in cores.items() if k != "machine"), reverse=True)[:top]
    text = ", ".join(f"{k} {v:.2f}" for v, k in parts)
    return f"{text} (machine {cores.get('machine', 0):.2f} of {os.cpu_count()} cores busy)"


class RssSampler:
    """Samples RSS of process trees once a second; keeps each process's peak (VmHWM)."""

    def __init__(self, roots: Mapping[str, int], interval: float = 1.0) -> None:
        self.roots = dict(roots)
        self.interval = interval
        self.peak: dict[str, dict[str, int]] = defaultdict(dict)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        for name, pid in self.roots.items():
            procs = {"arbiter": pid, **{f"worker{i}": c for i, c in enumerate(children(pid))}}
            for role, p in procs.items():
                mem = memory_kb(p)
                if mem:
                    self.peak[name][role] = max(self.peak[name].get(role, 0),
                                                mem["VmHWM"], mem["VmRSS"])


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process serving {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:.0f}s") from None
            time.sleep(0.05)


_SINK: Final = """
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(202); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_port, flush=True)
s.serve_forever()
"""


@contextlib.contextmanager
def broker_ingress() -> Iterator[str]:
    """A Broker ingress stand-in (alert's K_SINK) answering 202, in a process of its own so
    its CPU is not counted with the caller's; yields its URL."""
    sink = subprocess.Popen([sys.executable, "-c", _SINK], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        yield f"http://127.0.0.1:{int(sink.stdout.readline())}/"
    finally:
        sink.kill()
        sink.wait()


class FunctionServer:
    """One function served the way production serves it: functions-framework's gunicorn."""

    def __init__(self, ctx: Context, target: str, source: Path, env: Mapping[str, str],
                 label: str | None = None) -> None:
        self.ctx, self.target, self.source = ctx, target, source
        self.port = ctx.port()
        self.label = label or target
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "functions_framework", "--target", self.target,
                "--source", str(self.source), "--signature-type", "http",
                "--host", "127.0.0.1", "--port", str(self.port)]

    def spawn(self) -> subprocess.Popen[bytes]:
        log = (self.ctx.log_dir / f"{self.label}.log").open("ab")
        self.proc = subprocess.Popen(self.command(), env=self.env, stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        return self.proc

    def start(self, timeout: float = 60.0) -> FunctionServer:
        proc = self.spawn()
        self.ctx.on_exit(self.stop)
        _wait_http(self.url + "healthz", timeout, proc)
        return self

    def worker_pid(self) -> int:
        assert self.proc is not None
        for _ in range(100):
            kids = children(self.proc.pid)
            if kids:
                return kids[0]
            time.sleep(0.05)
        return self.proc.pid

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)

    def __enter__(self) -> FunctionServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def metrics(url: str) -> dict[str, float]:
    """A function's /metrics as {'name{labels}': value}."""
    with urllib.request.urlopen(url + "metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[key] = float(value)
    return out


def metric_sum(values: Mapping[str, float], name: str, **labels: str) -> float:
    """Sum of a metric over the series whose labels include `labels`."""
    total = 0.0
    for key, value in values.items():
        base = key.split("{", 1)[0]
        if base != name:
            continue
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total


# --- Kafka and the store --------------------------------------------------------------------

def create_topic(ctx: Context, topic: str, partitions: int = 3) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=ctx.kafka, request_timeout_ms=20000)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()
    ctx.on_exit(lambda: delete_topics(ctx, [topic]))


def delete_topics(ctx: Context, topics: Sequence[str]) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=ctx.kafka, request_timeout_ms=20000)
    try:
        existing = set(admin.list_topics())
        mine = [t for t in topics if t in existing]
        if mine:
            admin.delete_topics(mine)
    finally:
        admin.close()


def mongo_client(ctx: Context) -> Any:
    import pymongo

    return pymongo.MongoClient(ctx.mongo, tz_aware=True, retryWrites=False,
                               serverSelectionTimeoutMS=10000, socketTimeoutMS=600000)


def fresh_db(ctx: Context, what: str) -> str:
    """A database name for this run only, dropped when the run ends."""
    name = ctx.name(what)

    def drop() -> None:
        client = mongo_client(ctx)
        try:
            client.drop_database(name)
        finally:
            client.close()

    ctx.on_exit(drop)
    return name


# --- load -----------------------------------------------------------------------------------

@dataclass
class LoadResult:
    """What a load run saw: answered requests by status, seconds, latency percentiles (ms)."""

    requests: int
    ok: int
    seconds: float
    p50_ms: float
    p99_ms: float
    p95_ms: float = float("nan")
    statuses: dict[str, int] = field(default_factory=dict)
    tool: str = "python"
    connections: int = 1

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok_per_s": round(self.ok_per_s, 1)}


def _lua_string(value: str | bytes) -> str:
    text = value.decode() if isinstance(value, bytes) else value
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here


def wrk_load(url: str, method: str, headers: Mapping[str, str], body: bytes, connections: int,
             seconds: float, ok_status: int) -> LoadResult:
    """Load with wrk (one thread, keep-alive connections); every response must be ok_status."""
    header_lines = "\n".join(f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}"
                             for k, v in headers.items())
    script = f"""
wrk.method = {_lua_string(method)}
wrk.body = {_lua_string(body)}
{header_lines}
"""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        done = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
             "--timeout", "30s", "-s", path, url],
            capture_output=True, text=True, timeout=seconds + 60, check=False)
    finally:
        os.unlink(path)
    text = done.stdout
    if done.returncode != 0 or "requests in" not in text:
        raise RuntimeError(f"wrk failed: {done.stderr or text}")
    total = int(_first(r"(\d+) requests in", text) or 0)
    secs = _duration_ms(_first(r"requests in ([\d.]+\w+)", text) or "0s") / 1000
    bad = int(_first(r"Non-2xx or 3xx responses: (\d+)", text) or 0)
    errors = _first(r"Socket errors: (.+)$", text)
    statuses = {str(ok_status) + "(2xx)": total - bad}
    if bad:
        statuses["non-2xx"] = bad
    if errors:
        statuses["socket errors"] = sum(int(n) for n in re.findall(r"\d+", errors))
    return LoadResult(total, total - bad, secs,
                      _duration_ms(_first(r"^\s+50%\s+(\S+)", text) or "nan"),
                      _duration_ms(_first(r"^\s+99%\s+(\S+)", text) or "nan"),
                      statuses=statuses, tool="wrk", connections=connections)


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


Request = tuple[str, str, Mapping[str, str], bytes]  # method, path, headers, body


def python_load(url: str, make: Callable[[int, int], Request | None], threads: int,
                seconds: float, ok: Callable[[int], bool]) -> LoadResult:
    """Closed-loop load: `threads` clients, each on one keep-alive connection (http.client).

    `make(thread, n)` gives a thread's n-th request, or None when it has no more.
    """
    host, port = url.split("//", 1)[1].rstrip("/").split(":")
    latencies: list[list[float]] = [[] for _ in range(threads)]
    statuses: list[Counter[str]] = [Counter() for _ in range(threads)]
    stop_at = time.monotonic() + seconds
    start_gate = threading.Barrier(threads + 1)

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        start_gate.wait()
        n = 0
        try:
            while time.monotonic() < stop_at:
                request = make(index, n)
                if request is None:
                    return
                n += 1
                method, path, headers, body = request
                t0 = time.perf_counter()
                try:
                    conn.request(method, path, body=body, headers=dict(headers))
                    response = conn.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException) as exc:
                    statuses[index][type(exc).__name__] += 1
                    conn.close()
                    conn = http.client.HTTPConnection(host, int(port), timeout=120)
                    continue
                latencies[index].append((time.perf_counter() - t0) * 1000)
                statuses[index][str(response.status)] += 1
        finally:
            conn.close()

    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    start_gate.wait()
    t0 = time.monotonic()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - t0
    status = sum(statuses, Counter())
    flat = [x for xs in latencies for x in xs]
    good = sum(n for s, n in status.items() if s.isdigit() and ok(int(s)))
    return LoadResult(len(flat), good, elapsed, percentile(flat, 50), percentile(flat, 99),
                      percentile(flat, 95), dict(status), "python", threads)


def load(url: str, method: str, headers: Mapping[str, str], body: bytes, connections: int,
         seconds: float, ok_status: int, tool: str) -> LoadResult:
    """The same fixed request as fast as `connections` clients can send it."""
    if tool == "wrk":
        return wrk_load(url, method, headers, body, connections, seconds, ok_status)
    return python_load(url, lambda _i, _n: (method, "/", headers, body), connections, seconds,
                       lambda status: status == ok_status)


def load_tool(requested: str) -> str:
    if requested == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if requested == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--loadgen wrk: wrk is not installed (apt-get install wrk)")
    return requested


# --- profiles -------------------------------------------------------------------------------

@contextlib.contextmanager
def profiled(ctx: Context, name: str, pid: int, seconds: float) -> Iterator[None]:
    """Sample `pid` with py-spy while the block runs (when --profile and py-spy are there)."""
    if not ctx.profile or not shutil.which("py-spy"):
        yield
        return
    out = ctx.out_dir / "profiles" / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
         "--rate", "200", "--format", "raw", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        if proc.poll() is None:  # the load ended first: py-spy writes what it has on SIGINT
            proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if out.exists():
            ctx.profiles[name] = summarize_profile(out)
            ctx.say(f"profile {name}: {ctx.profiles[name]['samples']} samples -> {out}")
        else:
            ctx.say(f"profile {name}: py-spy wrote nothing ({err.decode()[-300:].strip()})")


def print_profiles(ctx: Context, own: int = 12, total: int = 15) -> None:
    """Each profile of the run: its top frames by own time, then by total time."""
    for name, prof in ctx.profiles.items():
        print(f"== {name}: {prof['busy_samples']} busy of {prof['samples']}")
        for frame, pct in prof["top_own"][:own]:
            print(f"   own {pct:5.1f}%  {frame}")
        for frame, pct in prof["top_total"][:total]:
            print(f"   tot {pct:5.1f}%  {frame}")


_IDLE: Final = ("wait (threading.py", "select (selectors.py", "accept (socket.py",
                "recv_into (", "PeriodicExecutor._run", "_receive_data_on_socket",
                "_worker (concurrent", "sleep", "poll (selectors.py", "run (gunicorn",
                "_wait_for_tstate_lock", "get (queue.py", "readinto (socket.py")


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Top frames of a py-spy collapsed-stack file, by own time and by total time.

    Samples whose innermost frame waits (on a socket, a lock, a condition) are kept apart:
    they show where threads sit, not where the CPU goes.
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    idle_by: Counter[str] = Counter()
    samples = busy = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [f for f in stack.split(";") if f]
        samples += count
        waiting = next((idle for idle in _IDLE if frames and idle in frames[-1]), None)
        if not frames or waiting:
            idle_by[waiting or "?"] += count
            continue
        busy += count
        own[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames}:
            total[frame] += count
    def pct(n: int) -> float:
        return round(100 * n / busy, 1) if busy else 0.0
    return {
        "file": str(path), "samples": samples, "busy_samples": busy,
        "idle_samples_by_wait": dict(idle_by.most_common()),
        "top_own": [(f, pct(n)) for f, n in own.most_common(top)],
        "top_total": [(f, pct(n)) for f, n in total.most_common(top * 3)
                      if "(threading.py" not in f and "gunicorn" not in f][:top],
    }


def _short(frame: str) -> str:
    """'fn (path/to/module.py:12)' -> 'fn (module.py)' so lines of a function add up."""
    match = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not match:
        return frame
    fn, path = match.groups()
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if "iot_telemetry" in parts or "local" in parts else parts[-1]
    return f"{fn} ({short})"


def now_utc() -> datetime:
    return datetime.now(UTC)
