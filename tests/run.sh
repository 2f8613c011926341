#!/usr/bin/env bash
# Install the project with its test tools, start the real Kafka and FerretDB, then run
# ruff, mypy and every test (unit, integration, deploy). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
echo "==> installing the project and its test tools" >&2
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e '.[test]'

# The integration tests talk to the servers started here (ports can be moved for a
# second checkout running beside the first: KAFKA_PORT, KAFKA_CONTROLLER_PORT, FERRETDB_PORT).
export TEST_KAFKA_BOOTSTRAP="127.0.0.1:${KAFKA_PORT:-9092}"
export TEST_MONGO_URL="mongodb://127.0.0.1:${FERRETDB_PORT:-27017}"
echo "==> installing headless Chromium and Playwright for the browser tests" >&2
PYTHON="$PYTHON" bash tests/browser/install.sh

echo "==> starting Kafka and FerretDB (first run downloads and builds them)" >&2
bash local/services/services.sh start
if [[ "${IOT_KEEP_SERVICES:-0}" != "1" ]]; then
  trap 'bash local/services/services.sh stop >&2 || true' EXIT
fi

echo "==> ruff" >&2
"$PYTHON" -m ruff check .
echo "==> mypy" >&2
"$PYTHON" -m mypy
echo "==> pytest" >&2
"$PYTHON" -m pytest "$@"
