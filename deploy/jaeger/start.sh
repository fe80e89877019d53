#!/usr/bin/env bash
# Start Jaeger v2 (deploy/jaeger/config.yaml): OTLP/HTTP on 127.0.0.1:4318 (gRPC :4317), traces in
# memory, query API and UI on 127.0.0.1:16686. Builds the binary first when missing (build.sh).
# State: $HOPSCOPE_VAR/jaeger (default: var/jaeger of the checkout): jaeger.log, jaeger.pid.
# Idempotent: returns at once when Jaeger is already running and answering.
set -euo pipefail

SERVICE=jaeger
. "$(dirname "$0")/../lib.sh"
STATE="$VARDIR/jaeger"
BIN="$VARDIR/bin/jaeger"
PIDFILE="$STATE/jaeger.pid"
LOG="$STATE/jaeger.log"
QUERY="http://127.0.0.1:16686/api/services"
OTLP_HOSTPORT="127.0.0.1:4318"
TIMEOUT_S="${JAEGER_START_TIMEOUT_S:-60}"

answers() {
  tcp_open "$OTLP_HOSTPORT" || return 1
  "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3).read()' "$QUERY" \
    >/dev/null 2>&1
}

jaeger_ready() {
  wait_ready "$PIDFILE" jaeger 0.5 answers || { tail -n 30 "$LOG"; exit 1; }
  log "ready: OTLP http://$OTLP_HOSTPORT, query http://127.0.0.1:16686 (pid $(cat "$PIDFILE"))"
}

main() {
  mkdir -p "$STATE"
  exit_if_up "$PIDFILE" "$OTLP_HOSTPORT" jaeger_ready answers
  bash "$HERE/build.sh"
  log "starting $BIN, log $LOG"
  start_detached "$PIDFILE" "$LOG" "$BIN" --config "$HERE/config.yaml"
  jaeger_ready
}

main "$@"
