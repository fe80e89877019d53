"""The decoder on real bytes: link types, VLAN stacks, IP options and extension headers, tunnels (the
inner flow is decoded, the tunnel described, a UDP tunnel's outer datagram kept), and the skip reasons
for damaged packets and undecodable encapsulations."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III
from scapy.contrib.geneve import GENEVE
from scapy.contrib.gtp import GTP_U_Header
from scapy.layers.dot11 import Dot11
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet

from hopscope.probes.decode import Decoder
from hopscope.probes.packets import ENCAP_NAMES, PacketBlock, PacketStatus
from hopscope.probes.readers import open_capture
from tests.probes import encap_frames as E

INNER = IP(src="10.1.0.1", dst="10.2.0.2", id=77) / TCP(sport=33000, dport=8080, flags="S", seq=4242)
OUTER = IP(src="192.168.0.1", dst="192.168.0.2")


def write_pcap(path: Path, frames: list[bytes], linktype: int = 1) -> Path:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for n, data in enumerate(frames):
        out += struct.pack("<IIII", 1_700_000_000 + n, 0, len(data), len(data)) + data
    path.write_bytes(out)
    return path


def decode(tmp_path: Path, frames: list[bytes | Packet], linktype: int = 1) -> tuple[PacketBlock, Decoder]:
    path = write_pcap(tmp_path / "d.pcap", [bytes(f) for f in frames], linktype)
    decoder = Decoder("d")
    (raw,) = list(open_capture(path).blocks())
    return decoder.decode(raw), decoder


def inner_tuple(block: PacketBlock, i: int = 0) -> tuple[str, str, int, int, int, int]:
    return (block.src_str(i), block.dst_str(i), int(block.sport[i]), int(block.dport[i]), int(block.proto[i]),
            int(block.seq[i]))  # fmt: skip


EXPECTED = ("10.1.0.1", "10.2.0.2", 33000, 8080, 6, 4242)

LINK_CASES = [
    ("ethernet", Ether() / INNER, 1),
    ("sll", CookedLinux(proto=0x0800) / INNER, 113),
    ("sll2", CookedLinuxV2(proto=0x0800, ifindex=3) / INNER, 276),
    ("raw", INNER, 101),
    ("null", struct.pack("<I", 2) + bytes(INNER), 0),
]


@pytest.mark.parametrize(("name", "frame", "linktype"), LINK_CASES, ids=[c[0] for c in LINK_CASES])
def test_link_types(tmp_path: Path, name: str, frame: Packet | bytes, linktype: int) -> None:
    block, _ = decode(tmp_path, [frame], linktype)
    assert block.status[0] == PacketStatus.OK
    assert inner_tuple(block) == EXPECTED
    assert block.ip_id[0] == 77 and block.ttl[0] == 64 and block.ip_len[0] == 40


def test_sll2_interface_index_names_the_point(tmp_path: Path) -> None:
    frames = [CookedLinuxV2(proto=0x0800, ifindex=3) / INNER, CookedLinuxV2(proto=0x0800, ifindex=9) / INNER]
    path = write_pcap(tmp_path / "any.pcap", [bytes(f) for f in frames], 276)
    decoder = Decoder("any", lambda idx, name, ifindex: {3: "pre-nat", 9: "post-nat"}[ifindex])
    (raw,) = list(open_capture(path).blocks())
    block = decoder.decode(raw)
    assert [block.point_names[p] for p in block.point.tolist()] == ["pre-nat", "post-nat"]


TUNNEL_CASES = [
    ("vlan", Ether() / Dot1Q(vlan=42) / INNER, "", 42),
    ("qinq", Ether() / Dot1AD(vlan=100) / Dot1Q(vlan=42) / INNER, "", 100),
    ("vxlan", Ether() / OUTER / UDP(sport=5555, dport=4789) / VXLAN(vni=4096) / Ether() / INNER,
     "vxlan vni=4096 192.168.0.1>192.168.0.2", 0),
    ("geneve", Ether() / OUTER / UDP(sport=5555, dport=6081) / GENEVE(vni=7, proto=0x6558) / Ether() / INNER,
     "geneve vni=7 192.168.0.1>192.168.0.2", 0),
    ("gre", Ether() / OUTER / GRE(proto=0x0800) / INNER, "gre 192.168.0.1>192.168.0.2", 0),
    ("gre-key-teb", Ether() / OUTER / GRE(key_present=1, key=9, proto=0x6558) / Ether() / INNER,
     "gre key=9 192.168.0.1>192.168.0.2", 0),
    ("erspan2", Ether() / OUTER / GRE(seqnum_present=1, proto=0x88BE) / ERSPAN_II(session_id=5) / Ether() / INNER,
     "erspan2 session=5 192.168.0.1>192.168.0.2", 0),
    ("erspan3", Ether() / OUTER / GRE(seqnum_present=1, proto=0x22EB) / ERSPAN_III(session_id=6) / Ether() / INNER,
     "erspan3 session=6 192.168.0.1>192.168.0.2", 0),
    ("ipip", Ether() / OUTER / INNER, "ipip 192.168.0.1>192.168.0.2", 0),
    ("vxlan-in-vlan", Ether() / Dot1Q(vlan=3) / OUTER / UDP(dport=4789) / VXLAN(vni=1) / Ether() / Dot1Q(vlan=9)
     / INNER, "vxlan vni=1 192.168.0.1>192.168.0.2", 3),
]  # fmt: skip


@pytest.mark.parametrize(("name", "frame", "tunnel", "vlan"), TUNNEL_CASES, ids=[c[0] for c in TUNNEL_CASES])
def test_tunnels_yield_the_inner_packet(tmp_path: Path, name: str, frame: Packet, tunnel: str, vlan: int) -> None:
    block, _ = decode(tmp_path, [frame])
    inner = block.count - 1  # a UDP tunnel's outer datagram comes first, as a packet of its own
    assert block.count == (2 if UDP in frame else 1)
    assert block.ok.all()
    assert inner_tuple(block, inner) == EXPECTED
    assert block.tunnels[block.tunnel[inner]] == tunnel
    assert block.vlan.tolist() == [vlan] * block.count
    assert block.encap[inner] == 0
    if block.count == 2:
        assert (block.src_str(0), block.proto[0], block.dport[0], block.tunnel[0]) == ("192.168.0.1", 17,
                                                                                     frame[UDP].dport, 0)
        assert ENCAP_NAMES[block.encap[0]] == name.split("-")[0]  # the outer connection's service in Zeek


def test_ipv4_options_and_payload(tmp_path: Path) -> None:
    pkt = Ether() / IP(src="1.1.1.1", dst="2.2.2.2", options=b"\x01\x01\x01\x00") / TCP(flags="PA") / b"hello"
    block, _ = decode(tmp_path, [pkt])
    assert block.payload(0) == b"hello" and block.payload_len[0] == 5 and block.ip_len[0] == 49


@pytest.mark.parametrize(
    "ext", [IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(), IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()]
)
def test_ipv6_extension_headers(tmp_path: Path, ext: Packet) -> None:
    pkt = Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / ext / UDP(sport=53, dport=5353) / b"abc"
    block, _ = decode(tmp_path, [pkt])
    assert (block.status[0], block.proto[0], block.sport[0], block.dport[0]) == (0, 17, 53, 5353)
    assert block.payload(0) == b"abc" and block.src_str(0) == "2001:db8::1"


def test_icmp_type_and_code_as_ports(tmp_path: Path) -> None:
    block, _ = decode(tmp_path, [Ether() / IP() / ICMP(type=3, code=1) / (b"x" * 8)])
    assert (block.proto[0], block.sport[0], block.dport[0]) == (1, 3, 1)


def test_skips_are_counted_by_reason(tmp_path: Path) -> None:
    good = bytes(Ether() / INNER)
    frames: list[bytes | Packet] = [
        Ether() / ARP(),  # not IP
        good[:10],  # shorter than Ethernet
        good[:20],  # cut inside IPv4
        good[:40],  # cut inside TCP
        bytes(Ether() / IP(ihl=3) / TCP()),  # bad IHL
        Ether() / IP(src="1.1.1.1", dst="2.2.2.2", frag=100, proto=6) / (b"x" * 16),  # later fragment
        Ether() / IPv6() / IPv6ExtHdrFragment(offset=10) / (b"y" * 16),
        good,
    ]
    block, decoder = decode(tmp_path, frames)
    assert block.status.tolist() == [
        PacketStatus.NOT_IP, PacketStatus.TRUNCATED_LINK, PacketStatus.TRUNCATED_IP, PacketStatus.TRUNCATED_L4,
        PacketStatus.BAD_IP_HEADER, PacketStatus.FRAGMENT, PacketStatus.FRAGMENT, PacketStatus.OK,
    ]  # fmt: skip
    assert decoder.skips == {"not_ip": 1, "truncated_link": 1, "truncated_ip": 1, "truncated_l4": 1,
                             "bad_ip_header": 1, "fragment": 2}  # fmt: skip
    assert inner_tuple(block, 7) == EXPECTED


def test_first_fragment_is_held_unless_cut_by_the_snaplen(tmp_path: Path) -> None:
    pkt = bytes(Ether() / IP(src="1.1.1.1", dst="2.2.2.2", flags="MF") / UDP(sport=1, dport=2) / (b"z" * 32))
    block, decoder = decode(tmp_path, [pkt, pkt[:-1]])  # Zeek: an incomplete first fragment is not reassembled
    assert block.status.tolist() == [PacketStatus.FRAGMENT, PacketStatus.OK]
    assert (block.sport[1], block.dport[1]) == (1, 2)
    assert decoder.fragments.pending == 1


def test_snaplen_cut_payload(tmp_path: Path) -> None:
    full = bytes(Ether() / IP() / TCP(flags="PA") / (b"p" * 100))
    block, _ = decode(tmp_path, [full[:70]])
    assert block.status[0] == PacketStatus.OK
    assert block.payload_len[0] == 100 and block.payload_caplen[0] == 70 - 54


# The inner packet of a UDP tunnel that does not decode: the outer datagram stays (Zeek counts it before
# the tunnel analyzer runs), the reason is counted. Tunnel messages without a packet are no skip.
T = IP(src="10.1.0.1", dst="10.2.0.2") / TCP()
INNER_FAILURES = [
    ("vxlan-without-i-flag", Ether() / OUTER / UDP(dport=4789) / VXLAN(flags=0) / Ether() / T, "bad_tunnel"),
    ("vxlan-arp", Ether() / OUTER / UDP(dport=4789) / VXLAN() / Ether() / ARP(), "not_ip"),
    ("teredo-length-mismatch", bytes(E.teredo(IPv6() / TCP()))[:-4], "bad_tunnel"),
    ("ayiya-next-header-17", E.ayiya(T)[:45] + b"\x11" + E.ayiya(T)[46:], "bad_tunnel"),
    ("ayiya-empty", E.ayiya(T)[: 14 + 28 + 44], "bad_tunnel"),
    ("gtp-version-2", E.gtpu(T)[:42] + b"\x50" + E.gtpu(T)[43:], "bad_tunnel"),
    ("gtp-padding", Ether() / OUTER / UDP(dport=2152) / GTP_U_Header(gtp_type=255) / (bytes(T) + b"\x00\x00"),
     "bad_tunnel"),  # the inner IP must fill the datagram
    ("gtp-in-gtp", E.gtpu(IP(src="10.9.0.1", dst="10.9.0.2") / UDP(sport=2152, dport=2152)
                          / GTP_U_Header(gtp_type=255) / T), "bad_tunnel"),
    ("ayiya-opcode-2", E.ayiya(T, opcode=2), None),
    ("gtp-echo-request", Ether() / OUTER / UDP(dport=2152) / GTP_U_Header(gtp_type=1), None),
]  # fmt: skip


@pytest.mark.parametrize(("name", "frame", "skip"), INNER_FAILURES, ids=[c[0] for c in INNER_FAILURES])
def test_udp_tunnel_outer_datagram_stays_when_its_inside_does_not_decode(
    tmp_path: Path, name: str, frame: Packet | bytes, skip: str | None
) -> None:
    block, decoder = decode(tmp_path, [frame])
    outer_rows = 2 if name == "gtp-in-gtp" else 1  # the first GTP datagram's inside is the second one
    assert block.count == outer_rows and block.ok.all()
    assert block.proto[outer_rows - 1] == 17 and block.tunnel[0] == 0
    assert dict(decoder.skips) == ({skip: 1} if skip else {})
    confirmed = name in ("vxlan-arp", "ayiya-next-header-17", "ayiya-empty", "gtp-in-gtp")  # the header decoded
    assert bool(block.encap[0]) == confirmed


LINK_FAILURES = [
    ("802.11-management", bytes(Dot11(type=0, subtype=8)) + bytes(40), 105, "not_ip"),
    ("802.11-null-data", bytes(Dot11(type=2, subtype=4)) + bytes(40), 105, "not_ip"),
    ("802.11-amsdu", E.dot11(T, qos=True)[:24] + b"\x80\x00" + E.dot11(T, qos=True)[26:], 105, "not_ip"),
    ("802.11-encrypted", E.dot11(T)[:24] + bytes(40), 105, "not_ip"),
    ("802.11-short", E.dot11(T)[:24], 105, "truncated_link"),
    ("radiotap-length-past-frame", b"\x00\x00\xff\x00" + E.dot11(T), 127, "truncated_link"),
    ("ppp-lcp", b"\xff\x03\xc0\x21" + bytes(20), 9, "not_ip"),
    ("ppp-short", b"\xff\x03", 9, "truncated_link"),
    ("pppoe-discovery", E.pppoe(T)[:12] + b"\x88\x63" + E.pppoe(T)[14:], 1, "not_ip"),
    ("pppoe-lcp", E.pppoe(T)[:20] + b"\xc0\x21" + E.pppoe(T)[22:], 1, "not_ip"),
    ("vntag-then-ip", bytes(Ether(type=0x8926)) + b"\x00" * 4 + b"\x08\x00" + bytes(T), 1, "not_ip"),
    ("mpls-no-bottom", bytes(Ether(type=0x8847)) + b"\x00\x01\x00\x40" * 3, 1, "truncated_link"),
    ("pbb-short", bytes(Ether(type=0x88E7)) + bytes(18), 1, "truncated_link"),
    ("gre-routing-flag", Ether() / OUTER / GRE(routing_present=1, proto=0x0800) / T, 1, "bad_tunnel"),
    ("pptp-lcp", E.pptp(T)[:-len(T) - 2] + b"\xc0\x21" + bytes(T), 1, "bad_tunnel"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "frame", "linktype", "skip"), LINK_FAILURES, ids=[c[0] for c in LINK_FAILURES])
def test_undecodable_encapsulations_are_counted(
    tmp_path: Path, name: str, frame: Packet | bytes, linktype: int, skip: str
) -> None:
    block, decoder = decode(tmp_path, [frame], linktype)
    assert block.count == 1 and not block.ok.any()
    assert dict(decoder.skips) == {skip: 1}


def test_nested_link_layers_stop_at_zeeks_depth(tmp_path: Path) -> None:
    frame = bytes(Ether(type=0x88E7)) + (b"\x00" * 4 + bytes(Ether(type=0x88E7))) * 40 + bytes(T)
    block, decoder = decode(tmp_path, [frame])
    assert dict(decoder.skips) == {"too_deep": 1} and not block.ok.any()
