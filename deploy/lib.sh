# What the service scripts deploy/*/start.sh (and deploy/jaeger/build.sh) share; they source it:
#
#   SERVICE=kafka
#   . "$(dirname "$0")/../lib.sh"
#
# Sets HERE (the sourcing script's folder), ROOT (the checkout), VARDIR ($HOPSCOPE_VAR, default var/ of
# the checkout) and PY (the checkout's venv python, else python3). wait_ready waits TIMEOUT_S seconds,
# which the script sets. Each function is described where it is defined.

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VARDIR="${HOPSCOPE_VAR:-$ROOT/var}"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=python3

log() { echo "$SERVICE: $*"; }
die() { log "ERROR: $*" >&2; exit 1; }

# running_pid PIDFILE: prints the pid and succeeds when the process of PIDFILE is alive.
running_pid() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && cat "$1"
}

# tcp_open HOST:PORT: something accepts TCP connections there.
tcp_open() {
  (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null
}

# clickhouse_answers URL: a ClickHouse server answers SELECT 1 over HTTP at URL.
clickhouse_answers() {
  [ "$(curl -sf --max-time 2 --data-binary 'SELECT 1' "$1" 2>/dev/null)" = "1" ]
}

# start_detached PIDFILE LOGFILE COMMAND [ARG...]: COMMAND in its own session, detached from this
# shell, its output into LOGFILE; its pid into PIDFILE.
start_detached() {
  local pidfile="$1" logfile="$2"
  shift 2
  setsid nohup "$@" > "$logfile" 2>&1 < /dev/null &
  echo $! > "$pidfile"
}

# start_clickhouse DIR CONFIG PIDFILE: $SERVER_BIN (clickhouse-server) on CONFIG, detached, in DIR (its
# output into DIR/log/stdout.log); as the `clickhouse` user when run as root (DIR is chowned to it).
start_clickhouse() {
  local dir="$1" config="$2" pidfile="$3"
  local -a as_user=()
  if [ "$(id -u)" = 0 ] && id clickhouse >/dev/null 2>&1; then
    chown -R clickhouse:clickhouse "$dir"
    as_user=(setpriv --reuid=clickhouse --regid=clickhouse --init-groups --)
  fi
  cd "$dir"
  start_detached "$pidfile" "$dir/log/stdout.log" "${as_user[@]}" "$SERVER_BIN" --config-file="$config"
  cd - >/dev/null
}

# wait_ready PIDFILE WHAT INTERVAL_S CHECK [ARG...]: runs CHECK every INTERVAL_S seconds until it
# succeeds; fails with an error line when the process of PIDFILE exits first or TIMEOUT_S pass (the
# caller shows its logs and exits).
wait_ready() {
  local pidfile="$1" what="$2" interval="$3" pid deadline
  shift 3
  pid="$(cat "$pidfile")"
  deadline=$(( $(date +%s) + TIMEOUT_S ))
  until "$@"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "ERROR: $what (pid $pid) exited during start-up"; return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "ERROR: $what did not answer within ${TIMEOUT_S}s"; return 1
    fi
    sleep "$interval"
  done
}

# exit_if_up PIDFILE WHERE WAIT CHECK [ARG...]: exits 0 when the service already answers CHECK:
# started from this checkout (PIDFILE), or by someone else on WHERE (then it is used). When the
# process of PIDFILE is alive but does not answer yet, runs WAIT (the script's own wait) and exits 0.
# Returns when nothing runs.
exit_if_up() {
  local pidfile="$1" where="$2" wait="$3" pid
  shift 3
  if pid="$(running_pid "$pidfile")"; then
    if "$@"; then log "already running on $where (pid $pid)"; exit 0; fi
    log "pid $pid is alive but not answering yet; waiting"; "$wait"; exit 0
  fi
  if "$@"; then
    log "a $SERVICE not started from this checkout already answers on $where: using it"; exit 0
  fi
}

# resolve_jars: the jars of $HERE/pom.xml from Maven Central into $HERE/lib, once per pom.xml
# (a stamp holds its hash).
resolve_jars() {
  local stamp="$HERE/lib/.complete" want
  want="$(sha256sum "$HERE/pom.xml" | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return
  fi
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch the jars (deploy/setup.sh installs it)"
  log "resolving the jars of ${HERE#"$ROOT"/}/pom.xml from Maven Central into ${HERE#"$ROOT"/}/lib (first run only)"
  rm -rf "$HERE/lib"
  if ! (cd "$HERE" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=lib); then
    die "Maven could not resolve the dependencies of ${HERE#"$ROOT"/}/pom.xml (is Maven Central reachable?)"
  fi
  echo "$want" > "$stamp"
}
