"""Checks of lab captures against the lab's ground truth, reading pcaps with scapy only.

Deliberately independent of hopscope's own decoder: these checks are what that decoder is tested
against. Used by the live lab tests (root) and by the tests of the committed samples (no root).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import scapy.layers.vxlan  # noqa: F401 - binds UDP 4789 to VXLAN, so overlay frames decode to the inner IP
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import RawPcapReader

HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ")


@dataclass(frozen=True, slots=True)
class Pkt:
    """One IPv4 packet as captured: time (ns), addresses, and TCP/UDP fields (0 when absent)."""

    ts_ns: int
    src: str
    dst: str
    proto: int
    ip_id: int
    ip_len: int
    sport: int
    dport: int
    seq: int
    ack: int
    flags: str
    payload: bytes

    @property
    def segment_key(self) -> tuple[Any, ...]:
        """What NAT and forwarding leave unchanged: IP id, length, protocol, TCP seq/ack/flags."""
        return (self.ip_id, self.ip_len, self.proto, self.seq, self.ack, self.flags)


def read(pcap: Path) -> list[Pkt]:
    """Every IPv4 packet of a pcap (the innermost one of a VXLAN frame), with ns timestamps."""
    out = []
    reader = RawPcapReader(str(pcap))
    try:
        nano = bool(getattr(reader, "nano", False))
        for data, meta in reader:
            ts_ns = meta.sec * 1_000_000_000 + (meta.usec if nano else meta.usec * 1000)
            pkt = Ether(data)
            ip = _innermost_ip(pkt)
            if ip is None:
                continue
            l4 = ip.payload
            sport = dport = seq = ack = 0
            flags = ""
            payload = b""
            if isinstance(l4, TCP):
                sport, dport, seq, ack, flags = l4.sport, l4.dport, l4.seq, l4.ack, str(l4.flags)
                payload = bytes(l4.payload)
            elif isinstance(l4, UDP):
                sport, dport, payload = l4.sport, l4.dport, bytes(l4.payload)
            out.append(Pkt(ts_ns, ip.src, ip.dst, ip.proto, ip.id, ip.len, sport, dport, seq, ack, flags, payload))
    finally:
        reader.close()
    return out


def _innermost_ip(pkt: Any) -> Any:
    layer, found = pkt, None
    while layer is not None and layer.name != "NoPayload":
        if isinstance(layer, IP):
            found = layer
        layer = layer.payload if layer.payload is not None else None
    return found


def load_manifest(run_dir: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((run_dir / "manifest.json").read_text())
    return manifest


def pcap_of(run_dir: Path, manifest: dict[str, Any], capture: str) -> list[Pkt]:
    entry = next(c for c in manifest["capture_points"] if c["name"] == capture)
    return read(run_dir / entry["file"])


# ---------------------------------------------------------------------------------------- NAT


def dnat_pairs(pre: list[Pkt], post: list[Pkt], cluster_ip: str) -> list[tuple[Pkt, Pkt | None]]:
    """Each SYN to ``cluster_ip`` before NAT, with the SYN of the same TCP sequence number after NAT."""
    after = {p.seq: p for p in post if p.proto == 6 and p.flags == "S"}
    return [(p, after.get(p.seq)) for p in pre if p.proto == 6 and p.flags == "S" and p.dst == cluster_ip]


# ---------------------------------------------------------------------------------------- timing


def first_seen(pkts: Iterable[Pkt]) -> dict[tuple[Any, ...], Pkt]:
    """Each segment key's first packet (a retransmission has a new IP id, so a new key)."""
    seen: dict[tuple[Any, ...], Pkt] = {}
    for p in pkts:
        seen.setdefault(p.segment_key, p)
    return seen


def hop_delays_ms(upstream: list[Pkt], downstream: list[Pkt], to_port: int = 80) -> dict[str, list[float]]:
    """Delays (ms) of the same TCP segments between two capture points, per direction.

    ``to_server``: segments to ``to_port`` (client -> server), ``to_client``: segments from it.
    Only segments seen at both points count.
    """
    up = first_seen(p for p in upstream if p.proto == 6)
    down = first_seen(p for p in downstream if p.proto == 6)
    out: dict[str, list[float]] = {"to_server": [], "to_client": []}
    for key, a in up.items():
        b = down.get(key)
        if b is None:
            continue
        direction = "to_server" if a.dport == to_port else "to_client" if a.sport == to_port else None
        if direction:
            out[direction].append((b.ts_ns - a.ts_ns) / 1e6)
    return out


def median(values: list[float]) -> float:
    return float(statistics.median(values))


# ---------------------------------------------------------------------------------------- HTTP


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An HTTP/1.x request head seen in one TCP segment."""

    ts_ns: int
    method: str
    path: str
    headers: dict[str, str]


def http_requests(pkts: Iterable[Pkt], port: int) -> list[HttpRequest]:
    """Requests to ``port`` whose head starts a segment (the lab's requests fit in one segment)."""
    out = []
    for p in pkts:
        if p.proto != 6 or p.dport != port or not p.payload.startswith(HTTP_METHODS):
            continue
        head = p.payload.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        line, *header_lines = head.split("\r\n")
        method, path, _version = line.split(" ", 2)
        headers = {}
        for h in header_lines:
            k, _, v = h.partition(":")
            headers[k.strip().lower()] = v.strip()
        out.append(HttpRequest(p.ts_ns, method, path, headers))
    return out


# ---------------------------------------------------------------------------------------- loss


def missing_downstream(upstream: list[Pkt], downstream: list[Pkt], toward: str) -> list[Pkt]:
    """Packets to ``toward`` (dst after NAT, as seen upstream) that never reached the downstream point.

    Keys are counted, not just looked up: a retransmitted SYN-ACK (IP id 0 under DF) repeats its key
    exactly, so one copy dropped and one delivered is one packet missing."""
    down = Counter(p.segment_key for p in downstream)
    missing = []
    for p in upstream:
        if p.dst != toward:
            continue
        if down[p.segment_key]:
            down[p.segment_key] -= 1
        else:
            missing.append(p)
    return missing
