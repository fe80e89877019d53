"""Per-packet decoders, one small function per layer: the decoder's slow path.

``decode_frame(frame, linktype)`` walks one frame down to its (innermost) L4 header and returns a
``FrameResult``: the packets the frame carries and, when decoding stopped early, the ``PacketStatus``
that stopped it. It handles what the fast path in ``hopscope.probes.decode`` declines:

- link types PPP (9), PPP in HDLC framing (50), IEEE 802.11 (105) and radiotap (127);
- Ethernet encapsulations: 802.1Q/802.1ad stacks, MPLS (0x8847), PPPoE sessions (0x8864), PBB 802.1ah
  (0x88E7), VNTag (0x8926), Cisco FabricPath (0x8903);
- IPv6 extension headers; IPv4 and IPv6 fragments, reassembled when the caller passes a
  ``fragments.Reassembler`` (the datagram is decoded once, at the fragment that completes it);
- tunnels: VXLAN (UDP 4789), Geneve (UDP 6081), Teredo (UDP 3544 or detected by content), AYIYA (UDP
  5072 or detected), GTP-U (UDP 2152, 2123), GRE (IP 47 or UDP 4754, with checksum/key/sequence fields,
  and PPTP's enhanced GRE), ERSPAN type I, II and III, IPv4/IPv6-in-IP.

Which encapsulations are followed, and how, is Zeek's (the packet analyzers under
src/packet_analysis/protocol/ and their registrations in scripts/base/packet-protocols/); each decoder
names the Zeek function it follows. As in Zeek, a UDP tunnel's outer datagram is a packet of its own
(``UDPAnalyzer::DeliverPacket`` processes it as an ordinary UDP packet before the tunnel analyzer
decapsulates it), so a VXLAN frame yields two packets: the outer UDP datagram, then the inner packet.
IP-in-IP and GRE yield only the inner packet (``IPTunnelAnalyzer`` keeps no connection of its own).
Each packet's ``tunnel`` describes the encapsulations around it, outermost first, joined by " / ".

Header layouts are data (``struct.Struct`` tables and dispatch tables next to each decoder); decoders
are functions of ``(frame, offset, state)``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from hopscope.probes.fragments import Reassembler
from hopscope.probes.packets import ENCAP_NAMES, ICMP, ICMP6, TCP, UDP, V4_MAPPED, PacketStatus

VXLAN_PORT: Final = 4789
GENEVE_PORT: Final = 6081
TEREDO_PORT: Final = 3544
AYIYA_PORT: Final = 5072
GTPU_PORT, GTPC_PORT = 2152, 2123
GRE_UDP_PORT: Final = 4754
MAX_DEPTH: Final = 4  # tunnels followed before giving up (TOO_DEEP): Zeek's Tunnel::max_depth
MAX_LINK_LAYERS: Final = 25  # nested link-layer headers followed: Zeek's PacketAnalyzer::max_depth

ETH_IPV4, ETH_IPV6, ETH_TEB = 0x0800, 0x86DD, 0x6558
ETH_MPLS, ETH_PPPOE, ETH_PBB, ETH_VNTAG, ETH_FABRICPATH = 0x8847, 0x8864, 0x88E7, 0x8926, 0x8903
VLAN_TPIDS: Final = (0x8100, 0x88A8, 0x9100, 0x9200)
ERSPAN_II, ERSPAN_III = 0x88BE, 0x22EB
GRE_PPP: Final = 0x880B  # the protocol type of PPTP's enhanced GRE (version 1)
#: Ethertypes the fast path hands to this module (after at most one 802.1Q tag). MPLS multicast
#: (0x8848) is not among them: Zeek registers no analyzer for it (scripts/base/packet-protocols/
#: ethernet/main.zeek), so its frames stay non-IP, as in Zeek's conn.log.
SLOW_ETHERTYPES: Final = (*VLAN_TPIDS, ETH_MPLS, ETH_PPPOE, ETH_PBB, ETH_VNTAG, ETH_FABRICPATH)

_IPV4 = struct.Struct("!BBHHHBBH4s4s")  # vihl tos total id frag ttl proto csum src dst
_IPV6 = struct.Struct("!IHBB16s16s")  # vtcfl plen next hlim src dst
_TCP = struct.Struct("!HHIIBBH")  # sport dport seq ack doff flags window
_UDP = struct.Struct("!HHH")  # sport dport length
_GRE = struct.Struct("!HH")  # flags/version protocol
_GTP = struct.Struct("!BBHI")  # flags message-type length TEID

Buf = memoryview | bytes


@dataclass(slots=True)
class Decoded:
    """One decoded packet, offsets relative to the frame start (or to ``buffer``); while a frame is
    decoded, also the decoder's state (``outers``, ``fragments``, depths)."""

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
    encap: int = 0  # ENCAP_NAMES index: the tunnel this UDP datagram's payload decoded as
    tunnel: str = ""
    tunnels: list[str] = field(default_factory=list)
    depth: int = 0  # tunnels entered
    link_depth: int = 0  # link-layer headers entered
    buffer: bytes | None = None  # the reassembled datagram the payload lies in (None: the frame)
    outers: list[Decoded] = field(default_factory=list)  # outer datagrams of the UDP tunnels entered
    fragments: Reassembler | None = None  # None: fragments are not reassembled (non-first ones skipped)
    scope: int = 0  # fragments of different scopes (capture interfaces) never meet


