#!/usr/bin/env bash
# Private PostgreSQL cluster for FerretDB's postgresql backend. ferretdb.sh
# starts it before FerretDB and stops it after FerretDB when
# FERRETDB_BACKEND=postgresql; it also runs by itself:
#
#   bash local/services/postgresql.sh start|stop|restart|status|logs [-f]|url
#
# start: installs Debian's `postgresql` package when the server binaries are
# missing (ensure-tools.sh), creates the cluster in $IOT_DATA_DIR/postgresql/data
# the first time (initdb), starts it with pg_ctl on 127.0.0.1:$POSTGRES_PORT
# (unix socket in $IOT_DATA_DIR/postgresql), and makes sure the `ferretdb`
# database exists. `url` prints the URL FerretDB connects with. PostgreSQL
# refuses to run as root: as root, its programs run as the `postgres` user
# (runuser), which owns $IOT_DATA_DIR/postgresql. See README.md here.
#
# Uses common.sh for logging, locking and paths only: pg_ctl does the process
# handling (postmaster.pid, readiness, shutdown modes), not svc_main.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$HERE/common.sh"

POSTGRES_HOST=127.0.0.1
POSTGRES_PORT="${POSTGRES_PORT:-5433}"     # not 5432: never collides with a system PostgreSQL
POSTGRES_SHARED_BUFFERS="${POSTGRES_SHARED_BUFFERS:-128MB}"
POSTGRES_MAX_CONNECTIONS="${POSTGRES_MAX_CONNECTIONS:-200}"  # FerretDB pools up to 50 per user
POSTGRES_START_TIMEOUT="${POSTGRES_START_TIMEOUT:-60}"
POSTGRES_STOP_TIMEOUT="${POSTGRES_STOP_TIMEOUT:-30}"
PG_ROLE=postgres      # superuser role FerretDB connects as (trust auth, loopback only)
PG_DB=ferretdb

# Absolute: the PostgreSQL programs run from / (see as_pg).
PGROOT="$(realpath -m "$DATA_ROOT/postgresql")"
PG_DATA="$PGROOT/data"
PG_LOG="$PGROOT/postgresql.log"
PG_SOCKET_DIR="$PGROOT"
ADDR="$POSTGRES_HOST:$POSTGRES_PORT"
URL="postgres://$PG_ROLE@$ADDR/$PG_DB"

# For common.sh's helpers (log, die, lock_data, port_open, svc_logs).
SVC_NAME=postgresql
SVC_DIR="$PGROOT"
SVC_LOG_FILE="$PG_LOG"  # for svc_logs
SVC_HOST="$POSTGRES_HOST"

if [ "$(id -u)" = 0 ]; then AS_ROOT=1; else AS_ROOT=0; fi

# ---------------------------------------------------------------- helpers

# Run a PostgreSQL program as the user that owns the cluster: `postgres` when
# we are root, else ourselves. From / because our cwd may be closed to that
# user, and without our lock fds (8, 9): the server pg_ctl starts would
# otherwise inherit them and hold the locks for as long as it runs.
as_pg() {
  if [ "$AS_ROOT" = 1 ]; then
    (cd / && exec runuser -u postgres -- "$@") 8>&- 9>&-
  else
    (cd / && exec "$@") 8>&- 9>&-
  fi
}

own_pg() {  # own_pg PATH...: hand files we wrote to the cluster's user
  if [ "$AS_ROOT" = 1 ]; then chown postgres:postgres "$@"; fi
}

# Postmaster pid of this cluster if it is alive, else nothing. pg_ctl starts
# it as `postgres -D <data dir>`, which the cmdline check relies on.
pg_pid() {
  local f="$PG_DATA/postmaster.pid" pid
  [ -r "$f" ] || return 0
  pid="$(head -n 1 "$f" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if kill -0 "$pid" 2>/dev/null \
     && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-D $PG_DATA"; then
    echo "$pid"
  fi
}

# PID exists and has not exited: an exited server stays a zombie until its
# parent (init, which may be slow at it) reaps it.
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state="$(sed -nE 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/p' "/proc/$1/stat" 2>/dev/null || true)"
  [ -n "$state" ] && [ "$state" != Z ]
}

pg_running_port() { sed -n 4p "$PG_DATA/postmaster.pid" 2>/dev/null || true; }

# "15" from "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
bin_major() { "$PG_BINDIR/postgres" --version | sed -nE 's/^[^)]*\) *([0-9]+).*/\1/p'; }

