"""Per-packet decoders, one small function per layer: the decoder's slow path.

``decode_frame(frame, linktype)`` walks one frame down to its (innermost) L4 header and returns a
``Decoded`` row or the ``PacketStatus`` that stopped it. It handles what the numpy fast path in
``hopscope.probes.decode`` declines: 802.1Q/802.1ad stacks, IPv6 extension headers, fragments and the
tunnels VXLAN (UDP 4789), Geneve (UDP 6081), GRE (with checksum/key/sequence fields), ERSPAN type I,
II and III (GRE 0x88BE / 0x22EB), IPv4/IPv6-in-IP. For a tunnel the row describes the inner packet and
``tunnel`` describes the encapsulation(s), outermost first, joined by " / ".

Header layouts are data (``struct.Struct`` tables next to each decoder); decoders are pure functions of
``(frame, offset, context)``.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from hopscope.probes.packets import ICMP, ICMP6, TCP, UDP, V4_MAPPED, PacketStatus

VXLAN_PORT: Final = 4789
GENEVE_PORT: Final = 6081
MAX_DEPTH: Final = 4  # encapsulations followed before giving up (TOO_DEEP)

ETH_IPV4, ETH_IPV6, ETH_TEB = 0x0800, 0x86DD, 0x6558
VLAN_TPIDS: Final = (0x8100, 0x88A8, 0x9100, 0x9200)
ERSPAN_II, ERSPAN_III = 0x88BE, 0x22EB
#: Ethertypes the fast path hands to this module (after at most one 802.1Q tag).
SLOW_ETHERTYPES: Final = VLAN_TPIDS

_IPV4 = struct.Struct("!BBHHHBBH4s4s")  # vihl tos total id frag ttl proto csum src dst
_IPV6 = struct.Struct("!IHBB16s16s")  # vtcfl plen next hlim src dst
_TCP = struct.Struct("!HHIIBBH")  # sport dport seq ack doff flags window
_UDP = struct.Struct("!HHH")  # sport dport length
_GRE = struct.Struct("!HH")  # flags/version protocol


@dataclass(slots=True)
class Decoded:
    """One decoded packet (the innermost IP packet of a tunnel), offsets relative to the frame start."""

    ip_version: int = 0
    proto: int = 0
    src_hi: int = 0
    src_lo: int = 0
    dst_hi: int = 0
    dst_lo: int = 0
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    seq: int = 0
    ack: int = 0
    window: int = 0
    ip_id: int = 0
    ttl: int = 0
    ip_len: int = 0
    payload_off: int = 0
    payload_len: int = 0
    payload_caplen: int = 0
    vlan: int = 0
    tunnel: str = ""
    tunnels: list[str] = field(default_factory=list)
    depth: int = 0


class Stop(Exception):
    """Raised inside the layer decoders to end a packet with a ``PacketStatus``."""

    def __init__(self, status: PacketStatus) -> None:
        super().__init__(status.name)
        self.status = status


def decode_frame(frame: memoryview | bytes, linktype: int) -> Decoded | PacketStatus:
    """Decode one frame of the given link type; never raises on bad bytes."""
    link = LINK_DECODERS.get(linktype)
    if link is None:
        return PacketStatus.UNKNOWN_LINKTYPE
    out = Decoded()
    try:
        ethertype, off = link(frame, out)
        _network(frame, off, ethertype, out)
    except Stop as stop:
        return stop.status
    except (struct.error, IndexError):
        return PacketStatus.TRUNCATED_L4 if out.ip_version else PacketStatus.TRUNCATED_IP
    out.tunnel = " / ".join(out.tunnels)
    return out


# --- link layers ------------------------------------------------------------------------------


def _need(frame: memoryview | bytes, end: int, status: PacketStatus) -> None:
    if end > len(frame):
        raise Stop(status)


def _be16(frame: memoryview | bytes, off: int) -> int:
    return int((frame[off] << 8) | frame[off + 1])


def ethernet(frame: memoryview | bytes, out: Decoded, off: int = 0) -> tuple[int, int]:
    """Ethernet II with any stack of 802.1Q/802.1ad tags; the outermost tag's id goes to ``vlan``."""
    _need(frame, off + 14, PacketStatus.TRUNCATED_LINK)
    ethertype, off = _be16(frame, off + 12), off + 14
    first = out.depth == 0
    while ethertype in VLAN_TPIDS:
        _need(frame, off + 4, PacketStatus.TRUNCATED_LINK)
        if first and out.vlan == 0:
            out.vlan = _be16(frame, off) & 0xFFF
        ethertype, off = _be16(frame, off + 2), off + 4
    return ethertype, off


