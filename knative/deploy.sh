#!/usr/bin/env bash
# Deploy the IoT telemetry platform to Knative, or render it without a cluster.
#
#   knative/deploy.sh --image REGISTRY/iot-telemetry:TAG     # current kubectl context
#   knative/deploy.sh --dry-run DIR [--image IMAGE]          # render into DIR, no cluster
#
# Steps (the same in both modes; --dry-run writes files instead of applying):
#   1. knative/base without the five function Services: namespace, ConfigMaps,
#      ClusterDomainClaims, DomainMappings            -> kubectl apply / DIR/base.yaml
#   2. the Secret iot-credentials must exist (created from $IOT_CREDENTIALS_ENV_FILE
#      if it is missing and that variable names an env file; never in --dry-run)
#   3. each function with `kn service apply` (dry run: `kn service create --target`)
#                                                      -> DIR/<function>.yaml
#   4. the eventing wiring of eventing/                -> kubectl apply / DIR/eventing.yaml
#
# The autoscaling annotations, containerConcurrency, timeoutSeconds and the
# visibility label of each function are read from knative/base/<function>.yaml:
# edit them there, for both `kubectl apply -k knative/base` and this script.
# Everything else kn is given is in the "Function settings" block below; tests in
# tests/deploy/ render this script and check that it matches the manifests.
#
# Tools: kn is taken from $KN, else the pinned build in
# ${IOT_CACHE_DIR:-~/.cache/iot-telemetry}/bin (built by knative/tools/build-kn.sh
# on first use), else PATH. Manifests are rendered with kustomize (same cache or
# PATH) or `kubectl kustomize`.
set -euo pipefail

KNATIVE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$KNATIVE_DIR/.." && pwd)"
BASE_DIR="$KNATIVE_DIR/base"
EVENTING_DIR="$REPO/eventing"
# shellcheck source=tools/common.sh source-path=SCRIPTDIR
. "$KNATIVE_DIR/tools/common.sh"

# ---- Function settings (kept equal to knative/base/<function>.yaml) ----------
NAMESPACE="iot"
FUNCTIONS=(ingest aggregate alert query notify)
CONFIG_MAP="iot-config"
SECRET="iot-credentials"
RULES_CONFIG_MAP="iot-alert-rules"
RULES_DIR="/etc/iot"
RULES_FUNCTIONS=" alert query "      # functions that read the alert rules
# NOTIFY_CHANNELS from its own ConfigMap, for notify only (see knative/base/notify.yaml).
CHANNELS_FUNCTIONS=" notify "
CHANNELS_VALUE_FROM="NOTIFY_CHANNELS=config-map:iot-notify-channels:channels.json"
CONTAINER_PORT="8080"
REQUESTS="cpu=100m,memory=128Mi"
LIMITS="cpu=500m,memory=512Mi"
LIVENESS="http::$CONTAINER_PORT:/healthz"
LIVENESS_OPTS="PeriodSeconds=10,TimeoutSeconds=2,FailureThreshold=3"
READINESS="http::$CONTAINER_PORT:/readyz"
# No readiness options: without periodSeconds Knative probes aggressively at start
# and refuses timeoutSeconds / failureThreshold (see the manifests).
TMP_VOLUME="tmp=ed:tmp:type=Memory,size=64Mi"
# kn has no flags for readOnlyRootFilesystem or a complete securityContext
# (--security-context strict replaces it without readOnlyRootFilesystem), so
# each Service starts from this skeleton (`kn ... --filename`) and the flags
# add the rest.
skeleton() {
  cat <<EOF
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: $1
  namespace: $NAMESPACE
spec:
  template:
    spec:
      containers:
        - name: user-container
          securityContext:
            runAsNonRoot: true
            runAsUser: 10001
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities:
              drop: ["ALL"]
            seccompProfile:
              type: RuntimeDefault
EOF
}
# -----------------------------------------------------------------------------

