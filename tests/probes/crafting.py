"""Helpers for the probe tests: craft TCP conversations with scapy and meter them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import wrpcap

from hopscope.probes.analyze import analyze_capture
from hopscope.records import FlowRecord

MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"
CLIENT, SERVER = ("10.0.0.1", 40000), ("10.0.0.2", 80)
T0 = 1_700_000_000.0


def with_ip_checksum(ip: bytes) -> bytes:
    """An IPv4 header (and what follows it) with its header checksum filled in (``hopscope flows``
    validates it, as Zeek does)."""
    ihl = (ip[0] & 15) * 4
    header = ip[:10] + b"\x00\x00" + ip[12:ihl]
    total = sum(int.from_bytes(header[k : k + 2], "big") for k in range(0, ihl, 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return header[:10] + (~total & 0xFFFF).to_bytes(2, "big") + ip[12:]


def conversation(steps: Sequence[str], client_isn: int = 1000, server_isn: int = 5000) -> list[Packet]:
    """Packets for a list of steps; each step is ``"<dir><flags>[:<payload bytes>]"``.

    ``dir`` is ``>`` (client to server) or ``<``; flags are scapy letters (S, SA, A, PA, F, FA, R, RA).
    Sequence and ack numbers follow the bytes sent; ``!`` after the flags resends the previous
    segment of that direction (a retransmission).
    """
    seq = {">": client_isn, "<": server_isn}
    last: dict[str, Packet] = {}
    packets: list[Packet] = []
    for n, step in enumerate(steps):
        direction, rest = step[0], step[1:]
        spec, _, size = rest.partition(":")
        if spec.endswith("!"):
            pkt = last[direction].copy()
        else:
            payload = b"x" * int(size or 0)
            other = "<" if direction == ">" else ">"
            src, dst = (CLIENT, SERVER) if direction == ">" else (SERVER, CLIENT)
            ack = seq[other] if "A" in spec else 0
            tcp = TCP(sport=src[1], dport=dst[1], flags=spec, seq=seq[direction], ack=ack)
            pkt = Ether(src=MAC_A, dst=MAC_B) / IP(src=src[0], dst=dst[0]) / tcp / payload
            seq[direction] += len(payload) + ("S" in spec) + ("F" in spec)
            last[direction] = pkt
        pkt.time = T0 + n * 0.001
        packets.append(pkt)
    return packets


def udp_packets(count_orig: int, count_resp: int) -> list[Packet]:
    out: list[Packet] = []
    for n in range(count_orig):
        query = Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="10.0.0.53") / UDP(sport=40053, dport=53) / b"q"
        out.append(query)
        out[-1].time = T0 + n * 0.001
    for n in range(count_resp):
        out.append(
            Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.53", dst="10.0.0.1") / UDP(sport=53, dport=40053) / b"ans"
        )
        out[-1].time = T0 + 0.5 + n * 0.001
    return out


def meter(tmp_path: Path, packets: Sequence[Packet], name: str = "crafted.pcap") -> list[FlowRecord]:
    """Write ``packets`` to a pcap and return its final flow records."""
    path = tmp_path / name
    wrpcap(str(path), list(packets))
    result = analyze_capture(path)
    return [r for r in result.flows.records() if r.final]  # type: ignore[misc]
