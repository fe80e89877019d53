"""Shared fixtures: addresses of the real services the README's test command starts."""

from __future__ import annotations

import os
import socket

import pytest

KAFKA_BOOTSTRAP = os.environ.get("HOPSCOPE_KAFKA", "127.0.0.1:9092")
CLICKHOUSE_URL = os.environ.get("HOPSCOPE_CLICKHOUSE", "clickhouse://127.0.0.1:9000/default")


def _listening(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, hostport: str) -> None:
    """Skip when a service is not running, unless CI demands it (then fail: CI starts them)."""
    if _listening(hostport):
        return
    message = f"{name} is not running at {hostport}: start it with deploy/{name.lower()}/start.sh"
    if os.environ.get("HOPSCOPE_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def kafka_bootstrap() -> str:
    require_service("Kafka", KAFKA_BOOTSTRAP)
    return KAFKA_BOOTSTRAP
