#!/usr/bin/env bash
# Install the benchmark's tools: wrk (HTTP load, Debian package) and py-spy (profiles, PyPI).
# Without them the suite still runs: a Python load generator replaces wrk and --profile
# records nothing. Idempotent.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
if ! command -v wrk >/dev/null; then
  SUDO=""; [[ "$(id -u)" != 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi
command -v py-spy >/dev/null || "$PYTHON" -m pip install --quiet --disable-pip-version-check py-spy
wrk --version 2>&1 | head -1 >&2 || true
py-spy --version >&2
