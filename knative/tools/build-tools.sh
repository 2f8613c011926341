#!/usr/bin/env bash
# Build the deployment tools from the Go module proxy into a cache, once.
#
#   bash knative/tools/build-tools.sh [kn] [kustomize] [kubeconform]   # default: all
#
# Prints the bin directory on stdout (progress goes to stderr), so callers can
#   export PATH="$(bash knative/tools/build-tools.sh):$PATH"
#
# Each tool is built from a small wrapper module under knative/tools/go/<tool>/
# whose go.mod/go.sum pin the version and every dependency (the `tool`
# directive names the command to build). knative.dev/client carries a
# `replace knative.dev/client/pkg => ./pkg` that only works inside its own
# repository, so the kn wrapper requires knative.dev/client and
# knative.dev/client/pkg at the same commit itself.
#
# Pinned versions (change them in the wrapper's go.mod, then `go mod tidy`):
#   kn           knative.dev/client v0.45.0 (= Knative client v1.18.0)
#                + knative.dev/client/pkg at the same commit (96721e598f77)
#   kustomize    sigs.k8s.io/kustomize/kustomize/v5 v5.8.1
#   kubeconform  github.com/yannh/kubeconform v0.8.0
#
# Binaries land in ${IOT_CACHE_DIR:-$HOME/.cache/iot-telemetry}/bin with a stamp
# (hash of the wrapper's go.mod + go.sum, the Go version and the link flags); a tool whose
# stamp matches is not rebuilt. A first build of kn takes minutes (it downloads and
# compiles most of client-go); the others take seconds.
set -euo pipefail

TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$TOOLS_DIR/../.." && pwd)"
CACHE_DIR="${IOT_CACHE_DIR:-${HOME:-/root}/.cache/iot-telemetry}"
BIN_DIR="$CACHE_DIR/bin"

log() { echo "[build-tools] $*" >&2; }

# Command each wrapper module builds, and the -X flag that makes `TOOL version`
# report the pinned version (the module build has no VCS data to take it from).
declare -A PACKAGE=(
  [kn]=knative.dev/client/cmd/kn
  [kustomize]=sigs.k8s.io/kustomize/kustomize/v5
  [kubeconform]=github.com/yannh/kubeconform/cmd/kubeconform
)
declare -A VERSION_FLAG=(
  [kn]="-X knative.dev/client/pkg/commands/version.Version=v1.18.0"
  [kustomize]="-X sigs.k8s.io/kustomize/api/provenance.version=v5.8.1"
  [kubeconform]="-X main.version=v0.8.0"
)

find_go() {
  if [ -f "$REPO/local/services/ensure-tools.sh" ]; then
    # Shared with the local service scripts: finds /usr/local/go or installs Go.
    # shellcheck source=/dev/null
    . "$REPO/local/services/ensure-tools.sh"
    ensure_go
  elif ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
  fi
  command -v go >/dev/null 2>&1 || { log "go not found (need Go >= 1.24)"; exit 1; }
}

stamp_of() {
  local tool="$1" module="$TOOLS_DIR/go/$1"
  { cat "$module/go.mod" "$module/go.sum"; go env GOVERSION; echo "${VERSION_FLAG[$tool]}"; } |
    sha256sum | cut -d' ' -f1
}

build() {
  local tool="$1" module="$TOOLS_DIR/go/$1"
  local bin="$BIN_DIR/$tool" stamp_file="$BIN_DIR/.$tool.stamp" stamp
  [ -n "${PACKAGE[$tool]:-}" ] || { log "unknown tool: $tool (kn, kustomize, kubeconform)"; exit 2; }
  stamp="$(stamp_of "$tool")"
  if [ -x "$bin" ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ]; then
    log "$tool: cached ($bin)"
    return 0
  fi
  log "$tool: building ${PACKAGE[$tool]} (pinned in knative/tools/go/$tool/go.mod)"
  local start=$SECONDS tmp="$bin.tmp.$$"
  (
    cd "$module"
    # -mod=readonly: go.sum must already hold every hash; nothing is re-resolved.
    GOFLAGS="-mod=readonly -buildvcs=false" go build -trimpath \
      -ldflags "-s -w ${VERSION_FLAG[$tool]}" -o "$tmp" "${PACKAGE[$tool]}"
  )
  mv -f "$tmp" "$bin"
  echo "$stamp" > "$stamp_file"
  log "$tool: built in $((SECONDS - start))s -> $bin"
}

main() {
  [ "$#" -gt 0 ] || set -- kn kustomize kubeconform
  mkdir -p "$BIN_DIR"
  find_go
  # One build at a time per cache: parallel test sessions share the binaries.
  exec 9>"$BIN_DIR/.build.lock"
  flock 9
  local tool
  for tool in "$@"; do build "$tool"; done
  echo "$BIN_DIR"
}

main "$@"
