#!/usr/bin/env bash
# Reproduce the vendored chart library from the npm registry, pinned and integrity-checked.
#   bash fetch.sh           download uplot@VERSION, verify it, copy its files into uplot/
#   bash fetch.sh --check   verify that the committed uplot/ is exactly that package's files
# Needs npm (for `npm pack`, which reads the registry configured for npm), tar, openssl.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

VERSION="1.6.32"
# `dist.integrity` of uplot@1.6.32 on registry.npmjs.org (sha512 of the tarball).
INTEGRITY="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
# package path -> vendored name; sha256 of each file as shipped in that tarball.
FILES=(
  "dist/uPlot.iife.min.js uPlot.iife.min.js 19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f"
  "dist/uPlot.min.css uPlot.min.css df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04"
  "LICENSE LICENSE 8f989229699b4fe2f1a0432d0e9edc338a8a911e250e2d1b01ecd770a5f5b1bd"
)

sha256() { sha256sum "$1" | cut -d' ' -f1; }

if [[ "${1:-}" == "--check" ]]; then
  status=0
  for entry in "${FILES[@]}"; do
    read -r _ name sum <<<"$entry"
    if [[ ! -f "$HERE/uplot/$name" || "$(sha256 "$HERE/uplot/$name")" != "$sum" ]]; then
      echo "uplot/$name differs from uplot@$VERSION (run: bash $0)" >&2
      status=1
    fi
  done
  [[ $status == 0 ]] && echo "uplot/ matches uplot@$VERSION" >&2
  exit $status
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$VERSION" >/dev/null)
tarball="$work/uplot-$VERSION.tgz"
actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [[ "$actual" != "$INTEGRITY" ]]; then
  echo "uplot-$VERSION.tgz: integrity $actual, expected $INTEGRITY" >&2
  exit 1
fi
tar -xzf "$tarball" -C "$work"
mkdir -p "$HERE/uplot"
for entry in "${FILES[@]}"; do
  read -r path name sum <<<"$entry"
  if [[ "$(sha256 "$work/package/$path")" != "$sum" ]]; then
    echo "$path in uplot-$VERSION.tgz has an unexpected sha256" >&2
    exit 1
  fi
  cp "$work/package/$path" "$HERE/uplot/$name"
done
echo "uplot@$VERSION copied into $HERE/uplot" >&2