@dataclass(frozen=True, slots=True)
class FrameResult:
    """What one frame carries: its packets, outermost first, and why decoding stopped (``OK``: it did
    not). With ``status != OK`` the innermost packet is missing; ``packets`` then holds only the outer
    datagrams of UDP tunnels, which Zeek counts even when their payload does not decapsulate."""

    packets: list[Decoded]
    status: PacketStatus


class Stop(Exception):
    """Raised inside the layer decoders to end a packet with a ``PacketStatus``; ``OK`` means the
    packet carries nothing further to decode (an AYIYA or GTP control message), which is no skip."""

    def __init__(self, status: PacketStatus) -> None:
        super().__init__(status.name)
        self.status = status


def decode_frame(frame: Buf, linktype: int, fragments: Reassembler | None = None, scope: int = 0) -> FrameResult:
    """Decode one frame of the given link type; never raises on bad bytes."""
    link = LINK_DECODERS.get(linktype)
    if link is None:
        return FrameResult([], PacketStatus.UNKNOWN_LINKTYPE)
    out = Decoded(fragments=fragments, scope=scope)
    try:
        ethertype, off = link(frame, out)
        _network(frame, off, ethertype, out)
    except Stop as stop:
        return FrameResult(out.outers, stop.status)
    except (struct.error, IndexError):
        return FrameResult(out.outers, PacketStatus.TRUNCATED_L4 if out.ip_version else PacketStatus.TRUNCATED_IP)
    out.tunnel = " / ".join(out.tunnels)
    return FrameResult([*out.outers, out], PacketStatus.OK)


# --- link layers ------------------------------------------------------------------------------


def _need(frame: Buf, end: int, status: PacketStatus) -> None:
    if end > len(frame):
        raise Stop(status)


def _be16(frame: Buf, off: int) -> int:
    return int((frame[off] << 8) | frame[off + 1])


def _enter_link(out: Decoded) -> None:
    out.link_depth += 1
    if out.link_depth > MAX_LINK_LAYERS:
        raise Stop(PacketStatus.TOO_DEEP)


def ethernet(frame: Buf, out: Decoded, off: int = 0) -> tuple[int, int]:
    """Ethernet II with any stack of 802.1Q/802.1ad tags; the outermost tag's id goes to ``vlan``.

    Cisco FabricPath (0x8903) is recognised here only, as in Zeek's ``EthernetAnalyzer::AnalyzePacket``
    (ethernet/Ethernet.cc): the 16-byte outer header is skipped and the inner Ethernet header follows.
    """
    _enter_link(out)
    _need(frame, off + 14, PacketStatus.TRUNCATED_LINK)
    ethertype = _be16(frame, off + 12)
    if ethertype == ETH_FABRICPATH:
        return ethernet(frame, out, off + 16)
    return _vlan_stack(frame, off + 14, ethertype, out)


def _vlan_stack(frame: Buf, off: int, ethertype: int, out: Decoded) -> tuple[int, int]:
    """802.1Q/802.1ad tags from ``off`` on (``ethertype`` is the first TPID): the ethertype after them."""
    first = out.depth == 0
    while ethertype in VLAN_TPIDS:
        _need(frame, off + 4, PacketStatus.TRUNCATED_LINK)
        if first and out.vlan == 0:
            out.vlan = _be16(frame, off) & 0xFFF
        ethertype, off = _be16(frame, off + 2), off + 4
    return ethertype, off


def linux_sll(frame: Buf, out: Decoded) -> tuple[int, int]:
    _need(frame, 16, PacketStatus.TRUNCATED_LINK)
    return _be16(frame, 14), 16


def linux_sll2(frame: Buf, out: Decoded) -> tuple[int, int]:
    _need(frame, 20, PacketStatus.TRUNCATED_LINK)
    return _be16(frame, 0), 20


def raw_ip(frame: Buf, out: Decoded) -> tuple[int, int]:
    _need(frame, 1, PacketStatus.TRUNCATED_LINK)
    return _ip_by_version(frame, 0), 0


def _ip_by_version(frame: Buf, off: int) -> int:
    """The ethertype of the IP header at ``off``, by its version nibble (0: neither IPv4 nor IPv6)."""
    return {4: ETH_IPV4, 6: ETH_IPV6}.get(frame[off] >> 4, 0)


