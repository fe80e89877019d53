"""Crafting TCP conversations as real packets (scapy) and feeding them to an L7Tracker.

Every packet is built with scapy, serialised to bytes and parsed back, so the tracker sees exactly the
header fields and payload bytes a capture of that packet would give.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Packet, Raw

from hopscope.probes.l7 import CapturePoint, L7Settings, L7Tracker
from hopscope.records import RequestRecord

T0_NS = 1_700_000_000_000_000_000
MS = 1_000_000
CLIENT = ("10.1.0.2", 40001)
SERVER = ("10.2.0.3", 80)
POINT = CapturePoint(point="pod-a", host="node-1", iface="veth-a", hop_kind="pod")
MOD = 1 << 32


@dataclass
class TcpConversation:
    """A TCP conversation written step by step; ``packets`` holds (ts_ns, scapy packet) in send order."""

    isn_client: int = 1_000
    isn_server: int = 500_000
    client: tuple[str, int] = CLIENT
    server: tuple[str, int] = SERVER
    packets: list[tuple[int, Packet]] = field(default_factory=list)
    now_ns: int = T0_NS
    seq: dict[bool, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.seq = {True: (self.isn_client + 1) % MOD, False: (self.isn_server + 1) % MOD}

    def _pkt(self, from_client: bool, flags: str, seq: int, payload: bytes = b"") -> Packet:
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        ack = self.seq[not from_client]
        pkt = IP(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], flags=flags, seq=seq, ack=ack)
        if payload:
            pkt = pkt / Raw(payload)
        return pkt

    def tick(self, ms: float = 1.0) -> int:
        self.now_ns += int(ms * MS)
        return self.now_ns

    def handshake(self) -> TcpConversation:
        self.packets.append((self.tick(), self._pkt(True, "S", self.isn_client)))
        self.packets.append((self.tick(), self._pkt(False, "SA", self.isn_server)))
        self.packets.append((self.tick(), self._pkt(True, "A", self.seq[True])))
        return self

    def send(self, from_client: bool, data: bytes, cuts: Iterable[int] = ()) -> list[int]:
        """Send ``data`` as segments cut at the given offsets; return the packets' indices."""
        bounds = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
        indices = []
        for lo, hi in itertools.pairwise(bounds):
            seq = self.seq[from_client]
            self.packets.append((self.tick(), self._pkt(from_client, "PA", seq, data[lo:hi])))
            indices.append(len(self.packets) - 1)
            self.seq[from_client] = (seq + hi - lo) % MOD
        return indices

    def request(self, data: bytes, cuts: Iterable[int] = ()) -> list[int]:
        return self.send(True, data, cuts)

    def response(self, data: bytes, cuts: Iterable[int] = ()) -> list[int]:
        return self.send(False, data, cuts)

    def retransmit(self, index: int, ms: float = 200.0) -> None:
        """Send packet ``index`` again, ``ms`` later."""
        _, pkt = self.packets[index]
        self.packets.append((self.tick(ms), pkt.copy()))

    def fin(self, from_client: bool) -> None:
        self.packets.append((self.tick(), self._pkt(from_client, "FA", self.seq[from_client])))
        self.seq[from_client] = (self.seq[from_client] + 1) % MOD

    def rst(self, from_client: bool) -> None:
        self.packets.append((self.tick(), self._pkt(from_client, "R", self.seq[from_client])))

    def swap(self, i: int, j: int) -> None:
        """Deliver packets ``i`` and ``j`` in each other's place (keeping capture times ascending)."""
        (ti, pi), (tj, pj) = self.packets[i], self.packets[j]
        self.packets[i], self.packets[j] = (ti, pj), (tj, pi)

    def drop(self, index: int) -> None:
        """The capture never saw packet ``index``."""
        del self.packets[index]


def tracker(settings: L7Settings | None = None) -> L7Tracker:
    return L7Tracker(POINT, settings or L7Settings())


def feed(trk: L7Tracker, packets: Iterable[tuple[int, Packet]], flow_id: int = 7) -> None:
    """Feed packets to ``trk`` as a decoder and meter would: fields parsed back from the bytes."""
    orig: tuple[str, int] | None = None
    for ts_ns, pkt in packets:
        ip = IP(bytes(pkt))
        if TCP in ip:
            l4 = ip[TCP]
        elif UDP in ip:
            l4 = ip[UDP]
        else:
            continue
        src, dst = (ip.src, int(l4.sport)), (ip.dst, int(l4.dport))
        if orig is None:
            orig = src
        payload = bytes(l4.payload)
        if isinstance(l4, TCP):
            flags = int(l4.flags)
            trk.tcp_segment(flow_id, ts_ns, src == orig, int(l4.seq), int(l4.ack), flags, payload, src, dst)
        else:
            trk.udp_datagram(flow_id, ts_ns, payload, src, dst)


def run(conv: TcpConversation, settings: L7Settings | None = None) -> list[RequestRecord]:
    """Feed the conversation, flush, and return the records in request order."""
    trk = tracker(settings)
    feed(trk, conv.packets)
    trk.flush()
    return sorted(trk.take_records(), key=lambda r: (r.req_first_ns, r.req_tcp_seq))


def get(path: str, host: str = "svc", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def ok(body: bytes = b"hello", status: str = "200 OK", extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
    return head + body
