#!/usr/bin/env bash
# The README's test command: install everything, start the real services the tests need
# (Kafka 4.x, ClickHouse server, Jaeger v2, and the ClickHouse cluster when its tests run), then lint,
# type-check and run the whole suite. Root is needed (apt-get, network namespaces for the lab tests).
# Services keep running afterwards; stop them with deploy/kafka/stop.sh, deploy/clickhouse/stop.sh,
# deploy/jaeger/stop.sh and deploy/clickhouse-cluster/stop.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

bash deploy/setup.sh
bash deploy/kafka/start.sh
bash deploy/clickhouse/start.sh
bash deploy/jaeger/build.sh   # Jaeger v2 from the Go module proxy, once (minutes the first time)
bash deploy/jaeger/start.sh
# The ClickHouse cluster (two shards, ZooKeeper, a second replica of shard 1) only when the tests run
# include the clickhouse_cluster ones: the whole suite, or arguments that select one of them.
cluster_tests() {  # the node ids of the clickhouse_cluster tests the arguments select
  .venv/bin/python -m pytest -q --collect-only -m clickhouse_cluster "$@" 2>/dev/null | grep "::" || true
}
if [ "$#" -eq 0 ] || [ -n "$(cluster_tests "$@")" ]; then
  bash deploy/clickhouse-cluster/start.sh --replicas
fi

failed=()
echo "test: ruff"
.venv/bin/ruff check . || failed+=(ruff)
echo "test: mypy"
# tools/typecheck.py runs mypy with each module under its installed name (probes/ is hopscope.probes).
.venv/bin/python tools/typecheck.py || failed+=(mypy)
echo "test: compiled kernels import (probes/csrc, built by the install)"
.venv/bin/python -c "from hopscope.probes import _decode, _jsonl, _l7, _meter, _ring" || failed+=(kernels)
echo "test: pytest"
# Services were started above: a test that cannot reach one fails instead of skipping.
export HOPSCOPE_REQUIRE_SERVICES=1
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests" >&2
fi
[ "$rc" -eq 0 ] || failed+=(pytest)
if [ "$#" -eq 0 ]; then
  # The probe's Python/numpy reference paths (the kernels' specification and fallback), end to end.
  echo "test: pytest tests/probes on the reference paths (HOPSCOPE_NATIVE=0)"
  HOPSCOPE_NATIVE=0 .venv/bin/python -m pytest -q tests/probes || failed+=(pytest-reference)
fi
if [ "${#failed[@]}" -gt 0 ]; then
  echo "test: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "test: all passed (ruff, mypy, kernels, pytest, pytest on the reference paths)"
