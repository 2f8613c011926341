#!/usr/bin/env bash
# Install the project with its test tools into a virtual environment, start the real Kafka,
# mongo-java-server (the atomic store) and FerretDB, build the deployment tools, probe the
# stores' atomicity, then run ruff, mypy and every test (unit, integration, deploy, browser,
# fuzz). Extra arguments go to pytest.
#
# Python: $PYTHON if set, else .venv in the repository (created here: Debian's python3
# refuses `pip install` outside a virtual environment). Each step prints
# `==> [elapsed] what`, and a step that prints nothing for 10 s says it is still running.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUN_STARTED=$SECONDS

elapsed() {
  local s=$((SECONDS - RUN_STARTED))
  printf '%dm%02ds' $((s / 60)) $((s % 60))
}
step() { echo "==> [$(elapsed)] $*" >&2; }
die() { echo "tests/run.sh: $*" >&2; exit 1; }

# Run "$@"; while it prints nothing, say every 10 s that it is still running (and, for
# pytest, in which test file).
with_heartbeat() {
  local label="$1" log pid quiet=0 size last=-1 rc=0 where
  shift
  log="$(mktemp)"
  "$@" > >(tee -a "$log") 2> >(tee -a "$log" >&2) &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    size="$(stat -c %s "$log")"
    if [[ "$size" != "$last" ]]; then last="$size"; quiet=0; continue; fi
    quiet=$((quiet + 1))
    if ((quiet % 10 == 0)); then
      where="$(grep -o 'tests/[A-Za-z0-9_/]*\.py' "$log" | tail -1 || true)"
      echo "    ... [$(elapsed)] $label still running${where:+ ($where)}" >&2
    fi
  done
  wait "$pid" || rc=$?
  rm -f "$log"
  return "$rc"
}

# --- Python: a virtual environment with the project and its test tools -------------------
ensure_python() {
  if [[ -n "${PYTHON:-}" ]]; then return 0; fi
  PYTHON="$ROOT/.venv/bin/python"
  if [[ -x "$PYTHON" ]]; then return 0; fi
  step "creating the virtual environment .venv (PYTHON=... uses another interpreter)"
  if ! python3 -m venv "$ROOT/.venv" >/dev/null 2>&1; then
    rm -rf "$ROOT/.venv"
    command -v apt-get >/dev/null 2>&1 ||
      die "python3 -m venv failed: install Python's venv module (or set PYTHON)"
    # Debian and Ubuntu ship venv's pip bootstrap as a package of its own.
    step "installing python3-venv (apt-get)"
    local sudo=""
    if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
    if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null; then
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
    fi
    python3 -m venv "$ROOT/.venv"
  fi
}

install_project() {
  # Skipped when this interpreter already has this checkout installed with these
  # dependencies (pip takes ~20 s even when there is nothing to do).
  local stamp marker
  stamp="$(sha256sum pyproject.toml | cut -c1-16):$ROOT"
  marker="$("$PYTHON" -c 'import sys; print(sys.prefix)')/.iot-telemetry-installed"
  if [[ "$(cat "$marker" 2>/dev/null)" == "$stamp" ]]; then
    step "project and test tools already installed ($PYTHON)"
    return 0
  fi
  step "installing the project and its test tools ($PYTHON)"
  with_heartbeat "pip install" \
    "$PYTHON" -m pip install --quiet --disable-pip-version-check -e '.[test]'
  echo "$stamp" > "$marker"
}

install_browser() {
  step "headless Chromium and Playwright for the browser tests"
  PYTHON="$PYTHON" with_heartbeat "browser install" bash tests/browser/install.sh
}

# --- the deployment tools (Go builds, cached in ~/.cache/iot-telemetry/bin) -----------------
build_deploy_tools() {
  step "kn, kustomize, kubeconform, knative-validate for the deploy tests (built once and cached; minutes the first time)"
  with_heartbeat "go build" bash knative/tools/build-tools.sh >/dev/null
}

# --- the real Kafka, mongo-java-server and FerretDB ---------------------------------------
# The integration tests talk to the servers started here (ports can be moved for a second
# checkout running beside the first: KAFKA_PORT, KAFKA_CONTROLLER_PORT, MJS_PORT,
# FERRETDB_PORT). The proofs run on the atomic store; FerretDB is the compatibility lane.
export TEST_KAFKA_BOOTSTRAP="127.0.0.1:${KAFKA_PORT:-9092}"
export TEST_MONGO_URL="mongodb://127.0.0.1:${MJS_PORT:-27018}"
export TEST_FERRETDB_URL="mongodb://127.0.0.1:${FERRETDB_PORT:-27017}"

SERVICES_PID=""
start_services_in_background() {
  step "starting Kafka, mongo-java-server and FerretDB in the background (first run downloads and builds them)"
  bash local/services/services.sh start &
  SERVICES_PID=$!
  if [[ "${IOT_KEEP_SERVICES:-0}" != "1" ]]; then
    trap 'bash local/services/services.sh stop >&2 || true' EXIT
  fi
}

wait_for_services() {
  step "waiting for Kafka, mongo-java-server and FerretDB"
  local waited=0
  while kill -0 "$SERVICES_PID" 2>/dev/null; do
    sleep 1
    waited=$((waited + 1))
    if ((waited % 10 == 0)); then echo "    ... [$(elapsed)] services still starting" >&2; fi
  done
  wait "$SERVICES_PID" ||
    die "a service did not start (bash local/services/services.sh status; logs in .data/*/)"
}

# The exactly-once proofs need single-document atomicity: a store that loses concurrent
# writes fails the run here. FerretDB 1.x is known to lose them: reported, not failed.
probe_stores() {
  step "atomicity probe: mongo-java-server (the tests' store; must pass)"
  "$PYTHON" -m tests.store_probe "$TEST_MONGO_URL" --name mongo-java-server
  step "atomicity probe: FerretDB (compatibility lane; expected to lose writes, report only)"
  "$PYTHON" -m tests.store_probe "$TEST_FERRETDB_URL" --name FerretDB --report-only
}

# --- checks ----------------------------------------------------------------------------------
lint_and_types() {
  step "ruff"
  "$PYTHON" -m ruff check .
  step "mypy"
  with_heartbeat "mypy" "$PYTHON" -m mypy
}

run_pytest() {
  step "pytest (the pipeline fault tests take the longest)"
  with_heartbeat "pytest" "$PYTHON" -m pytest "$@"
  step "done"
}

main() {
  ensure_python
  install_project
  install_browser
  build_deploy_tools
  start_services_in_background
  lint_and_types
  wait_for_services
  probe_stores
  run_pytest "$@"
}

# Sourced (e.g. `. tests/run.sh; ensure_python`), it only defines the steps.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
