#!/usr/bin/env bash
# Build Jaeger v2 (OTLP receiver, in-memory storage, query API) from the Go module proxy into
# $HOPSCOPE_VAR/bin/jaeger (default: var/bin/jaeger of the checkout), only when it is missing.
# Needs Go (1.24 or newer). Jaeger v2's binary is tagged v1.x in its Go module (v1.75.0 is Jaeger v2.12).
# A first build downloads the modules and compiles for several minutes; later ones reuse Go's caches.
set -euo pipefail

SERVICE=jaeger
. "$(dirname "$0")/../lib.sh"
BIN="$VARDIR/bin/jaeger"
VERSION="${JAEGER_VERSION:-v1.75.0}"
MODULE="github.com/jaegertracing/jaeger"

if [ -x "$BIN" ]; then
  log "already built: $BIN"; exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  log "ERROR: Go is not installed (https://go.dev/dl/); it builds Jaeger from the Go module proxy"; exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log "building $MODULE/cmd/jaeger@$VERSION into $BIN (first build: several minutes)"
cd "$work"
go mod init hopscope-jaeger-build >/dev/null 2>&1
go get -tool "$MODULE/cmd/jaeger@$VERSION"
mkdir -p "$(dirname "$BIN")"
go build -o "$BIN.tmp" "$MODULE/cmd/jaeger"
mv "$BIN.tmp" "$BIN"
log "built $BIN"
