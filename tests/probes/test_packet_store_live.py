"""A live probe with a rolling packet store, on the veth pair of tests/probes/test_live.py (root needed):
every packet of the flows it metered is in the store, and each HTTP request's exchange read back from
it holds the bytes its request record counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from hopscope.probes.packet_slice import Endpoints, exchange_packets, flow_packets
from hopscope.probes.packet_store import PacketStoreIndex, PacketStoreSettings
from tests.probes.test_live import NS_A, PATHS, VETH_A, capture_client, netns_pair  # noqa: F401  (a fixture)

pytestmark = pytest.mark.lab


def test_live_probe_keeps_each_flows_packets(netns_pair: None, tmp_path: Path) -> None:  # noqa: F811
    from hopscope.probes.live import ProbeSettings

    summary, flows, requests = capture_client(
        ProbeSettings(iface=VETH_A, point="client-veth", host="lab", hop_kind="pod", netns=NS_A, bpf="tcp or udp",
                      publish_interval_s=0.2, packet_store=PacketStoreSettings(str(tmp_path))))  # fmt: skip
    final = {f.flow_id: f for f in flows if f.final}
    assert summary.packet_store["packets"] == sum(f.orig_pkts + f.resp_pkts for f in final.values())
    assert summary.packet_store["dropped_packets"] == 0
    index = PacketStoreIndex(tmp_path)
    http = [r for r in requests if r.l7_proto == "http"]
    assert len(http) == len(PATHS)
    (conn,) = {r.flow_id for r in http}
    rows = index.packet_index("client-veth", [conn])
    assert rows and all(r.host == "lab" for r in rows)
    packets = flow_packets(rows, Endpoints(http[0].orig_h, http[0].orig_p, http[0].resp_h, http[0].resp_p))
    assert len(packets) == final[conn].orig_pkts + final[conn].resp_pkts
    seen = []
    for request in http:
        exchange = exchange_packets(packets, request)
        data = [p for p in exchange if p.len and not p.retransmission]
        assert sum(p.len for p in data if p.dir == "c2s") == request.req_bytes
        assert sum(p.len for p in data if p.dir == "s2c") == request.resp_bytes
        seen += exchange
    assert sorted(map(id, seen)) == sorted(map(id, packets))  # the requests split the connection's packets
    (dns,) = [r for r in requests if r.l7_proto == "dns"]
    assert [p.len for p in flow_packets(index.packet_index("client-veth", [dns.flow_id]),
                                        Endpoints(dns.orig_h, dns.orig_p, dns.resp_h, dns.resp_p))] == [
        dns.req_bytes, dns.resp_bytes,
    ]  # fmt: skip
