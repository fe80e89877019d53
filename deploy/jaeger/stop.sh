#!/usr/bin/env bash
# Stop the Jaeger started by deploy/jaeger/start.sh (SIGTERM, wait up to 30 s, then SIGKILL).
exec bash "$(dirname "$0")/../stop-service.sh" jaeger
