"""The services deploy/ starts answer on loopback and only there (ClickHouse, Kafka)."""

from __future__ import annotations

import socket
import subprocess
import urllib.request

import pytest

from tests.conftest import KAFKA_BOOTSTRAP, require_service

CLICKHOUSE_PORTS = (9000, 8123)
KAFKA_PORTS = (9092, 9093)


def _global_ipv4_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3]


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.clickhouse
def test_clickhouse_http_answers_on_loopback() -> None:
    require_service("ClickHouse", "127.0.0.1:9000")
    with urllib.request.urlopen("http://127.0.0.1:8123/?query=SELECT%20version()", timeout=5) as reply:
        assert reply.read().decode().startswith("18.16.")


@pytest.mark.parametrize(
    ("name", "ports"),
    [pytest.param("ClickHouse", CLICKHOUSE_PORTS, marks=pytest.mark.clickhouse),
     pytest.param("Kafka", KAFKA_PORTS, marks=pytest.mark.kafka)],
)  # fmt: skip
def test_services_listen_on_loopback_only(name: str, ports: tuple[int, ...]) -> None:
    require_service(name, f"127.0.0.1:{ports[0]}" if name == "ClickHouse" else KAFKA_BOOTSTRAP)
    addresses = _global_ipv4_addresses()
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    for port in ports:
        assert _accepts("127.0.0.1", port), f"{name} does not answer on 127.0.0.1:{port}"
        for address in addresses:
            assert not _accepts(address, port), f"{name} accepts connections on {address}:{port}"


#: deploy/clickhouse-cluster: native, HTTP and interserver ports of ch1..ch3 (ch3 with --replicas), ZooKeeper.
CLUSTER_PORTS = (9101, 9102, 9103, 8131, 8132, 8133, 9111, 9112, 9113, 2281)


@pytest.mark.clickhouse_cluster
def test_the_clickhouse_cluster_listens_on_loopback_only() -> None:
    require_service("ClickHouse-cluster", "127.0.0.1:9101")
    addresses = _global_ipv4_addresses()
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    listening = [port for port in CLUSTER_PORTS if _accepts("127.0.0.1", port)]
    assert {9101, 9102, 8131, 8132, 9111, 9112} <= set(listening), listening  # the two shards, as started
    for port in listening:
        for address in addresses:
            assert not _accepts(address, port), f"the cluster accepts connections on {address}:{port}"
