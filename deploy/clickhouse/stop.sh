#!/usr/bin/env bash
# Stop the ClickHouse server started by deploy/clickhouse/start.sh (SIGTERM, wait up to 30 s, then SIGKILL).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DIR="${HOPSCOPE_VAR:-$ROOT/var}/clickhouse"
PIDFILE="$DIR/clickhouse.pid"

if [ ! -f "$PIDFILE" ] || ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  echo "clickhouse: not running"; rm -f "$PIDFILE"; exit 0
fi
pid="$(cat "$PIDFILE")"
echo "clickhouse: stopping pid $pid"
kill -TERM "$pid"
for _ in $(seq 1 60); do
  kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; echo "clickhouse: stopped"; exit 0; }
  sleep 0.5
done
echo "clickhouse: pid $pid still alive after 30 s; SIGKILL"
kill -KILL "$pid" 2>/dev/null || true
rm -f "$PIDFILE"
