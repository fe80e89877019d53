"""Flow rows of encapsulated traffic against Zeek's conn.log rules, on the reference and the C path.

Each case wraps one TCP conversation (``>S <SA >A >PA:20``) in an encapsulation, both directions, and
checks the flow rows hopscope reports against the rows Zeek's rules give (written out here, not taken
from hopscope):

- link-layer encapsulations and link types carry the conversation unchanged: one row, ``ShAD``, ``S1``;
- UDP tunnels also give their outer UDP connections (``UDPAnalyzer::DeliverPacket`` counts the
  datagram before the tunnel analyzer decapsulates it): history ``D``/``d``, ``S0`` for a one-way
  outer connection, ``SF`` when the tunnel's replies travel in the same connection;
- GRE, PPTP and IP-in-IP give no outer row (``IPTunnelAnalyzer`` keeps no connection);
- a fragmented outer datagram counts once, with its reassembled length (``IPAnalyzer::AnalyzePacket``).

The inner connection of a tunnel is one row, whichever outer connection each direction travelled in:
Zeek keys it by its own 5-tuple only (``IPBasedConnKey``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.contrib.geneve import GENEVE
from scapy.contrib.gtp import GTP_U_Header
from scapy.layers.inet import GRE, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from hopscope.probes.analyze import analyze_capture
from tests.probes import encap_frames as E
from tests.probes.crafting import CLIENT, SERVER, conversation

STEPS = [">S", "<SA", ">A", ">PA:20"]
#: Zeek's row for the conversation: (orig_h, orig_p, resp_h, resp_p, proto, orig_pkts, resp_pkts,
#: orig_ip_bytes, resp_ip_bytes, history, conn_state); orig_bytes 20 and resp_bytes 0 (duration > 0).
INNER_ROW = (CLIENT[0], CLIENT[1], SERVER[0], SERVER[1], 6, 3, 1, 40 + 40 + 60, 40, "ShAD", "S1")
A, B = "192.0.2.1", "192.0.2.2"  # the tunnel endpoints (A on the client's side)
ETH = Ether(**E.M)  # with addresses: scapy would otherwise look them up

Row = tuple[str, int, str, int, int, int, int, int, int, str, str]


@pytest.fixture(params=["1", "0"], ids=["native", "reference"])
def native(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HOPSCOPE_NATIVE", request.param)
    return str(request.param)


def write(path: Path, frames: list[tuple[float, bytes]], linktype: int) -> Path:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for ts, data in frames:
        sec, usec = int(ts), round((ts - int(ts)) * 1e6)
        out += struct.pack("<IIII", sec, usec, len(data), len(data)) + data
    path.write_bytes(out)
    return path


def rows(path: Path) -> list[tuple[Row, int, int, str]]:
    """(Zeek's row fields, orig_bytes, resp_bytes, tunnel) of every final flow record."""
    out = []
    for r in analyze_capture(path).flows.records():
        if r.final:  # type: ignore[attr-defined]
            row = (r.orig_h, r.orig_p, r.resp_h, r.resp_p, r.proto, r.orig_pkts, r.resp_pkts,  # type: ignore[attr-defined]
                   r.orig_ip_bytes, r.resp_ip_bytes, r.history, r.conn_state)  # type: ignore[attr-defined]  # fmt: skip
            out.append((row, int(r.orig_bytes), int(r.resp_bytes), str(r.tunnel)))  # type: ignore[attr-defined]
    return sorted(out)


def wrapped(wrap: Callable[[Packet, bool], bytes], inner: list[Packet] | None = None) -> list[tuple[float, bytes]]:
    """The conversation's packets, each IP packet wrapped for its direction (True: client to server)."""
    packets = inner if inner is not None else [p[IP] for p in conversation(STEPS)]
    times = [float(p.time) for p in conversation(STEPS)]
    directions = [s[0] == ">" for s in STEPS]
    return [(t, wrap(p, fwd)) for t, p, fwd in zip(times, packets, directions, strict=True)]


# --- link-layer encapsulations ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(E.ENCAPSULATIONS))
def test_link_layer_encapsulation_gives_the_conversation(tmp_path: Path, native: str, name: str) -> None:
    build, linktype = E.ENCAPSULATIONS[name]
    path = write(tmp_path / "c.pcap", wrapped(lambda ip, fwd: build(ip)), linktype)
    assert rows(path) == [(INNER_ROW, 20, 0, "")]


def test_mpls_multicast_is_not_decoded(tmp_path: Path, native: str) -> None:
    """Zeek registers no analyzer for 0x8848 (scripts/base/packet-protocols/ethernet/main.zeek)."""
    frames = wrapped(lambda ip, fwd: E.mpls(ip)[:12] + b"\x88\x48" + E.mpls(ip)[14:])
    assert rows(write(tmp_path / "c.pcap", frames, 1)) == []


# --- tunnels ---------------------------------------------------------------------------------------


def _outer(fwd: bool) -> IP:
    return IP(src=A, dst=B) if fwd else IP(src=B, dst=A)


def _to_server(fwd: bool, port: int) -> UDP:
    """The UDP header of a client (port 40000) to server (``port``) exchange, in its direction."""
    return UDP(sport=40000, dport=port) if fwd else UDP(sport=port, dport=40000)


def _ayiya_header(next_header: int) -> bytes:
    return bytes([0x41, 0x52, 0x11, next_header]) + bytes(4) + bytes(16) + bytes(20)


V6_CONVERSATION = [IPv6(src=E.TEREDO_CLIENT if p[IP].src == CLIENT[0] else E.TEREDO_PEER,
                        dst=E.TEREDO_PEER if p[IP].src == CLIENT[0] else E.TEREDO_CLIENT) / p[TCP]
                   for p in conversation(STEPS)]  # fmt: skip
V6_ROW = (E.TEREDO_CLIENT, CLIENT[1], E.TEREDO_PEER, SERVER[1], 6, 3, 1, 60 + 60 + 80, 60, "ShAD", "S1")

#: name -> (wrap, inner packets (None: IPv4 conversation), Zeek's inner row, outer overhead per packet
#: in IP bytes, Zeek's outer rows as (orig_h, orig_p, resp_h, resp_p, orig_pkts, resp_pkts, history,
#: conn_state)); an empty list: the tunnel has no outer connection.
TUNNELS: dict[str, tuple[Callable[[Packet, bool], bytes], list[Packet] | None, Row, int, list[tuple[object, ...]]]] = {
    "vxlan": (lambda ip, fwd: bytes(ETH / _outer(fwd) / UDP(sport=5555, dport=4789) / VXLAN(vni=9) / ETH / ip),
              None, INNER_ROW, 50, [(A, 5555, B, 4789, 3, 0, "D", "S0"), (B, 5555, A, 4789, 1, 0, "D", "S0")]),
    "geneve": (lambda ip, fwd: bytes(ETH / _outer(fwd) / UDP(sport=5555, dport=6081) / GENEVE(vni=7, proto=0x0800)
                                     / ip), None, INNER_ROW, 36,
               [(A, 5555, B, 6081, 3, 0, "D", "S0"), (B, 5555, A, 6081, 1, 0, "D", "S0")]),
    "teredo": (lambda ip, fwd: bytes(ETH / _outer(fwd) / _to_server(fwd, 3544) / ip), V6_CONVERSATION, V6_ROW, 28,
               [(A, 40000, B, 3544, 3, 1, "Dd", "SF")]),
    "ayiya": (lambda ip, fwd: bytes(ETH / _outer(fwd) / _to_server(fwd, 5072) / Raw(_ayiya_header(4)) / ip), None,
              INNER_ROW, 72, [(A, 40000, B, 5072, 3, 1, "Dd", "SF")]),
    "gtpu": (lambda ip, fwd: bytes(ETH / _outer(fwd) / UDP(sport=2152, dport=2152)
                                   / GTP_U_Header(teid=7, gtp_type=255) / ip),
             None, INNER_ROW, 36, [(A, 2152, B, 2152, 3, 1, "Dd", "SF")]),
    "gre-udp": (lambda ip, fwd: bytes(ETH / _outer(fwd) / UDP(sport=50000, dport=4754) / GRE(proto=0x0800) / ip),
                None, INNER_ROW, 32, [(A, 50000, B, 4754, 3, 0, "D", "S0"), (B, 50000, A, 4754, 1, 0, "D", "S0")]),
    "gre": (lambda ip, fwd: bytes(ETH / _outer(fwd) / GRE(proto=0x0800) / ip), None, INNER_ROW, 24, []),
    "pptp": (lambda ip, fwd: E.fix_outer_ip(bytes(ETH / _outer(fwd) / GRE(proto=0x880B))[:34]
                                            + struct.pack("!HHHHI", 0x3001, 0x880B, len(ip) + 4, 9, 1)
                                            + b"\xff\x03\x00\x21" + bytes(ip)), None, INNER_ROW, 40, []),
    "ipip": (lambda ip, fwd: bytes(ETH / _outer(fwd) / ip), None, INNER_ROW, 20, []),
}  # fmt: skip


def _expected_outer(name: str) -> list[Row]:
    """Zeek's outer rows, with IP bytes summed from the conversation's inner packet sizes."""
    _wrap, inner, _row, overhead, outer = TUNNELS[name]
    sizes = [len(p) for p in (inner if inner is not None else [p[IP] for p in conversation(STEPS)])]
    fwd = [s + overhead for s, step in zip(sizes, STEPS, strict=True) if step[0] == ">"]
    back = [s + overhead for s, step in zip(sizes, STEPS, strict=True) if step[0] == "<"]
    out = []
    for orig_h, orig_p, resp_h, resp_p, orig_pkts, resp_pkts, history, state in outer:
        orig = fwd if orig_h == A else back
        resp = back if orig_h == A and resp_pkts else []
        out.append((orig_h, orig_p, resp_h, resp_p, 17, orig_pkts, resp_pkts, sum(orig), sum(resp), history, state))
    return sorted(out)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(TUNNELS))
