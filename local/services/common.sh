# shellcheck shell=bash
# Process management shared by kafka.sh and ferretdb.sh (sourced, not run;
# services.sh sources it only for the logging helpers).
#
# Both scripts run one server in the background the same way: a pid file and a
# log file in the service's data dir, flock so that concurrent starts and stops
# wait for each other, a readiness wait, SIGTERM then SIGKILL on stop, and the
# same CLI and status exit codes. Only what differs stays in each script.
#
# A service script sets these variables, then calls `svc_main "$@"`:
#   SVC_NAME            log prefix "[NAME]", "NAME: ..." status lines, lock messages
#   SVC_TITLE           product name in "TITLE failed to start"
#   SVC_PROC            what messages call the server process when that is not
#                       just SVC_NAME ("broker"); empty for none
#   SVC_VERSION         shown by status
#   SVC_DIR             the service's data dir: lock, pid file, log file
#   SVC_DATA            data location shown by status
#   SVC_PID_FILE, SVC_LOG_FILE
#   SVC_HOST, SVC_PORT  client listener; SVC_ADDR is HOST:PORT
#   SVC_CMDLINE_MATCH   grep pattern that the server's /proc cmdline contains, so
#                       that a pid recycled by another process is not taken for it
#   SVC_START_TIMEOUT, SVC_STOP_TIMEOUT   seconds
#   SVC_PY_MODULE       Python client module the readiness probe needs
#   SVC_PY_PROBE        Python source defining probe(host, port): returns once
#                       the server answers a real request, raises before that
# and defines these functions:
#   svc_prepare         before a start: tools, fetch/build, free ports, config
#   svc_launch          log the "starting ..." line, then svc_spawn COMMAND...
#   svc_probe           readiness check without SVC_PY_MODULE (0 = ready)
#   svc_after_ready     optional: after start, also when already running
#   svc_after_stop CLEAN  optional: after stop (CLEAN=1: exited on SIGTERM;
#                       0: killed, or was not running)
#
# Also gives them: log, die, ms_now, elapsed, lock_cache, port_open, py_has,
# and CACHE_DIR, DATA_ROOT, PY, REPO, plus ensure_tools from ensure-tools.sh.

# The sourcing script sets the SVC_* variables read here (SC2153) and uses the
# variables set here (SC2034), which shellcheck cannot see in this file alone.
# shellcheck disable=SC2034,SC2153

_SVC_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=ensure-tools.sh
source "$_SVC_LIB/ensure-tools.sh"

REPO="$(cd "$_SVC_LIB/../.." && pwd)"
# Downloads and builds are shared by all clones; data, pid and log files are per clone.
CACHE_DIR="${IOT_CACHE_DIR:-${HOME:-/root}/.cache/iot-telemetry}"
DATA_ROOT="${IOT_DATA_DIR:-$REPO/.data}"
PY="${IOT_PYTHON:-python3}"

# ---------------------------------------------------------------- helpers

log() { echo "[$SVC_NAME] $*" >&2; }
die() { echo "[$SVC_NAME] ERROR: $*" >&2; exit 1; }

ms_now() { date +%s%3N; }
elapsed() { local d=$(( $(ms_now) - $1 )); printf '%d.%ds' $((d / 1000)) $(((d % 1000) / 100)); }

# SVC_PROC as the subject of a message: "broker pid 1 ..." for Kafka, while
# FerretDB's messages have no subject ("pid 1 ...") or say "ferretdb".
_svc_subject() { echo "${SVC_PROC:+$SVC_PROC }"; }
_svc_proc() { echo "${SVC_PROC:-$SVC_NAME}"; }

# Serialize start/stop on one data dir (fd 9) and fetch/build into the shared
# cache (fd 8) across concurrent invocations; the server gets neither fd.
lock_data() {
  mkdir -p "$SVC_DIR"
  exec 9>"$SVC_DIR/.lock"
  flock -w 900 9 || die "another $SVC_NAME.sh holds $SVC_DIR/.lock"
}
lock_cache() {
  mkdir -p "$CACHE_DIR"
  exec 8>"$CACHE_DIR/.$1.lock"
  flock -w 900 8 || die "another process holds $CACHE_DIR/.$1.lock"
}

