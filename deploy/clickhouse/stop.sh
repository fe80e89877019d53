#!/usr/bin/env bash
# Stop the ClickHouse server started by deploy/clickhouse/start.sh (SIGTERM, wait up to 30 s, then SIGKILL).
exec bash "$(dirname "$0")/../stop-service.sh" clickhouse