def test_udp_tunnel_outer_connections(tmp_path: Path, native: str, name: str) -> None:
    wrap, inner, inner_row, _overhead, _outer_rows = TUNNELS[name]
    got = rows(write(tmp_path / "t.pcap", wrapped(wrap, inner), 1))
    assert [row for row, _ob, _rb, tunnel in got if row[4] == 17 and not tunnel] == _expected_outer(name)
    inner_rows = [row for row, _ob, _rb, tunnel in got if tunnel]
    assert sum(r[5] + r[6] for r in inner_rows) == 4  # every inner packet is metered, once
    assert {r[0] for r in inner_rows} <= {inner_row[0], inner_row[2]}


@pytest.mark.parametrize("name", sorted(TUNNELS))
def test_tunnel_inner_connection_is_one_row(tmp_path: Path, native: str, name: str) -> None:
    wrap, inner, inner_row, _overhead, _outer_rows = TUNNELS[name]
    path = write(tmp_path / "t.pcap", wrapped(wrap, inner), 1)
    assert [(row, ob, rb) for row, ob, rb, tunnel in rows(path) if tunnel] == [(inner_row, 20, 0)]


# --- fragmented outer datagrams ----------------------------------------------------------------------


def _vxlan_datagram(fwd_inner: Packet, outer: Packet) -> Packet:
    return outer / UDP(sport=5555, dport=4789) / VXLAN(vni=3) / ETH / fwd_inner


