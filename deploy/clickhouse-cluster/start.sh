#!/usr/bin/env bash
# Start hopscope's test ClickHouse cluster on this machine: Debian's clickhouse-server (18.16), one
# process per server, each with its own ports and data directory under
# $HOPSCOPE_VAR/clickhouse-cluster (default: var/clickhouse-cluster of the checkout).
#
#   bash deploy/clickhouse-cluster/start.sh              # cluster `hopscope`: two shards, one server each
#   bash deploy/clickhouse-cluster/start.sh --replicas   # and ZooKeeper, and a second replica of shard 1
#   bash deploy/clickhouse-cluster/start.sh --node ch2   # (re)start one server of the running cluster
#
# Servers (native / HTTP / interserver port):
#   ch1  shard 1 replica 1   127.0.0.1:9101 / 8131 / 9111
#   ch2  shard 2 replica 1   127.0.0.1:9102 / 8132 / 9112
#   ch3  shard 1 replica 2   127.0.0.1:9103 / 8133 / 9113   (--replicas only)
#   ZooKeeper 3.9            127.0.0.1:2281                  (--replicas only; jars from Maven Central
#                                                             via pom.xml into deploy/clickhouse-cluster/lib)
# Store URL: clickhouse://127.0.0.1:9101/DB?cluster=hopscope
#
# Idempotent: servers already answering are left alone. --replicas on a cluster running without it
# restarts the running servers on the new config (ZooKeeper and distributed DDL); a cluster running
# with replicas satisfies a plain start. Runs the servers as the `clickhouse` user when started as root.
set -euo pipefail

SERVICE=clickhouse-cluster
. "$(dirname "$0")/../lib.sh"
DIR="$VARDIR/clickhouse-cluster"
MODE_FILE="$DIR/mode"
TIMEOUT_S="${CLICKHOUSE_START_TIMEOUT_S:-60}"
SERVER_BIN="$(command -v clickhouse-server || echo /usr/bin/clickhouse-server)"
CLUSTER=hopscope
ZK_PORT=2281

declare -A TCP=([ch1]=9101 [ch2]=9102 [ch3]=9103)
declare -A HTTP=([ch1]=8131 [ch2]=8132 [ch3]=8133)
declare -A INTERSERVER=([ch1]=9111 [ch2]=9112 [ch3]=9113)
declare -A SHARD=([ch1]=01 [ch2]=02 [ch3]=01)

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

# --- arguments -------------------------------------------------------------------------------------

want_mode=plain
only_node=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --replicas) want_mode=replicas ;;
    --node) [ "$#" -ge 2 ] || usage; only_node="$2"; shift ;;
    -h|--help) usage ;;
    *) log "unknown argument: $1"; usage ;;
  esac
  shift
done
if [ -n "$only_node" ] && [ -z "${TCP[$only_node]:-}" ]; then
  die "unknown server '$only_node' (servers: ch1 ch2 ch3)"
fi

# --- helpers ---------------------------------------------------------------------------------------

answers() {  # answers NODE: SELECT 1 over HTTP
  clickhouse_answers "http://127.0.0.1:${HTTP[$1]}/"
}

nodes_of() {  # nodes_of MODE
  if [ "$1" = replicas ]; then echo ch1 ch2 ch3; else echo ch1 ch2; fi
}

render_cluster_xml() {  # render_cluster_xml MODE > file: remote_servers (and ZooKeeper with replicas)
  local shard1_replicas="<replica><host>127.0.0.1</host><port>${TCP[ch1]}</port></replica>"
  if [ "$1" = replicas ]; then
    shard1_replicas+="
                <replica><host>127.0.0.1</host><port>${TCP[ch3]}</port></replica>"
  fi
  cat <<EOF
<?xml version="1.0"?>
<!-- Rendered by deploy/clickhouse-cluster/start.sh (mode: $1). -->
<yandex>
    <remote_servers>
        <$CLUSTER>
            <shard>
                <!-- A Distributed table writes to one replica; ReplicatedMergeTree copies to the others. -->
                <internal_replication>true</internal_replication>
                $shard1_replicas
            </shard>
            <shard>
                <internal_replication>true</internal_replication>
                <replica><host>127.0.0.1</host><port>${TCP[ch2]}</port></replica>
            </shard>
        </$CLUSTER>
    </remote_servers>
EOF
  if [ "$1" = replicas ]; then
    cat <<EOF
    <zookeeper>
        <node><host>127.0.0.1</host><port>$ZK_PORT</port></node>
        <session_timeout_ms>10000</session_timeout_ms>
    </zookeeper>
    <distributed_ddl>
        <path>/clickhouse/task_queue/ddl</path>
    </distributed_ddl>
EOF
  fi
  echo "</yandex>"
}

render_node() {  # render_node NODE MODE
  local node="$1" nd="$DIR/$1"
  mkdir -p "$nd/etc/config.d" "$nd/data" "$nd/log" "$nd/tmp" "$nd/user_files" "$nd/format_schemas"
  sed -e "s|@NODE_DIR@|$nd|g" -e "s|@TCP_PORT@|${TCP[$node]}|g" -e "s|@HTTP_PORT@|${HTTP[$node]}|g" \
      -e "s|@INTERSERVER_PORT@|${INTERSERVER[$node]}|g" -e "s|@SHARD@|${SHARD[$node]}|g" \
      -e "s|@REPLICA@|$node|g" "$HERE/config.xml" > "$nd/etc/config.xml"
  cp "$ROOT/deploy/clickhouse/users.xml" "$nd/etc/users.xml"
  render_cluster_xml "$2" > "$nd/etc/config.d/cluster.xml"
}

