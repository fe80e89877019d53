"""What the two flow meters share: configuration, role and ICMP tables, names, the record layout.

The reference meter (``meter_reference.ReferenceMeter``) and the compiled one (``probes/csrc/meter.c``
behind ``meter_native.NativeMeter``) take the same ``MeterConfig`` and the same tables
(``LIKELY_SERVER``, ``ICMP4_TABLE``/``ICMP6_TABLE``), map point and tunnel names through one
``FlowNames``, and hand their records over in one layout: integer columns named by
``RECORD_FIELDS`` (``conn_state`` and ``close_type`` as indices into ``CONN_STATES`` and
``CLOSE_TYPES``) plus five text values per record, turned into a ``FlowRecord`` batch by
``record_batch``. The compiled kernel exports its own copies of these names; the tests check that
they are equal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from hopscope.ids import text_hash64
from hopscope.probes.community_id import ICMP4_PAIRS, ICMP6_PAIRS
from hopscope.probes.packets import (
    ACK,
    ENCAP_NAMES,
    ICMP,
    ICMP6,
    RST,
    SYN,
    TCP,
    UDP,
    PacketBlock,
    PacketStatus,
    packed_addr,
)  # fmt: skip
from hopscope.records import Batch, FlowRecord

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
NS: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class MeterConfig:
    """Timeouts in seconds of capture time, sizes in flows and bytes."""

    tcp_idle_timeout_s: float = 300.0  # Zeek's tcp_inactivity_timeout
    udp_idle_timeout_s: float = 60.0  # Zeek's udp_inactivity_timeout (also ICMP and others)
    linger_s: float = 5.0  # Zeek's tcp_close_delay: after the close, stragglers still join the flow this long
    tcp_attempt_delay_s: float = 5.0  # Zeek's tcp_attempt_delay: an unanswered SYN's connection ends (0: never)
    interval_s: float = 60.0  # interim record period for long flows (0: never)
    max_flows: int = 1_000_000  # flow table limit; beyond it the least recently active are evicted
    payload_hash_bytes: int = 64  # first payload bytes hashed per direction
    sweep_every_s: float = 1.0  # how often (capture time) idle/linger/interim checks run


#: Zeek's ``likely_server_ports``: the union of the server ports the protocol scripts of
#: ``base/protocols/*`` and ``base/packet-protocols/*`` register (``Analyzer::register_for_ports`` and
#: ``PacketAnalyzer::register_for_ports`` add them; older versions ``redef likely_server_ports``),
#: per transport. Ports are per transport in Zeek (53/tcp and 53/udp are two entries).
ZEEK_SERVER_PORTS_TCP: Final = (
    21, 2811,  # ftp
    22,  # ssh
    25, 587,  # smtp
    53,  # dns
    80, 81, 631, 1080, 3128, 8000, 8080, 8888,  # http (1080 also socks)
    88, 750,  # krb (tcp)
    110,  # pop3
    139, 445,  # smb
    143,  # imap
    389, 3268,  # ldap
    443, 563, 585, 614, 636, 989, 990, 992, 993, 995, 5223,  # ssl
    502,  # modbus
    1434, 3306,  # mysql
    1883,  # mqtt
    3389,  # rdp
    5222, 5269,  # xmpp
    5432,  # postgresql
    6379,  # redis
    6666, 6667, 6668, 6669,  # irc
    20000,  # dnp3
)  # fmt: skip
ZEEK_SERVER_PORTS_UDP: Final = (
    53, 137, 5353, 5355,  # dns, netbios name service, mdns, llmnr
    67,  # dhcp (68 is an analyzer port, not a server port)
    88, 750,  # krb
    123,  # ntp
    161, 162,  # snmp
    389,  # ldap
    443,  # dtls, quic
    514,  # syslog
    1812,  # radius
    3389,  # rdp
    5060,  # sip
    20000,  # dnp3
    3544, 5072, 4789, 6081, 2152, 2123, 4754,  # teredo, ayiya, vxlan, geneve, gtpv1 (u and c), gre-in-udp
)  # fmt: skip
#: ``LIKELY_SERVER`` bits: the port is a likely server port of TCP, of UDP; the responder port
#: attaches Zeek's DNS analyzer (dns/main.zeek: 53, 137, 5353, 5355/udp), its NTP analyzer (123/udp).
LIKELY_TCP, LIKELY_UDP, DNS_UDP, NTP_UDP = 1, 2, 4, 8
DNS_UDP_PORTS: Final = (53, 137, 5353, 5355)
NTP_UDP_PORT: Final = 123
#: NTP modes (the low 3 bits of the first byte): client, server.
NTP_CLIENT, NTP_SERVER = 3, 4
#: Bytes of an NTP standard message (modes 1-5), which Zeek's NTP analyzer needs to parse one.
NTP_STD_BYTES: Final = 48


def _likely_server_ports() -> npt.NDArray[np.uint8]:
    table = np.zeros(65536, np.uint8)
    table[list(ZEEK_SERVER_PORTS_TCP)] |= LIKELY_TCP
    table[list(ZEEK_SERVER_PORTS_UDP)] |= LIKELY_UDP
    table[list(DNS_UDP_PORTS)] |= DNS_UDP
    table[NTP_UDP_PORT] |= NTP_UDP
    return table


#: Per port: ``LIKELY_TCP | LIKELY_UDP`` bits (meter.c: likely_server).
LIKELY_SERVER: Final = _likely_server_ports()
_BROADCAST: Final = 0xFFFF_FFFF_FFFF  # 255.255.255.255 as the low half of an IPv4-mapped address


def flip_roles(
    proto: int, flags: int, sport: int, dport: int, dst_hi: int = 0, dst_lo: int = 0, payload: bytes = b""
) -> bool:
    """Whether a new flow's first packet came from its responder, so the roles flip (history ``^``).

    Zeek's ``IPBasedAnalyzer::NewConn``: never towards a broadcast destination (255.255.255.255).
    UDP (``UDPAnalyzer::WantConnection``): the source port is a likely server port of UDP and the
    destination port is not (both likely, e.g. NTP 123 -> 123: no flip). TCP
    (``TCPAnalyzer::WantConnection``): a first packet that is a pure SYN never flips; otherwise the
    source port likely and the destination port not, or both likely, no SYN and the source port the
    lower. hopscope also flips a first SYN-ACK (its sender is the server: Zeek flips such a connection
    once the ACK or data follows). Other protocols: no flip.

    Then, on UDP, the content of the first datagram (its captured ``payload``), as the analyzer the
    responder port attaches decides it (``content_flip``).
    """
    if dst_hi == 0 and dst_lo == _BROADCAST:
        return False
    if proto == TCP:
        src_likely, dst_likely = bool(LIKELY_SERVER[sport] & LIKELY_TCP), bool(LIKELY_SERVER[dport] & LIKELY_TCP)
        if flags & (SYN | ACK | RST) == SYN | ACK:
            return True
        return not flags & SYN and src_likely and (not dst_likely or sport < dport)
    if proto == UDP:
        flip = bool(LIKELY_SERVER[sport] & LIKELY_UDP) and not LIKELY_SERVER[dport] & LIKELY_UDP
        return flip != content_flip(sport if flip else dport, not flip, dst_hi, dst_lo, payload)
    return False


def content_flip(resp_p: int, from_orig: bool, dst_hi: int, dst_lo: int, payload: bytes) -> bool:
    """Whether the analyzer the responder port ``resp_p`` attaches flips the roles on a new UDP flow's
    first datagram (sent by the originator when ``from_orig``), as Zeek's analyzers do:

    - DNS (``DNS_Interpreter::ParseMessage``): the first message (a header's 12 bytes at least) is a
      response (QR set) from the originator, and the responder is not a multicast address (mDNS);
    - NTP (``proc_ntp_message``): a server-mode message from the originator, or a client-mode message
      from the responder (a standard message of 48 bytes at least).

    Zeek flips after the datagram's ``D`` (history ``D^``); hopscope decides it at the first datagram,
    as for a port flip (``^`` first, the datagram in its true direction).
    """
    kind = LIKELY_SERVER[resp_p]
    if kind & DNS_UDP:
        return from_orig and len(payload) >= 12 and bool(payload[2] & 0x80) and not _multicast(dst_hi, dst_lo)
    if kind & NTP_UDP and len(payload) >= NTP_STD_BYTES:
        mode = payload[0] & 7
        return (mode == NTP_SERVER and from_orig) or (mode == NTP_CLIENT and not from_orig)
    return False


def _multicast(hi: int, lo: int) -> bool:
    """224.0.0.0/4 (IPv4-mapped) or ff00::/8."""
    if hi == 0 and lo >> 32 == 0xFFFF:
        return (lo >> 28) & 0xF == 0xE
    return hi >> 56 == 0xFF


def outer_rows(block: PacketBlock) -> npt.NDArray[np.int64]:
    """Per row, the row of the outer datagram of the UDP tunnel the packet came in (-1: none): the row
    just before it in the same frame (same time and point), an outer row (``encap`` set), whose
    ``tunnel`` the packet's own extends (packets.py, Tunnels). Zeek's innermost encapsulation, whose
    connection's uid goes into ``tunnel_parents``."""
    out = np.full(block.count, -1, np.int64)
    inner = np.flatnonzero(block.tunnel[1:] != 0) + 1
    if not len(inner):
        return out
    prev = inner - 1
    near = (block.encap[prev] != 0) & (block.ts_ns[prev] == block.ts_ns[inner])
    near &= block.point[prev] == block.point[inner]
    inner, prev = inner[near], prev[near]
    tunnels = block.tunnels
    for i, p in zip(inner.tolist(), prev.tolist(), strict=True):
        outer_text, inner_text = tunnels[block.tunnel[p]], tunnels[block.tunnel[i]]
        if not outer_text or inner_text.startswith(outer_text + " / "):
            out[i] = p
    return out


#: The rows a meter looks at: decoded packets, and those whose L4 checksum failed (counted in history
#: only, as Zeek does).
METERED_STATUSES: Final = (PacketStatus.OK, PacketStatus.BAD_L4_CHECKSUM)


def metered_rows(block: PacketBlock) -> npt.NDArray[np.intp]:
    """Indices of the rows a meter processes (``METERED_STATUSES``), in capture order."""
    status = block.status
    return np.flatnonzero((status == PacketStatus.OK) | (status == PacketStatus.BAD_L4_CHECKSUM))


def _icmp_pair_table(pairs: dict[int, int]) -> tuple[I64, npt.NDArray[np.bool_]]:
    counterpart = np.zeros(256, np.int64)
    two_way = np.zeros(256, np.bool_)
    for t, c in pairs.items():
        counterpart[t], two_way[t] = c, True
    return counterpart, two_way


#: Per ICMP (ICMPv6) type: the type of its counterpart, and whether it has one (two-way message pairs).
ICMP4_TABLE: Final = _icmp_pair_table(ICMP4_PAIRS)
ICMP6_TABLE: Final = _icmp_pair_table(ICMP6_PAIRS)

#: Added to the destination "port" of a one-way ICMP message in its flow key (meter.c: ONE_WAY_TAG).
ONE_WAY_TAG: Final = 1 << 16


def icmp_key_ports(proto: npt.NDArray[Any], sport: U64, dport: U64) -> tuple[U64, U64]:
    """Per packet: the responder port of a flow it starts, and the port its destination is keyed by.

    Zeek's ``ICMPAnalyzer::BuildConnTuple`` with ``ICMP4_counterpart``/``ICMP6_counterpart`` (ICMP.cc):
    an ICMP/ICMPv6 type with a counterpart (``ICMP4_TABLE``/``ICMP6_TABLE``) has the counterpart type as
    ``resp_p``, and request and reply share one direction-independent connection; any other type is
    one-way: ``resp_p`` is the code, and the key keeps source -> destination order (Zeek's
    ``is_one_way``), so each direction and each (type, code) is its own connection (the destination
    port is tagged with ``ONE_WAY_TAG``, which no type can equal). TCP/UDP: the destination port.
    """
    rport, kport = dport.copy(), dport.copy()
    for number, (counterpart, two_way) in ((ICMP, ICMP4_TABLE), (ICMP6, ICMP6_TABLE)):
        icmp = np.flatnonzero(proto == number)
        t = sport[icmp].astype(np.int64) & 255
        pair, code = two_way[t], dport[icmp]
        rport[icmp] = np.where(pair, counterpart[t], code).astype(np.uint64)
        kport[icmp] = np.where(pair, counterpart[t], code | np.uint64(ONE_WAY_TAG)).astype(np.uint64)
    return rport, kport


#: Per-direction counters of a flow record, in the order both meters keep them (2 * kind + direction).
STAT_NAMES: Final = (
    "orig_pkts", "resp_pkts", "orig_bytes", "resp_bytes", "orig_ip_bytes", "resp_ip_bytes",
    "orig_retrans_pkts", "resp_retrans_pkts", "orig_ooo_pkts", "resp_ooo_pkts", "orig_zero_win",
    "resp_zero_win",
)  # fmt: skip
#: The TCP handshake anchors a FlowRecord carries (clamped to 32 bits on output).
ANCHOR_NAMES: Final = ("syn_seq", "synack_seq", "syn_ip_id", "rtt_client_us", "rtt_server_us")
#: The integer columns of a record as the meters hand them over (meter.c: FIELD_NAMES).
RECORD_FIELDS: Final = (
    "flow_id", "start_ns", "end_ns", "ip_version", "proto", "orig_p", "resp_p", "vlan", "point", "tunnel",
    "orig_hi", "orig_lo", "resp_hi", "resp_lo", *STAT_NAMES, "orig_payload_hash", "resp_payload_hash",
    *ANCHOR_NAMES, "final", "conn_state", "close_type", "missed_bytes", "encap",
)  # fmt: skip
_UNSIGNED: Final = ("flow_id", "orig_payload_hash", "resp_payload_hash")
_INTS: Final = (
    "start_ns", "end_ns", "ip_version", "proto", "orig_p", "resp_p", "vlan", "final", *STAT_NAMES, "missed_bytes",
)  # fmt: skip
#: Text values per record, in order (meter.c: emit).
TEXT_FIELDS: Final = ("orig_h", "resp_h", "history", "community_id", "tunnel_parents")
#: conn_state codes (tcpstate), indexed by the record's conn_state column (meter.c: STATE_NAMES).
CONN_STATES: Final = ("S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH")
#: close_type values (``close_type``), indexed by the record's close_type column (meter.c: CLOSE_NAMES).
CLOSE_TYPES: Final = (
    "normal", "client_rst", "server_rst", "server_syn_miss", "client_ack_miss", "half_close", "timeout",
    "evicted", "unfinished", "open",
)  # fmt: skip


def close_type(state: str, reason: str, final: bool, proto: int, ack_miss: bool) -> str:
    """How a flow ended, from its conn_state and what ended the record (``reason``).

    ``normal`` FIN both ways; ``client_rst``/``server_rst`` a RST from the originator/responder (REJ is
    ``server_rst``); ``server_syn_miss`` SYN(s) never answered; ``client_ack_miss`` SYN-ACK never
    acknowledged (``ack_miss``); ``half_close`` a FIN from one side only; ``timeout`` idle; ``evicted``
    flow table full; ``unfinished`` still open at the end of the capture; ``open`` interim record of a
    live flow. ``reason`` is ``""``, ``timeout``, ``evicted`` or ``unfinished``.
    """
    if not final:
        return "open"
    if reason == "evicted":
        return reason
    if proto == TCP:
        by_state = _CLOSE_BY_STATE.get(state)
        if by_state:
            return by_state
        if state == "S1" and ack_miss:
            return "client_ack_miss"
    return reason or "unfinished"


_CLOSE_BY_STATE: Final = {
    "SF": "normal", "REJ": "server_rst", "RSTR": "server_rst", "RSTRH": "server_rst", "RSTO": "client_rst",
    "RSTOS0": "client_rst", "S0": "server_syn_miss", "S2": "half_close", "S3": "half_close",
    "SH": "half_close", "SHR": "half_close",
}  # fmt: skip


def address_text(hi: int, lo: int) -> str:
    """Text of an address stored as halves (IPv4-mapped as a dotted quad), as ``inet_ntop`` writes it."""
    import socket  # imported where used (the reference meter): the socket module is 5 ms of start-up

    raw = packed_addr(hi, lo)
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


class FlowNames:
    """Meter-wide ids of capture point names and tunnel descriptions, and their text hashes.

    Blocks number their points and tunnels locally; records carry the meter-wide id, and flow keys
    hash the text (``hopscope.ids.text_hash64``), so a flow keeps its key across blocks.
    """

    def __init__(self) -> None:
        self.point_names: list[str] = []
        self.point_ifaces: list[str] = []
        self.tunnel_names: list[str] = [""]
        self._ids: dict[tuple[int, str], int] = {(1, ""): 0}
        self._hashes: dict[str, int] = {}

    def name_id(self, kind: int, name: str, iface: str = "") -> int:
        """Meter-wide id of a point name (kind 0) or tunnel description (kind 1)."""
        nid = self._ids.get((kind, name))
        if nid is None:
            names = self.point_names if kind == 0 else self.tunnel_names
            nid = len(names)
            names.append(name)
            if kind == 0:
                self.point_ifaces.append(iface)
            self._ids[kind, name] = nid
        return nid

    def text_hash(self, text: str) -> int:
        value = self._hashes.get(text)
        if value is None:
            value = self._hashes[text] = text_hash64(text)
        return value

    def of_block(self, block: PacketBlock) -> tuple[U64, I64, U64, I64]:
        """Per block-local point and tunnel index: (point hashes, point ids, tunnel hashes, tunnel ids)."""
        names, tunnels = block.point_names, block.tunnels
        ifaces = block.point_ifaces if len(block.point_ifaces) == len(names) else names
        pt_hash = np.array([self.text_hash(p) for p in names], np.uint64)
        pt_id = np.array([self.name_id(0, p, f) for p, f in zip(names, ifaces, strict=True)], np.int64)
        tun_hash = np.array([self.text_hash(t) for t in tunnels], np.uint64)
        tun_id = np.array([self.name_id(1, t) for t in tunnels], np.int64)
        return pt_hash, pt_id, tun_hash, tun_id


def record_batch(
    ints: Mapping[str, npt.NDArray[Any]], texts: Sequence[str], n: int, names: FlowNames, host: str, hop_kind: str
) -> Batch:
    """A FlowRecord batch of ``n`` records from their ``RECORD_FIELDS`` columns and texts.

    ``texts`` holds five values per record (``TEXT_FIELDS``): originator address, responder address,
    history, Community ID and tunnel parents. ``service`` is the tunnel a UDP flow's payload carries
    (``encap``, Zeek's confirmation of the tunnel analyzer on the outer connection), else empty: content
    services are added by ``hopscope.probes.service``.
    """
    if n == 0:
        return Batch(FlowRecord, {}, 0)
    points = ints["point"]
    k = len(TEXT_FIELDS)
    cols: dict[str, Any] = {
        "point": np.array(names.point_names, object)[points].tolist(),
        "iface": np.array(names.point_ifaces, object)[points].tolist(),
        "tunnel": np.array(names.tunnel_names, object)[ints["tunnel"]].tolist(),
        "host": [host] * n, "hop_kind": [hop_kind] * n,
        **{name: texts[j : k * n : k] for j, name in enumerate(TEXT_FIELDS)},
        "conn_state": np.array(CONN_STATES, object)[ints["conn_state"]].tolist(),
        "close_type": np.array(CLOSE_TYPES, object)[ints["close_type"]].tolist(),
    }  # fmt: skip
    encap = np.asarray(ints["encap"])
    if encap.any():
        cols["service"] = np.array(ENCAP_NAMES, object)[encap].tolist()
    cols.update(record_numbers(ints))
    return Batch(FlowRecord, cols, n)


_DTYPES: Final = {c.name: c.type.dtype for c in FlowRecord.columns() if not c.type.is_text}


def record_numbers(ints: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
    """The numeric FlowRecord columns of records in the ``RECORD_FIELDS`` layout, in the dtypes a
    ``Batch`` holds them in: flow ids and payload hashes unsigned, the anchors clamped to 32 bits."""
    cols: dict[str, npt.NDArray[Any]] = {}
    for name in _UNSIGNED:
        cols[name] = np.asarray(ints[name]).view(np.uint64)
    for name in _INTS:
        cols[name] = np.asarray(ints[name])
    for name in ANCHOR_NAMES:
        cols[name] = np.minimum(ints[name], 0xFFFFFFFF)
    return {name: np.asarray(data, dtype=_DTYPES[name]) for name, data in cols.items()}
