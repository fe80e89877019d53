#!/usr/bin/env bash
# Start Apache Kafka 4.1.1 (KRaft, broker+controller, single node) on 127.0.0.1:9092 (controller :9093).
# Jars come from Maven Central via pom.xml into deploy/kafka/lib (cached: skipped when complete).
# State: $HOPSCOPE_VAR/kafka (default: var/kafka of the checkout): data/, logs/server.log, kafka.pid.
# Idempotent: returns at once when the broker is already running and answering.
set -euo pipefail

SERVICE=kafka
. "$(dirname "$0")/../lib.sh"
VAR="$VARDIR/kafka"
DATA="$VAR/data"
LOGS="$VAR/logs"
PIDFILE="$VAR/kafka.pid"
CONFIG="$VAR/server.properties"
BOOTSTRAP="127.0.0.1:9092"
TIMEOUT_S="${KAFKA_START_TIMEOUT_S:-60}"

broker_answers() {
  # TCP connect first (kafka-python waits ~30 s on a refused port), then a real metadata round trip.
  tcp_open "$BOOTSTRAP" || return 1
  "$PY" - "$BOOTSTRAP" <<'PYEOF' >/dev/null 2>&1
import sys
from kafka import KafkaAdminClient
admin = KafkaAdminClient(bootstrap_servers=sys.argv[1], request_timeout_ms=3000, client_id="hopscope-start")
admin.list_topics()
admin.close()
PYEOF
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
  start_detached "$PIDFILE" "$LOGS/stdout.log" java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$HERE/log4j2.properties" -Dkafka.logs.dir="$LOGS" \
    -cp "$HERE/lib/*" kafka.Kafka "$CONFIG"
}

broker_ready() {
  wait_ready "$PIDFILE" "the broker on $BOOTSTRAP" 1 broker_answers || { tail_logs; exit 1; }
  log "ready on $BOOTSTRAP (pid $(cat "$PIDFILE"))"
}

tail_logs() {
  echo "---- $LOGS/server.log (tail) ----"; tail -n 30 "$LOGS/server.log" 2>/dev/null || true
  echo "---- $LOGS/stdout.log (tail) ----"; tail -n 15 "$LOGS/stdout.log" 2>/dev/null || true
}

main() {
  mkdir -p "$DATA" "$LOGS"
  exit_if_up "$PIDFILE" "$BOOTSTRAP" broker_ready broker_answers
  resolve_jars
  format_storage
  start_broker
  broker_ready
}

main "$@"