def bsd_null(frame: Buf, out: Decoded) -> tuple[int, int]:
    _need(frame, 4, PacketStatus.TRUNCATED_LINK)
    fam = struct.unpack_from("<I", frame)[0]
    if fam > 0xFFFF:
        fam = struct.unpack_from(">I", frame)[0]
    return (ETH_IPV4 if fam == 2 else ETH_IPV6 if fam in (10, 24, 28, 30) else 0), 4


#: PPP protocol numbers -> ethertype, as registered in Zeek's scripts/base/packet-protocols/ppp/main.zeek
#: and ppp_serial/main.zeek (IPv4, IPv6, MPLS unicast).
PPP_PROTOCOLS: Final = {0x0021: ETH_IPV4, 0x0057: ETH_IPV6, 0x0281: ETH_MPLS}
#: PPPoE carries only IPv4 and IPv6 in Zeek (scripts/base/packet-protocols/pppoe/main.zeek).
PPPOE_PROTOCOLS: Final = {0x0021: ETH_IPV4, 0x0057: ETH_IPV6}


def ppp(frame: Buf, out: Decoded) -> tuple[int, int]:
    """LINKTYPE_PPP: ``ff 03`` (HDLC-like framing) and the protocol, or the protocol alone; Zeek's
    ``PPPAnalyzer::AnalyzePacket`` (ppp/PPP.cc)."""
    _need(frame, 3, PacketStatus.TRUNCATED_LINK)
    if frame[0] == 0xFF and frame[1] == 0x03:
        _need(frame, 5, PacketStatus.TRUNCATED_LINK)
        return PPP_PROTOCOLS.get(_be16(frame, 2), 0), 4
    return PPP_PROTOCOLS.get(_be16(frame, 0), 0), 2


def ppp_hdlc(frame: Buf, out: Decoded) -> tuple[int, int]:
    """LINKTYPE_PPP_HDLC: address, control, protocol; Zeek's ``PPPSerialAnalyzer::AnalyzePacket``."""
    _need(frame, 5, PacketStatus.TRUNCATED_LINK)
    return PPP_PROTOCOLS.get(_be16(frame, 2), 0), 4


_LLC_SNAP: Final = b"\xaa\xaa\x03\x00\x00\x00"  # DSAP, SSAP: SNAP; control: UI; OUI 0 (an ethertype follows)


def ieee802_11(frame: Buf, out: Decoded, off: int = 0) -> tuple[int, int]:
    """An 802.11 data frame and its LLC/SNAP header: Zeek's ``IEEE802_11Analyzer::AnalyzePacket``
    (ieee802_11/IEEE802_11.cc). Management, control and null-data frames, A-MSDU aggregates and
    frames without LLC/SNAP (encrypted ones among them) carry no packet: NOT_IP."""
    length, hlen = len(frame) - off, 24
    if hlen >= length:
        raise Stop(PacketStatus.TRUNCATED_LINK)
    fc = frame[off]
    if not (fc >> 2) & 0x02 or (fc >> 4) & 0x04:  # not a data frame, or a subtype without data
        raise Stop(PacketStatus.NOT_IP)
    if frame[off + 1] & 0x03 == 0x03:  # ToDS and FromDS: a fourth address
        hlen += 6
    if hlen >= length:
        raise Stop(PacketStatus.TRUNCATED_LINK)
    if (fc >> 4) & 0x08:  # QoS data: two more bytes; bit 7 of the first marks an A-MSDU
        if frame[off + hlen] & 0x80:
            raise Stop(PacketStatus.NOT_IP)
        hlen += 2
    _need(frame, off + hlen + 8, PacketStatus.TRUNCATED_LINK)
    if bytes(frame[off + hlen : off + hlen + 6]) != _LLC_SNAP:
        raise Stop(PacketStatus.NOT_IP)
    return _be16(frame, off + hlen + 6), off + hlen + 8


def radiotap(frame: Buf, out: Decoded) -> tuple[int, int]:
    """A radiotap header (its length is little-endian bytes 2-3), then 802.11: Zeek's
    ``IEEE802_11_RadioAnalyzer`` (ieee802_11_radio/IEEE802_11_Radio.cc; the FCS flag is not used)."""
    _need(frame, 4, PacketStatus.TRUNCATED_LINK)
    return ieee802_11(frame, out, frame[2] | frame[3] << 8)


LINK_DECODERS: Final[dict[int, Callable[[Buf, Decoded], tuple[int, int]]]] = {
    1: ethernet,
    9: ppp,
    50: ppp_hdlc,
    105: ieee802_11,
    113: linux_sll,
    127: radiotap,
    276: linux_sll2,
    101: raw_ip,
    12: raw_ip,
    228: raw_ip,
    229: raw_ip,
    0: bsd_null,
    108: bsd_null,
}
#: Link types the fast path leaves to this module entirely.
SLOW_LINKTYPES: Final = (9, 50, 105, 127)