# pid of our server if it is alive, else nothing (cleans a stale pid file).
running_pid() {
  [ -f "$SVC_PID_FILE" ] || return 0
  local pid; pid="$(cat "$SVC_PID_FILE" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
     && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$SVC_CMDLINE_MATCH"; then
    echo "$pid"
  else
    rm -f "$SVC_PID_FILE"
  fi
}

port_open() {  # port_open PORT -> 0 if something listens on SVC_HOST:PORT
  (exec 3<>"/dev/tcp/$SVC_HOST/$1") 2>/dev/null
}

py_has() { "$PY" -c "import $1" >/dev/null 2>&1; }

# Run COMMAND... detached (own session, so a Ctrl-C in the caller's terminal
# does not reach it) with its pid in SVC_PID_FILE and its output in SVC_LOG_FILE.
svc_spawn() {
  # shellcheck disable=SC2016  # $$ and $1 belong to the inner bash
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$SVC_PID_FILE" "$@" \
    </dev/null >>"$SVC_LOG_FILE" 2>&1 8>&- 9>&- &
}

# ---------------------------------------------------------------- readiness

# The readiness probe of a MongoDB-API server (FerretDB, mongo-java-server): a ping.
# shellcheck disable=SC2034  # read by the scripts that source this file
MONGO_PING_PROBE='
from pymongo import MongoClient

def probe(host, port):
    c = MongoClient(host, port, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000,
                    directConnection=True)
    try:
        c.admin.command("ping")
    finally:
        c.close()
'

# Wait until the server answers SVC_PY_PROBE (or, without the Python client,
# svc_probe) while process PID lives; non-zero on timeout or when it exits.
svc_wait_ready() {
  local pid="$1" timeout="$2"
  if py_has "$SVC_PY_MODULE"; then
    "$PY" - "$SVC_HOST" "$SVC_PORT" "$pid" "$timeout" "$(_svc_proc)" "$SVC_PY_PROBE" <<'PYEOF'
import os, socket, sys, time
host, port, pid, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
proc, probe_source = sys.argv[5], sys.argv[6]
exec(probe_source)  # defines probe(host, port)
deadline = time.time() + timeout
last = "port not open"
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        print(f"{proc} process exited", file=sys.stderr)
        sys.exit(2)
    try:  # cheap check first: a client would wait for its own timeouts
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        time.sleep(0.1)
        continue
    try:
        probe(host, port)
        sys.exit(0)
    except Exception as e:  # not ready yet
        last = repr(e)
        time.sleep(0.2)
print("last error: " + last, file=sys.stderr)
sys.exit(1)
PYEOF
    return
  fi
  local deadline=$(( $(ms_now) + timeout * 1000 ))
  while [ "$(ms_now)" -lt "$deadline" ]; do
    kill -0 "$pid" 2>/dev/null || { log "$(_svc_proc) process exited"; return 1; }
    svc_probe && return 0
    sleep 0.2
  done
  return 1
}

# ---------------------------------------------------------------- commands

svc_after_ready() { :; }
svc_after_stop() { :; }

svc_start() {
  lock_data
  local pid; pid="$(running_pid)"
  if [ -n "$pid" ]; then
    if svc_wait_ready "$pid" "$SVC_START_TIMEOUT"; then
      log "already running (pid $pid) on $SVC_ADDR"
      svc_after_ready
      return 0
    fi
    die "$(_svc_subject)pid $pid is running but not answering on $SVC_ADDR; try: $0 restart (log: $SVC_LOG_FILE)"
  fi

  svc_prepare
  [ -f "$SVC_LOG_FILE" ] && mv -f "$SVC_LOG_FILE" "$SVC_LOG_FILE.1"
  local t0; t0=$(ms_now)
  # From here on a start that fails (no pid, not ready in time, svc_after_ready refusing)
  # stops what it launched: a server left running without answering would make the next
  # start say "running but not answering" (a BindException kept mongo-java-server so).
  trap _svc_undo_launch EXIT
  svc_launch
  _SVC_LAUNCHED=$!
  for _ in $(seq 1 50); do [ -s "$SVC_PID_FILE" ] && break; sleep 0.1; done
  pid="$(cat "$SVC_PID_FILE" 2>/dev/null || true)"
  [ -n "$pid" ] || die "$(_svc_proc) did not start (log: $SVC_LOG_FILE)"
  _SVC_LAUNCHED=$pid

  if ! svc_wait_ready "$pid" "$SVC_START_TIMEOUT"; then
    log "$(_svc_subject)not ready after ${SVC_START_TIMEOUT}s; last lines of $SVC_LOG_FILE:"
    tail -n 40 "$SVC_LOG_FILE" >&2 || true
    die "$SVC_TITLE failed to start"
  fi
  log "ready on $SVC_ADDR (pid $pid) after $(elapsed "$t0")"
  svc_after_ready
  _SVC_LAUNCHED=
  trap - EXIT
}