tail_node_logs() {
  local nd="$DIR/$1"
  echo "---- $nd/log/clickhouse-server.err.log (tail) ----"
  tail -n 20 "$nd/log/clickhouse-server.err.log" 2>/dev/null || true
  echo "---- $nd/log/stdout.log (tail) ----"; tail -n 20 "$nd/log/stdout.log" 2>/dev/null || true
}

start_node() {  # start_node NODE: start it unless it answers; wait until it does
  local node="$1" nd="$DIR/$1" pid
  local pidfile="$nd/clickhouse.pid"
  if pid="$(running_pid "$pidfile")"; then
    if answers "$node"; then log "$node already running (pid $pid)"; return; fi
  else
    for port in "${TCP[$node]}" "${HTTP[$node]}" "${INTERSERVER[$node]}"; do
      tcp_open "127.0.0.1:$port" && die "port $port of $node is taken by a process not started from this checkout"
    done
    log "starting $node (shard ${SHARD[$node]}, native 127.0.0.1:${TCP[$node]}, log $nd/log/)"
    start_clickhouse "$nd" "$nd/etc/config.xml" "$pidfile"
  fi
  wait_ready "$pidfile" "$node (SELECT 1 on 127.0.0.1:${HTTP[$node]})" 0.3 answers "$node" \
    || { tail_node_logs "$node"; exit 1; }
  log "$node ready (pid $(cat "$pidfile"))"
}

stop_node() {
  bash "$HERE/stop.sh" "$1" >/dev/null
}

# --- ZooKeeper -------------------------------------------------------------------------------------

zk_answers() {  # the `srvr` four-letter word: "Mode: standalone" once it serves requests
  local reply
  reply="$( (exec 3<>"/dev/tcp/127.0.0.1/$ZK_PORT" && printf srvr >&3 && timeout 2 cat <&3) 2>/dev/null)" || true
  [[ "$reply" == *"Mode: "* ]]
}

start_zookeeper() {
  local zd="$DIR/zookeeper" pid
  local pidfile="$zd/zookeeper.pid"
  mkdir -p "$zd/data" "$zd/log"
  if pid="$(running_pid "$pidfile")"; then
    zk_answers && { log "ZooKeeper already running (pid $pid)"; return; }
  else
    tcp_open "127.0.0.1:$ZK_PORT" && die "port $ZK_PORT (ZooKeeper) is taken by a process not started from this checkout"
    resolve_jars
    cat > "$zd/zoo.cfg" <<EOF
# Rendered by deploy/clickhouse-cluster/start.sh: a standalone ZooKeeper for the test cluster.
dataDir=$zd/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
tickTime=2000
maxClientCnxns=200
admin.enableServer=false
4lw.commands.whitelist=srvr
autopurge.snapRetainCount=3
autopurge.purgeInterval=1
EOF
    log "starting ZooKeeper on 127.0.0.1:$ZK_PORT (heap 256 MiB), log $zd/log/zookeeper.log"
    start_detached "$pidfile" "$zd/log/zookeeper.log" java -Xms64m -Xmx256m -XX:+UseSerialGC \
      -Djava.awt.headless=true -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -Dzookeeper.admin.enableServer=false \
      -cp "$HERE/lib/*" org.apache.zookeeper.server.quorum.QuorumPeerMain "$zd/zoo.cfg"
  fi
  wait_ready "$pidfile" "ZooKeeper (srvr on 127.0.0.1:$ZK_PORT)" 0.3 zk_answers \
    || { tail -n 30 "$zd/log/zookeeper.log"; exit 1; }
  log "ZooKeeper ready on 127.0.0.1:$ZK_PORT (pid $(cat "$pidfile"))"
}

# --- main ------------------------------------------------------------------------------------------

main() {
  [ -x "$SERVER_BIN" ] || die "clickhouse-server not found (deploy/setup.sh installs Debian's clickhouse-server)"
  mkdir -p "$DIR"
  local running_mode=""
  [ -f "$MODE_FILE" ] && running_mode="$(cat "$MODE_FILE")"

  if [ -n "$only_node" ]; then
    # One server of the cluster as it was last started (a test brings a stopped server back).
    [ -n "$running_mode" ] || die "the cluster was never started: run deploy/clickhouse-cluster/start.sh first"
    [[ " $(nodes_of "$running_mode") " == *" $only_node "* ]] \
      || die "$only_node is not part of the cluster as started ($running_mode)"
    start_node "$only_node"
    return
  fi

  local mode="$want_mode"
  [ "$running_mode" = replicas ] && mode=replicas  # a superset of the plain cluster: keep it
  [ "$mode" = replicas ] && start_zookeeper
  local node restart=()
  for node in $(nodes_of "$mode"); do
    if [ -n "$running_mode" ] && [ "$running_mode" != "$mode" ] && running_pid "$DIR/$node/clickhouse.pid" >/dev/null; then
      restart+=("$node")
    fi
    render_node "$node" "$mode"
  done
  echo "$mode" > "$MODE_FILE"
  for node in "${restart[@]}"; do
    log "restarting $node on the $mode config"; stop_node "$node"
  done
  for node in $(nodes_of "$mode"); do
    start_node "$node"
  done
  log "cluster '$CLUSTER' ready ($mode): clickhouse://127.0.0.1:${TCP[ch1]}/DB?cluster=$CLUSTER"
}

main
