#!/usr/bin/env bash
# MongoDB-API server that keeps single-document atomicity, for the tests'
# proofs and the benchmarks: mongo-java-server with its H2 (MVStore file)
# backend (default) or its memory backend (MJS_BACKEND=memory).
#
#   bash local/services/mongo-java-server.sh start|stop|restart|status|logs [-f]
#
# First start: fetches the jars with Maven (mongo-java-server/pom.xml) into
# $IOT_CACHE_DIR/mongo-java-server-<version>/lib and compiles
# mongo-java-server/Launcher.java there with the machine's javac; then runs it
# in the background with data in $IOT_DATA_DIR/mongo-java-server and waits
# until it answers a ping. See README.md here.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$HERE/common.sh"

MJS_VERSION="${MJS_VERSION:-1.47.0}"
MJS_HOST=127.0.0.1
MJS_PORT="${MJS_PORT:-27018}"
MJS_BACKEND="${MJS_BACKEND:-h2}"          # h2 (file, survives restarts) | memory
MJS_FSYNC="${MJS_FSYNC:-0}"               # 1: fsync every commit (power loss, not only a crash)
MJS_ID_INDEX="${MJS_ID_INDEX:-1}"         # 0: _id index only for a bare {_id} filter, as released
# pymongo >= 4.14 needs 9 (MongoDB 4.4); mongo-java-server itself reports 8.
MJS_WIRE_VERSION="${MJS_WIRE_VERSION:-9}"
MJS_START_TIMEOUT="${MJS_START_TIMEOUT:-60}"
MJS_STOP_TIMEOUT="${MJS_STOP_TIMEOUT:-15}"
MJS_HEAP_OPTS="${MJS_HEAP_OPTS:--Xms64m -Xmx1g}"
MJS_JVM_OPTS="${MJS_JVM_OPTS:-}"

MHOME="$CACHE_DIR/mongo-java-server-$MJS_VERSION"
SRC_DIR="$HERE/mongo-java-server"

MDIR="$DATA_ROOT/mongo-java-server"
DB_FILE="$MDIR/data.mv.db"
ADDR="$MJS_HOST:$MJS_PORT"

# For common.sh (the variables are described there).
SVC_NAME=mongo-java-server
SVC_TITLE=mongo-java-server
SVC_PROC=
SVC_VERSION="$MJS_VERSION ($MJS_BACKEND backend)"
SVC_DIR="$MDIR"
SVC_PID_FILE="$MDIR/mongo-java-server.pid"
SVC_LOG_FILE="$MDIR/mongo-java-server.log"
SVC_HOST="$MJS_HOST"
SVC_PORT="$MJS_PORT"
SVC_CMDLINE_MATCH="-Diot.mjs.dir=$MDIR "
SVC_START_TIMEOUT="$MJS_START_TIMEOUT"
SVC_STOP_TIMEOUT="$MJS_STOP_TIMEOUT"

case "$MJS_BACKEND" in
  h2) BACKEND_ARGS=(--backend h2 --file "$DB_FILE"); SVC_DATA="$DB_FILE" ;;
  memory) BACKEND_ARGS=(--backend memory); SVC_DATA="memory (lost on stop)" ;;
  *) log "ERROR: MJS_BACKEND must be h2 (the default) or memory, not '$MJS_BACKEND'"; exit 2 ;;
esac
[ "$MJS_FSYNC" != 1 ] || BACKEND_ARGS+=(--fsync)
[ "$MJS_ID_INDEX" != 0 ] || BACKEND_ARGS+=(--no-id-index)

# ---------------------------------------------------------------- fetch and build

# The jars are keyed by the pom, the compiled launcher by its source, each in a
# directory of its own that is never rewritten once complete: the cache is shared by
# every checkout on the machine, and a running server keeps loading from where it
# started (a build for another checkout's launcher goes beside it).
stamp_of() { cksum <"$1" | cut -d' ' -f1; }
LIB="$MHOME/lib-$(stamp_of "$SRC_DIR/pom.xml")"
CLASSES="$MHOME/classes-$(stamp_of "$SRC_DIR/Launcher.java")"

