#!/usr/bin/env bash
# Start Debian's ClickHouse server (18.16) for hopscope on 127.0.0.1 (native :9000, HTTP :8123).
# Config: deploy/clickhouse/{config,users}.xml rendered into $HOPSCOPE_VAR/clickhouse/etc
# (default: var/clickhouse of the checkout); data/, log/, tmp/ live there too. Runs as the `clickhouse`
# user when started as root (the data dir is chowned to it), else as the calling user.
# Idempotent: returns at once when the server is already running and answering.
set -euo pipefail

SERVICE=clickhouse
. "$(dirname "$0")/../lib.sh"
DIR="$VARDIR/clickhouse"
ETC="$DIR/etc"
PIDFILE="$DIR/clickhouse.pid"
HTTP_URL="http://127.0.0.1:8123/"
TIMEOUT_S="${CLICKHOUSE_START_TIMEOUT_S:-60}"
SERVER_BIN="$(command -v clickhouse-server || echo /usr/bin/clickhouse-server)"

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

server_ready() {
  wait_ready "$PIDFILE" "the server (SELECT 1 on $HTTP_URL)" 0.5 clickhouse_answers "$HTTP_URL" \
    || { tail_logs; exit 1; }
  log "ready: native 127.0.0.1:9000, HTTP 127.0.0.1:8123, version" \
      "$(curl -sf --data-binary 'SELECT version()' "$HTTP_URL") (pid $(cat "$PIDFILE"))"
}

main() {
  exit_if_up "$PIDFILE" "$HTTP_URL" server_ready clickhouse_answers "$HTTP_URL"
  render_config
  log "starting $SERVER_BIN (config $ETC/config.xml, log $DIR/log/)"
  start_clickhouse "$DIR" "$ETC/config.xml" "$PIDFILE"
  server_ready
}

main "$@"