# Sets PG_BINDIR (installing PostgreSQL when missing). An existing cluster
# needs the major version that created it.
find_binaries() {
  local major=""
  [ -s "$PG_DATA/PG_VERSION" ] && major="$(cat "$PG_DATA/PG_VERSION")"
  ensure_postgres "$major" || die "PostgreSQL server binaries are missing and could not be installed"
  if [ -n "$major" ] && [ "$(bin_major)" != "$major" ]; then
    die "the cluster in $PG_DATA was created by PostgreSQL $major, but $PG_BINDIR is $(bin_major);" \
        "install postgresql-$major, or stop, delete $PGROOT (its FerretDB data too) and start again"
  fi
}

psql_c() {  # psql_c SQL: one statement over TCP, as FerretDB connects
  PGCONNECT_TIMEOUT=3 "$PG_BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 \
    -h "$POSTGRES_HOST" -p "$POSTGRES_PORT" -U "$PG_ROLE" -d postgres -c "$1" 8>&- 9>&-
}

# Wait until the server answers a query over TCP while PID lives.
pg_wait_ready() {
  local pid="$1" deadline=$(( $(ms_now) + POSTGRES_START_TIMEOUT * 1000 ))
  while [ "$(ms_now)" -lt "$deadline" ]; do
    kill -0 "$pid" 2>/dev/null || return 1
    if psql_c "SELECT 1" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  return 1
}

