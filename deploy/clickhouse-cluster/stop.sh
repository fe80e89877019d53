#!/usr/bin/env bash
# Stop servers of the test cluster started by deploy/clickhouse-cluster/start.sh.
#   bash deploy/clickhouse-cluster/stop.sh            # every server, then ZooKeeper
#   bash deploy/clickhouse-cluster/stop.sh ch2 [...]  # those servers only (ch1 ch2 ch3 zookeeper)
# SIGTERM, wait up to 30 s, then SIGKILL. Data directories stay.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DIR="${HOPSCOPE_VAR:-$ROOT/var}/clickhouse-cluster"

stop_one() {
  local name="$1" pidfile pid
  case "$name" in
    ch1|ch2|ch3) pidfile="$DIR/$name/clickhouse.pid" ;;
    zookeeper) pidfile="$DIR/zookeeper/zookeeper.pid" ;;
    *) echo "clickhouse-cluster: unknown server '$name' (ch1 ch2 ch3 zookeeper)" >&2; exit 2 ;;
  esac
  if [ ! -f "$pidfile" ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "clickhouse-cluster: $name not running"; rm -f "$pidfile"; return
  fi
  pid="$(cat "$pidfile")"
  echo "clickhouse-cluster: stopping $name (pid $pid)"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; echo "clickhouse-cluster: $name stopped"; return; }
    sleep 0.5
  done
  echo "clickhouse-cluster: $name (pid $pid) still alive after 30 s; SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

if [ "$#" -gt 0 ]; then
  for name in "$@"; do stop_one "$name"; done
else
  for name in ch1 ch2 ch3 zookeeper; do stop_one "$name"; done
fi
