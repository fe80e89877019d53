#!/usr/bin/env bash
# Stop the Kafka broker started by deploy/kafka/start.sh (SIGTERM, wait up to 30 s, then SIGKILL).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VAR="${HOPSCOPE_VAR:-$ROOT/var}/kafka"
PIDFILE="$VAR/kafka.pid"

if [ ! -f "$PIDFILE" ] || ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  echo "kafka: not running"; rm -f "$PIDFILE"; exit 0
fi
pid="$(cat "$PIDFILE")"
echo "kafka: stopping pid $pid"
kill -TERM "$pid"
for _ in $(seq 1 60); do
  kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; echo "kafka: stopped"; exit 0; }
  sleep 0.5
done
echo "kafka: pid $pid still alive after 30 s; SIGKILL"
kill -KILL "$pid" 2>/dev/null || true
rm -f "$PIDFILE"
