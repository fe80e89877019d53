"""The decoder on real bytes: link types, VLAN stacks, IP options and extension headers, tunnels (the
inner flow is decoded, the tunnel described), and the skip reasons for damaged packets."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet

from hopscope.probes.decode import Decoder
from hopscope.probes.packets import PacketBlock, PacketStatus
from hopscope.probes.readers import open_capture

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
    if block.count == 2:
        assert (block.src_str(0), block.proto[0], block.dport[0], block.tunnel[0]) == ("192.168.0.1", 17,
                                                                                     frame[UDP].dport, 0)


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
