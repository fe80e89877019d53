#!/usr/bin/env bash
# Start Debian's ClickHouse server (18.16) for hopscope on 127.0.0.1 (native :9000, HTTP :8123).
# Config: deploy/clickhouse/{config,users}.xml rendered into $HOPSCOPE_VAR/clickhouse/etc
# (default: var/clickhouse of the checkout); data/, log/, tmp/ live there too. Runs as the `clickhouse`
# user when started as root (the data dir is chowned to it), else as the calling user.
# Idempotent: returns at once when the server is already running and answering.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DIR="${HOPSCOPE_VAR:-$ROOT/var}/clickhouse"
ETC="$DIR/etc"
PIDFILE="$DIR/clickhouse.pid"
HTTP_URL="http://127.0.0.1:8123/"
TIMEOUT_S="${CLICKHOUSE_START_TIMEOUT_S:-60}"
SERVER_BIN="$(command -v clickhouse-server || echo /usr/bin/clickhouse-server)"

log() { echo "clickhouse: $*"; }

answers() {
  [ "$(curl -sf --max-time 2 --data-binary 'SELECT 1' "$HTTP_URL" 2>/dev/null)" = "1" ]
}

running_pid() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && cat "$PIDFILE"
}

render_config() {
  mkdir -p "$ETC" "$DIR/data" "$DIR/log" "$DIR/tmp" "$DIR/user_files" "$DIR/format_schemas"
  local f
  for f in config.xml users.xml; do
    sed -e "s|@CLICKHOUSE_DIR@|$DIR|g" -e "s|@CONFIG_DIR@|$ETC|g" "$HERE/$f" > "$ETC/$f"
  done
}

tail_logs() {
  echo "---- $DIR/log/clickhouse-server.err.log (tail) ----"
  tail -n 20 "$DIR/log/clickhouse-server.err.log" 2>/dev/null || true
  echo "---- $DIR/log/stdout.log (tail) ----"; tail -n 20 "$DIR/log/stdout.log" 2>/dev/null || true
}

start_server() {
  local -a as_user=()
  if [ "$(id -u)" = 0 ] && id clickhouse >/dev/null 2>&1; then
    chown -R clickhouse:clickhouse "$DIR"
    as_user=(setpriv --reuid=clickhouse --regid=clickhouse --init-groups --)
  fi
  log "starting $SERVER_BIN (config $ETC/config.xml, log $DIR/log/)"
  cd "$DIR"
  setsid nohup "${as_user[@]}" "$SERVER_BIN" --config-file="$ETC/config.xml" \
    > "$DIR/log/stdout.log" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  cd - >/dev/null
}

wait_ready() {
  local pid deadline
  pid="$(cat "$PIDFILE")"
  deadline=$(( $(date +%s) + TIMEOUT_S ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "ERROR: server process $pid exited during start-up"; tail_logs; exit 1
    fi
    if answers; then
      log "ready: native 127.0.0.1:9000, HTTP 127.0.0.1:8123, version $(curl -sf --data-binary 'SELECT version()' "$HTTP_URL") (pid $pid)"
      return
    fi
    sleep 0.5
  done
  log "ERROR: no answer to SELECT 1 on $HTTP_URL within ${TIMEOUT_S}s"; tail_logs; exit 1
}

main() {
  if pid="$(running_pid)"; then
    if answers; then log "already running (pid $pid)"; exit 0; fi
    log "pid $pid is alive but not answering yet; waiting"; wait_ready; exit 0
  fi
  if answers; then
    log "a server not started from this checkout already answers on $HTTP_URL: using it"; exit 0
  fi
  render_config
  start_server
  wait_ready
}

main "$@"
