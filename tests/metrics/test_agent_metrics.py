"""``hopscope agent --metrics-port``: scraped over HTTP on loopback while it captures the namespaces of
the agent tests (root needed; the agent sees only them) and publishes to the real broker; each point's
counters match the datagrams the test sent."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.metrics.scrape import free_port, scrape_until, total, value
from tests.probes.test_agent_live import ADDR_B, HOST, NS_A, VETH_A, VETH_B, Site, site  # noqa: F401

pytestmark = [pytest.mark.lab, pytest.mark.kafka]

DATAGRAMS = 73
UDP_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[2])):
    s.sendto(b"%06d" % i, (sys.argv[1], 9999))
"""


def test_agent_metrics_count_each_points_packets(site: Site, kafka_bootstrap: str, tmp_path: Path) -> None:  # noqa: F811
    from tests.conftest import topic_prefix

    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "schema": "hopscope.agent/1", "host": HOST,
        "interfaces": {"include": r"hg[a-d]\d+", "exclude": "", "rescan_s": 1},
        "namespaces": {"root": False, "netns_dirs": [str(site.netns_dir)], "proc_root": str(site.proc_root)},
        "points": {"name": "{host}/{netns}/{iface}"},
        "capture": {"bpf": "udp port 9999", "l7": True, "ring_mb": 2, "max_flows": 10_000},
        "kafka": {"bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix("agentmetrics")},
        "report_interval_s": 1,
    }))  # fmt: skip
    client, server = f"{HOST}/client/{VETH_A}", f"{HOST}/server/{VETH_B}"
    port = free_port()
    agent = subprocess.Popen([sys.executable, "-m", "hopscope", "agent", "--config", str(config),
                              "--metrics-port", str(port)], stderr=subprocess.PIPE, text=True)  # fmt: skip
    alive = lambda: agent.poll() is None  # noqa: E731
    try:
        scrape_until(port, lambda s: value(s, "hopscope_capture_up", point=client) == 1
                     and value(s, "hopscope_capture_up", point=server) == 1
                     and value(s, "hopscope_agent_kafka_up") == 1, alive)  # fmt: skip
        subprocess.run(["ip", "netns", "exec", NS_A, sys.executable, "-c", UDP_SEND, ADDR_B, str(DATAGRAMS)],
                       check=True, timeout=30)  # fmt: skip
        got = scrape_until(port, lambda s: value(s, "hopscope_capture_packets_total", point=client) >= DATAGRAMS
                           and value(s, "hopscope_capture_packets_total", point=server) >= DATAGRAMS, alive)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=120)
    assert agent.returncode == 0, stderr
    for point in (client, server):  # each datagram once on each side of the veth pair, none dropped
        assert value(got, "hopscope_capture_packets_total", point=point) == DATAGRAMS
        assert value(got, "hopscope_capture_kernel_packets_total", point=point) == DATAGRAMS
        assert value(got, "hopscope_capture_kernel_drops_total", point=point) == 0
        assert value(got, "hopscope_capture_decode_skips_total", point=point) == 0
    assert {dict(labels)["point"] for name, labels in got if name == "hopscope_capture_up"} == {client, server}
    assert value(got, "hopscope_agent_buffer_dropped_batches_total") == 0
    assert value(got, "hopscope_agent_records_sent_total") == total(got, "hopscope_capture_records_sent_total")