ensure_db() {
  if [ "$(psql_c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
    psql_c "CREATE DATABASE $PG_DB" || die "could not create database $PG_DB"
    log "created database $PG_DB"
  fi
}

# The first directory on the way to DIR that the postgres user cannot enter.
first_closed_dir() {
  local d="" part
  local IFS=/
  for part in $1; do
    [ -n "$part" ] || continue
    d="$d/$part"
    [ -e "$d" ] || break
    if ! runuser -u postgres -- test -x "$d" 2>/dev/null; then echo "$d"; return 0; fi
  done
}

# ---------------------------------------------------------------- prepare

# Directory, ownership and access for the user the server runs as.
prepare_dirs() {
  mkdir -p "$PGROOT"
  [ "$AS_ROOT" = 1 ] || return 0
  id -u postgres >/dev/null 2>&1 \
    || die "PostgreSQL refuses to run as root and there is no 'postgres' user to run it as" \
           "(Debian's postgresql package creates it); create one or run as a normal user"
  chown postgres:postgres "$PGROOT"
  if [ -d "$PG_DATA" ] && [ "$(stat -c %U "$PG_DATA")" != postgres ]; then
    log "handing $PG_DATA to the postgres user"
    chown -R postgres:postgres "$PG_DATA"
  fi
  if ! runuser -u postgres -- test -w "$PGROOT" -a -x "$PGROOT" 2>/dev/null; then
    local closed; closed="$(first_closed_dir "$PGROOT")"
    die "the postgres user cannot use $PGROOT${closed:+ ($closed is closed to it)};" \
        "set IOT_DATA_DIR to a directory it can reach, e.g. /var/tmp/iot-data"
  fi
}

# First time only: initdb into data.init, then rename, so that an interrupted
# run leaves no half-made cluster behind.
init_cluster() {
  [ -s "$PG_DATA/PG_VERSION" ] && return 0
  if [ -e "$PG_DATA" ]; then
    die "$PG_DATA exists but is not a PostgreSQL cluster (no PG_VERSION); move it away"
  fi
  local tmp="$PG_DATA.init" t0; t0=$(ms_now)
  rm -rf "$tmp"
  log "creating the cluster in $PG_DATA with $PG_BINDIR/initdb (first run only)"
  if ! as_pg "$PG_BINDIR/initdb" -D "$tmp" -U "$PG_ROLE" --encoding=UTF8 --locale=C \
         --auth=trust >"$PGROOT/initdb.log" 2>&1; then
    tail -n 20 "$PGROOT/initdb.log" >&2 || true
    rm -rf "$tmp"
    die "initdb failed (log: $PGROOT/initdb.log)"
  fi
  cat >"$tmp/pg_hba.conf" <<'EOF'
# Written by local/services/postgresql.sh: no password, but only over the unix
# socket (mode 0700, owner only) and from 127.0.0.1; everything else is refused.
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   127.0.0.1/32   trust
EOF
  printf '\n# Settings written by local/services/postgresql.sh on every start:\ninclude_if_exists = %s\n' \
    "'iot.conf'" >>"$tmp/postgresql.conf"
  own_pg "$tmp/pg_hba.conf" "$tmp/postgresql.conf"
  mv "$tmp" "$PG_DATA"
  rm -f "$PGROOT/initdb.log"
  log "created the cluster (PostgreSQL $(bin_major)) in $(elapsed "$t0")"
}

write_config() {
  cat >"$PG_DATA/iot.conf" <<EOF
# Generated by local/services/postgresql.sh on each start; edit the script, not this.
listen_addresses = '$POSTGRES_HOST'
port = $POSTGRES_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
unix_socket_permissions = 0700
max_connections = $POSTGRES_MAX_CONNECTIONS
shared_buffers = $POSTGRES_SHARED_BUFFERS
cluster_name = 'iot-ferretdb'
# Durability stays at PostgreSQL's defaults: fsync = on, synchronous_commit = on,
# full_page_writes = on.
EOF
  own_pg "$PG_DATA/iot.conf"
}

pg_prepare() {
  prepare_dirs
  find_binaries
  # unix socket paths are limited to 107 bytes
  local sock="$PG_SOCKET_DIR/.s.PGSQL.$POSTGRES_PORT.lock"
  if [ "${#sock}" -gt 107 ]; then
    die "socket path $sock is longer than 107 bytes; set IOT_DATA_DIR to a shorter path"
  fi
  if port_open "$POSTGRES_PORT"; then
    die "port $POSTGRES_PORT is already in use by another process (not the cluster in $PG_DATA); set POSTGRES_PORT or stop it"
  fi
  init_cluster
  write_config
}

# ---------------------------------------------------------------- commands

pg_start() {
  lock_data
  local pid; pid="$(pg_pid)"
  if [ -n "$pid" ]; then
    local port; port="$(pg_running_port)"
    if [ "$port" != "$POSTGRES_PORT" ]; then
      die "already running (pid $pid) on port $port, not POSTGRES_PORT=$POSTGRES_PORT;" \
          "stop it first or run: POSTGRES_PORT=$POSTGRES_PORT $0 restart"
    fi
    find_binaries
    pg_wait_ready "$pid" || die "pid $pid is running but not answering on $ADDR; try: $0 restart (log: $PG_LOG)"
    ensure_db
    log "already running (pid $pid) on $ADDR"
    return 0
  fi

  pg_prepare
  [ -f "$PG_LOG" ] && mv -f "$PG_LOG" "$PG_LOG.1"
  local t0; t0=$(ms_now)
  log "starting PostgreSQL $(bin_major) on $ADDR, data $PG_DATA"
  if ! as_pg "$PG_BINDIR/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t "$POSTGRES_START_TIMEOUT" -s; then
    log "not ready after ${POSTGRES_START_TIMEOUT}s or exited; last lines of $PG_LOG:"
    tail -n 40 "$PG_LOG" >&2 || true
    die "PostgreSQL failed to start"
  fi
  pid="$(pg_pid)"
  [ -n "$pid" ] || die "pg_ctl reported a start but no server runs on $PG_DATA (log: $PG_LOG)"
  pg_wait_ready "$pid" || die "started (pid $pid) but not answering on $ADDR (log: $PG_LOG)"
  ensure_db
  log "ready on $ADDR (pid $pid) after $(elapsed "$t0")"
}

# pg_ctl stop -m fast: ends sessions, checkpoints, exits. If that takes longer
# than POSTGRES_STOP_TIMEOUT, -m immediate (the next start then runs crash
# recovery from the WAL; no committed data is lost).
pg_stop() {
  lock_data
  local pid; pid="$(pg_pid)"
  if [ -z "$pid" ]; then
    log "not running"
    return 0
  fi
  find_binaries
  log "stopping (pid $pid)"
  if ! as_pg "$PG_BINDIR/pg_ctl" stop -D "$PG_DATA" -m fast -w -t "$POSTGRES_STOP_TIMEOUT" -s; then
    log "still running after ${POSTGRES_STOP_TIMEOUT}s; pg_ctl stop -m immediate"
    as_pg "$PG_BINDIR/pg_ctl" stop -D "$PG_DATA" -m immediate -w -t 10 -s || true
  fi
  # pg_ctl returns once postmaster.pid is gone, a moment before the process exits
  for _ in $(seq 1 50); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then die "pid $pid did not stop (log: $PG_LOG)"; fi
  log "stopped"
}

# Exit codes as the other services: 0 running, 3 stopped, 1 process there but the port not open.
pg_status() {
  local pid port version
  pid="$(pg_pid)"
  if [ -z "$pid" ]; then
    echo "postgresql: stopped"
    return 3
  fi
  port="$(pg_running_port)"
  version="$(cat "$PG_DATA/PG_VERSION" 2>/dev/null || echo '?')"
  if port_open "$port"; then
    echo "postgresql: running (pid $pid) on $POSTGRES_HOST:$port, version $version, data $PG_DATA"
    return 0
  fi
  echo "postgresql: process running (pid $pid) but $POSTGRES_HOST:$port is not open (starting?)"
  return 1
}

case "${1:-}" in
  start) pg_start ;;
  stop) pg_stop ;;
  restart) pg_stop; pg_start ;;
  status) pg_status ;;
  logs) shift; svc_logs "$@" ;;
  url) echo "$URL" ;;
  *) echo "usage: $0 start|stop|restart|status|logs [-f]|url" >&2; exit 2 ;;
esac