# --- encapsulations between the link layer and IP ------------------------------------------------


def mpls(frame: Buf, off: int, out: Decoded) -> None:
    """An MPLS label stack up to the bottom-of-stack bit, then IP by its version nibble: Zeek's
    ``MPLSAnalyzer::AnalyzePacket`` (mpls/MPLS.cc; mpls/main.zeek makes IP the default analyzer)."""
    while True:
        _need(frame, off + 4, PacketStatus.TRUNCATED_LINK)
        bottom, off = frame[off + 2] & 0x01, off + 4
        if bottom:
            break
    _need(frame, off + 1, PacketStatus.TRUNCATED_IP)
    _network(frame, off, _ip_by_version(frame, off), out)


def pppoe(frame: Buf, off: int, out: Decoded) -> None:
    """A PPPoE session header (6 bytes) and the PPP protocol (2): Zeek's ``PPPoEAnalyzer``."""
    _need(frame, off + 8, PacketStatus.TRUNCATED_LINK)
    _network(frame, off + 8, PPPOE_PROTOCOLS.get(_be16(frame, off + 6), 0), out)


def pbb(frame: Buf, off: int, out: Decoded) -> None:
    """802.1ah: the 4-byte I-TAG, then the customer's Ethernet header: Zeek's ``PBBAnalyzer``."""
    _need(frame, off + 19, PacketStatus.TRUNCATED_LINK)  # Zeek wants more than 18 bytes
    _inner_ethernet(frame, off + 4, out)


def vntag(frame: Buf, off: int, out: Decoded) -> None:
    """A 6-byte VNTag whose last two bytes are the next ethertype. Zeek (vntag/main.zeek) follows only
    802.1Q/802.1ad tags after it, so anything else stays non-IP."""
    _enter_link(out)
    _need(frame, off + 6, PacketStatus.TRUNCATED_LINK)
    ethertype = _be16(frame, off + 4)
    if ethertype not in VLAN_TPIDS:
        raise Stop(PacketStatus.NOT_IP)
    ethertype, l3 = _vlan_stack(frame, off + 6, ethertype, out)
    _network(frame, l3, ethertype, out)


# --- network layer ----------------------------------------------------------------------------


def _network(frame: Buf, off: int, ethertype: int, out: Decoded) -> None:
    decoder = ETHERTYPES.get(ethertype)
    if decoder is None:
        raise Stop(PacketStatus.NOT_IP)
    decoder(frame, off, out)


