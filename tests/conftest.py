"""Shared fixtures: addresses of the real services the README's test command starts."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
import warnings
from collections.abc import Iterator

import pytest

KAFKA_BOOTSTRAP = os.environ.get("HOPSCOPE_KAFKA", "127.0.0.1:9092")
CLICKHOUSE_URL = os.environ.get("HOPSCOPE_CLICKHOUSE", "clickhouse://127.0.0.1:9000/default")
#: The cluster of deploy/clickhouse-cluster/start.sh (its first server; DB is each test's database).
CLICKHOUSE_CLUSTER_URL = os.environ.get(
    "HOPSCOPE_CLICKHOUSE_CLUSTER", "clickhouse://127.0.0.1:9101/DB?cluster=hopscope"
)
JAEGER_OTLP = os.environ.get("HOPSCOPE_JAEGER_OTLP", "http://127.0.0.1:4318")
JAEGER_QUERY = os.environ.get("HOPSCOPE_JAEGER_QUERY", "http://127.0.0.1:16686")


def _no_neighbour_lookups() -> None:
    """Frames the tests build leave their Ethernet destination unset. Scapy would then resolve it
    by sending ARP or IPv6 neighbour solicitations on this machine's own network (and, with a
    default IPv6 route, block on select(), which fails once chDB has opened more than 1024 fds).
    Tests only write such frames to files or send them into namespaces they made, so the
    destination is the broadcast address, the same on every machine and without a packet sent."""
    from scapy.config import conf
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Dot3, Ether

    for l2, l3 in ((Ether, IP), (Dot3, IP), (Ether, IPv6)):
        conf.neighbor.register_l3(l2, l3, lambda _l2, _l3: "ff:ff:ff:ff:ff:ff")


_no_neighbour_lookups()


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


@pytest.fixture
def clickhouse_cluster() -> str:
    """The cluster's store URL with ``DB`` where the database goes (tests marked ``clickhouse_cluster``).
    Skips when its first server is not running, or fails when CI demands services."""
    require_service("ClickHouse-cluster", CLICKHOUSE_CLUSTER_URL.split("//", 1)[1].split("/", 1)[0])
    return CLICKHOUSE_CLUSTER_URL


@pytest.fixture
def jaeger() -> tuple[str, str]:
    """(OTLP/HTTP endpoint, query API base URL) of the Jaeger of deploy/jaeger/start.sh. Without it the
    test skips (naming Go when Go, which builds Jaeger, is missing), or fails when CI demands services."""
    otlp, query = (hp.split("//", 1)[-1].rstrip("/") for hp in (JAEGER_OTLP, JAEGER_QUERY))
    if not (_listening(otlp) and _listening(query)) and shutil.which("go") is None \
            and os.environ.get("HOPSCOPE_REQUIRE_SERVICES") != "1":
        pytest.skip("Jaeger is not running and Go, which deploy/jaeger/build.sh builds it with, is not installed")
    require_service("Jaeger", otlp)
    require_service("Jaeger", query)
    return JAEGER_OTLP, JAEGER_QUERY


_PREFIXES: list[str] = []  # topic prefixes handed out by topic_prefix in this pytest session


@contextlib.contextmanager
def clickhouse_database(stem: str) -> Iterator[str]:
    """The store URL of a new database named ``stem`` and a random suffix on the ClickHouse server, its
    schema created; dropped afterwards."""
    from hopscope.store import store_from_url

    require_service("ClickHouse", CLICKHOUSE_URL.split("//", 1)[1].split("/", 1)[0])
    url = CLICKHOUSE_URL.rsplit("/", 1)[0] + f"/{stem}_{uuid.uuid4().hex[:8]}"
    store = store_from_url(url)
    store.ensure_schema()
    store.close()
    try:
        yield url
    finally:
        store = store_from_url(url)
        store.drop_schema()
        store.close()


def topic_prefix(stem: str) -> str:
    """A fresh Kafka topic prefix for one test (``stem`` + 10 hex digits). Its topics (``PREFIX.*``) are
    deleted once the last test of the pytest run has finished."""
    name = f"{stem}{uuid.uuid4().hex[:10]}"
    _PREFIXES.append(name)
    return name


@pytest.fixture(scope="session", autouse=True)
def _kafka_topics_cleaned_up() -> Iterator[None]:
    """Delete the topics of the prefixes this test session handed out (``topic_prefix``), so runs do not pile
    up partitions on the broker: thousands of old test topics made a restart recover for minutes. Only
    this session's prefixes: a test session running at the same time keeps its topics."""
    yield
    if not _PREFIXES or not _listening(KAFKA_BOOTSTRAP):
        return
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP, request_timeout_ms=30_000)
        try:
            ours = tuple(f"{p}." for p in _PREFIXES)
            created = sorted(t for t in admin.list_topics() if t.startswith(ours))
            for start in range(0, len(created), 100):
                admin.delete_topics(created[start : start + 100], timeout_ms=30_000)
        finally:
            admin.close()
    except (KafkaError, OSError) as exc:  # a clean-up problem is not a test failure: say it
        warnings.warn(f"could not delete the test topics: {exc}", stacklevel=1)
