#!/usr/bin/env bash
# Make sure the toolchains the local service scripts need are on this machine.
#
#   bash local/services/ensure-tools.sh [java] [mvn] [go] [postgres]
#                                       # default: java mvn go (postgres only when asked)
#
# Also meant to be sourced (common.sh does this for kafka.sh and ferretdb.sh),
# so PATH changes such as adding /usr/local/go/bin reach the caller:
#
#   source local/services/ensure-tools.sh && ensure_tools java mvn
#
# Missing tools are installed from Debian's packages with apt-get (needs root
# or sudo; never prompts). Go must be >= 1.21 (FerretDB 1.24 needs 1.24; a
# 1.21+ go fetches the newer toolchain itself through GOTOOLCHAIN=auto).
# `postgres` (PostgreSQL's server binaries initdb, pg_ctl, postgres, psql) is
# not put on PATH: Debian keeps them in /usr/lib/postgresql/<major>/bin, and
# ensure_postgres sets PG_BINDIR to that directory instead.

_et_log() { echo "[ensure-tools] $*" >&2; }

_et_apt_updated=0
_et_apt_install() {
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; else
      _et_log "need root (or sudo) to apt-get install $*"; return 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    _et_log "apt-get not found; install $* by hand"; return 1
  fi
  if [ "$_et_apt_updated" = 0 ]; then
    _et_log "apt-get update"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    _et_apt_updated=1
  fi
  _et_log "apt-get install $*"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

_et_path_prepend() {
  case ":$PATH:" in *":$1:"*) ;; *) export PATH="$1:$PATH" ;; esac
}

# go version as "MAJOR MINOR" (e.g. "1 26"); empty if no go.
_et_go_version() {
  command -v go >/dev/null 2>&1 || return 0
  go env GOVERSION 2>/dev/null | sed -nE 's/^go([0-9]+)\.([0-9]+).*/\1 \2/p'
}

ensure_java() {
  command -v java >/dev/null 2>&1 && return 0
  _et_apt_install openjdk-17-jre-headless
  command -v java >/dev/null 2>&1 || { _et_log "java still missing after install"; return 1; }
}

ensure_mvn() {
  command -v mvn >/dev/null 2>&1 && return 0
  _et_apt_install maven
  command -v mvn >/dev/null 2>&1 || { _et_log "mvn still missing after install"; return 1; }
}

ensure_go() {
  # Prefer an upstream Go in the usual places over Debian's (older) package.
  local d
  for d in /usr/local/go/bin "${HOME:-/root}/go/bin" "${HOME:-/root}/sdk/go/bin"; do
    if [ -x "$d/go" ]; then _et_path_prepend "$d"; break; fi
  done
  if ! command -v go >/dev/null 2>&1; then
    _et_apt_install golang-go
  fi
  local v; v=$(_et_go_version)
  if [ -z "$v" ]; then _et_log "go still missing after install"; return 1; fi
  local major="${v% *}" minor="${v#* }"
  if [ "$major" -lt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -lt 21 ]; }; then
    _et_log "go $major.$minor is too old (need >= 1.21, FerretDB 1.24 builds with 1.24+)."
    _et_log "Install a newer Go (e.g. to /usr/local/go) and re-run."
    return 1
  fi
  # go >= 1.21 switches to the toolchain a module asks for when allowed.
  export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
}

_et_pg_ok() {  # _et_pg_ok DIR: DIR has the server binaries the scripts run
  [ -x "$1/initdb" ] && [ -x "$1/pg_ctl" ] && [ -x "$1/postgres" ] && [ -x "$1/psql" ]
}

# Directory holding PostgreSQL's server binaries, or nothing: $POSTGRES_BIN
# when set; else Debian's /usr/lib/postgresql/<major>/bin, MAJOR's when it is
# given and installed, otherwise the newest; else wherever PATH has pg_ctl
# (other distributions).
_et_pg_bindir() {
  local want="${1:-}" d best=""
  if [ -n "${POSTGRES_BIN:-}" ]; then
    if _et_pg_ok "$POSTGRES_BIN"; then echo "$POSTGRES_BIN"; fi
    return 0
  fi
  if [ -n "$want" ] && _et_pg_ok "/usr/lib/postgresql/$want/bin"; then
    echo "/usr/lib/postgresql/$want/bin"
    return 0
  fi
  while IFS= read -r d; do
    if _et_pg_ok "$d"; then best="$d"; fi
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V)
  if [ -z "$best" ] && command -v pg_ctl >/dev/null 2>&1; then
    d="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
    if _et_pg_ok "$d"; then best="$d"; fi
  fi
  if [ -n "$best" ]; then echo "$best"; fi
  return 0
}

# ensure_postgres [MAJOR]: sets and exports PG_BINDIR (see _et_pg_bindir);
# installs Debian's `postgresql` package when no server binaries are found.
ensure_postgres() {
  PG_BINDIR="$(_et_pg_bindir "${1:-}")"
  if [ -z "$PG_BINDIR" ]; then
    if [ -n "${POSTGRES_BIN:-}" ]; then
      _et_log "POSTGRES_BIN=$POSTGRES_BIN lacks initdb, pg_ctl, postgres or psql"; return 1
    fi
    _et_apt_install postgresql || return 1
    PG_BINDIR="$(_et_pg_bindir "${1:-}")"
  fi
  if [ -z "$PG_BINDIR" ]; then _et_log "initdb/pg_ctl still missing after install"; return 1; fi
  export PG_BINDIR
}

ensure_tools() {
  [ "$#" -gt 0 ] || set -- java mvn go
  local t
  for t in "$@"; do
    case "$t" in
      java) ensure_java ;;
      mvn|maven) ensure_mvn ;;
      go|golang) ensure_go ;;
      postgres|postgresql) ensure_postgres "" ;;
      *) _et_log "unknown tool: $t"; return 2 ;;
    esac
  done
}

# Executed (not sourced): install what is asked for and report.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  ensure_tools "$@"
  command -v java >/dev/null 2>&1 && _et_log "java: $(java -version 2>&1 | head -1)"
  command -v mvn >/dev/null 2>&1 && _et_log "mvn:  $(mvn -v 2>/dev/null | head -1 | sed 's/\x1b\[[0-9;]*m//g')"
  command -v go >/dev/null 2>&1 && _et_log "go:   $(go version)"
  [ -z "${PG_BINDIR:-}" ] || _et_log "postgres: $("$PG_BINDIR/postgres" --version) in $PG_BINDIR"
  exit 0
fi