def _addr_text(version: int, hi: int, lo: int) -> str:
    if version == 4:
        return str(ipaddress.IPv4Address(lo & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address((hi << 64) | lo))


def _outer(out: Decoded) -> str:
    return f"{_addr_text(out.ip_version, out.src_hi, out.src_lo)}>{_addr_text(out.ip_version, out.dst_hi, out.dst_lo)}"


def ipv4(frame: Buf, off: int, out: Decoded) -> None:
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
    if frag & 0x3FFF:  # more fragments, or an offset
        key = (out.src_lo, out.dst_lo, proto, ip_id)
        data = _fragment(frame, off + ihl, off + total, (frag & 0x1FFF) * 8, bool(frag & 0x2000), key, 4, out)
        if data is not None:
            out.buffer, out.ip_len = data, ihl + len(data)
            _transport(data, 0, len(data), proto, out)
            return
    _transport(frame, off + ihl, off + total, proto, out)


def _fragment(
    frame: Buf, start: int, end: int, offset: int, more: bool, ids: tuple[int, int, int, int], version: int,
    out: Decoded,
) -> bytes | None:
    """One fragment's fate, as in Zeek's ``IPAnalyzer::AnalyzePacket`` (ip/IP.cc): a fully captured
    fragment goes to the reassembler and is held (FRAGMENT) until its datagram completes, when the
    whole payload is returned; an incompletely captured one is dropped unless it is the first, which is
    decoded as it is (None). Without a reassembler, the first fragment is decoded as it is."""
    if out.fragments is None or end > len(frame):
        if offset:
            raise Stop(PacketStatus.FRAGMENT)
        return None
    key = (out.scope, out.depth, version, *ids)
    data = out.fragments.add(key, offset, more, bytes(frame[start:end]))
    if data is None:
        raise Stop(PacketStatus.FRAGMENT)
    return data


_IPV6_EXT: Final = (0, 43, 60, 135, 139, 140, 253, 254)


def ipv6(frame: Buf, off: int, out: Decoded) -> None:
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
    _ipv6_chain(frame, off + 40, off + 40 + plen, nxt, off, out)


def _ipv6_chain(frame: Buf, pos: int, end: int, nxt: int, l3: int, out: Decoded) -> None:
    """The extension headers from ``pos`` on, then the transport header (``l3``: the IPv6 header)."""
    for _ in range(16):
        out.proto = nxt
        if nxt in _IPV6_EXT:
            _need(frame, pos + 2, PacketStatus.TRUNCATED_IP)
            nxt, pos = frame[pos], pos + (frame[pos + 1] + 1) * 8
        elif nxt == 44:  # fragment header
            _need(frame, pos + 8, PacketStatus.TRUNCATED_IP)
            field_, ident = _be16(frame, pos + 2), int.from_bytes(frame[pos + 4 : pos + 8], "big")
            nxt, pos = frame[pos], pos + 8
            if field_ & 0xFFF9:  # an offset or more fragments: not an atomic fragment
                out.proto = nxt
                ids = (out.src_hi << 64 | out.src_lo, out.dst_hi << 64 | out.dst_lo, 0, ident)
                data = _fragment(frame, pos, end, field_ & 0xFFF8, bool(field_ & 1), ids, 6, out)
                if data is not None:  # the unfragmentable part stays; the fragment header goes
                    out.buffer, out.ip_len = data, pos - 8 - l3 + len(data)
                    _ipv6_chain(data, 0, len(data), nxt, 0, out)
                    return
        elif nxt == 51:  # AH
            _need(frame, pos + 2, PacketStatus.TRUNCATED_IP)
            nxt, pos = frame[pos], pos + (frame[pos + 1] + 2) * 4
        else:
            break
    if pos > end:
        raise Stop(PacketStatus.BAD_IP_HEADER)
    _transport(frame, pos, end, nxt, out)


ETHERTYPES: Final[dict[int, Callable[[Buf, int, Decoded], None]]] = {
    ETH_IPV4: ipv4,
    ETH_IPV6: ipv6,
    ETH_MPLS: mpls,
    ETH_PPPOE: pppoe,
    ETH_PBB: pbb,
    ETH_VNTAG: vntag,
}


# --- transport layer ------------------------------------------------------------------------------


def _transport(frame: Buf, off: int, end: int, proto: int, out: Decoded) -> None:
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


def _payload(frame: Buf, pay: int, end: int, out: Decoded) -> None:
    out.payload_off = min(pay, len(frame))
    out.payload_len = max(end - pay, 0)
    out.payload_caplen = max(min(end, len(frame)) - pay, 0)


def tcp(frame: Buf, off: int, end: int, out: Decoded) -> None:
    if off + 20 > end:
        raise Stop(PacketStatus.BAD_L4_HEADER)
    _need(frame, off + 20, PacketStatus.TRUNCATED_L4)
    out.sport, out.dport, out.seq, out.ack, doff, out.tcp_flags, out.window = _TCP.unpack_from(frame, off)
    hlen = (doff >> 4) * 4
    if hlen < 20 or off + hlen > end:
        raise Stop(PacketStatus.BAD_L4_HEADER)
    _payload(frame, off + hlen, end, out)


def udp(frame: Buf, off: int, end: int, out: Decoded) -> None:
    """A UDP header; a tunnel inside makes this datagram an outer packet of its own (module docstring)."""
    if off + 8 > end:
        raise Stop(PacketStatus.BAD_L4_HEADER)
    _need(frame, off + 8, PacketStatus.TRUNCATED_L4)
    out.sport, out.dport, _length = _UDP.unpack_from(frame, off)
    _payload(frame, off + 8, end, out)
    opener = udp_tunnel(frame, off + 8, min(end, len(frame)), out.sport, out.dport)
    if opener is None:
        return
    out.outers.append(dataclasses.replace(out, tunnel=" / ".join(out.tunnels), tunnels=[], outers=[], encap=0))
    _enter(out)
    opener(frame, off + 8, end, out)


def icmp(frame: Buf, off: int, end: int, out: Decoded) -> None:
    if off + 8 > end:
        raise Stop(PacketStatus.BAD_L4_HEADER)
    _need(frame, off + 8, PacketStatus.TRUNCATED_L4)
    out.sport, out.dport = frame[off], frame[off + 1]
    _payload(frame, off + 8, end, out)


def _enter(out: Decoded) -> None:
    out.depth += 1
    if out.depth > MAX_DEPTH:
        raise Stop(PacketStatus.TOO_DEEP)
    out.sport = out.dport = out.tcp_flags = out.seq = out.ack = out.window = 0


def _confirm(out: Decoded, name: str) -> None:
    """The UDP tunnel header decoded: name the tunnel on its outer datagram (Zeek's analyzer
    confirmation, which gives the outer connection its ``service``)."""
    out.outers[-1].encap = ENCAP_NAMES.index(name)


def _inner_ethernet(frame: Buf, off: int, out: Decoded) -> None:
    ethertype, l3 = ethernet(frame, out, off)
    _network(frame, l3, ethertype, out)


def _inner_ip(frame: Buf, off: int, out: Decoded) -> None:
    """An IP packet whose version nibble says which (the inner packet of Teredo, AYIYA and GTP)."""
    _need(frame, off + 1, PacketStatus.BAD_TUNNEL)
    ethertype = _ip_by_version(frame, off)
    if not ethertype:
        raise Stop(PacketStatus.BAD_TUNNEL)
    _network(frame, off, ethertype, out)


def _inner_ip_length(frame: Buf, off: int, cap_end: int) -> int:
    """The length the IP header at ``off`` declares (0 when it does not fit or is no IP header)."""
    if off + 20 > cap_end:
        return 0
    version = frame[off] >> 4
    if version == 4:
        return _be16(frame, off + 2)
    if version == 6 and off + 40 <= cap_end:
        return 40 + _be16(frame, off + 4)
    return 0


# --- UDP tunnels ---------------------------------------------------------------------------------


def vxlan(frame: Buf, off: int, end: int, out: Decoded) -> None:
    """VXLAN: 8 bytes, the I flag required, then Ethernet; Zeek's ``VXLAN_Analyzer`` (vxlan/VXLAN.cc)."""
    _need(frame, off + 8, PacketStatus.BAD_TUNNEL)
    if not frame[off] & 0x08:
        raise Stop(PacketStatus.BAD_TUNNEL)
    vni = int.from_bytes(frame[off + 4 : off + 7], "big")
    _confirm(out, "vxlan")
    out.tunnels.append(f"vxlan vni={vni} {_outer(out)}")
    _inner_ethernet(frame, off + 8, out)


def geneve(frame: Buf, off: int, end: int, out: Decoded) -> None:
    """Geneve version 0: 8 bytes and the options, then by protocol type; Zeek's ``GeneveAnalyzer``."""
    _need(frame, off + 8, PacketStatus.BAD_TUNNEL)
    if frame[off] >> 6 != 0:
        raise Stop(PacketStatus.BAD_TUNNEL)
    opt_len = (frame[off] & 0x3F) * 4
    proto = _be16(frame, off + 2)
    vni = int.from_bytes(frame[off + 4 : off + 7], "big")
    _confirm(out, "geneve")
    out.tunnels.append(f"geneve vni={vni} {_outer(out)}")
    inner = off + 8 + opt_len
    if proto == ETH_TEB:
        _inner_ethernet(frame, inner, out)
    else:
        _network(frame, inner, proto, out)


def teredo_detect(frame: Buf, off: int, length: int) -> bool:
    """Zeek's ``TeredoAnalyzer::DetectProtocol`` (teredo/Teredo.cc): whether a UDP payload on a port
    without a tunnel of its own is Teredo. An IPv6 header whose source or destination is in
    2001:0000::/32, or an authentication and/or origin indication header followed by IPv6."""
    if length < 40:
        return False
    first, second = frame[off], frame[off + 1]
    if first >> 4 != 6 and (first != 0 or second > 1):
        return False
    if first >> 4 == 6 and _TEREDO_PREFIX in (bytes(frame[off + 8 : off + 12]), bytes(frame[off + 24 : off + 28])):
        return True
    pos, val = off, second
    if val == 1:  # authentication header: 13 bytes plus the client id and the authenticator
        skip = 13 + frame[pos + 2] + frame[pos + 3]
        if length < skip:
            return False
        pos, length = pos + skip, length - skip
        if length < 40:
            return False
        val = _be16(frame, pos)
    if val == 0:  # origin indication: 8 bytes
        pos, length = pos + 8, length - 8
        return length >= 40 and frame[pos] >> 4 == 6
    return False


_TEREDO_PREFIX: Final = b"\x20\x01\x00\x00"


def teredo(frame: Buf, off: int, end: int, out: Decoded) -> None:
    """Teredo: optional authentication and origin indication headers, then IPv6 whose payload length
    matches the datagram (a bubble may have trailing bytes); Zeek's ``TeredoEncapsulation::DoParse``
    and ``TeredoAnalyzer::AnalyzePacket``."""
    cap_end = min(end, len(frame))
    pos, found_origin, found_auth = off, False, False
    while True:
        if cap_end - pos < 2:
            raise Stop(PacketStatus.BAD_TUNNEL)
        tag = _be16(frame, pos)
        if tag == 0 and not found_origin and cap_end - pos >= 8:
            pos, found_origin = pos + 8, True
        elif tag == 1 and not (found_origin or found_auth) and cap_end - pos >= 4:
            pos, found_auth = pos + 13 + frame[pos + 2] + frame[pos + 3], True
        elif tag >> 12 == 6 and cap_end - pos >= 40:
            break
        else:
            raise Stop(PacketStatus.BAD_TUNNEL)
    declared, bubble = 40 + _be16(frame, pos + 4), frame[pos + 6] == 59 and _be16(frame, pos + 4) == 0
    if declared > cap_end - pos or (declared < cap_end - pos and not bubble):
        raise Stop(PacketStatus.BAD_TUNNEL)
    _confirm(out, "teredo")  # Zeek confirms once both directions were valid: the service's decision
    out.tunnels.append(f"teredo {_outer(out)}")
    ipv6(frame, pos, out)


def ayiya_detect(frame: Buf, off: int, length: int) -> bool:
    """Zeek's ``AYIYAAnalyzer::DetectProtocol`` (ayiya/AYIYA.cc): signature SHA-1 (0x52), forward (0x11)."""
    return length >= 3 and frame[off + 1] == 0x52 and frame[off + 2] == 0x11


def ayiya(frame: Buf, off: int, end: int, out: Decoded) -> None:
    """AYIYA: an 8-byte header, the identity and the signature; only the forward opcode (1) carries a
    packet, of next header 4 or 41 (ayiya/main.zeek); Zeek's ``AYIYAAnalyzer::AnalyzePacket``."""
    cap_end = min(end, len(frame))
    if off + 8 > cap_end:
        raise Stop(PacketStatus.BAD_TUNNEL)
    header = 8 + (1 << (frame[off] >> 4)) + (frame[off + 1] >> 4) * 4
    if off + header > cap_end:
        raise Stop(PacketStatus.BAD_TUNNEL)
    if frame[off + 2] & 0x0F != 1:
        raise Stop(PacketStatus.OK)  # not a forwarded packet: nothing inside, nothing wrong
    _confirm(out, "ayiya")
    if frame[off + 3] not in (4, 41) or off + header == cap_end:
        raise Stop(PacketStatus.BAD_TUNNEL)
    out.tunnels.append(f"ayiya {_outer(out)}")
    _inner_ip(frame, off + header, out)


def gtpv1(frame: Buf, off: int, end: int, out: Decoded) -> None:
    """GTPv1-U: only a G-PDU (message 255) of version 1 with the PT flag carries a packet, which must
    parse with exactly the datagram's length; Zeek's ``GTPv1_Analyzer::AnalyzePacket`` and
    ``process_g_pdu`` (gtpv1/gtpv1-analyzer.pac). GTP inside GTP is not followed."""
    cap_end = min(end, len(frame))
    if off + 8 > cap_end or (out.tunnels and out.tunnels[-1].startswith("gtpv1")):
        raise Stop(PacketStatus.BAD_TUNNEL)
    flags, message, _length, teid = _GTP.unpack_from(frame, off)
    if flags >> 5 != 1:
        raise Stop(PacketStatus.BAD_TUNNEL)
    if not flags & 0x10 or message != 255:
        raise Stop(PacketStatus.OK)  # GTP' or a control message: no packet inside
    pos = off + 8 + (4 if flags & 0x07 else 0)
    if flags & 0x04:  # extension headers: length in 4-byte units, the last byte names the next one
        while True:
            _need(frame, pos + 1, PacketStatus.BAD_TUNNEL)
            if frame[pos] == 0:
                raise Stop(PacketStatus.BAD_TUNNEL)
            pos += frame[pos] * 4
            _need(frame, pos, PacketStatus.BAD_TUNNEL)
            if frame[pos - 1] == 0:
                break
    if pos > cap_end or _inner_ip_length(frame, pos, cap_end) != cap_end - pos:
        raise Stop(PacketStatus.BAD_TUNNEL)
    _confirm(out, "gtpv1")
    out.tunnels.append(f"gtpv1 teid={teid} {_outer(out)}")
    _inner_ip(frame, pos, out)


# --- GRE and IP-in-IP ------------------------------------------------------------------------------


def gre(frame: Buf, off: int, end: int, out: Decoded) -> None:
    """GRE version 0, and PPTP's enhanced GRE (version 1): Zeek's ``GREAnalyzer::AnalyzePacket``
    (gre/GRE.cc). The header is 4 bytes plus 4 for each of the C, K, S and A flags; the routing flag
    and the reserved flags make the packet undecodable."""
    _need(frame, off + 4, PacketStatus.BAD_TUNNEL)
    flags, proto = _GRE.unpack_from(frame, off)
    version = flags & 0x7
    if version > 1 or flags & 0x4078:
        raise Stop(PacketStatus.BAD_TUNNEL)
    pos, key, has_seq = off + 4, None, bool(flags & 0x1000)
    if flags & 0x8000:
        pos += 4  # checksum + reserved
    if flags & 0x2000:
        _need(frame, pos + 4, PacketStatus.BAD_TUNNEL)
        key = int.from_bytes(frame[pos : pos + 4], "big")
        pos += 4
    pos += (4 if has_seq else 0) + (4 if flags & 0x0080 else 0)
    outer = _outer(out)
    if version == 1:
        pptp(frame, pos, proto, outer, out)
    elif proto == ERSPAN_II:
        erspan2(frame, pos, outer, has_seq, out)
    elif proto == ERSPAN_III:
        erspan3(frame, pos, outer, out)
    elif proto == ETH_TEB:
        out.tunnels.append(f"gre{'' if key is None else f' key={key}'} {outer}")
        _inner_ethernet(frame, pos, out)
    else:
        out.tunnels.append(f"gre{'' if key is None else f' key={key}'} {outer}")
        _network(frame, pos, proto, out)


def pptp(frame: Buf, off: int, proto: int, outer: str, out: Decoded) -> None:
    """PPTP's enhanced GRE: protocol type 0x880B, a 4-byte PPP header, then IPv4 or IPv6 (GRE.cc)."""
    _need(frame, off + 4, PacketStatus.BAD_TUNNEL)
    ethertype = PPPOE_PROTOCOLS.get(_be16(frame, off + 2), 0)
    if proto != GRE_PPP or not ethertype:
        raise Stop(PacketStatus.BAD_TUNNEL)
    out.tunnels.append(f"pptp {outer}")
    _network(frame, off + 4, ethertype, out)


def gre_udp(frame: Buf, off: int, end: int, out: Decoded) -> None:
    """GRE over UDP (RFC 8086, UDP 4754): the GRE header follows the UDP header (gre/main.zeek)."""
    _need(frame, off + 4, PacketStatus.BAD_TUNNEL)
    if _be16(frame, off) & 0x4078 or _be16(frame, off) & 0x7 > 1:  # what gre() refuses first
        raise Stop(PacketStatus.BAD_TUNNEL)
    _confirm(out, "gre")
    gre(frame, off, end, out)


def erspan2(frame: Buf, off: int, outer: str, has_seq: bool, out: Decoded) -> None:
    if not has_seq:  # ERSPAN type I: no ERSPAN header, the mirrored frame follows GRE
        out.tunnels.append(f"erspan1 {outer}")
        _inner_ethernet(frame, off, out)
        return
    _need(frame, off + 8, PacketStatus.BAD_TUNNEL)
    session = _be16(frame, off + 2) & 0x3FF
    out.tunnels.append(f"erspan2 session={session} {outer}")
    _inner_ethernet(frame, off + 8, out)


def erspan3(frame: Buf, off: int, outer: str, out: Decoded) -> None:
    _need(frame, off + 12, PacketStatus.BAD_TUNNEL)
    session = _be16(frame, off + 2) & 0x3FF
    sub = 8 if frame[off + 11] & 0x01 else 0  # O flag: platform-specific subheader follows
    out.tunnels.append(f"erspan3 session={session} {outer}")
    _inner_ethernet(frame, off + 12 + sub, out)


def ipip(frame: Buf, off: int, end: int, out: Decoded) -> None:
    out.tunnels.append(f"ipip {_outer(out)}")
    ipv4(frame, off, out)


def ip6ip(frame: Buf, off: int, end: int, out: Decoded) -> None:
    out.tunnels.append(f"ip6ip {_outer(out)}")
    ipv6(frame, off, out)


TUNNEL_PROTOS: Final[dict[int, Callable[[Buf, int, int, Decoded], None]]] = {
    4: ipip,
    41: ip6ip,
    47: gre,
}
#: UDP tunnels by port. Zeek dispatches on the connection's responder port
#: (``UDPAnalyzer::DeliverPacket``); every port here is a likely server port, so the responder is the
#: side on that port: the destination port is tried first, then the source port.
UDP_TUNNELS: Final[dict[int, Callable[[Buf, int, int, Decoded], None]]] = {
    VXLAN_PORT: vxlan,
    GENEVE_PORT: geneve,
    TEREDO_PORT: teredo,
    AYIYA_PORT: ayiya,
    GTPU_PORT: gtpv1,
    GTPC_PORT: gtpv1,
    GRE_UDP_PORT: gre_udp,
}
#: Tunnels Zeek detects by content on any other UDP port (``register_protocol_detection``), in order.
UDP_DETECTORS: Final[tuple[tuple[Callable[[Buf, int, int], bool], Callable[[Buf, int, int, Decoded], None]], ...]] = (
    (teredo_detect, teredo),
    (ayiya_detect, ayiya),
)


def udp_tunnel(
    frame: Buf, pay: int, cap_end: int, sport: int, dport: int
) -> Callable[[Buf, int, int, Decoded], None] | None:
    """The tunnel decoder for a UDP payload at ``pay`` (captured up to ``cap_end``), or None."""
    opener = UDP_TUNNELS.get(dport) or UDP_TUNNELS.get(sport)
    if opener is not None:
        return opener
    for detect, decoder in UDP_DETECTORS:
        if detect(frame, pay, cap_end - pay):
            return decoder
    return None
