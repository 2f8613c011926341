#!/usr/bin/env bash
# Build `kn` (Knative client, pinned in knative/tools/go/kn/go.mod) into
# ${IOT_CACHE_DIR:-$HOME/.cache/iot-telemetry}/bin/kn, once; prints the bin dir.
# Same as `build-tools.sh kn`, which also builds kustomize and kubeconform.
exec bash "$(dirname "${BASH_SOURCE[0]}")/build-tools.sh" kn "$@"
