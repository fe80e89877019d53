"""The packets of one request at one capture point: read back, decoded, selected, written as pcapng.

Given where a flow's packets lie (``PacketIndex`` rows) and the 4-tuple a hop saw, ``flow_packets``
reads the frames, decodes them with the probes' decoder and describes each as a ``Packet`` (direction
relative to the hop's client, TCP flags, seq, ack, payload length, whether it repeats bytes already
sent). ``exchange_packets`` then keeps the packets of one request/response exchange on a connection
that may carry many (keep-alive), by this rule:

- **data**: a client-to-server segment whose first byte lies in the request's sequence range
  ``[req_tcp_seq, req_tcp_seq + req_bytes)``, or a server-to-client one in the response's
  ``[resp_tcp_seq, resp_tcp_seq + resp_bytes)`` (retransmissions of those bytes included);
- **ACKs in between**: a segment without payload, SYN, FIN or RST whose acknowledgement number
  acknowledges bytes of the other direction's range (``ack`` in ``(start, end + 1]``, the 1 for a FIN);
- **handshake**, with the connection's first exchange (the request's first byte is the byte after
  the client's ISN): the SYN, the SYN-ACK and the client's ACK of the SYN-ACK;
- **teardown**, with its last exchange (a FIN or RST whose sequence number is where the exchange's
  bytes end in its direction, or, from a side that sent nothing in the exchange, whose
  acknowledgement is where the other side's bytes end): the FIN and RST segments and the ACKs of
  the FINs.

So a connection that carries one request gives its whole life to that request, and on a keep-alive
connection each request gets its own exchange, the first the handshake and the last the teardown.
Without TCP sequence numbers (a DNS query over UDP) the exchange is the flow's packets from the
request's first byte to the response's last. An L4 trace (no request) is the whole flow.

``write_pcapng`` writes packets grouped by capture point: one Interface Description Block per point
and link type, named after the point (``if_name``), nanosecond timestamps, packets in time order.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Final

import numpy as np

from hopscope.probes.decode import Decoder
from hopscope.probes.packet_index import Frames, read_frames, unpack_frames
from hopscope.probes.packets import ACK, FIN, RST, SYN, TCP, PacketBlock
from hopscope.probes.readers import PAD_BYTES, Interface, RawBlock
from hopscope.records import PacketIndex, RequestRecord

#: TCP flag letters, lowest bit first (as scapy writes them: "S", "SA", "PA", "FA").
FLAG_LETTERS: Final = (
    (0x01, "F"), (0x02, "S"), (0x04, "R"), (0x08, "P"), (0x10, "A"), (0x20, "U"), (0x40, "E"), (0x80, "C"),
)  # fmt: skip
_MOD: Final = 1 << 32


def flags_text(flags: int) -> str:
    """TCP flags as letters (``"SA"`` for a SYN-ACK; ``""`` for none or not TCP)."""
    return "".join(letter for bit, letter in FLAG_LETTERS if flags & bit)


@dataclass(frozen=True, slots=True)
class Packet:
    """One packet of a flow at one capture point, as the sequence view shows it."""

    ts_ns: int  # capture time at this point (not clock-corrected)
    dir: str  # "c2s" (from the hop's client) or "s2c"
    src: str
    dst: str
    sport: int
    dport: int
    proto: int  # IP protocol
    flags: int  # TCP flag bits (0 when not TCP)
    seq: int  # TCP sequence number (0 when not TCP)
    ack: int  # TCP acknowledgement number
    len: int  # L4 payload bytes per the IP header
    retransmission: bool  # TCP: its bytes (or its SYN/FIN) were sent before in this direction
    linktype: int  # LINKTYPE_* of ``frame``
    frame: bytes  # the captured bytes
    origlen: int  # the frame's length on the wire

    def as_json(self) -> dict[str, object]:
        """The object of ``GET /api/v1/traces/{id}/packets`` (time as a decimal string)."""
        return {
            "ts_ns": str(self.ts_ns), "dir": self.dir, "src": self.src, "dst": self.dst, "sport": self.sport,
            "dport": self.dport, "flags": flags_text(self.flags), "seq": self.seq, "ack": self.ack,
            "len": self.len, "retransmission": self.retransmission,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Endpoints:
    """The client and server address and port a hop saw (``Span.orig_h`` ...)."""

    client_h: str
    client_p: int
    server_h: str
    server_p: int


def flow_packets(rows: Sequence[PacketIndex], hop: Endpoints) -> list[Packet]:
    """Every packet the index rows name, in time order, as seen between ``hop``'s client and server.
    A frame holding several packets (a UDP tunnel) gives the one between those two ends; a frame
    holding none of theirs is left out. Raises ``PacketsUnavailable`` when a file is gone."""
    out: list[Packet] = []
    for row in rows:
        frames = unpack_frames(row.frames)
        data = read_frames(row.file, frames)
        out += _packets_of(frames, data, row.linktype, hop)
    out.sort(key=lambda p: p.ts_ns)
    return _mark_retransmissions(out)


def _packets_of(frames: Frames, data: list[bytes], linktype: int, hop: Endpoints) -> list[Packet]:
    decoder = Decoder()
    block = decoder.decode(_raw_of(frames, data, linktype))
    row_frames = decoder.row_frames if decoder.row_frames is not None else np.arange(block.count)
    taken: set[int] = set()
    out = []
    for r in np.flatnonzero(block.ok).tolist():
        frame = int(row_frames[r])
        direction = None if frame in taken else _direction(block, r, hop)
        if direction is None:
            continue
        taken.add(frame)
        out.append(Packet(
            ts_ns=int(block.ts_ns[r]), dir=direction, src=block.src_str(r), dst=block.dst_str(r),
            sport=int(block.sport[r]), dport=int(block.dport[r]), proto=int(block.proto[r]),
            flags=int(block.tcp_flags[r]) if block.proto[r] == TCP else 0,
            seq=int(block.seq[r]), ack=int(block.ack[r]), len=int(block.payload_len[r]), retransmission=False,
            linktype=linktype, frame=data[frame], origlen=int(frames["origlen"][frame]),
        ))  # fmt: skip
    return out


def _raw_of(frames: Frames, data: list[bytes], linktype: int) -> RawBlock:
    sizes = frames["caplen"].astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if len(sizes) else sizes
    buf = np.frombuffer(b"".join(data) + bytes(PAD_BYTES), np.uint8)
    return RawBlock(
        buf=buf, offset=offsets, caplen=frames["caplen"].astype(np.uint32),
        origlen=frames["origlen"].astype(np.uint32), ts_ns=frames["ts_ns"].astype(np.int64),
        iface=np.zeros(len(frames), np.uint16), interfaces=(Interface(0, linktype, 0),),
    )  # fmt: skip


def _direction(block: PacketBlock, r: int, hop: Endpoints) -> str | None:
    src, dst = block.src_str(r), block.dst_str(r)
    sport, dport = int(block.sport[r]), int(block.dport[r])
    if (src, sport, dst, dport) == (hop.client_h, hop.client_p, hop.server_h, hop.server_p):
        return "c2s"
    if (src, sport, dst, dport) == (hop.server_h, hop.server_p, hop.client_h, hop.client_p):
        return "s2c"
    return None


def _mark_retransmissions(packets: list[Packet]) -> list[Packet]:
    """Each TCP packet whose payload (or SYN/FIN) was already sent in its direction is a retransmission:
    its last byte is not beyond the furthest byte sent before (sequence space relative to the first
    packet of the direction)."""
    base: dict[str, int] = {}
    furthest: dict[str, int] = {}
    out = []
    for p in packets:
        if p.proto != TCP:
            out.append(p)
            continue
        start = base.setdefault(p.dir, p.seq)
        rel = (p.seq - start) % _MOD
        if rel >= _MOD // 2:  # before the first packet seen (reordered capture): treat as new
            out.append(p)
            continue
        span = p.len + (1 if p.flags & (SYN | FIN) else 0)
        end = rel + span
        seen = furthest.get(p.dir)
        repeat = span > 0 and seen is not None and end <= seen
        if span > 0:
            furthest[p.dir] = max(end, seen or 0)
        out.append(_replace_retrans(p, repeat))
    return out


def _replace_retrans(p: Packet, value: bool) -> Packet:
    if p.retransmission == value:
        return p
    fields = {name: getattr(p, name) for name in Packet.__slots__}
    fields["retransmission"] = value
    return Packet(**fields)


def _within(x: int, start: int, length: int) -> bool:
    """``x`` in ``[start, start + length)`` in sequence space (mod 2**32)."""
    return (x - start) % _MOD < length


@dataclass(frozen=True, slots=True)
class _Exchange:
    """The sequence ranges of one exchange: (first byte, length) per direction."""

    c2s: tuple[int, int]
    s2c: tuple[int, int]
    first: bool  # the connection's first exchange: the handshake goes with it
    synack_next: int | None  # the server's ISN + 1, when its SYN-ACK was seen

    def ranges(self, direction: str) -> tuple[tuple[int, int], tuple[int, int]]:
        """(own, other) ranges of a packet going ``direction``."""
        return (self.c2s, self.s2c) if direction == "c2s" else (self.s2c, self.c2s)


def exchange_packets(packets: Sequence[Packet], request: RequestRecord) -> list[Packet]:
    """The packets of ``request``'s exchange among its flow's ``packets`` (the rule: module docstring)."""
    if not request.req_tcp_seq:
        last = max(request.resp_last_ns, request.req_last_ns)
        return [p for p in packets if request.req_first_ns <= p.ts_ns <= last]
    c2s = (request.req_tcp_seq, max(request.req_bytes, 1))
    s2c = (request.resp_tcp_seq, request.resp_bytes if request.resp_tcp_seq else 0)
    syns = [p for p in packets if p.flags & SYN]
    first = any(p.dir == "c2s" and (p.seq + 1) % _MOD == c2s[0] for p in syns)
    synack_next = next(((p.seq + 1) % _MOD for p in syns if p.dir == "s2c"), None)
    exchange = _Exchange(c2s, s2c, first, synack_next)
    return [p for p in packets if _in_exchange(p, exchange)]


def _in_exchange(p: Packet, ex: _Exchange) -> bool:
    own, other = ex.ranges(p.dir)
    if p.len > 0:  # data: its first byte in this direction's range
        return own[1] > 0 and _within(p.seq, *own)
    if p.flags & SYN:  # the handshake, with the first exchange
        return ex.first
    if p.flags & (FIN | RST):  # the teardown, where this direction's bytes of the exchange end ...
        if own[1] > 0:
            return (p.seq - own[0]) % _MOD in (own[1], own[1] + 1)
        # ... or, from a side that sent nothing in it (a server resetting instead of answering), the
        # segment acknowledging the other side's last byte
        return other[1] > 0 and (p.ack - other[0]) % _MOD in (other[1], other[1] + 1)
    if not p.flags & ACK:
        return False
    if other[1] > 0 and 0 < (p.ack - other[0]) % _MOD <= other[1] + 1:  # acknowledges bytes of the exchange
        return True
    # the client's ACK of the SYN-ACK, before the request's first byte
    return ex.first and p.dir == "c2s" and p.ack == ex.synack_next and p.seq == own[0]


# --- pcapng -------------------------------------------------------------------------------------

_SHB: Final = 0x0A0D0D0A
_IDB: Final = 0x00000001
_EPB: Final = 0x00000006
_BOM: Final = 0x1A2B3C4D
_OPT_IF_NAME: Final = 2
_OPT_IF_TSRESOL: Final = 9
_OPT_SHB_USERAPPL: Final = 4


def _option(code: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return struct.pack("<HH", code, len(value)) + value + b"\0" * pad


def _block(btype: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", btype, length) + body + struct.pack("<I", length)


def write_pcapng(out: BinaryIO, points: Iterable[tuple[str, Sequence[Packet]]], application: str = "hopscope") -> int:
    """Write the packets of each point (name, packets) as one pcapng section: an interface per point
    and link type named after the point, nanosecond timestamps, every packet in time order. Returns
    the number of packets written."""
    out.write(_block(_SHB, struct.pack("<IHHq", _BOM, 1, 0, -1)
                     + _option(_OPT_SHB_USERAPPL, application.encode()) + _option(0, b"")))  # fmt: skip
    interfaces: dict[tuple[str, int], int] = {}
    stamped: list[tuple[int, int, Packet]] = []
    for name, packets in points:
        for p in packets:
            key = (name, p.linktype)
            if key not in interfaces:
                interfaces[key] = len(interfaces)
                options = _option(_OPT_IF_NAME, name.encode()) + _option(_OPT_IF_TSRESOL, b"\x09") + _option(0, b"")
                out.write(_block(_IDB, struct.pack("<HHI", p.linktype, 0, 0) + options))
            stamped.append((p.ts_ns, interfaces[key], p))
    stamped.sort(key=lambda item: (item[0], item[1]))
    for ts, iface, p in stamped:
        pad = (-len(p.frame)) % 4
        body = struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(p.frame), p.origlen) + p.frame
        out.write(_block(_EPB, body + b"\0" * pad))
    return len(stamped)
