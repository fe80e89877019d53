#!/usr/bin/env bash
# Start Apache Kafka 4.1.1 (KRaft, broker+controller, single node) on 127.0.0.1:9092 (controller :9093).
# Jars come from Maven Central via pom.xml into deploy/kafka/lib (cached: skipped when complete).
# State: $HOPSCOPE_VAR/kafka (default: var/kafka of the checkout): data/, logs/server.log, kafka.pid.
# Idempotent: returns at once when the broker is already running and answering.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VAR="${HOPSCOPE_VAR:-$ROOT/var}/kafka"
DATA="$VAR/data"
LOGS="$VAR/logs"
PIDFILE="$VAR/kafka.pid"
CONFIG="$VAR/server.properties"
BOOTSTRAP="127.0.0.1:9092"
TIMEOUT_S="${KAFKA_START_TIMEOUT_S:-60}"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=python3

log() { echo "kafka: $*"; }

resolve_jars() {
  local stamp="$HERE/lib/.complete" want
  want="$(sha256sum "$HERE/pom.xml" | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return
  fi
  log "resolving jars from Maven Central into deploy/kafka/lib (first run only)"
  rm -rf "$HERE/lib"
  if ! (cd "$HERE" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=lib); then
    log "ERROR: Maven could not resolve org.apache.kafka:kafka_2.13:4.1.1 (is Maven Central reachable?)"
    exit 1
  fi
  echo "$want" > "$stamp"
}

broker_answers() {
  # TCP connect first (kafka-python waits ~30 s on a refused port), then a real metadata round trip.
  (exec 3<>"/dev/tcp/${BOOTSTRAP%:*}/${BOOTSTRAP#*:}") 2>/dev/null || return 1
  "$PY" - "$BOOTSTRAP" <<'PYEOF' >/dev/null 2>&1
import sys
from kafka import KafkaAdminClient
admin = KafkaAdminClient(bootstrap_servers=sys.argv[1], request_timeout_ms=3000, client_id="hopscope-start")
admin.list_topics()
admin.close()
PYEOF
}

running_pid() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && cat "$PIDFILE"
}

format_storage() {
  { cat "$HERE/server.properties"; echo; echo "log.dirs=$DATA"; } > "$CONFIG"
  if [ -f "$DATA/meta.properties" ]; then
    return
  fi
  local cluster_id
  cluster_id="$(java -cp "$HERE/lib/*" kafka.tools.StorageTool random-uuid)"
  log "formatting storage $DATA (cluster id $cluster_id)"
  java -cp "$HERE/lib/*" -Dlog4j2.configurationFile="$HERE/log4j2.properties" -Dkafka.logs.dir="$LOGS" \
    kafka.tools.StorageTool format -t "$cluster_id" -c "$CONFIG" >> "$LOGS/format.log" 2>&1
}

start_broker() {
  log "starting kafka.Kafka (heap 512 MiB), log $LOGS/server.log"
  setsid nohup java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HERE/log4j2.properties" -Dkafka.logs.dir="$LOGS" \
    -cp "$HERE/lib/*" kafka.Kafka "$CONFIG" > "$LOGS/stdout.log" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
}

wait_ready() {
  local pid deadline
  pid="$(cat "$PIDFILE")"
  deadline=$(( $(date +%s) + TIMEOUT_S ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "ERROR: broker process $pid exited during start-up"; tail_logs; exit 1
    fi
    if broker_answers; then
      log "ready on $BOOTSTRAP (pid $pid)"; return
    fi
    sleep 1
  done
  log "ERROR: broker did not answer on $BOOTSTRAP within ${TIMEOUT_S}s"; tail_logs; exit 1
}

tail_logs() {
  echo "---- $LOGS/server.log (tail) ----"; tail -n 30 "$LOGS/server.log" 2>/dev/null || true
  echo "---- $LOGS/stdout.log (tail) ----"; tail -n 15 "$LOGS/stdout.log" 2>/dev/null || true
}

main() {
  mkdir -p "$DATA" "$LOGS"
  if pid="$(running_pid)"; then
    if broker_answers; then log "already running on $BOOTSTRAP (pid $pid)"; exit 0; fi
    log "pid $pid is alive but not answering yet; waiting"; wait_ready; exit 0
  fi
  if broker_answers; then
    log "a broker not started from this checkout already answers on $BOOTSTRAP: using it"; exit 0
  fi
  resolve_jars
  format_storage
  start_broker
  wait_ready
}

main "$@"
