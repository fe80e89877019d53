"""Conformance of the flow meter to Zeek's conn.log rules, on both meters (reference and compiled).

Each case is a scapy-crafted capture and the conn.log rows Zeek's rules give for it (uid-free:
orig_h, orig_p, resp_h, resp_p, proto, conn_state, history, orig_pkts, resp_pkts, orig_bytes,
resp_bytes, duration in ms), written from the rules of Zeek's source as the meter cites them:
keying (``IPBasedConnKey``, default ``fivetuple``), tuple reuse (``TCPSessionAdapter::IsReuse``),
sizes (``TCP_Endpoint::Size``, UDP length), duration (``SetLastTime``), the originator
(``likely_server_ports``) and ICMP (``ICMP4_counterpart``/``ICMP6_counterpart``). Rows are compared
as a sorted list, so the cases say nothing about emission order (the differential tests do).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet
from scapy.utils import wrpcap

from hopscope.probes import kernels
from hopscope.probes.decode import Decoder
from hopscope.probes.meter import FlowMeter, MeterConfig
from hopscope.probes.readers import open_capture
from tests.probes.crafting import MAC_A, MAC_B, T0, conversation

Row = tuple[Any, ...]
_NATIVE = [False] + ([True] if kernels.load("_meter") is not None and kernels.enabled() else [])
if os.environ.get("HOPSCOPE_REQUIRE_SERVICES") == "1" and kernels.enabled():
    _NATIVE = [False, True]  # CI builds the kernel: a missing one fails


def _rows(tmp_path: Path, packets: list[Packet], native: bool) -> list[Row]:
    path = tmp_path / "case.pcap"
    wrpcap(str(path), packets)
    meter = FlowMeter(MeterConfig(), native=native)
    decoder = Decoder("p")
    batches = [meter.process_batch(decoder.decode(raw)) for raw in open_capture(path).blocks()]
    batches.extend(meter.flush_batches())
    rows = [
        (r.orig_h, r.orig_p, r.resp_h, r.resp_p, r.proto, r.conn_state, r.history, r.orig_pkts, r.resp_pkts,
         r.orig_bytes, r.resp_bytes, round((r.end_ns - r.start_ns) / 1e6, 3))
        for batch in batches for r in batch.records() if r.final
    ]  # fmt: skip
    return sorted(rows)


def _timed(packets: list[Packet], step_s: float = 0.001) -> list[Packet]:
    for n, pkt in enumerate(packets):
        pkt.time = T0 + n * step_s
    return packets


# --- keying: the connection's own 5-tuple, no tunnel, no VLAN ---------------------------------------

C, S = "10.0.0.1", "10.0.0.2"
HANDSHAKE = [">S", "<SA", ">A", ">PA:20", "<PA:30", ">FA", "<FA"]
HANDSHAKE_ROW = (C, 40000, S, 80, 6, "SF", "ShADdFf", 4, 3, 20, 30, 6.0)


def _outer(direction: bool, kind: str) -> Packet:
    """The encapsulation of one direction: outer addresses (and VXLAN source port) follow the direction."""
    a, b = ("192.0.2.1", "192.0.2.2") if direction else ("192.0.2.2", "192.0.2.1")
    eth = Ether(src=MAC_A, dst=MAC_B)
    if kind == "vxlan":
        return eth / IP(src=a, dst=b) / UDP(sport=49152 if direction else 51000, dport=4789) / VXLAN(vni=9) / Ether()
    if kind == "gre":
        return eth / IP(src=a, dst=b) / GRE(proto=0x0800)
    return Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=10 if direction else 20)


@pytest.mark.parametrize("kind", ["vxlan", "gre", "vlan"])
@pytest.mark.parametrize("native", _NATIVE)
def test_keying_ignores_tunnel_and_vlan(tmp_path: Path, kind: str, native: bool) -> None:
    """Both directions of the inner connection meet in one row though each arrives in its own outer
    connection (Zeek keys by the inner 5-tuple; VLAN is only in the opt-in vlan_fivetuple key)."""
    packets = []
    for pkt, step in zip(conversation(HANDSHAKE), HANDSHAKE, strict=True):
        wrapped = _outer(step[0] == ">", kind) / pkt[IP]
        wrapped.time = pkt.time
        packets.append(wrapped)
    inner = [row for row in _rows(tmp_path, packets, native) if row[4] == 6]  # outer UDP rows aside
    assert inner == [HANDSHAKE_ROW]


@pytest.mark.parametrize("native", _NATIVE)
def test_record_keeps_the_first_tunnel_and_vlan(tmp_path: Path, native: bool) -> None:
    packets = []
    for pkt, step in zip(conversation(HANDSHAKE), HANDSHAKE, strict=True):
        wrapped = _outer(step[0] == ">", "vlan") / pkt[IP]
        wrapped.time = pkt.time
        packets.append(wrapped)
    path = tmp_path / "v.pcap"
    wrpcap(str(path), packets)
    meter = FlowMeter(MeterConfig(), native=native)
    for raw in open_capture(path).blocks():
        meter.process_batch(Decoder("p").decode(raw))
    (record,) = [r for batch in meter.flush_batches() for r in batch.records()]
    assert record.vlan == 10  # type: ignore[attr-defined]


# --- ICMP / ICMPv6: counterpart types share a connection, one-way types keep their direction -------


def _icmp(src: str, dst: str, icmp_type: int, code: int = 0) -> Packet:
    return Ether(src=MAC_A, dst=MAC_B) / IP(src=src, dst=dst) / ICMP(type=icmp_type, code=code) / (b"p" * 16)


ICMP_CASES = [
    # echo request and reply: one connection, resp_p the counterpart type; sizes are the bytes of the
    # ICMP message after its 8-byte header (Zeek: IP payload length - 8)
    ("echo", [_icmp(C, S, 8), _icmp(S, C, 0), _icmp(C, S, 8), _icmp(S, C, 0)],
     [(C, 8, S, 0, 1, "OTH", "", 2, 2, 32, 32, 3.0)]),
    # a reply seen first: its sender is the originator (no flip for ICMP)
    ("reply-first", [_icmp(S, C, 0), _icmp(C, S, 8)], [(S, 0, C, 8, 1, "OTH", "", 1, 1, 16, 16, 1.0)]),
    # timestamp request/reply (13 <-> 14); their 12 timestamp bytes count as message bytes
    ("timestamp", [_icmp(C, S, 13), _icmp(S, C, 14)], [(C, 13, S, 14, 1, "OTH", "", 1, 1, 28, 28, 1.0)]),
    # one-way: resp_p is the code; each direction and each (type, code) its own connection
    ("unreachable", [_icmp(S, C, 3, 3), _icmp(S, C, 3, 3), _icmp(C, S, 3, 3), _icmp(S, C, 3, 1)],
     [(C, 3, S, 3, 1, "OTH", "", 1, 0, 16, 0, 0.0), (S, 3, C, 1, 1, "OTH", "", 1, 0, 16, 0, 0.0),
      (S, 3, C, 3, 1, "OTH", "", 2, 0, 32, 0, 1.0)]),
    ("time-exceeded", [_icmp(S, C, 11, 0), _icmp(S, C, 11, 1)],
     [(S, 11, C, 0, 1, "OTH", "", 1, 0, 16, 0, 0.0), (S, 11, C, 1, 1, "OTH", "", 1, 0, 16, 0, 0.0)]),
]  # fmt: skip

A6, B6 = "2001:db8::1", "2001:db8::2"
V6_OUT, V6_BACK = Ether() / IPv6(src=A6, dst=B6), Ether() / IPv6(src=B6, dst=A6)
ICMP6_CASES = [
    ("echo6", [V6_OUT / ICMPv6EchoRequest(), V6_BACK / ICMPv6EchoReply()],
     [(A6, 128, B6, 129, 58, "OTH", "", 1, 1, 0, 0, 1.0)]),
    ("neighbour", [V6_OUT / ICMPv6ND_NS(tgt=B6), V6_BACK / ICMPv6ND_NA(tgt=B6)],
     [(A6, 135, B6, 136, 58, "OTH", "", 1, 1, 16, 16, 1.0)]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "packets", "want"), ICMP_CASES + ICMP6_CASES, ids=[c[0] for c in ICMP_CASES + ICMP6_CASES]
)
@pytest.mark.parametrize("native", _NATIVE)
def test_icmp_counterparts_and_one_way_types(tmp_path: Path, name: str, packets: list[Packet], want: list[Row],
                                             native: bool) -> None:  # fmt: skip
    assert _rows(tmp_path, _timed([p.copy() for p in packets]), native) == want


# --- the originator: likely_server_ports ---------------------------------------------------------


def _udp(src: tuple[str, int], dst: tuple[str, int], payload: bytes = b"q") -> Packet:
    return Ether(src=MAC_A, dst=MAC_B) / IP(src=src[0], dst=dst[0]) / UDP(sport=src[1], dport=dst[1]) / payload


BCAST = "255.255.255.255"
FLIP_CASES = [
    # a DNS answer seen first: its sender is the responder (history ^, then the responder's d)
    ("dns-answer-first", [_udp((S, 53), (C, 40000))], [(C, 40000, S, 53, 17, "SHR", "^d", 0, 1, 0, 1, 0.0)]),
    # DHCP: 67 is a server port, 68 is not
    ("dhcp-server-first", [_udp((S, 67), (C, 68))], [(C, 68, S, 67, 17, "SHR", "^d", 0, 1, 0, 1, 0.0)]),
    # ... but never towards the broadcast address
    ("dhcp-broadcast", [_udp((S, 67), (BCAST, 68))], [(S, 67, BCAST, 68, 17, "S0", "D", 1, 0, 1, 0, 0.0)]),
    # both ports likely (NTP 123 -> 123): no flip
    ("ntp-symmetric", [_udp((S, 123), (C, 123))], [(S, 123, C, 123, 17, "S0", "D", 1, 0, 1, 0, 0.0)]),
    # tunnel ports are server ports: VXLAN, Geneve, Teredo, GTP-U
    ("vxlan-reply-first", [_udp((S, 4789), (C, 50000))], [(C, 50000, S, 4789, 17, "SHR", "^d", 0, 1, 0, 1, 0.0)]),
    ("geneve-reply-first", [_udp((S, 6081), (C, 50000))], [(C, 50000, S, 6081, 17, "SHR", "^d", 0, 1, 0, 1, 0.0)]),
    ("teredo-reply-first", [_udp((S, 3544), (C, 50000))], [(C, 50000, S, 3544, 17, "SHR", "^d", 0, 1, 0, 1, 0.0)]),
    ("gtp-reply-first", [_udp((S, 2152), (C, 50000))], [(C, 50000, S, 2152, 17, "SHR", "^d", 0, 1, 0, 1, 0.0)]),
    # a well-known number Zeek does not list (ISAKMP 500): no flip
    ("unlisted-port", [_udp((S, 500), (C, 40000))], [(S, 500, C, 40000, 17, "S0", "D", 1, 0, 1, 0, 0.0)]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "packets", "want"), FLIP_CASES, ids=[c[0] for c in FLIP_CASES])
@pytest.mark.parametrize("native", _NATIVE)
def test_udp_originator_by_likely_server_ports(
    tmp_path: Path, name: str, packets: list[Packet], want: list[Row], native: bool
) -> None:
    assert _rows(tmp_path, _timed([p.copy() for p in packets]), native) == want


# --- counting and timing: sizes by sequence range, duration up to the close --------------------------


def _seg(to_server: bool, flags: str, seq: int, ack: int = 0, size: int = 0, window: int = 8192) -> Packet:
    src, dst = ((C, 40000), (S, 80)) if to_server else ((S, 80), (C, 40000))
    tcp = TCP(sport=src[1], dport=dst[1], flags=flags, seq=seq, ack=ack, window=window)
    return Ether(src=MAC_A, dst=MAC_B) / IP(src=src[0], dst=dst[0]) / tcp / (b"x" * size)


OPEN = [_seg(True, "S", 1000), _seg(False, "SA", 5000, 1001), _seg(True, "A", 1001, 5001)]
COUNT_CASES = [
    # the final ACK after both FINs counts as a packet but not in the duration (SetLastTime stops once
    # both sides did_close)
    ("final-ack", conversation([*HANDSHAKE, ">A"]), [(C, 40000, S, 80, 6, "SF", "ShADdFf", 5, 3, 20, 30, 6.0)]),
    # ... nor does anything later (a retransmitted FIN, another ACK)
    ("after-close", conversation([*HANDSHAKE, ">A", "<FA!", ">A"]),
     [(C, 40000, S, 80, 6, "SF", "ShADdFf", 6, 4, 20, 30, 6.0)]),
    # a retransmission does not add to the size (last_seq only moves forward)
    ("retransmission", conversation([">S", "<SA", ">A", ">PA:100", ">PA!", "<A"]),
     [(C, 40000, S, 80, 6, "S1", "ShADTa", 4, 2, 100, 0, 5.0)]),
    # overlapping segments: bytes 1001-1100 then 1051-1150 count 150 (the second advances: no T)
    ("overlap", [*OPEN, _seg(True, "PA", 1001, 5001, 100), _seg(True, "PA", 1051, 5001, 100),
                 _seg(False, "A", 5001, 1151)],
     [(C, 40000, S, 80, 6, "S1", "ShADa", 4, 2, 150, 0, 5.0)]),
    # data the peer acknowledged but the capture missed (1101-1300) is in the size (max(last, ack)),
    # and the ACK reveals it as a content gap (G: the originator's data)
    ("acked-not-seen", [*OPEN, _seg(True, "PA", 1001, 5001, 100), _seg(False, "A", 5001, 1301)],
     [(C, 40000, S, 80, 6, "S1", "ShADaG", 3, 2, 300, 0, 4.0)]),
    # a zero window is W (update_window) ... but not once the peer has closed
    ("zero-window", [*OPEN, _seg(False, "PA", 5001, 1001, 10), _seg(True, "A", 1001, 5011, window=0)],
     [(C, 40000, S, 80, 6, "S1", "ShAdW", 3, 2, 0, 10, 4.0)]),
    ("zero-window-after-fin", [*OPEN, _seg(False, "FA", 5001, 1001), _seg(True, "A", 1001, 5002, window=0)],
     [(C, 40000, S, 80, 6, "S3", "ShAf", 3, 2, 0, 0, 4.0)]),
    # a retransmission is a segment with payload that does not advance the sequence end (DidRxmit)
    ("partial-retransmission", [*OPEN, _seg(True, "PA", 1001, 5001, 100), _seg(True, "PA", 1001, 5001, 50)],
     [(C, 40000, S, 80, 6, "S1", "ShADT", 4, 1, 100, 0, 4.0)]),
    # a connection seen midstream is numbered as if its SYN had been seen (start = first seq - 1)
    ("midstream", [_seg(True, "PA", 7000, 9000, 10), _seg(False, "PA", 9000, 7010, 20)],
     [(C, 40000, S, 80, 6, "OTH", "Dd", 1, 1, 10, 20, 1.0)]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "packets", "want"), COUNT_CASES, ids=[c[0] for c in COUNT_CASES])
@pytest.mark.parametrize("native", _NATIVE)
def test_tcp_sizes_and_duration(tmp_path: Path, name: str, packets: list[Packet], want: list[Row],
                                native: bool) -> None:  # fmt: skip
    assert _rows(tmp_path, _timed([p.copy() for p in packets]), native) == want


UDP_CASES = [
    # UDP.cc: D/d for the first datagram of each direction, with or without payload
    ("empty-datagrams", [_udp((C, 40000), (S, 53), b""), _udp((S, 53), (C, 40000), b"")],
     [(C, 40000, S, 53, 17, "SF", "Dd", 1, 1, 0, 0, 1.0)]),
    ("empty-then-data", [_udp((C, 40000), (S, 53), b""), _udp((C, 40000), (S, 53), b"abc")],
     [(C, 40000, S, 53, 17, "S0", "D", 2, 0, 3, 0, 1.0)]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "packets", "want"), UDP_CASES, ids=[c[0] for c in UDP_CASES])
@pytest.mark.parametrize("native", _NATIVE)
def test_udp_history_and_sizes(tmp_path: Path, name: str, packets: list[Packet], want: list[Row],
                               native: bool) -> None:  # fmt: skip
    assert _rows(tmp_path, _timed([p.copy() for p in packets]), native) == want


# --- tuple reuse: when a packet on a known 5-tuple starts a new connection ---------------------------


def _at(packets: list[Packet], times: list[float]) -> list[Packet]:
    for pkt, t in zip(packets, times, strict=True):
        pkt.time = T0 + t
    return packets


SECOND = conversation([">S", "<SA", ">A"], client_isn=90000, server_isn=70000)
REJ_ROW = (C, 40000, S, 80, 6, "REJ", "Sr", 1, 1, 0, 0, 1.0)
REUSE_CASES = [
    # a retry after a RST (either side did_close): a new connection, even with the same ISN
    ("rej-retry", _timed(conversation([">S", "<RA", ">S!", "<RA!"])), [REJ_ROW, REJ_ROW]),
    # port reuse after a complete close
    ("reuse-after-fin", _timed(conversation(HANDSHAKE) + SECOND),
     [HANDSHAKE_ROW, (C, 40000, S, 80, 6, "S1", "ShA", 2, 1, 0, 0, 2.0)]),
    # a SYN retransmission (same ISN) on an open connection is not a reuse
    ("syn-retransmission", _timed(conversation([">S", ">S!"])), [(C, 40000, S, 80, 6, "S0", "S", 2, 0, 0, 0, 1.0)]),
    # a SYN with another ISN on an open connection is (Zeek's SYN_seq_jump)
    ("syn-new-isn", _timed(conversation([">S"]) + conversation([">S"], client_isn=2000)),
     [(C, 40000, S, 80, 6, "S0", "S", 1, 0, 0, 0, 0.0)] * 2),
    # tcp_attempt_delay (5 s): the unanswered attempt is removed; a retransmission later starts a new one
    ("attempt-expires", _at(conversation([">S", ">S!", ">S!"]), [0.0, 3.0, 8.0]),
     [(C, 40000, S, 80, 6, "S0", "S", 1, 0, 0, 0, 0.0), (C, 40000, S, 80, 6, "S0", "S", 2, 0, 0, 0, 3000.0)]),
    # a straggler after the close delay (5 s) is a connection of its own
    ("straggler", _at(conversation([*HANDSHAKE, ">A"]), [0.001 * n for n in range(7)] + [10.0]),
     [HANDSHAKE_ROW, (C, 40000, S, 80, 6, "OTH", "A", 1, 0, 0, 0, 0.0)]),
    # UDP is never reused: one connection while it is active
    ("udp", _at([_udp((C, 40000), (S, 53)), _udp((S, 53), (C, 40000)), _udp((C, 40000), (S, 53))], [0.0, 0.001, 30.0]),
     [(C, 40000, S, 53, 17, "SF", "Dd", 2, 1, 2, 1, 30000.0)]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "packets", "want"), REUSE_CASES, ids=[c[0] for c in REUSE_CASES])
@pytest.mark.parametrize("native", _NATIVE)
def test_tuple_reuse_and_attempts(tmp_path: Path, name: str, packets: list[Packet], want: list[Row],
                                  native: bool) -> None:  # fmt: skip
    assert _rows(tmp_path, [p.copy() for p in packets], native) == sorted(want)


# --- content gaps: missed_bytes and G, from Zeek's TCP_Reassembler ----------------------------------


def _final(tmp_path: Path, packets: list[Packet], native: bool) -> list[Any]:
    path = tmp_path / "case.pcap"
    wrpcap(str(path), packets)
    meter = FlowMeter(MeterConfig(), native=native)
    decoder = Decoder("p")
    batches = [meter.process_batch(decoder.decode(raw)) for raw in open_capture(path).blocks()]
    batches.extend(meter.flush_batches())
    return [r for batch in batches for r in batch.records() if r.final]


def _truncated(pkt: Packet, caplen: int) -> Packet:
    """``pkt`` as a capture with a snaplen of ``caplen`` bytes keeps it (original length kept)."""
    raw = bytes(pkt)
    cut = Ether(raw[:caplen])
    cut.wirelen = len(raw)
    return cut


GAP_CASES = [
    # the responder acknowledges 200 bytes beyond what the capture holds: one gap (G, the originator's
    # data), missed_bytes 200 (AckReceived -> TrimToSeq -> Undelivered -> Gap)
    ("ack-beyond-capture", [*OPEN, _seg(True, "PA", 1001, 5001, 100), _seg(False, "A", 5001, 1301)],
     ("S1", "ShADaG", 300, 0, 200)),
    # a hole below a later block: 1101-1200 missing, 1201-1300 captured; the ACK of 1301 reports the
    # hole only (Undelivered delivers the block after the gap before it)
    ("hole-below-block", [*OPEN, _seg(True, "PA", 1001, 5001, 100), _seg(True, "PA", 1201, 5001, 100),
                          _seg(False, "A", 5001, 1301)],
     ("S1", "ShADaG", 300, 0, 100)),
    # the ACK of a FIN is clamped to the byte before it (FIN_seq - 1): no gap for the FIN's sequence number
    ("fin-acked", [*OPEN, _seg(True, "PA", 1001, 5001, 100), _seg(True, "FA", 1101, 5001),
                   _seg(False, "A", 5001, 1102)],
     ("S2", "ShADFa", 100, 0, 0)),
    # every ACK in order: nothing missed (the originator's last ACK adds no letter: A was seen)
    ("in-order", [*OPEN, _seg(True, "PA", 1001, 5001, 100), _seg(False, "PA", 5001, 1101, 50),
                  _seg(True, "A", 1101, 5051)],
     ("S1", "ShADd", 100, 50, 0)),
    # a partial connection (no handshake seen): gaps are not reported (report_gaps_for_partial = F)
    ("partial", [_seg(True, "PA", 7000, 9000, 10), _seg(False, "A", 9000, 7100)], ("OTH", "Da", 100, 0, 0)),
    # a RST acknowledging missing data: the RESET endpoint is not established, no gap
    ("rst", [*OPEN, _seg(True, "PA", 1001, 5001, 100), _seg(False, "RA", 5001, 1301)], ("RSTR", "ShADr", 100, 0, 0)),
    # a segment cut by the snaplen is not captured data (DataSent needs the whole payload): once
    # acknowledged, its bytes are missed
    ("snaplen", [*OPEN, _truncated(_seg(True, "PA", 1001, 5001, 100), 74), _seg(False, "A", 5001, 1101)],
     ("S1", "ShADaG", 100, 0, 100)),
    # gaps are scaled like T and W: G on the 1st and 10th
    ("ten-gaps", [*OPEN, *(p for n in range(10) for p in (_seg(True, "PA", 1001 + 200 * n, 5001, 100),
                                                          _seg(False, "A", 5001, 1201 + 200 * n)))],
     ("S1", "ShADaGG", 2000, 0, 1000)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "packets", "want"), GAP_CASES, ids=[c[0] for c in GAP_CASES])
@pytest.mark.parametrize("native", _NATIVE)
def test_content_gaps(tmp_path: Path, name: str, packets: list[Packet], want: Row, native: bool) -> None:
    (r,) = _final(tmp_path, _timed([p.copy() for p in packets]), native)
    assert (r.conn_state, r.history, r.orig_bytes, r.resp_bytes, r.missed_bytes) == want


# --- DNS and NTP: the originator by content --------------------------------------------------------

DNS_RESPONSE = bytes.fromhex("1234818000010001000000000377777706676f6f676c6503636f6d0000010001")
DNS_QUERY = bytes.fromhex("1234010000010000000000000377777706676f6f676c6503636f6d0000010001")
NTP_SERVER_MSG, NTP_CLIENT_MSG = b"\x24" + bytes(47), b"\x23" + bytes(47)  # version 4, mode 4 / mode 3
MDNS = "224.0.0.251"
CONTENT_FLIP_CASES = [
    # 53 -> 53 (both likely server ports: no port flip): the first message is a response from the
    # originator, so the DNS analyzer flips the roles
    ("dns-response-first", [_udp((S, 53), (C, 53), DNS_RESPONSE)], (C, 53, S, 53, 17, "SHR", "^d", 0, 1, 0, 32, 0.0)),
    ("dns-query-first", [_udp((S, 53), (C, 53), DNS_QUERY)], (S, 53, C, 53, 17, "S0", "D", 1, 0, 32, 0, 0.0)),
    # ... but not towards a multicast responder (mDNS announcements)
    ("mdns", [_udp((S, 5353), (MDNS, 5353), DNS_RESPONSE)], (S, 5353, MDNS, 5353, 17, "S0", "D", 1, 0, 32, 0, 0.0)),
    # a response from port 53 to a client port: the port rule already made the client the originator
    ("dns-port-flip", [_udp((S, 53), (C, 40000), DNS_RESPONSE)],
     (C, 40000, S, 53, 17, "SHR", "^d", 0, 1, 0, 32, 0.0)),
    # NTP 123 -> 123: a server-mode message from the originator flips
    ("ntp-server-first", [_udp((S, 123), (C, 123), NTP_SERVER_MSG)],
     (C, 123, S, 123, 17, "SHR", "^d", 0, 1, 0, 48, 0.0)),
    ("ntp-client-first", [_udp((C, 123), (S, 123), NTP_CLIENT_MSG)], (C, 123, S, 123, 17, "S0", "D", 1, 0, 48, 0, 0.0)),
    # too short for an NTP message: no flip
    ("ntp-short", [_udp((S, 123), (C, 123), b"\x24" + bytes(20))], (S, 123, C, 123, 17, "S0", "D", 1, 0, 21, 0, 0.0)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "packets", "want"), CONTENT_FLIP_CASES, ids=[c[0] for c in CONTENT_FLIP_CASES])
@pytest.mark.parametrize("native", _NATIVE)
def test_dns_and_ntp_originator_by_content(tmp_path: Path, name: str, packets: list[Packet], want: Row,
                                           native: bool) -> None:  # fmt: skip
    assert _rows(tmp_path, _timed([p.copy() for p in packets]), native) == [want]


# --- tunnels: the outer flow's service, the inner flow's tunnel_parents -------------------------------


@pytest.mark.parametrize("native", _NATIVE)
def test_tunnel_service_and_parents(tmp_path: Path, native: bool) -> None:
    """Each direction of the VXLAN-carried conversation arrives in its own outer UDP flow (its own
    source port): both outer flows have service vxlan, and the inner flow names both as its
    tunnel_parents (its first packet's, then the other one's at tunnel_changed)."""
    packets = []
    for pkt, step in zip(conversation(HANDSHAKE), HANDSHAKE, strict=True):
        wrapped = _outer(step[0] == ">", "vxlan") / pkt[IP]
        wrapped.time = pkt.time
        packets.append(wrapped)
    records = _final(tmp_path, packets, native)
    outers = {r.orig_p: r for r in records if r.proto == 17}
    (inner,) = [r for r in records if r.proto == 6]
    assert {r.service for r in outers.values()} == {"vxlan"} and set(outers) == {49152, 51000}
    assert inner.tunnel_parents == f"{outers[49152].flow_id:016x},{outers[51000].flow_id:016x}"
    assert inner.service == "" and all(r.tunnel_parents == "" for r in outers.values())


@pytest.mark.parametrize("native", _NATIVE)
def test_ip_tunnel_has_no_outer_flow(tmp_path: Path, native: bool) -> None:
    """GRE has no outer connection in conn.log (Zeek's IP tunnels live in tunnel.log only): no parent."""
    packets = []
    for pkt, step in zip(conversation(HANDSHAKE), HANDSHAKE, strict=True):
        wrapped = _outer(step[0] == ">", "gre") / pkt[IP]
        wrapped.time = pkt.time
        packets.append(wrapped)
    (inner,) = _final(tmp_path, packets, native)
    assert inner.tunnel_parents == "" and inner.service == ""
