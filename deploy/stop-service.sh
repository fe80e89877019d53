#!/usr/bin/env bash
# Stop a service started by one of deploy/*/start.sh: bash deploy/stop-service.sh NAME
# Reads $HOPSCOPE_VAR/NAME/NAME.pid (default var/ of this checkout); SIGTERM, waits up to 30 s, then SIGKILL.
set -euo pipefail
NAME="${1:?usage: stop-service.sh NAME}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PIDFILE="${HOPSCOPE_VAR:-$ROOT/var}/$NAME/$NAME.pid"

if [ ! -f "$PIDFILE" ] || ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  echo "$NAME: not running"; rm -f "$PIDFILE"; exit 0
fi
pid="$(cat "$PIDFILE")"
echo "$NAME: stopping pid $pid"
kill -TERM "$pid"
for _ in $(seq 1 60); do
  kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; echo "$NAME: stopped"; exit 0; }
  sleep 0.5
done
echo "$NAME: pid $pid still alive after 30 s; SIGKILL"
kill -KILL "$pid" 2>/dev/null || true
rm -f "$PIDFILE"
