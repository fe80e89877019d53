"""The agent with its configuration's ``packets`` on, on the namespaces of tests/probes/test_agent_live.py
(root and the broker needed): each point keeps its flows' packets in its rolling store, the health
reports what it kept and dropped, and the status line says it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from hopscope.probes.agent import Agent
from hopscope.probes.agent_config import parse_config
from hopscope.probes.packet_store import PacketStoreIndex
from tests.probes.test_agent_live import (  # noqa: F401  (site is a fixture)
    ADDR_B,
    CLIENT,
    HOST,
    NS_A,
    PORT,
    VETH_A,
    Site,
    _in,
    consume,
    running,
    site,
    wait_for,
)

pytestmark = [pytest.mark.lab, pytest.mark.kafka]


def test_each_point_keeps_its_packets_and_reports_them(
    site: Site, kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    from tests.conftest import topic_prefix

    prefix = topic_prefix("agentpkt")
    raw = {
        "schema": "hopscope.agent/1", "host": HOST,
        "interfaces": {"include": r"hg[a-d]\d+|lo", "exclude": "", "rescan_s": 1},
        "namespaces": {"root": False, "netns_dirs": [str(site.netns_dir)], "proc_root": str(site.proc_root)},
        "capture": {"bpf": "tcp or udp", "l7": True, "ring_mb": 2, "max_flows": 10_000},
        "kafka": {"bootstrap": kafka_bootstrap, "topic_prefix": prefix},
        "packets": {"enabled": True, "dir": str(tmp_path / "packets"), "max_mb": 16, "max_age_s": 600,
                    "segment_mb": 1},
        "report_interval_s": 1,
    }  # fmt: skip
    agent = Agent(parse_config(yaml.safe_dump(raw), {}))
    client_point = f"{HOST}/client/{VETH_A}"
    caplog.set_level(logging.WARNING, logger="hopscope.probes.agent")
    with running(agent) as summaries:
        wait_for(lambda: client_point in agent.capturing())
        wait_for(lambda: agent.sender.state.connected)
        _in(NS_A, CLIENT, ADDR_B, str(PORT), "/pod/1", "/pod/2")
        wait_for(lambda: any(p.pcap_kept for p in agent.points() if p.point == client_point))
        agent.report()
    summary = summaries[0]
    flows, _ = consume(kafka_bootstrap, prefix, lambda f, r: len(f) + len(r) >= summary.records_sent)
    client = {p.point: p for p in summary.points}[client_point]
    conn = [f for f in flows if f.point == client_point and f.resp_p == PORT and f.final]
    assert conn and client.pcap_dropped == 0
    rows = PacketStoreIndex(tmp_path / "packets").packet_index(client_point, [conn[0].flow_id])
    assert sum(r.pkts for r in rows) == conn[0].orig_pkts + conn[0].resp_pkts
    assert client.pcap_kept >= sum(r.pkts for r in rows)
    assert any(f"{client_point} [pod capturing]" in r.getMessage() and "pcap kept" in r.getMessage()
               for r in caplog.records)  # fmt: skip

