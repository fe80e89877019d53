"""Decoded packets as columns: the interface between the decoder, the flow meter and the L7 parsers.

A ``PacketBlock`` holds up to some tens of thousands of packets of one capture file (or of one live
capture batch) as numpy columns, one row per packet, in capture order: one row per frame, except
that a frame carrying a UDP tunnel has a row for its outer datagram and one for its inner packet
(see Tunnels). It is produced by
``hopscope.probes.decode.decode_block`` from a ``RawBlock`` (``hopscope.probes.readers``) and then
completed by the flow meter (``hopscope.probes.meter.FlowMeter.process``), which fills ``flow_id`` and
``from_orig``. Nothing in a block is a Python object per packet; to touch one packet use its row index.

Which rows are usable
    ``status == PacketStatus.OK`` marks a packet that decoded down to its L4 header (TCP, UDP, ICMP,
    ICMPv6, or another IP protocol with ports 0). Other rows (non-IP frames, truncated or malformed
    packets) carry a ``PacketStatus`` reason and zeros elsewhere; the decoder also counts them by reason.
    ``block.ok`` is that mask. One exception: a packet whose L4 checksum failed (when the decoder
    validates checksums, ``hopscope.probes.checksums``) keeps its columns with ``BAD_L4_CHECKSUM``, for
    the flow meter, which counts it in its flow's history only.

Addresses
    Every address is 128 bits in two uint64 columns (``src_hi``/``src_lo``, ``dst_hi``/``dst_lo``,
    big-endian halves). IPv4 is stored IPv4-mapped (``::ffff:a.b.c.d``: ``hi == 0``,
    ``lo == 0xFFFF_0000_0000 | v4``), so ``src_lo & 0xFFFFFFFF`` is the IPv4 address as a uint32 when
    ``ip_version == 4``. ``block.src_str(i)`` / ``block.dst_str(i)`` format one address.

Tunnels and VLANs
    For tunnelled traffic the row describes the INNER packet (addresses, ports, payload); ``tunnel``
    indexes ``block.tunnels`` (0 = not tunnelled), a description of the encapsulations around the
    packet, outermost first, such as ``"vxlan vni=42 10.0.0.1>10.0.0.2"``. As in Zeek, the outer
    datagram of a UDP tunnel (VXLAN, Geneve, Teredo, AYIYA, GTP, GRE over UDP) is a row of its own,
    just before its inner packet's row, with the same timestamp: a plain UDP packet whose ``tunnel``
    describes only what is around it, and whose ``encap`` names the tunnel its payload decoded as
    (``ENCAP_NAMES``: Zeek's service of the outer connection). GRE and IP-in-IP have no outer row.
    A flow key that should match Zeek's leaves ``tunnel`` out: Zeek keys an inner connection by its
    own 5-tuple only. ``vlan`` is the outer 802.1Q id (0: none).

Per-packet flow membership (filled by the meter)
    ``flow_id[i]`` is the ``FlowRecord.flow_id`` of the flow packet ``i`` belongs to (0 for rows that are
    not ``ok``); ``from_orig[i]`` is True when the packet went originator -> responder (the originator is
    the side that sent the first SYN, else the receiver of a first SYN-ACK, else the sender of the flow's
    first packet unless that came from a likely server port, as in Zeek). For one packet::

        fid = int(block.flow_id[i])          # the flow it belongs to
        orig_to_resp = bool(block.from_orig[i])
        seq = int(block.seq[i])               # TCP sequence number of its first payload byte
        data = block.payload(i)               # its captured L4 payload (bytes, may be cut by snaplen)

    The payload-bearing packets of every flow, in capture order (what an HTTP/DNS parser wants)::

        for fid, rows in block.payload_rows_by_flow().items():
            for i in rows:                    # ascending row index == capture order
                handle(fid, bool(block.from_orig[i]), int(block.seq[i]), block.payload(i))

    A flow usually spans several blocks; ``flow_id`` is stable across blocks (and across interim
    records), so keep per-flow parser state in a dict keyed by ``flow_id``.

Payload bytes
    ``payload_off[i]`` is the offset of the L4 payload in ``block.buf`` (the reader's raw buffer, a
    uint8 array), ``payload_caplen[i]`` the number of payload bytes captured and ``payload_len[i]`` the
    payload length according to the IP header (larger when the snaplen cut the packet; smaller than
    ``payload_caplen`` never). ``block.payload(i)`` returns the captured bytes.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

#: ``lo`` half of an IPv4-mapped IPv6 address without the IPv4 part.
V4_MAPPED: int = 0xFFFF_0000_0000

TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58

# TCP flag bits as in the header's 13th byte.
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80


class PacketStatus(enum.IntEnum):
    """Why a row is (not) usable. ``OK`` rows decoded down to L4; every other value is a skip reason."""

    OK = 0
    NOT_IP = 1  # ARP, LLDP, STP, ...: not an error, just not metered
    TRUNCATED_LINK = 2  # frame shorter than its link-layer header
    TRUNCATED_IP = 3  # captured bytes end inside the IP header
    BAD_IP_HEADER = 4  # IPv4 IHL < 5, version mismatch, total length < header length
    TRUNCATED_L4 = 5  # captured bytes end inside the TCP/UDP/ICMP header
    BAD_L4_HEADER = 6  # TCP data offset < 5 or beyond the IP payload, UDP length < 8
    FRAGMENT = 7  # an IPv4/IPv6 fragment held for reassembly (its datagram is the row of the last one)
    BAD_TUNNEL = 8  # a tunnel header that does not decode
    TOO_DEEP = 9  # more nested encapsulations than the decoder follows
    UNKNOWN_LINKTYPE = 10  # the capture's link type is not one hopscope decodes
    BAD_IP_CHECKSUM = 11  # an IPv4 header checksum that does not verify: dropped (Zeek's bad_IP_checksum)
    #: Decoded down to L4, but the TCP/UDP/ICMP checksum does not verify: the flow meter finds or
    #: creates its flow and adds ``C``/``c`` to the history, nothing else sees it (as in Zeek)
    BAD_L4_CHECKSUM = 12
    OUTER_BAD_CHECKSUM = 13  # a packet inside a UDP tunnel whose outer datagram failed its checksum


@dataclass(slots=True)
class PacketBlock:
    """Decoded packets of one chunk of a capture, as columns (see the module docstring).

    All arrays have ``count`` rows. The dataclass is not frozen only because the meter fills
    ``flow_id`` and ``from_orig`` in place; nothing else changes after decoding.
    """

    buf: U8  # the raw chunk the rows point into (payload_off)
    count: int
    ts_ns: I64  # capture time, ns since the Unix epoch
    iface: U16  # interface index within the capture (pcapng IDB index, SLL2 ifindex, 0 for pcap)
    point: U16  # index into ``point_names``: the capture point the packet was seen at
    status: U8  # PacketStatus
    ip_version: U8  # 4 or 6 (0 when not ok)
    proto: U8  # IP protocol of the (inner) L4 header: 6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6
    src_hi: U64
    src_lo: U64
    dst_hi: U64
    dst_lo: U64
    sport: U16  # ICMP: type
    dport: U16  # ICMP: code
    tcp_flags: U8  # FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20, ECE, CWR
    seq: U32  # TCP sequence number (0 for non-TCP)
    ack: U32  # TCP acknowledgement number
    window: U16  # TCP window field as sent (not scaled)
    ip_id: U16  # IPv4 identification (0 for IPv6)
    ttl: U8  # IPv4 TTL / IPv6 hop limit
    ip_len: U32  # IP bytes of the (inner) packet, headers included, per the IP header
    payload_off: I64  # offset of the L4 payload in ``buf``
    payload_len: U32  # L4 payload bytes per the IP header
    payload_caplen: U32  # L4 payload bytes actually captured (<= payload_len)
    vlan: U16  # outer 802.1Q VLAN id, 0 when untagged
    tunnel: U16  # index into ``tunnels``, 0 = not tunnelled
    encap: U8  # index into ``ENCAP_NAMES``: the tunnel this UDP datagram's payload was decoded as (0: none)
    flow_id: U64  # filled by the meter: FlowRecord.flow_id of the packet's flow (0: none)
    from_orig: Bool  # filled by the meter: True when originator -> responder
    point_names: tuple[str, ...] = ("",)
    point_ifaces: tuple[str, ...] = ("",)  # interface label of each point (pcapng if_name, "if<N>" for SLL2)
    tunnels: list[str] = field(default_factory=lambda: [""])

    @classmethod
    def empty(cls, count: int, buf: U8 | None = None) -> PacketBlock:
        """A block of ``count`` zeroed rows (status OK); decoders fill the columns."""
        z = np.zeros
        return cls(
            buf=buf if buf is not None else np.zeros(0, np.uint8),
            count=count,
            ts_ns=z(count, np.int64),
            iface=z(count, np.uint16),
            point=z(count, np.uint16),
            status=z(count, np.uint8),
            ip_version=z(count, np.uint8),
            proto=z(count, np.uint8),
            src_hi=z(count, np.uint64),
            src_lo=z(count, np.uint64),
            dst_hi=z(count, np.uint64),
            dst_lo=z(count, np.uint64),
            sport=z(count, np.uint16),
            dport=z(count, np.uint16),
            tcp_flags=z(count, np.uint8),
            seq=z(count, np.uint32),
            ack=z(count, np.uint32),
            window=z(count, np.uint16),
            ip_id=z(count, np.uint16),
            ttl=z(count, np.uint8),
            ip_len=z(count, np.uint32),
            payload_off=z(count, np.int64),
            payload_len=z(count, np.uint32),
            payload_caplen=z(count, np.uint32),
            vlan=z(count, np.uint16),
            tunnel=z(count, np.uint16),
            encap=z(count, np.uint8),
            flow_id=z(count, np.uint64),
            from_orig=z(count, np.bool_),
        )

    def __len__(self) -> int:
        return self.count

    @property
    def ok(self) -> Bool:
        """Mask of the rows that decoded down to L4."""
        mask: Bool = self.status == PacketStatus.OK
        return mask

    def payload(self, i: int) -> bytes:
        """The captured L4 payload of row ``i`` (possibly shorter than ``payload_len[i]``)."""
        off = int(self.payload_off[i])
        return self.buf[off : off + int(self.payload_caplen[i])].tobytes()

    def payload_view(self, i: int, limit: int) -> memoryview:
        """At most ``limit`` captured payload bytes of row ``i`` as a view into ``buf`` (no copy)."""
        off = int(self.payload_off[i])
        return self.buf[off : off + min(int(self.payload_caplen[i]), limit)].data

    def src_str(self, i: int) -> str:
        """Source address of row ``i`` as text (dotted quad for IPv4)."""
        return format_addr(int(self.src_hi[i]), int(self.src_lo[i]))

    def dst_str(self, i: int) -> str:
        """Destination address of row ``i`` as text."""
        return format_addr(int(self.dst_hi[i]), int(self.dst_lo[i]))

    def payload_rows_by_flow(self) -> dict[int, list[int]]:
        """Row indices of the ok rows with captured payload, grouped by ``flow_id``, in capture order."""
        rows = np.flatnonzero(self.ok & (self.payload_caplen > 0) & (self.flow_id != 0))
        if len(rows) == 0:
            return {}
        fids = self.flow_id[rows]
        order = np.argsort(fids, kind="stable")
        rows, fids = rows[order], fids[order]
        cuts = np.flatnonzero(np.diff(fids)) + 1
        out: dict[int, list[int]] = {}
        for part_rows, fid in zip(np.split(rows, cuts), fids[np.r_[0, cuts]].tolist(), strict=True):
            out[int(fid)] = part_rows.tolist()
        return out

    def take(self, rows: npt.NDArray[np.intp]) -> PacketBlock:
        """A block of the given rows (same ``buf``, ``point_names`` and ``tunnels``)."""
        cols = {name: getattr(self, name)[rows] for name in COLUMN_NAMES}
        return PacketBlock(
            buf=self.buf,
            count=len(rows),
            point_names=self.point_names,
            point_ifaces=self.point_ifaces,
            tunnels=self.tunnels,
            **cols,
        )


#: The per-row columns of a ``PacketBlock``.
COLUMN_NAMES: tuple[str, ...] = (
    "ts_ns", "iface", "point", "status", "ip_version", "proto", "src_hi", "src_lo", "dst_hi", "dst_lo",
    "sport", "dport", "tcp_flags", "seq", "ack", "window", "ip_id", "ttl", "ip_len", "payload_off",
    "payload_len", "payload_caplen", "vlan", "tunnel", "encap", "flow_id", "from_orig",
)  # fmt: skip

#: ``encap`` values: the tunnel a UDP datagram carries, named as Zeek's analyzer, whose confirmation
#: puts the name in the outer connection's ``service`` (scripts/base/frameworks/analyzer/dpd.zeek).
#: Set on the outer row when the tunnel header decoded, whatever became of the packet inside.
ENCAP_NAMES: tuple[str, ...] = ("", "vxlan", "geneve", "teredo", "ayiya", "gtpv1", "gre")


@lru_cache(maxsize=65_536)  # a capture's addresses repeat: the L7 stage asks once per new flow and end
def format_addr(hi: int, lo: int) -> str:
    """Text form of a 128-bit address stored as two halves (IPv4-mapped addresses as dotted quads)."""
    if hi == 0 and (lo >> 32) == 0xFFFF:  # inet_ntoa: str(IPv4Address) without its object
        from socket import inet_ntoa  # imported where used: the socket module is 5 ms of start-up

        return inet_ntoa((lo & 0xFFFFFFFF).to_bytes(4, "big"))
    return str(ipaddress.ip_address(packed_addr(hi, lo)))


def packed_addr(hi: int, lo: int) -> bytes:
    """Network-order bytes of an address stored as two halves: 4 bytes for IPv4-mapped, else 16."""
    if hi == 0 and (lo >> 32) == 0xFFFF:
        return (lo & 0xFFFFFFFF).to_bytes(4, "big")
    return ((hi << 64) | lo).to_bytes(16, "big")


def addr_halves(text: str) -> tuple[int, int]:
    """Inverse of ``format_addr``: the (hi, lo) halves of an IPv4 or IPv6 address in text."""
    addr = ipaddress.ip_address(text)
    if addr.version == 4:
        return 0, V4_MAPPED | int(addr)
    value = int(addr)
    return value >> 64, value & 0xFFFF_FFFF_FFFF_FFFF


def concat_blocks(blocks: Sequence[PacketBlock]) -> PacketBlock:
    """Rows of several blocks in one block (for tests and small captures; payloads stay readable)."""
    if not blocks:
        return PacketBlock.empty(0)
    bufs, offsets, pos = [], [], 0
    for b in blocks:
        bufs.append(b.buf)
        offsets.append(pos)
        pos += len(b.buf)
    tunnels: list[str] = [""]
    cols: dict[str, list[npt.NDArray[np.generic]]] = {n: [] for n in COLUMN_NAMES}
    for b, base in zip(blocks, offsets, strict=True):
        remap = np.array([_intern(tunnels, t) for t in b.tunnels], dtype=np.uint16)
        for name in COLUMN_NAMES:
            col = getattr(b, name)
            if name == "payload_off":
                col = col + base
            elif name == "tunnel":
                col = remap[col]
            cols[name].append(col)
    merged = {n: np.concatenate(v) for n, v in cols.items()}
    return PacketBlock(
        buf=np.concatenate(bufs),
        count=sum(b.count for b in blocks),
        point_names=blocks[0].point_names,
        point_ifaces=blocks[0].point_ifaces,
        tunnels=tunnels,
        **merged,
    )


def _intern(table: list[str], text: str) -> int:
    try:
        return table.index(text)
    except ValueError:
        table.append(text)
        return len(table) - 1
