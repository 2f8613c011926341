#!/usr/bin/env bash
# Build the deployment tools from the Go module proxy into a cache, once.
#
#   bash knative/tools/build-tools.sh [kn] [kustomize] [kubeconform] [knative-validate]
#                                                         # default: all four
#
# Prints the bin directory on stdout (progress goes to stderr), so callers can
#   export PATH="$(bash knative/tools/build-tools.sh):$PATH"
#
# Each tool is built from a small wrapper module under knative/tools/go/<tool>/
# whose go.mod/go.sum pin the version and every dependency (the `tool`
# directive names the command to build). knative-validate is this repository's
# own program, in knative/tools/validate/ (its go.mod pins the Knative modules). knative.dev/client carries a
# `replace knative.dev/client/pkg => ./pkg` that only works inside its own
# repository, so the kn wrapper requires knative.dev/client and
# knative.dev/client/pkg at the same commit itself.
#
# Pinned versions (change them in the wrapper's go.mod, then `go mod tidy`):
#   kn           knative.dev/client v0.45.0 (= Knative client v1.18.0)
#                + knative.dev/client/pkg at the same commit (96721e598f77)
#   kustomize    sigs.k8s.io/kustomize/kustomize/v5 v5.8.1
#   kubeconform  github.com/yannh/kubeconform v0.8.0
#   knative-validate  knative.dev/serving v0.50.0, knative.dev/eventing v0.50.0,
#                knative.dev/eventing-kafka-broker v0.50.1 (Knative 1.23)
#
# Binaries land in ${IOT_CACHE_DIR:-$HOME/.cache/iot-telemetry}/bin with a stamp
# (hash of the module directory's files, the Go version and the link flags); a tool
# whose stamp matches is not rebuilt. A first build of kn or knative-validate takes
# minutes (each downloads and compiles most of client-go); the others take seconds.
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
  [knative-validate]=.
)
# Module directory of each tool (default: go/<tool>, a wrapper module).
declare -A MODULE=(
  [knative-validate]="$TOOLS_DIR/validate"
)
declare -A VERSION_FLAG=(
  [kn]="-X knative.dev/client/pkg/commands/version.Version=v1.18.0"
  [kustomize]="-X sigs.k8s.io/kustomize/api/provenance.version=v5.8.1"
  [kubeconform]="-X main.version=v0.8.0"
  [knative-validate]=""
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

module_of() { echo "${MODULE[$1]:-$TOOLS_DIR/go/$1}"; }

# Every file of the module (a wrapper's are go.mod and go.sum; knative-validate's
# include its sources), in a fixed order.
stamp_of() {
  local tool="$1" module; module="$(module_of "$1")"
  { find "$module" -type f -print0 | LC_ALL=C sort -z | xargs -0 cat
    go env GOVERSION; echo "${VERSION_FLAG[$tool]}"; } |
    sha256sum | cut -d' ' -f1
}

build() {
  local tool="$1" module; module="$(module_of "$1")"
  local bin="$BIN_DIR/$tool" stamp_file="$BIN_DIR/.$tool.stamp" stamp
  [ -n "${PACKAGE[$tool]:-}" ] ||
    { log "unknown tool: $tool (kn, kustomize, kubeconform, knative-validate)"; exit 2; }
  stamp="$(stamp_of "$tool")"
  if [ -x "$bin" ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ]; then
    log "$tool: cached ($bin)"
    return 0
  fi
  log "$tool: building ${PACKAGE[$tool]} in ${module#"$REPO/"} (pinned by its go.mod)"
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
  [ "$#" -gt 0 ] || set -- kn kustomize kubeconform knative-validate
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