def linux_sll(frame: memoryview | bytes, out: Decoded) -> tuple[int, int]:
    _need(frame, 16, PacketStatus.TRUNCATED_LINK)
    return _be16(frame, 14), 16


def linux_sll2(frame: memoryview | bytes, out: Decoded) -> tuple[int, int]:
    _need(frame, 20, PacketStatus.TRUNCATED_LINK)
    return _be16(frame, 0), 20


def raw_ip(frame: memoryview | bytes, out: Decoded) -> tuple[int, int]:
    _need(frame, 1, PacketStatus.TRUNCATED_LINK)
    version = frame[0] >> 4
    return {4: ETH_IPV4, 6: ETH_IPV6}.get(version, 0), 0


def bsd_null(frame: memoryview | bytes, out: Decoded) -> tuple[int, int]:
    _need(frame, 4, PacketStatus.TRUNCATED_LINK)
    fam = struct.unpack_from("<I", frame)[0]
    if fam > 0xFFFF:
        fam = struct.unpack_from(">I", frame)[0]
    return (ETH_IPV4 if fam == 2 else ETH_IPV6 if fam in (10, 24, 28, 30) else 0), 4


LINK_DECODERS: Final[dict[int, Callable[[memoryview | bytes, Decoded], tuple[int, int]]]] = {
    1: ethernet,
    113: linux_sll,
    276: linux_sll2,
    101: raw_ip,
    12: raw_ip,
    228: raw_ip,
    229: raw_ip,
    0: bsd_null,
    108: bsd_null,
}


# --- network layer ----------------------------------------------------------------------------


def _network(frame: memoryview | bytes, off: int, ethertype: int, out: Decoded) -> None:
    if ethertype == ETH_IPV4:
        ipv4(frame, off, out)
    elif ethertype == ETH_IPV6:
        ipv6(frame, off, out)
    else:
        raise Stop(PacketStatus.NOT_IP)


