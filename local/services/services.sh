#!/usr/bin/env bash
# Start/stop/check the real services for local runs and CI: Kafka, the atomic
# store (mongo-java-server, where the tests' proofs run) and FerretDB (the
# compatibility lane).
#
#   bash local/services/services.sh start|stop|restart|status
#
# start runs the starts in parallel (on a cold machine the Maven fetches and the
# Go build overlap) and fails if any fails. SERVICES="kafka mongo-java-server"
# picks a subset. Env vars: see README.md here.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
read -r -a SERVICES <<<"${SERVICES:-kafka mongo-java-server ferretdb}"

# Only for log, ms_now and elapsed; the service scripts do the real work.
SVC_NAME=services
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$HERE/common.sh"

# run CMD on every service in parallel; non-zero if any failed
parallel() {
  local cmd="$1" s rc=0
  declare -A pids=()
  for s in "${SERVICES[@]}"; do
    bash "$HERE/$s.sh" "$cmd" &
    pids[$s]=$!
  done
  for s in "${SERVICES[@]}"; do
    if ! wait "${pids[$s]}"; then
      log "$s $cmd FAILED"
      rc=1
    fi
  done
  return "$rc"
}

case "${1:-}" in
  start)
    t0=$(ms_now)
    if parallel start; then
      log "all services ready in $(elapsed "$t0")"
    else
      exit 1
    fi
    ;;
  stop)
    parallel stop
    ;;
  restart)
    parallel stop
    parallel start
    ;;
  status)
    rc=0
    for s in "${SERVICES[@]}"; do bash "$HERE/$s.sh" status || rc=$?; done
    exit "$rc"
    ;;
  *)
    echo "usage: $0 start|stop|restart|status" >&2
    exit 2
    ;;
esac
