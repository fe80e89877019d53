"""Shared fixtures: addresses of the real services the README's test command starts."""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterator

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


@pytest.fixture(scope="session", autouse=True)
def _kafka_topics_cleaned_up() -> Iterator[None]:
    """Delete the Kafka topics this test session created (each test makes its own prefix), so runs do
    not pile up partitions on the broker: thousands of old test topics made a restart recover for
    minutes. Topics that existed before the session are left alone."""
    before = _topics()
    yield
    if before is None:
        return
    after = _topics()
    created = sorted((after or set()) - before)
    if created:
        from kafka.admin import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP, request_timeout_ms=30_000)
            try:
                for start in range(0, len(created), 100):
                    admin.delete_topics(created[start : start + 100], timeout_ms=30_000)
            finally:
                admin.close()
        except (KafkaError, OSError) as exc:  # a clean-up problem is not a test failure: say it
            warnings.warn(f"could not delete {len(created)} test topics: {exc}", stacklevel=1)


def _topics() -> set[str] | None:
    """The broker's topics, or None when Kafka is not running."""
    if not _listening(KAFKA_BOOTSTRAP):
        return None
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP, request_timeout_ms=10_000)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()