def _addr_text(version: int, hi: int, lo: int) -> str:
    if version == 4:
        return str(ipaddress.IPv4Address(lo & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address((hi << 64) | lo))


def _outer(out: Decoded) -> str:
    return f"{_addr_text(out.ip_version, out.src_hi, out.src_lo)}>{_addr_text(out.ip_version, out.dst_hi, out.dst_lo)}"


def ipv4(frame: memoryview | bytes, off: int, out: Decoded) -> None:
    _need(frame, off + 20, PacketStatus.TRUNCATED_IP)
    vihl, _tos, total, ip_id, frag, ttl, proto, _csum, src, dst = _IPV4.unpack_from(frame, off)
    ihl = (vihl & 15) * 4
    if total == 0:
        total = len(frame) - off
    if vihl >> 4 != 4 or ihl < 20 or total < ihl:
        raise Stop(PacketStatus.BAD_IP_HEADER)
    _need(frame, off + ihl, PacketStatus.TRUNCATED_IP)
    out.ip_version, out.proto, out.ttl, out.ip_id, out.ip_len = 4, proto, ttl, ip_id, total
    out.src_hi, out.src_lo = 0, V4_MAPPED | int.from_bytes(src, "big")
    out.dst_hi, out.dst_lo = 0, V4_MAPPED | int.from_bytes(dst, "big")
    if frag & 0x1FFF:
        raise Stop(PacketStatus.FRAGMENT)
    _transport(frame, off + ihl, off + total, proto, out)


_IPV6_EXT: Final = (0, 43, 60, 135, 139, 140, 253, 254)


def ipv6(frame: memoryview | bytes, off: int, out: Decoded) -> None:
    _need(frame, off + 40, PacketStatus.TRUNCATED_IP)
    vtcfl, plen, nxt, hlim, src, dst = _IPV6.unpack_from(frame, off)
    if vtcfl >> 28 != 6:
        raise Stop(PacketStatus.BAD_IP_HEADER)
    if plen == 0:
        plen = len(frame) - off - 40
    out.ip_version, out.ttl, out.ip_id, out.ip_len = 6, hlim, 0, plen + 40
    s, d = int.from_bytes(src, "big"), int.from_bytes(dst, "big")
    out.src_hi, out.src_lo = s >> 64, s & 0xFFFF_FFFF_FFFF_FFFF
    out.dst_hi, out.dst_lo = d >> 64, d & 0xFFFF_FFFF_FFFF_FFFF
    end, pos = off + 40 + plen, off + 40
    for _ in range(16):
        out.proto = nxt
        if nxt in _IPV6_EXT:
            _need(frame, pos + 2, PacketStatus.TRUNCATED_IP)
            nxt, pos = frame[pos], pos + (frame[pos + 1] + 1) * 8
        elif nxt == 44:  # fragment header
            _need(frame, pos + 8, PacketStatus.TRUNCATED_IP)
            if _be16(frame, pos + 2) & 0xFFF8:
                out.proto = frame[pos]
                raise Stop(PacketStatus.FRAGMENT)
            nxt, pos = frame[pos], pos + 8
        elif nxt == 51:  # AH
            _need(frame, pos + 2, PacketStatus.TRUNCATED_IP)
            nxt, pos = frame[pos], pos + (frame[pos + 1] + 2) * 4
        else:
            break
    if pos > end:
        raise Stop(PacketStatus.BAD_IP_HEADER)
    _transport(frame, pos, end, nxt, out)


# --- transport layer and tunnels ----------------------------------------------------------------


def _transport(frame: memoryview | bytes, off: int, end: int, proto: int, out: Decoded) -> None:
    out.proto = proto
    opener = TUNNEL_PROTOS.get(proto)
    if opener is not None:
        _enter(out)
        opener(frame, off, end, out)
        return
    if proto == TCP:
        tcp(frame, off, end, out)
    elif proto == UDP:
        udp(frame, off, end, out)
    elif proto in (ICMP, ICMP6):
        icmp(frame, off, end, out)
    else:
        _payload(frame, off, end, out)


def _payload(frame: memoryview | bytes, pay: int, end: int, out: Decoded) -> None:
    out.payload_off = min(pay, len(frame))
    out.payload_len = max(end - pay, 0)
    out.payload_caplen = max(min(end, len(frame)) - pay, 0)


def tcp(frame: memoryview | bytes, off: int, end: int, out: Decoded) -> None:
    if off + 20 > end:
        raise Stop(PacketStatus.BAD_L4_HEADER)
    _need(frame, off + 20, PacketStatus.TRUNCATED_L4)
    out.sport, out.dport, out.seq, out.ack, doff, out.tcp_flags, out.window = _TCP.unpack_from(frame, off)
    hlen = (doff >> 4) * 4
    if hlen < 20 or off + hlen > end:
        raise Stop(PacketStatus.BAD_L4_HEADER)
    _payload(frame, off + hlen, end, out)


def udp(frame: memoryview | bytes, off: int, end: int, out: Decoded) -> None:
    if off + 8 > end:
        raise Stop(PacketStatus.BAD_L4_HEADER)
    _need(frame, off + 8, PacketStatus.TRUNCATED_L4)
    sport, dport, _length = _UDP.unpack_from(frame, off)
    opener = UDP_TUNNELS.get(dport)
    if opener is not None and off + 16 <= len(frame):
        _enter(out)
        opener(frame, off + 8, end, out)
        return
    out.sport, out.dport = sport, dport
    _payload(frame, off + 8, end, out)


def icmp(frame: memoryview | bytes, off: int, end: int, out: Decoded) -> None:
    if off + 8 > end:
        raise Stop(PacketStatus.BAD_L4_HEADER)
    _need(frame, off + 8, PacketStatus.TRUNCATED_L4)
    out.sport, out.dport = frame[off], frame[off + 1]
    _payload(frame, off + 8, end, out)


def _enter(out: Decoded) -> None:
    out.depth += 1
    if out.depth > MAX_DEPTH:
        raise Stop(PacketStatus.TOO_DEEP)


def _inner_ethernet(frame: memoryview | bytes, off: int, out: Decoded) -> None:
    ethertype, l3 = ethernet(frame, out, off)
    _network(frame, l3, ethertype, out)


def vxlan(frame: memoryview | bytes, off: int, end: int, out: Decoded) -> None:
    _need(frame, off + 8, PacketStatus.BAD_TUNNEL)
    if not frame[off] & 0x08:
        raise Stop(PacketStatus.BAD_TUNNEL)
    vni = int.from_bytes(frame[off + 4 : off + 7], "big")
    out.tunnels.append(f"vxlan vni={vni} {_outer(out)}")
    _inner_ethernet(frame, off + 8, out)


def geneve(frame: memoryview | bytes, off: int, end: int, out: Decoded) -> None:
    _need(frame, off + 8, PacketStatus.BAD_TUNNEL)
    if frame[off] >> 6 != 0:
        raise Stop(PacketStatus.BAD_TUNNEL)
    opt_len = (frame[off] & 0x3F) * 4
    proto = _be16(frame, off + 2)
    vni = int.from_bytes(frame[off + 4 : off + 7], "big")
    out.tunnels.append(f"geneve vni={vni} {_outer(out)}")
    inner = off + 8 + opt_len
    if proto == ETH_TEB:
        _inner_ethernet(frame, inner, out)
    else:
        _network(frame, inner, proto, out)


def gre(frame: memoryview | bytes, off: int, end: int, out: Decoded) -> None:
    _need(frame, off + 4, PacketStatus.BAD_TUNNEL)
    flags, proto = _GRE.unpack_from(frame, off)
    if flags & 0x7:  # version 1 is PPTP's enhanced GRE, not followed
        raise Stop(PacketStatus.BAD_TUNNEL)
    pos, key, has_seq = off + 4, None, bool(flags & 0x1000)
    if flags & 0x8000:
        pos += 4  # checksum + reserved
    if flags & 0x2000:
        _need(frame, pos + 4, PacketStatus.BAD_TUNNEL)
        key = int.from_bytes(frame[pos : pos + 4], "big")
        pos += 4
    if has_seq:
        pos += 4
    outer = _outer(out)
    if proto == ERSPAN_II:
        erspan2(frame, pos, outer, has_seq, out)
    elif proto == ERSPAN_III:
        erspan3(frame, pos, outer, out)
    elif proto == ETH_TEB:
        out.tunnels.append(f"gre{'' if key is None else f' key={key}'} {outer}")
        _inner_ethernet(frame, pos, out)
    else:
        out.tunnels.append(f"gre{'' if key is None else f' key={key}'} {outer}")
        _network(frame, pos, proto, out)


def erspan2(frame: memoryview | bytes, off: int, outer: str, has_seq: bool, out: Decoded) -> None:
    if not has_seq:  # ERSPAN type I: no ERSPAN header, the mirrored frame follows GRE
        out.tunnels.append(f"erspan1 {outer}")
        _inner_ethernet(frame, off, out)
        return
    _need(frame, off + 8, PacketStatus.BAD_TUNNEL)
    session = _be16(frame, off + 2) & 0x3FF
    out.tunnels.append(f"erspan2 session={session} {outer}")
    _inner_ethernet(frame, off + 8, out)


def erspan3(frame: memoryview | bytes, off: int, outer: str, out: Decoded) -> None:
    _need(frame, off + 12, PacketStatus.BAD_TUNNEL)
    session = _be16(frame, off + 2) & 0x3FF
    sub = 8 if frame[off + 11] & 0x01 else 0  # O flag: platform-specific subheader follows
    out.tunnels.append(f"erspan3 session={session} {outer}")
    _inner_ethernet(frame, off + 12 + sub, out)


def ipip(frame: memoryview | bytes, off: int, end: int, out: Decoded) -> None:
    out.tunnels.append(f"ipip {_outer(out)}")
    _reset_inner(out)
    ipv4(frame, off, out)


def ip6ip(frame: memoryview | bytes, off: int, end: int, out: Decoded) -> None:
    out.tunnels.append(f"ip6ip {_outer(out)}")
    _reset_inner(out)
    ipv6(frame, off, out)


def _reset_inner(out: Decoded) -> None:
    out.sport = out.dport = out.tcp_flags = out.seq = out.ack = out.window = 0


TUNNEL_PROTOS: Final[dict[int, Callable[[memoryview | bytes, int, int, Decoded], None]]] = {
    4: ipip,
    41: ip6ip,
    47: gre,
}
UDP_TUNNELS: Final[dict[int, Callable[[memoryview | bytes, int, int, Decoded], None]]] = {
    VXLAN_PORT: vxlan,
    GENEVE_PORT: geneve,
}