def test_fragmented_vxlan_counts_each_datagram_once(tmp_path: Path, native: str) -> None:
    """Three inner UDP datagrams of 1,200 bytes, each in a VXLAN datagram cut into IPv4 fragments
    (one of them arriving last-fragment-first): one outer and one inner packet per datagram, at the
    fragment that completed it, with the reassembled length."""
    frames, t = [], 1_700_000_000.0
    for n in range(3):
        inner = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=7000, dport=9000) / (b"d" * 1200)
        datagram = _vxlan_datagram(inner, IP(src=A, dst=B, id=100 + n))
        parts = fragment(datagram, fragsize=512)
        assert len(parts) == 3
        if n == 1:
            parts = parts[::-1]
        for part in parts:
            frames.append((t, bytes(ETH / part)))
            t += 0.001
    got = rows(write(tmp_path / "f.pcap", frames, 1))
    outer_len, inner_len = 20 + 8 + 8 + 14 + 1228, 1228
    assert [r for r, *_ in got] == sorted([
        (A, 5555, B, 4789, 17, 3, 0, 3 * outer_len, 0, "D", "S0"),
        ("10.0.0.1", 7000, "10.0.0.2", 9000, 17, 3, 0, 3 * inner_len, 0, "D", "S0"),
    ])  # fmt: skip
    by_tunnel = {tunnel: (ob, rb) for _r, ob, rb, tunnel in got}
    assert by_tunnel[""] == (3 * (outer_len - 28), 0)
    assert by_tunnel["vxlan vni=3 192.0.2.1>192.0.2.2"] == (3 * 1200, 0)


def test_fragmented_ipv6_outer_datagram(tmp_path: Path, native: str) -> None:
    inner = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=7000, dport=9000) / (b"e" * 1000)
    datagram = IPv6(src="2001:db8::a", dst="2001:db8::b") / IPv6ExtHdrFragment(id=5) / UDP(sport=5555, dport=4789)
    datagram = datagram / VXLAN(vni=4) / ETH / inner
    parts = fragment6(datagram, 600)
    assert len(parts) >= 2
    frames = [(1_700_000_000.0 + n * 0.001, bytes(ETH / p)) for n, p in enumerate(parts)]
    got = [r for r, *_ in rows(write(tmp_path / "f6.pcap", frames, 1))]
    udp_len = 8 + 8 + 14 + 1028
    assert got == sorted([
        ("2001:db8::a", 5555, "2001:db8::b", 4789, 17, 1, 0, 40 + udp_len, 0, "D", "S0"),
        ("10.0.0.1", 7000, "10.0.0.2", 9000, 17, 1, 0, 1028, 0, "D", "S0"),
    ])  # fmt: skip


def test_plain_fragmented_datagram_is_one_packet(tmp_path: Path, native: str) -> None:
    datagram = IP(src="10.0.0.1", dst="10.0.0.2", id=9) / UDP(sport=53, dport=40000) / (b"r" * 3000)
    frames = [(1_700_000_000.0 + n * 0.001, bytes(ETH / p)) for n, p in enumerate(fragment(datagram, 1000))]
    got = [r for r, *_ in rows(write(tmp_path / "p.pcap", frames, 1))]
    # 53 is a likely server port and 40000 is not: Zeek flips the originator (UDPAnalyzer::WantConnection,
    # history ^)
    assert got == [("10.0.0.2", 40000, "10.0.0.1", 53, 17, 0, 1, 0, 3028, "^d", "SHR")]
