#!/usr/bin/env bash
# Remove what knative/deploy.sh created, in the reverse order.
#
#   knative/undeploy.sh --yes                   # everything, namespace iot included
#   knative/undeploy.sh --yes --keep-namespace  # keep the namespace (and its Secret)
#
# Order: eventing/ first (the KafkaSource stops consuming, so nothing is sent
# to a function that is going away; unconsumed events stay in Kafka under the
# source's consumer group), then the five Services, then knative/base. Kafka
# topics and MongoDB data are never touched.
set -euo pipefail

KNATIVE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$KNATIVE_DIR/.." && pwd)"
EVENTING_DIR="$REPO/eventing"
NAMESPACE="iot"
FUNCTIONS=(ingest aggregate alert query notify)
# shellcheck source=tools/common.sh source-path=SCRIPTDIR
. "$KNATIVE_DIR/tools/common.sh"

log() { echo "[undeploy] $*" >&2; }

YES=0
KEEP_NAMESPACE=0
for arg in "$@"; do
  case "$arg" in
    -y|--yes) YES=1 ;;
    --keep-namespace) KEEP_NAMESPACE=1 ;;
    -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) log "unknown argument: $arg"; exit 2 ;;
  esac
done

command -v kubectl >/dev/null 2>&1 || { log "kubectl not found"; exit 1; }
context="$(kubectl config current-context)"
if [ "$YES" != 1 ]; then
  log "would delete eventing/, the Services ${FUNCTIONS[*]} and knative/base from context $context"
  [ "$KEEP_NAMESPACE" = 1 ] || log "including the namespace $NAMESPACE and everything in it (Secrets too)"
  log "re-run with --yes to do it"
  exit 1
fi

log "deleting eventing/ ($context)"
if [ -f "$EVENTING_DIR/kustomization.yaml" ]; then
  kubectl delete -k "$EVENTING_DIR" --ignore-not-found
elif compgen -G "$EVENTING_DIR/*.yaml" >/dev/null; then
  kubectl delete -f "$EVENTING_DIR" --ignore-not-found
fi

kn="$(find_kn)"
for fn in "${FUNCTIONS[@]}"; do
  if "$kn" service describe "$fn" -n "$NAMESPACE" >/dev/null 2>&1; then
    "$kn" service delete "$fn" -n "$NAMESPACE" --wait
  else
    log "service $fn: not found"
  fi
done

log "deleting knative/base"
keep=(cat)
[ "$KEEP_NAMESPACE" = 1 ] && keep=(drop_documents '^kind: Namespace$')
render_kustomization "$KNATIVE_DIR/base" | "${keep[@]}" | kubectl delete --ignore-not-found -f -
log "done"
