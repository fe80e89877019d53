"""Frames of every encapsulation the decoder follows, crafted with scapy (and literal bytes where scapy
has no layer): one builder per encapsulation, shared by the decoder, fuzz and conformance tests."""

from __future__ import annotations

import struct
from collections.abc import Callable

from scapy.contrib.gtp import GTP_U_Header
from scapy.contrib.mpls import MPLS
from scapy.layers.dot11 import Dot11, Dot11QoS, RadioTap
from scapy.layers.inet import GRE, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import LLC, SNAP, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.packet import Packet, Raw

M = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
OUTER = IP(src="192.0.2.1", dst="192.0.2.2")
OUTER6 = IPv6(src="2001:db8::1", dst="2001:db8::2")
TEREDO_CLIENT, TEREDO_PEER = "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:db8:1::5"

# Ethernet encapsulations (each wraps an IP packet) --------------------------------------------


def mpls(ip: Packet) -> bytes:
    return bytes(Ether(**M, type=0x8847) / MPLS(label=16, s=0) / MPLS(label=17, s=1) / ip)


def pppoe(ip: Packet) -> bytes:
    return bytes(Ether(**M) / PPPoE(sessionid=7) / PPP(proto=0x0021 if IP in ip else 0x0057) / ip)


def pppoe_qinq(ip: Packet) -> bytes:
    return bytes(Ether(**M) / Dot1AD(vlan=10) / Dot1Q(vlan=20, type=0x8864) / PPPoE(sessionid=7) / PPP(proto=0x21) / ip)


def pbb(ip: Packet) -> bytes:
    i_tag = struct.pack("!I", 0x00_01_02_03)  # PCP/DEI/UCA, I-SID 0x010203
    return bytes(Ether(**M, type=0x88E7)) + i_tag + bytes(Ether(**M) / ip)


def vntag(ip: Packet) -> bytes:
    tag = struct.pack("!IH", 0x8001_0002, 0x8100)  # the tag, then the next ethertype: an 802.1Q tag
    return bytes(Ether(**M, type=0x8926)) + tag + bytes(Dot1Q(vlan=5) / ip)


def fabricpath(ip: Packet) -> bytes:
    outer = bytes(Ether(**M, type=0x8903))[:14] + b"\x00\x3f"  # outer addresses, 0x8903, FTag/TTL
    return outer + bytes(Ether(**M) / ip)


# Link types (raw IP inside) ------------------------------------------------------------------


def ppp_link(ip: Packet) -> bytes:  # LINKTYPE_PPP (9), HDLC-like framing
    return b"\xff\x03" + struct.pack("!H", 0x0021 if IP in ip else 0x0057) + bytes(ip)


def ppp_link_bare(ip: Packet) -> bytes:  # LINKTYPE_PPP without address and control
    return struct.pack("!H", 0x0021 if IP in ip else 0x0057) + bytes(ip)


def ppp_hdlc(ip: Packet) -> bytes:  # LINKTYPE_PPP_HDLC (50)
    return b"\xff\x03" + struct.pack("!H", 0x0021 if IP in ip else 0x0057) + bytes(ip)


def dot11(ip: Packet, qos: bool = False) -> bytes:  # LINKTYPE_IEEE802_11 (105), to-DS data frame
    header = Dot11(type=2, subtype=8 if qos else 0, FCfield=0x01, addr1=M["dst"], addr2=M["src"], addr3=M["dst"])
    body = LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=0, code=0x0800 if IP in ip else 0x86DD) / ip
    return bytes(header / Dot11QoS() / body) if qos else bytes(header / body)


def radiotap(ip: Packet) -> bytes:  # LINKTYPE_IEEE802_11_RADIOTAP (127)
    return bytes(RadioTap(present="Flags+Rate", Flags=0, Rate=2)) + dot11(ip, qos=True)


# Tunnels -------------------------------------------------------------------------------------


def teredo(ip6: Packet, sport: int = 40000, dport: int = 3544, origin: bool = False) -> bytes:
    origin_header = b"\x00\x00" + struct.pack("!H", 40000 ^ 0xFFFF) + bytes(4) if origin else b""
    return bytes(Ether(**M) / OUTER / UDP(sport=sport, dport=dport) / Raw(origin_header + bytes(ip6)))


def ayiya(ip: Packet, sport: int = 40000, dport: int = 5072, opcode: int = 1) -> bytes:
    next_header = 4 if IP in ip else 41
    header = bytes([0x41, 0x52, 0x10 | opcode, next_header]) + struct.pack("!I", 1_700_000_000)
    header += bytes(16) + bytes(20)  # identity (2^4 bytes), SHA-1 signature (5 x 4 bytes)
    return bytes(Ether(**M) / OUTER / UDP(sport=sport, dport=dport) / Raw(header + bytes(ip)))


def gtpu(ip: Packet, sport: int = 2152, dport: int = 2152) -> bytes:
    return bytes(Ether(**M) / OUTER / UDP(sport=sport, dport=dport) / GTP_U_Header(teid=0x1234, gtp_type=255) / ip)


def gre_udp(ip: Packet) -> bytes:
    return bytes(Ether(**M) / OUTER / UDP(sport=50000, dport=4754) / GRE(proto=0x0800) / ip)


def pptp(ip: Packet, call_id: int = 9) -> bytes:
    ppp = b"\xff\x03" + struct.pack("!H", 0x0021 if IP in ip else 0x0057) + bytes(ip)
    gre_v1 = struct.pack("!HHHHI", 0x3001, 0x880B, len(ppp), call_id, 1)  # K, S; version 1; seq 1
    return fix_outer_ip(bytes(Ether(**M) / OUTER / GRE(proto=0x880B))[: 14 + 20] + gre_v1 + ppp)


def fix_outer_ip(frame: bytes) -> bytes:
    """Recompute the outer IPv4 total length of an Ethernet frame built from literal pieces."""
    total = len(frame) - 14
    header = bytearray(frame[14:34])
    header[2:4] = struct.pack("!H", total)
    header[10:12] = b"\x00\x00"
    words = struct.unpack("!10H", bytes(header))
    csum = sum(words)
    csum = (csum & 0xFFFF) + (csum >> 16)
    header[10:12] = struct.pack("!H", ~csum & 0xFFFF)
    return frame[:14] + bytes(header) + frame[34:]


#: name -> (builder of a frame around an IPv4 packet, link type)
ENCAPSULATIONS: dict[str, tuple[Callable[[Packet], bytes], int]] = {
    "mpls": (mpls, 1),
    "pppoe": (pppoe, 1),
    "pppoe-qinq": (pppoe_qinq, 1),
    "pbb": (pbb, 1),
    "vntag": (vntag, 1),
    "fabricpath": (fabricpath, 1),
    "ppp": (ppp_link, 9),
    "ppp-bare": (ppp_link_bare, 9),
    "ppp-hdlc": (ppp_hdlc, 50),
    "802.11": (dot11, 105),
    "radiotap": (radiotap, 127),
}
