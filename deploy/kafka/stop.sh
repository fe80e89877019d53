#!/usr/bin/env bash
# Stop the Kafka broker started by deploy/kafka/start.sh (SIGTERM, wait up to 30 s, then SIGKILL).
exec bash "$(dirname "$0")/../stop-service.sh" kafka