# The server this start launched, until the start succeeded.
_SVC_LAUNCHED=

# EXIT trap of a start: when it fails after the launch, stop the server it launched.
_svc_undo_launch() {
  local rc=$?
  [ "$rc" != 0 ] && [ -n "$_SVC_LAUNCHED" ] || return "$rc"
  if kill -0 "$_SVC_LAUNCHED" 2>/dev/null; then
    log "stopping what the failed start launched (pid $_SVC_LAUNCHED)"
    _svc_terminate "$_SVC_LAUNCHED" || true
  fi
  rm -f "$SVC_PID_FILE"
  _SVC_LAUNCHED=
  svc_after_stop 0 || true
  return "$rc"
}

# SIGTERM, then SIGKILL after SVC_STOP_TIMEOUT; non-zero when it took SIGKILL.
_svc_terminate() {
  local pid="$1"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$(( $(ms_now) + SVC_STOP_TIMEOUT * 1000 ))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$(ms_now)" -ge "$deadline" ]; then
      log "still running after ${SVC_STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      return 1
    fi
    sleep 0.1
  done
}

# SIGTERM, then SIGKILL after SVC_STOP_TIMEOUT. Stopping a stopped service is fine.
svc_stop() {
  lock_data
  local pid; pid="$(running_pid)"
  if [ -z "$pid" ]; then
    log "not running"
    svc_after_stop 0
    return 0
  fi
  log "stopping (pid $pid)"
  local clean=1
  _svc_terminate "$pid" || clean=0
  rm -f "$SVC_PID_FILE"
  svc_after_stop "$clean"
  log "stopped"
}

# Exit codes: 0 running, 3 stopped, 1 process there but the port not open yet.
svc_status() {
  local pid; pid="$(running_pid)"
  if [ -z "$pid" ]; then
    echo "$SVC_NAME: stopped"
    return 3
  fi
  if port_open "$SVC_PORT"; then
    echo "$SVC_NAME: running (pid $pid) on $SVC_ADDR, version $SVC_VERSION, data $SVC_DATA"
    return 0
  fi
  echo "$SVC_NAME: process running (pid $pid) but $SVC_ADDR is not open (starting?)"
  return 1
}

svc_logs() {
  [ -f "$SVC_LOG_FILE" ] || die "no log yet ($SVC_LOG_FILE)"
  if [ "${1:-}" = "-f" ]; then exec tail -n 100 -f "$SVC_LOG_FILE"; fi
  tail -n "${LINES_TO_SHOW:-100}" "$SVC_LOG_FILE"
}

svc_main() {
  SVC_ADDR="$SVC_HOST:$SVC_PORT"
  case "${1:-}" in
    start) svc_start ;;
    stop) svc_stop ;;
    restart) svc_stop; svc_start ;;
    status) svc_status ;;
    logs) shift; svc_logs "$@" ;;
    # the server's pid (fault tests kill it by hand); exit 3 when it is not running
    pid) local pid; pid="$(running_pid)"; [ -n "$pid" ] || exit 3; echo "$pid" ;;
    *) echo "usage: $0 start|stop|restart|status|logs [-f]|pid" >&2; exit 2 ;;
  esac
}
