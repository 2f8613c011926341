# shellcheck shell=bash
# Shared by knative/deploy.sh and knative/undeploy.sh (sourced, not executed):
# where the tools come from and how the manifests are rendered.
#
# Expects KNATIVE_DIR (the knative/ directory) to be set by the caller.

CACHE_BIN="${IOT_CACHE_DIR:-${HOME:-/root}/.cache/iot-telemetry}/bin"

_common_log() { echo "[$(basename "$0" .sh)] $*" >&2; }

# Path of kn: $KN, else the pinned build in the cache, else PATH, else build it.
find_kn() {
  if [ -n "${KN:-}" ]; then echo "$KN"
  elif [ -x "$CACHE_BIN/kn" ]; then echo "$CACHE_BIN/kn"
  elif command -v kn >/dev/null 2>&1; then command -v kn
  else
    _common_log "kn not found: building the pinned version (a few minutes, once)"
    echo "$(bash "$KNATIVE_DIR/tools/build-kn.sh")/kn"
  fi
}

# kustomize build DIR, with the pinned kustomize, any kustomize, or kubectl.
render_kustomization() {
  if [ -x "$CACHE_BIN/kustomize" ]; then "$CACHE_BIN/kustomize" build "$1"
  elif command -v kustomize >/dev/null 2>&1; then kustomize build "$1"
  elif command -v kubectl >/dev/null 2>&1; then kubectl kustomize "$1"
  else
    _common_log "neither kustomize nor kubectl found: building kustomize"
    "$(bash "$KNATIVE_DIR/tools/build-tools.sh" kustomize)/kustomize" build "$1"
  fi
}

# Filter a multi-document YAML stream (as kustomize prints it): drop every
# document with a line matching the extended regex $1.
drop_documents() {
  awk -v pattern="$1" '
    function flush() {
      if (doc != "" && !hit) { if (printed++) printf "---\n"; printf "%s", doc }
      doc = ""; hit = 0
    }
    /^---$/ { flush(); next }
    { doc = doc $0 "\n" }
    $0 ~ pattern { hit = 1 }
    END { flush() }'
}

# The documents kn creates: kustomize prints metadata.labels keys at 4 spaces.
# shellcheck disable=SC2034  # used by the scripts that source this file
FUNCTION_LABEL_LINE='^    app\.kubernetes\.io/component: function$'
