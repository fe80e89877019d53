"""BlockFeeder: the whole file path (reader -> decoder -> meter -> feeder -> tracker) on a crafted pcap."""

from __future__ import annotations

from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from hopscope.probes.analyze import iter_capture
from hopscope.probes.l7.feed import BlockFeeder
from hopscope.records import FlowRecord
from tests.probes.l7.tcpstreams import MS, TcpConversation, get, ok, tracker


def _write(path: Path, convs: list[TcpConversation], noise: int) -> None:
    packets = [(ts, pkt) for conv in convs for ts, pkt in conv.packets]
    t0 = min(ts for ts, _ in packets)
    for n in range(noise):  # a UDP stream on a port no parser wants
        packets.append((t0 + n * MS // 10, IP(src="10.9.0.1", dst="10.9.0.2") / UDP(sport=7000, dport=7001) / b"x"))
    frames = []
    for ts, pkt in sorted(packets, key=lambda p: p[0]):
        eth = Ether() / pkt
        eth.time = ts / 1e9
        frames.append(eth)
    wrpcap(str(path), frames)


def test_records_carry_the_meter_flow_id_and_only_l7_rows_reach_python(tmp_path: Path) -> None:
    http = TcpConversation().handshake()
    http.request(get("/feed"))
    http.response(ok(b"fed"))
    ssh = TcpConversation(client=("10.1.0.5", 40100), server=("10.2.0.9", 22)).handshake()
    ssh.send(True, b"SSH-2.0-OpenSSH_9.2\r\n")
    ssh.send(True, b"\x00" * 100)
    _write(tmp_path / "mix.pcap", [http, ssh], noise=500)
    trk = tracker()
    feeder = BlockFeeder(trk)
    flows: list[FlowRecord] = []
    for block, closed in iter_capture(tmp_path / "mix.pcap"):
        feeder.feed(block)
        flows.extend(closed.records())  # type: ignore[arg-type]
    trk.flush()
    (rec,) = trk.take_records()
    (flow,) = [f for f in flows if f.resp_p == 80]
    assert (rec.path, rec.status, rec.flow_id, rec.syn_seq) == ("/feed", 200, flow.flow_id, flow.syn_seq)
    assert feeder.rows_fed <= len(http.packets) + 4  # the HTTP conversation, the SSH SYN and first bytes