usage() { sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
log() { echo "[deploy] $*" >&2; }
die() { log "$*"; exit 1; }

IMAGE="${IOT_IMAGE:-}"
DRY_RUN_DIR=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --image) IMAGE="${2:?--image needs a value}"; shift 2 ;;
    --image=*) IMAGE="${1#*=}"; shift ;;
    --dry-run) DRY_RUN_DIR="${2:?--dry-run needs a directory}"; shift 2 ;;
    --dry-run=*) DRY_RUN_DIR="${1#*=}"; shift ;;
    -h|--help) usage ;;
    *) log "unknown argument: $1"; usage 2 ;;
  esac
done
if [ -z "$IMAGE" ]; then
  [ -n "$DRY_RUN_DIR" ] || die "--image (or IOT_IMAGE) is required, e.g. --image registry.example.com/iot/iot-telemetry:0.1.0"
  IMAGE="iot-telemetry:dry-run"
fi

render_eventing() {
  if [ -f "$EVENTING_DIR/kustomization.yaml" ]; then
    render_kustomization "$EVENTING_DIR"
  else
    local f first=1
    for f in "$EVENTING_DIR"/*.yaml; do
      [ -e "$f" ] || continue
      [ "$first" = 1 ] || echo "---"
      first=0
      cat "$f"
    done
  fi
}

# "KEY=VALUE" for each autoscaling.knative.dev annotation of a manifest.
scale_annotations() {
  sed -nE 's/^[[:space:]]+(autoscaling\.knative\.dev\/[a-z-]+):[[:space:]]*"?([^"#[:space:]]+)"?[[:space:]]*(#.*)?$/\1=\2/p' "$1"
}

# Value of the first "KEY: value" line of a manifest.
manifest_value() {
  sed -nE "s|^[[:space:]]+${2//./\\.}:[[:space:]]*\"?([^\"#[:space:]]+)\"?[[:space:]]*(#.*)?\$|\1|p" "$1" | head -1
}

# kn flags for one function: settings above + values read from its manifest.
kn_flags() {
  local fn="$1" manifest="$BASE_DIR/$1.yaml" kv key value concurrency timeout
  [ -f "$manifest" ] || die "$manifest is missing"
  concurrency="$(manifest_value "$manifest" containerConcurrency)"
  timeout="$(manifest_value "$manifest" timeoutSeconds)"
  if [ -z "$concurrency" ] || [ -z "$timeout" ]; then
    die "$manifest: containerConcurrency or timeoutSeconds not found"
  fi
  FLAGS=(
    --namespace "$NAMESPACE"
    --image "$IMAGE"
    --port "$CONTAINER_PORT"
    --label-service "app.kubernetes.io/name=$fn"
    --label-service "app.kubernetes.io/part-of=iot-telemetry"
    --label-service "app.kubernetes.io/component=function"
    --env "FUNCTION_TARGET=$fn"
    --env "FUNCTION_SOURCE=/app/functions/$fn.py"
    # gunicorn threads = the per-pod hard limit (see the manifests).
    --env "THREADS=$concurrency"
    --env-from "cm:$CONFIG_MAP"
    --env-from "secret:$SECRET"
    --request "$REQUESTS"
    --limit "$LIMITS"
    --probe-liveness "$LIVENESS" --probe-liveness-opts "$LIVENESS_OPTS"
    --probe-readiness "$READINESS"
    --volume "$TMP_VOLUME" --mount /tmp=tmp
    --concurrency-limit "$concurrency"
    --timeout "$timeout"
  )
  if [ "$(manifest_value "$manifest" networking.knative.dev/visibility)" = cluster-local ]; then
    FLAGS+=(--cluster-local)
  else
    FLAGS+=(--no-cluster-local)
  fi
  if [[ "$CHANNELS_FUNCTIONS" == *" $fn "* ]]; then
    FLAGS+=(--env-value-from "$CHANNELS_VALUE_FROM")
  fi
  if [[ "$RULES_FUNCTIONS" == *" $fn "* ]]; then
    FLAGS+=(--env "ALERT_RULES_FILE=$RULES_DIR/alert-rules.json"
            --volume "alert-rules=cm:$RULES_CONFIG_MAP" --mount "$RULES_DIR=alert-rules")
  fi
  while IFS= read -r kv; do
    key="${kv%%=*}"; value="${kv#*=}"
    case "${key#autoscaling.knative.dev/}" in
      min-scale) FLAGS+=(--scale-min "$value") ;;
      max-scale) FLAGS+=(--scale-max "$value") ;;
      initial-scale) FLAGS+=(--scale-init "$value") ;;
      target) FLAGS+=(--scale-target "$value") ;;
      metric) FLAGS+=(--scale-metric "$value") ;;
      target-utilization-percentage) FLAGS+=(--scale-utilization "$value") ;;
      window) FLAGS+=(--scale-window "$value") ;;
      activation-scale) FLAGS+=(--scale-activation "$value") ;;
      *) FLAGS+=(--annotation-revision "$key=$value") ;;
    esac
  done < <(scale_annotations "$manifest")
}

ensure_secret() {
  if kubectl get secret "$SECRET" -n "$NAMESPACE" >/dev/null 2>&1; then return 0; fi
  if [ -n "${IOT_CREDENTIALS_ENV_FILE:-}" ]; then
    log "creating Secret $SECRET from $IOT_CREDENTIALS_ENV_FILE"
    kubectl create secret generic "$SECRET" -n "$NAMESPACE" --from-env-file="$IOT_CREDENTIALS_ENV_FILE"
    return 0
  fi
  die "Secret $SECRET is missing in namespace $NAMESPACE. Create it (see knative/base/secret.example.yaml), e.g.
  kubectl create secret generic $SECRET -n $NAMESPACE --from-literal=MONGO_URL='mongodb://USER:PASSWORD@mongodb.default:27017'
or set IOT_CREDENTIALS_ENV_FILE to an env file holding MONGO_URL=... and re-run."
}

main() {
  local kn fn
  kn="$(find_kn)"
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT

  if [ -n "$DRY_RUN_DIR" ]; then
    mkdir -p "$DRY_RUN_DIR"
    log "rendering into $DRY_RUN_DIR (image $IMAGE)"
    render_kustomization "$BASE_DIR" | drop_documents "$FUNCTION_LABEL_LINE" > "$DRY_RUN_DIR/base.yaml"
  else
    command -v kubectl >/dev/null 2>&1 || die "kubectl not found"
    log "applying knative/base (without the function Services) to $(kubectl config current-context)"
    render_kustomization "$BASE_DIR" | drop_documents "$FUNCTION_LABEL_LINE" | kubectl apply -f -
    ensure_secret
  fi

  for fn in "${FUNCTIONS[@]}"; do
    kn_flags "$fn"
    skeleton "$fn" > "$WORK/$fn.skeleton.yaml"
    if [ -n "$DRY_RUN_DIR" ]; then
      rm -f "$DRY_RUN_DIR/$fn.yaml"
      # kn would say "Service '$fn' created": nothing is created, the file is only written.
      "$kn" service create "$fn" --filename "$WORK/$fn.skeleton.yaml" "${FLAGS[@]}" \
        --target "$DRY_RUN_DIR/$fn.yaml" >/dev/null
      log "rendered Service $fn -> $DRY_RUN_DIR/$fn.yaml"
    else
      log "kn service apply $fn"
      "$kn" service apply "$fn" --filename "$WORK/$fn.skeleton.yaml" "${FLAGS[@]}"
    fi
  done

  if [ -n "$DRY_RUN_DIR" ]; then
    render_eventing > "$DRY_RUN_DIR/eventing.yaml"
    log "rendered: $(cd "$DRY_RUN_DIR" && echo base.yaml "${FUNCTIONS[@]/%/.yaml}" eventing.yaml)"
  else
    log "applying eventing/"
    if [ -f "$EVENTING_DIR/kustomization.yaml" ]; then
      kubectl apply -k "$EVENTING_DIR"
    else
      kubectl apply -f "$EVENTING_DIR"
    fi
    log "done. Check: kn service list -n $NAMESPACE; kn trigger list -n $NAMESPACE"
  fi
}

main