build_launcher() {
  [ -f "$LIB/.complete" ] && [ -f "$CLASSES/.complete" ] && return 0
  lock_cache "mongo-java-server-$MJS_VERSION"
  [ -f "$LIB/.complete" ] && [ -f "$CLASSES/.complete" ] && return 0  # a concurrent run built it
  ensure_tools java mvn
  command -v javac >/dev/null 2>&1 || _et_apt_install openjdk-17-jdk-headless \
    || die "javac is missing (install a JDK, e.g. openjdk-17-jdk-headless)"
  local t0; t0=$(ms_now)
  mkdir -p "$MHOME"
  if ! [ -f "$LIB/.complete" ]; then
    log "fetching mongo-java-server $MJS_VERSION with Maven into $LIB (first run only)"
    rm -rf "$LIB.tmp" "$LIB"
    mkdir -p "$LIB.tmp"
    if ! mvn -q -B -f "$SRC_DIR/pom.xml" -Dmjs.version="$MJS_VERSION" \
          dependency:copy-dependencies -DincludeScope=runtime \
          -DoutputDirectory="$LIB.tmp" >"$MHOME/mvn.log" 2>&1; then
      tail -n 30 "$MHOME/mvn.log" >&2 || true
      die "Maven could not fetch de.bwaldvogel:mongo-java-server:$MJS_VERSION (full log: $MHOME/mvn.log)"
    fi
    touch "$LIB.tmp/.complete"
    mv "$LIB.tmp" "$LIB"
    rm -f "$MHOME/mvn.log"
  fi
  log "compiling $SRC_DIR/Launcher.java into $CLASSES"
  rm -rf "$CLASSES.tmp" "$CLASSES"
  mkdir -p "$CLASSES.tmp"
  if ! javac -nowarn -d "$CLASSES.tmp" -cp "$LIB/*" "$SRC_DIR/Launcher.java" >"$MHOME/javac.log" 2>&1; then
    cat "$MHOME/javac.log" >&2
    die "compiling $SRC_DIR/Launcher.java failed"
  fi
  touch "$CLASSES.tmp/.complete"
  mv "$CLASSES.tmp" "$CLASSES"
  rm -f "$MHOME/javac.log"
  log "built in $(elapsed "$t0")"
}

# ---------------------------------------------------------------- readiness

# Ready means it answers a pymongo ping, or, without pymongo, that the port is open.
SVC_PY_MODULE=pymongo
SVC_PY_PROBE="$MONGO_PING_PROBE"
svc_probe() { port_open "$MJS_PORT"; }

# ---------------------------------------------------------------- commands

svc_prepare() {
  ensure_tools java
  build_launcher
  if port_open "$MJS_PORT"; then
    die "port $MJS_PORT is already in use by another process (not the mongo-java-server in $MDIR); set MJS_PORT or stop it"
  fi
  mkdir -p "$MDIR"
}

svc_launch() {
  log "starting mongo-java-server $MJS_VERSION ($MJS_BACKEND) on $ADDR, data $SVC_DATA"
  local jvm=()
  read -r -a jvm <<<"$MJS_HEAP_OPTS $MJS_JVM_OPTS"
  # -Diot.mjs.dir marks the process as this data dir's server (SVC_CMDLINE_MATCH).
  # AbstractMongoDatabase at error: it warns on every create_index of a non-unique index
  # ("not yet implemented. ignoring"), for each test database; README.md says so once.
  svc_spawn java "${jvm[@]}" -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
    -Dorg.slf4j.simpleLogger.log.de.bwaldvogel.mongo.backend.AbstractMongoDatabase=error \
    -Diot.mjs.dir="$MDIR" \
    -cp "$LIB/*:$CLASSES" Launcher \
    --host "$MJS_HOST" --port "$MJS_PORT" --wire-version "$MJS_WIRE_VERSION" "${BACKEND_ARGS[@]}"
}

svc_main "$@"
