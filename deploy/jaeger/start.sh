#!/usr/bin/env bash
# Start Jaeger v2 (deploy/jaeger/config.yaml): OTLP/HTTP on 127.0.0.1:4318 (gRPC :4317), traces in
# memory, query API and UI on 127.0.0.1:16686. Builds the binary first when missing (build.sh).
# State: $HOPSCOPE_VAR/jaeger (default: var/jaeger of the checkout): jaeger.log, jaeger.pid.
# Idempotent: returns at once when Jaeger is already running and answering.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VARDIR="${HOPSCOPE_VAR:-$ROOT/var}"
STATE="$VARDIR/jaeger"
BIN="$VARDIR/bin/jaeger"
PIDFILE="$STATE/jaeger.pid"
LOG="$STATE/jaeger.log"
QUERY="http://127.0.0.1:16686/api/services"
OTLP_HOSTPORT="127.0.0.1:4318"
TIMEOUT_S="${JAEGER_START_TIMEOUT_S:-60}"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=python3

log() { echo "jaeger: $*"; }

answers() {
  (exec 3<>"/dev/tcp/${OTLP_HOSTPORT%:*}/${OTLP_HOSTPORT#*:}") 2>/dev/null || return 1
  "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3).read()' "$QUERY" \
    >/dev/null 2>&1
}

running_pid() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && cat "$PIDFILE"
}

wait_ready() {
  local pid deadline
  pid="$(cat "$PIDFILE")"
  deadline=$(( $(date +%s) + TIMEOUT_S ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "ERROR: jaeger (pid $pid) exited during start-up"; tail -n 30 "$LOG"; exit 1
    fi
    if answers; then
      log "ready: OTLP http://$OTLP_HOSTPORT, query http://127.0.0.1:16686 (pid $pid)"; return
    fi
    sleep 0.5
  done
  log "ERROR: jaeger did not answer within ${TIMEOUT_S}s"; tail -n 30 "$LOG"; exit 1
}

main() {
  mkdir -p "$STATE"
  if pid="$(running_pid)"; then
    if answers; then log "already running (pid $pid)"; exit 0; fi
    log "pid $pid is alive but not answering yet; waiting"; wait_ready; exit 0
  fi
  if answers; then
    log "a Jaeger not started from this checkout already answers on $OTLP_HOSTPORT: using it"; exit 0
  fi
  bash "$HERE/build.sh"
  log "starting $BIN, log $LOG"
  setsid nohup "$BIN" --config "$HERE/config.yaml" > "$LOG" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  wait_ready
}

main "$@"
