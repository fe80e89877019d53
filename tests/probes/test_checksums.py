"""Checksum validation (hopscope.probes.checksums) and what the meter makes of a bad checksum, against
Zeek's rules: a bad IPv4 header checksum drops the packet (``bad_IP_checksum``, before the connection
lookup); a bad TCP/UDP/ICMP checksum still finds or creates the connection but the packet is not
counted, only ``C``/``c`` is added to the history, scaled (1st, 10th, 100th ...); not checked: a
payload the snaplen cut, a zero UDP checksum over IPv4 (none sent); over IPv6 a zero UDP checksum is
bad. Each case runs on the reference and compiled decoder and meter; the numpy and C validators are
also compared row by row on the samples.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet
from scapy.utils import wrpcap

from hopscope.probes import checksums, kernels
from hopscope.probes.decode import Decoder
from hopscope.probes.meter import FlowMeter, MeterConfig
from hopscope.probes.packets import PacketStatus
from hopscope.probes.readers import open_capture
from tests.probes.crafting import MAC_A, MAC_B, T0

_KERNELS = kernels.enabled() and kernels.load("_meter") is not None and kernels.load("_decode") is not None
NATIVE = [False] + ([True] if _KERNELS else [])
if os.environ.get("HOPSCOPE_REQUIRE_SERVICES") == "1" and kernels.enabled():
    NATIVE = [False, True]  # CI builds the kernels: a missing one fails
C, S = "10.0.0.1", "10.0.0.2"
C6, S6 = "2001:db8::1", "2001:db8::2"


def _decoder(native: bool, validate: bool = True) -> Decoder:
    decoder = Decoder("p", checksums=validate)
    if not native:
        decoder._kernel = None  # the numpy decoder and validator
    return decoder


def _run(tmp_path: Path, packets: list[Packet], native: bool, validate: bool = True) -> tuple[list[Any], Decoder]:
    for n, pkt in enumerate(packets):
        pkt.time = T0 + n * 0.001
    path = tmp_path / "case.pcap"
    wrpcap(str(path), packets)
    meter = FlowMeter(MeterConfig(), native=native)
    decoder = _decoder(native, validate)
    batches = [meter.process_batch(decoder.decode(raw)) for raw in open_capture(path).blocks()]
    batches.extend(meter.flush_batches())
    rows = [(r.orig_h, r.resp_h, r.proto, r.conn_state, r.history, r.orig_pkts, r.resp_pkts, r.orig_bytes,
             r.resp_bytes) for b in batches for r in b.records() if r.final]  # fmt: skip
    return sorted(rows), decoder


def _tcp(to_server: bool, flags: str, seq: int, ack: int = 0, size: int = 0, **kw: Any) -> Packet:
    src, dst, sport, dport = (C, S, 40000, 80) if to_server else (S, C, 80, 40000)
    return Ether(src=MAC_A, dst=MAC_B) / IP(src=src, dst=dst) / TCP(
        sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, **kw) / (b"x" * size)


def _udp(src: str, dst: str, payload: bytes = b"q", v6: bool = False, reply: bool = False, **kw: Any) -> Packet:
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    sport, dport = (9999, 40000) if reply else (40000, 9999)
    return Ether(src=MAC_A, dst=MAC_B) / ip / UDP(sport=sport, dport=dport, **kw) / payload


def _truncated(pkt: Packet, caplen: int) -> Packet:
    raw = bytes(pkt)
    cut = Ether(raw[:caplen])
    cut.wirelen = len(raw)
    return cut


BAD = 0x1234  # a checksum none of these packets has
CASES = [
    # Zeek 8.2's documented case: a lone SYN with a bad checksum is a connection with no packets, history C
    ("tcp-syn", [_tcp(True, "S", 1000, chksum=BAD)], [(C, S, 6, "OTH", "C", 0, 0, 0, 0)]),
    # a bad segment in an established connection: not counted, not in the sizes, C (the responder's: c)
    ("tcp-data", [_tcp(True, "S", 1000), _tcp(False, "SA", 5000, 1001), _tcp(True, "A", 1001, 5001),
                  _tcp(False, "PA", 5001, 1001, 10, chksum=BAD)],
     [(C, S, 6, "S1", "ShAc", 2, 1, 0, 0)]),
    # scaled like the other repeat letters: the 1st and the 10th
    ("tcp-scaled", [_tcp(True, "A", 1000 + n, chksum=BAD) for n in range(10)], [(C, S, 6, "OTH", "CC", 0, 0, 0, 0)]),
    # a payload the snaplen cut is not checked: counted as usual
    ("tcp-snaplen", [_truncated(_tcp(True, "PA", 1000, 1, 100, chksum=BAD), 60)],
     [(C, S, 6, "OTH", "D", 1, 0, 100, 0)]),
    # the first datagram (bad) still makes its sender the originator; only the reply is counted
    ("udp", [_udp(C, S, chksum=BAD), _udp(S, C, reply=True)], [(C, S, 17, "SHR", "Cd", 0, 1, 0, 1)]),
    # UDP over IPv4: a zero checksum means none was sent
    ("udp-zero-v4", [_udp(C, S, chksum=0)], [(C, S, 17, "S0", "D", 1, 0, 1, 0)]),
    # over IPv6 the checksum is not optional
    ("udp-zero-v6", [_udp(C6, S6, v6=True, chksum=0)], [(C6, S6, 17, "OTH", "C", 0, 0, 0, 0)]),
    ("udp-v6", [_udp(C6, S6, v6=True)], [(C6, S6, 17, "S0", "D", 1, 0, 1, 0)]),
    ("icmp", [Ether(src=MAC_A, dst=MAC_B) / IP(src=C, dst=S) / ICMP(type=8, chksum=BAD) / b"ping"],
     [(C, S, 1, "OTH", "C", 0, 0, 0, 0)]),
    # a bad IPv4 header checksum drops the packet before any connection exists
    ("ip-header", [Ether(src=MAC_A, dst=MAC_B) / IP(src=C, dst=S, chksum=BAD) / UDP(sport=1, dport=2)], []),
    # a bad outer UDP checksum: the outer connection gets C, the tunnel is not opened (no inner row)
    ("vxlan-outer", [Ether(src=MAC_A, dst=MAC_B) / IP(src="192.0.2.1", dst="192.0.2.2") /
                     UDP(sport=49152, dport=4789, chksum=BAD) / VXLAN(vni=9) / Ether() /
                     IP(src=C, dst=S) / TCP(sport=40000, dport=80, flags="S")],
     [("192.0.2.1", "192.0.2.2", 17, "OTH", "C", 0, 0, 0, 0)]),
    # over IPv6 a zero UDP checksum is bad, except on a VXLAN datagram to port 4789 (accepted)
    ("vxlan-v6-zero", [Ether(src=MAC_A, dst=MAC_B) / IPv6(src="2001:db8::a", dst="2001:db8::b") /
                       UDP(sport=49152, dport=4789, chksum=0) / VXLAN(vni=9) / Ether() /
                       IP(src=C, dst=S) / TCP(sport=40000, dport=80, flags="S")],
     [("2001:db8::a", "2001:db8::b", 17, "S0", "D", 1, 0, 62, 0), (C, S, 6, "S0", "S", 1, 0, 0, 0)]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "packets", "want"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("native", NATIVE)
def test_bad_checksums(tmp_path: Path, name: str, packets: list[Packet], want: list[Any], native: bool) -> None:
    rows, decoder = _run(tmp_path, [p.copy() for p in packets], native)
    assert rows == sorted(want)
    if name == "ip-header":
        assert decoder.skips["bad_ip_checksum"] == 1
    if name == "vxlan-outer":
        assert decoder.skips["outer_bad_checksum"] == 1


@pytest.mark.parametrize("native", NATIVE)
def test_validation_off_counts_everything(tmp_path: Path, native: bool) -> None:
    """Without validation (a live capture's default: offloaded checksums), bad checksums go unnoticed."""
    packets = [_tcp(True, "S", 1000, chksum=BAD), _tcp(False, "SA", 5000, 1001, chksum=BAD)]
    rows, decoder = _run(tmp_path, packets, native, validate=False)
    assert rows == [(C, S, 6, "S1", "Sh", 1, 1, 0, 0)]
    assert not decoder.skips


def test_numpy_and_c_validators_agree() -> None:
    """Row by row, on every sample capture (lab captures taken on the sending host: offloaded, bad) and on
    crafted packets with every kind of bad checksum."""
    kernel = kernels.load("_decode")
    if kernel is None or not kernels.enabled():
        pytest.skip("the _decode kernel is not built")
    root = Path(__file__).resolve().parents[2]
    files = sorted(glob.glob(str(root / "samples" / "**" / "*.pcap*"), recursive=True))
    assert files
    compared = bad = 0
    for path in files:
        decoder = Decoder("p")
        for raw in open_capture(path).blocks():
            block = decoder.decode(raw)
            rows = np.flatnonzero(block.status == PacketStatus.OK)
            want = checksums._codes(block, rows)
            code = np.zeros(block.count, np.uint8)
            cols = (block.status, block.ip_version, block.proto, block.src_hi, block.src_lo, block.dst_hi,
                    block.dst_lo, block.sport, block.dport, block.seq, block.ip_len, block.payload_off,
                    block.payload_len, block.payload_caplen)  # fmt: skip
            kernel.checksums(block.buf, block.count, cols, code)
            assert code[rows].tolist() == want.tolist(), path
            compared += len(rows)
            bad += int(np.count_nonzero(want))
    assert compared > 1000 and bad > 0


def test_flows_command_validates_unless_told_not_to(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``hopscope flows`` validates as Zeek does by default; ``-C`` (Zeek's flag) turns it off."""
    import json

    from hopscope.cli import main

    path = tmp_path / "bad.pcap"
    wrpcap(str(path), [_tcp(True, "S", 1000, chksum=BAD)])
    histories = []
    for args in (["flows", str(path)], ["flows", "-C", str(path)]):
        assert main(args) == 0
        histories.append([json.loads(line)["history"] for line in capsys.readouterr().out.splitlines()])
    assert histories == [["C"], ["S"]]
