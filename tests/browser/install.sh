#!/usr/bin/env bash
# Install what the browser tests need: Debian's chromium (the tests drive /usr/bin/chromium)
# and Playwright for Python. Idempotent: does nothing when both are already there.
# Playwright's own browser download (`playwright install`) is never used.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
CHROMIUM="${IOT_CHROMIUM:-/usr/bin/chromium}"

if [[ ! -x "$CHROMIUM" ]]; then
  if [[ "$CHROMIUM" != /usr/bin/chromium ]]; then
    echo "IOT_CHROMIUM=$CHROMIUM is not an executable" >&2
    exit 1
  fi
  echo "==> installing chromium (apt-get)" >&2
  SUDO=""
  if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core >/dev/null
fi
# (Debian's launcher script may print a harmless shell warning of its own on stderr.)
echo "$("$CHROMIUM" --version 2>/dev/null)" >&2

if ! "$PYTHON" -c 'import playwright' 2>/dev/null; then
  echo "==> installing playwright (pip)" >&2
  # Only the Python driver: PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD keeps it from fetching browsers.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$PYTHON" -m pip install --quiet \
    --disable-pip-version-check 'playwright>=1.45,<2'
fi
"$PYTHON" -c 'from importlib.metadata import version; print("playwright", version("playwright"))' >&2
