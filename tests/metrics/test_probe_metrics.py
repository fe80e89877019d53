"""``hopscope probe --metrics-port``: scraped over HTTP on loopback while it captures between two
namespaces the test creates (root needed); the counters match the traffic the test sent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hopscope.lab.services import start_watched
from tests.metrics.scrape import free_port, scrape_until, total, value
from tests.netns import add_veth_pair, delete_namespaces

pytestmark = [pytest.mark.lab]

TAG = os.getpid() % 100000
NS_A, NS_B = f"hsma{TAG}", f"hsmb{TAG}"
VETH_A, VETH_B = f"hma{TAG}", f"hmb{TAG}"
ADDR_A, ADDR_B = "10.250.31.1", "10.250.31.2"
UDP_PORT, TCP_PORT = 9999, 8080
UDP_DATAGRAMS, TCP_CONNECTIONS = 137, 6

TCP_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
while True:
    c, _ = s.accept(); c.recv(100); c.sendall(b"bye"); c.close()
"""
UDP_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    s.recv(2048)
"""
UDP_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    s.sendto(b"%06d" % i, (sys.argv[1], int(sys.argv[2])))
"""
UDP_TICKS = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    s.sendto(b"tick", (sys.argv[1], int(sys.argv[2]))); time.sleep(0.5)
"""
TCP_CONNECT = """
import socket, sys, time
for _ in range(int(sys.argv[3])):
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    c.sendall(b"hello"); c.recv(100); c.close()
"""


def _in_a(script: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", NS_A, sys.executable, "-c", script, *args], check=True, timeout=60)


@pytest.fixture
def netns_pair() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    servers: list[subprocess.Popen[bytes]] = []
    try:
        add_veth_pair(NS_A, NS_B, VETH_A, VETH_B, ADDR_A, ADDR_B)
        for script, port in ((TCP_SERVER, TCP_PORT), (UDP_SINK, UDP_PORT)):
            servers.append(subprocess.Popen(["ip", "netns", "exec", NS_B, sys.executable, "-c", script, ADDR_B,
                                             str(port)]))  # fmt: skip
        time.sleep(0.5)  # the servers bind
        yield
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        delete_namespaces(NS_A, NS_B)


def test_probe_metrics_count_what_was_sent(netns_pair: None, tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "hopscope", "-v", "probe", "--iface", VETH_A, "--netns", NS_A, "--point", "pa",
           "--out", str(tmp_path / "records.jsonl"), "--filter", f"udp port {UDP_PORT} or tcp port {TCP_PORT}",
           "--metrics-port", str(port)]  # fmt: skip
    probe = start_watched(cmd, "capturing on", cwd="/")
    alive = lambda: probe.proc.poll() is None  # noqa: E731
    try:
        _in_a(UDP_SEND, ADDR_B, str(UDP_PORT), str(UDP_DATAGRAMS))
        got = scrape_until(port, lambda s: value(s, "hopscope_capture_packets_total", point="pa") >= UDP_DATAGRAMS,
                           alive)  # fmt: skip
        # every datagram, once: decoded and as the kernel counted it (read at the scrape), none dropped
        assert value(got, "hopscope_capture_packets_total", point="pa") == UDP_DATAGRAMS
        assert value(got, "hopscope_capture_kernel_packets_total", point="pa") == UDP_DATAGRAMS
        assert value(got, "hopscope_capture_kernel_drops_total", point="pa") == 0
        assert value(got, "hopscope_capture_decode_skips_total", point="pa") == 0
        # closed TCP connections become final flow records once capture time passed their close delay (a
        # datagram a second moves it on), published within the publish interval; the UDP flow stays open
        _in_a(TCP_CONNECT, ADDR_B, str(TCP_PORT), str(TCP_CONNECTIONS))
        sender = subprocess.Popen(["ip", "netns", "exec", NS_A, sys.executable, "-c", UDP_TICKS, ADDR_B,
                                   str(UDP_PORT)])  # fmt: skip
        try:
            got = scrape_until(port, lambda s: value(s, "hopscope_capture_records_published_total", point="pa",
                                                     table="flows") >= TCP_CONNECTIONS, alive)  # fmt: skip
        finally:
            sender.kill()
            sender.wait()
        assert value(got, "hopscope_capture_records_published_total", point="pa", table="flows") == TCP_CONNECTIONS
        assert value(got, "hopscope_capture_records_total", point="pa") == TCP_CONNECTIONS
        # the kernel's count is read at the scrape, the decoded one as blocks are walked: with the sender
        # stopped the two meet (while it ran, a datagram could be counted and not yet walked)
        got = scrape_until(port, lambda s: value(s, "hopscope_capture_kernel_packets_total", point="pa")
                           == value(s, "hopscope_capture_packets_total", point="pa"), alive)  # fmt: skip
        frames = value(got, "hopscope_capture_packets_total", point="pa")
        assert frames > UDP_DATAGRAMS + 4 * TCP_CONNECTIONS
        assert value(got, "hopscope_capture_kernel_drops_total", point="pa") == 0
        assert total(got, "hopscope_kafka_publish_errors_total") == 0  # no Kafka publisher: no such sample
    finally:
        probe.proc.send_signal(signal.SIGTERM)
        stderr = probe.finish()
    assert probe.proc.returncode == 0, stderr
