"""Decode a ``RawBlock`` into a ``PacketBlock``: link layer, IP, L4 headers, tunnels.

Two paths fill the same columns:

- the **fast path** (numpy, a whole block at once) for the common case: Ethernet with at most one
  802.1Q tag, Linux SLL/SLL2, raw IP, BSD loopback; IPv4 (with options) that is not a fragment, IPv6
  whose next header is TCP/UDP/ICMPv6; TCP, UDP, ICMP; not a tunnel.
- the **slow path** (``hopscope.probes.layers``, one packet at a time) for everything the fast path
  declines: the link types PPP and 802.11, MPLS, PPPoE, PBB, VNTag, FabricPath, VLAN stacks (QinQ),
  IPv6 extension headers, IPv4/IPv6 fragments (reassembled across blocks by ``fragments.Reassembler``),
  the tunnels of ``layers`` (UDP tunnels by port, Teredo and AYIYA also by content). It decodes the
  inner packet of a tunnel and describes the tunnel.

A block has one row per frame, in capture order, with one exception that follows Zeek: the outer
datagram of a UDP tunnel (VXLAN, Geneve, Teredo, AYIYA, GTP, GRE over UDP) is a packet of its own, so
such a frame has two rows (more when tunnels nest), the outer datagram first, then the inner packet,
with the same timestamp and capture point. ``Decoder.added_rows`` counts these extra rows. A
fragmented datagram is one row, at the fragment that completed it; the other fragments are
``FRAGMENT`` rows, and a reassembled payload lies in bytes appended to the block's ``buf``.

The fast path runs in C when the kernel is built (``_decode.decode_fast``, probes/csrc/decode.c: one
call per block); the numpy code below stays its reference twin (``HOPSCOPE_NATIVE=0``), and
tests/probes/test_decode_native.py checks that both give the same columns, statuses, skip counters
and slow-path rows.

A frame that does not decode gets a ``PacketStatus`` reason and is counted in ``Decoder.skips``; it
never stops the decoder. An inner packet that does not decode behind a decoded outer datagram is
counted there too.

With ``checksums`` on, the decoded rows' IPv4 header and TCP/UDP/ICMP checksums are validated as Zeek
validates them (``hopscope.probes.checksums``): a bad IPv4 header drops the packet, a bad L4 checksum
leaves it to the flow meter's history (``C``/``c``) only; both are counted in ``skips``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from hopscope.probes import checksums, kernels, layers
from hopscope.probes.fragments import Reassembler
from hopscope.probes.packets import ICMP, ICMP6, TCP, UDP, V4_MAPPED, PacketBlock, PacketStatus
from hopscope.probes.readers import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    LINKTYPE_RAW_OLD,
    RawBlock,
)

I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

ETH_IPV4: Final = 0x0800
ETH_IPV6: Final = 0x86DD
ETH_VLAN: Final = 0x8100
#: UDP ports of the tunnels the slow path opens (as source or destination port).
TUNNEL_UDP_PORTS: Final = tuple(layers.UDP_TUNNELS)
#: Ethertype the link layer gives the frames of link types the slow path decodes entirely.
SLOW_LINK: Final = -1
#: IP protocols the slow path opens (IPIP, IPv6-in-IP, GRE).
TUNNEL_PROTOS: Final = (4, 41, 47)

#: Point-name resolver: (interface index, interface name, SLL2 ifindex) -> capture point name.
PointResolver = Callable[[int, str, int], str]


def _u8(buf: U8, idx: I64) -> I64:
    return buf[idx].astype(np.int64)


def _be16(buf: U8, idx: I64) -> I64:
    return (buf[idx].astype(np.int64) << 8) | buf[idx + 1]


def unaligned(buf: U8, dtype: str) -> npt.NDArray[Any]:
    """A view of ``buf`` with one ``dtype`` item starting at every byte (stride 1, unaligned): gathering
    ``view[idx]`` reads a multi-byte field at each offset in one pass, 3-4x faster than gathering bytes."""
    size = np.dtype(dtype).itemsize
    return np.ndarray(shape=(max(len(buf) - size + 1, 0),), dtype=dtype, buffer=buf, strides=(1,))


def _be32(buf: U8, idx: I64) -> I64:
    out: I64 = unaligned(buf, ">u4")[idx].astype(np.int64)
    return out


def _be64(buf: U8, idx: I64) -> npt.NDArray[np.uint64]:
    out: npt.NDArray[np.uint64] = unaligned(buf, ">u8")[idx].astype(np.uint64)
    return out


class Decoder:
    """Decodes raw blocks; keeps skip counters (``skips``, by ``PacketStatus`` name) across blocks.

    ``resolve_point`` names the capture point of a packet from its interface (see ``PointResolver``);
    by default every packet is at point ``default_point``. ``fragments`` holds IP fragments across
    blocks until their datagram is complete (a default ``Reassembler`` when not given). ``checksums``
    validates checksums (module docstring; Zeek's ``ignore_checksums = F``): on for capture files by
    default, off for live captures on the sending host, whose outgoing packets carry checksums the NIC
    fills in later (offload).
    """

    def __init__(
        self, default_point: str = "", resolve_point: PointResolver | None = None,
        fragments: Reassembler | None = None, checksums: bool = False,
    ) -> None:  # fmt: skip
        self.default_point = default_point
        self.resolve_point = resolve_point
        self.skips: Counter[str] = Counter()
        self.slow_packets = 0
        self.added_rows = 0  # rows beyond one per frame: the inner packets of UDP tunnels
        #: The frame of each row of the block last decoded (None: one row per frame, row i is frame i).
        self.row_frames: npt.NDArray[np.int64] | None = None
        self.point_names: list[str] = [default_point]
        self.point_ifaces: list[str] = [""]
        self._point_ids: dict[tuple[int, str, int], int] = {}
        self._kernel = kernels.load("_decode")  # probes/csrc/decode.c; None: the numpy fast path below
        self.fragments = fragments if fragments is not None else Reassembler()
        self.checksums = checksums

    def decode(self, raw: RawBlock) -> PacketBlock:
        """Decode every frame of ``raw``; the result has one row per frame, in order."""
        if self._kernel is not None:
            return self._decode_native(raw)
        n = raw.count
        block = PacketBlock.empty(n, raw.buf)
        block.ts_ns[:] = raw.ts_ns
        block.iface[:] = raw.iface
        linktypes = np.array([i.linktype for i in raw.interfaces], np.int64)[raw.iface.astype(np.int64)]
        l3, ethertype, vlan, ifindex, link_ok = _link_layer(raw, linktypes)
        block.vlan[:] = vlan
        slow = self._fast_path(block, raw, l3, ethertype, link_ok)
        block.status[~link_ok] = np.where(
            np.isin(linktypes[~link_ok], _LINK_HEADER_LEN_KEYS), PacketStatus.TRUNCATED_LINK,
            PacketStatus.UNKNOWN_LINKTYPE,
        )  # fmt: skip
        extra = None
        if slow.any():
            rows = np.flatnonzero(slow)
            extra = self._slow_path(block, raw, rows, linktypes[rows], ifindex)
        self._assign_points(block, raw, ifindex)
        bad_rows = np.flatnonzero(block.status != PacketStatus.OK)
        bad = block.status[bad_rows]
        if len(bad):
            for name in (*_ROW_FIELDS, "payload_off", "tunnel"):
                getattr(block, name)[bad_rows] = 0
            for code, cnt in zip(*np.unique(bad, return_counts=True), strict=True):
                self.skips[PacketStatus(int(code)).name.lower()] += int(cnt)
        return self._with_extra(block, extra)

    def _decode_native(self, raw: RawBlock) -> PacketBlock:
        """``decode`` with link layer and fast path in C (``_decode.decode_fast``); same rows, same skips."""
        assert self._kernel is not None
        n = raw.count
        block = PacketBlock.empty(n, raw.buf)
        block.ts_ns[:] = raw.ts_ns
        block.iface[:] = raw.iface
        table = np.array([i.linktype for i in raw.interfaces], np.int64)
        ifindex, slow = np.empty(n, np.int64), np.empty(n, np.uint8)
        counts = np.zeros(16, np.int64)  # rows per PacketStatus, fast-path skips first
        cols = tuple(getattr(block, name) for name in _NATIVE_COLUMNS)
        offset, caplen, iface = (np.ascontiguousarray(a) for a in (raw.offset, raw.caplen, raw.iface))
        extra = None
        if self._kernel.decode_fast(raw.buf, offset, caplen, iface, table, (*cols, ifindex, slow), counts):
            rows = np.flatnonzero(slow)
            extra = self._slow_path(block, raw, rows, table[iface[rows]], ifindex)
            bad_rows = rows[block.status[rows] != PacketStatus.OK]
            for name in (*_ROW_FIELDS, "payload_off", "tunnel"):
                getattr(block, name)[bad_rows] = 0
            counts += np.bincount(block.status[bad_rows], minlength=16)
        self._assign_points(block, raw, ifindex)
        for code in np.flatnonzero(counts).tolist():
            self.skips[PacketStatus(code).name.lower()] += int(counts[code])
        return self._with_extra(block, extra)

    def _with_extra(self, block: PacketBlock, extra: _Extra | None) -> PacketBlock:
        self.row_frames = None if extra is None else extra.row_frames(block.count)
        out = block
        if extra is not None:
            out = extra.insert_rows(block)
            self.added_rows += out.count - block.count
        if self.checksums:
            self._verify(out)
        return out

    def _verify(self, block: PacketBlock) -> None:
        """Validate checksums (``checksums.verify``); count the failures in ``skips`` and clear the rows
        dropped (a bad L4 checksum keeps its columns for the meter)."""
        bad_ip, bad_l4 = checksums.verify(block, self._kernel)  # the kernel: C, else numpy
        if not (bad_ip or bad_l4):
            return
        dropped = np.flatnonzero(
            (block.status == PacketStatus.BAD_IP_CHECKSUM) | (block.status == PacketStatus.OUTER_BAD_CHECKSUM)
        )
        for name in (*_ROW_FIELDS, "payload_off", "tunnel"):
            getattr(block, name)[dropped] = 0
        for status in (PacketStatus.BAD_IP_CHECKSUM, PacketStatus.BAD_L4_CHECKSUM, PacketStatus.OUTER_BAD_CHECKSUM):
            count = int(np.count_nonzero(block.status == status))
            if count:
                self.skips[status.name.lower()] += count

    # --- fast path ----------------------------------------------------------------------------

    def _fast_path(
        self, block: PacketBlock, raw: RawBlock, l3: I64, ethertype: I64, link_ok: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.bool_]:
        """Fill the rows the fast path handles; return the mask of rows for the slow path."""
        buf = raw.buf
        frame_end = raw.offset + raw.caplen.astype(np.int64)
        slow = link_ok & ~np.isin(ethertype, (ETH_IPV4, ETH_IPV6))
        is4 = link_ok & (ethertype == ETH_IPV4)
        is6 = link_ok & (ethertype == ETH_IPV6)
        block.status[link_ok & ~is4 & ~is6] = PacketStatus.NOT_IP
        slow &= np.isin(ethertype, (*layers.SLOW_ETHERTYPES, SLOW_LINK))
        block.status[slow] = PacketStatus.OK
        rows4 = np.flatnonzero(is4)
        rows6 = np.flatnonzero(is6)
        s4 = self._ipv4(block, buf, rows4, l3[rows4], frame_end[rows4])
        s6 = self._ipv6(block, buf, rows6, l3[rows6], frame_end[rows6])
        slow[rows4[s4]] = True
        slow[rows6[s6]] = True
        return slow

    def _ipv4(self, block: PacketBlock, buf: U8, rows: I64, l3: I64, end: I64) -> npt.NDArray[np.bool_]:
        short = l3 + 20 > end
        words = unaligned(buf, ">u4")  # fields gathered four bytes at a time, then split
        head = words[l3].astype(np.int64)  # version/IHL, DSCP, total length
        vihl = head >> 24
        ihl = (vihl & 15) * 4
        total = head & 0xFFFF
        total = np.where(total == 0, end - l3, total)  # TSO/GSO captures carry a 0 length
        ident_frag = words[l3 + 4].astype(np.int64)  # identification, flags + fragment offset
        frag = ident_frag & 0xFFFF
        ttl_proto = words[l3 + 8].astype(np.int64) >> 16  # TTL, protocol
        proto = ttl_proto & 255
        bad = ~short & (((vihl >> 4) != 4) | (ihl < 20) | (total < ihl) | (l3 + ihl > end))
        fragmented = (frag & 0x3FFF) != 0
        tunnel = np.isin(proto, TUNNEL_PROTOS)
        go = ~short & ~bad & ~fragmented & ~tunnel
        self._mark(block, rows, short, PacketStatus.TRUNCATED_IP)
        self._mark(block, rows, bad, PacketStatus.BAD_IP_HEADER)
        block.ip_version[rows] = 4
        block.proto[rows] = proto
        block.ttl[rows] = ttl_proto >> 8
        block.ip_id[rows] = ident_frag >> 16
        block.src_lo[rows] = words[l3 + 12].astype(np.uint64) | np.uint64(V4_MAPPED)
        block.dst_lo[rows] = words[l3 + 16].astype(np.uint64) | np.uint64(V4_MAPPED)
        block.ip_len[rows] = np.maximum(total, 0)
        slow_l4 = self._l4(block, buf, rows[go], proto[go], l3[go] + ihl[go], l3[go] + total[go], end[go])
        slow: npt.NDArray[np.bool_] = ~short & ~bad & (fragmented | tunnel)
        slow[np.flatnonzero(go)[slow_l4]] = True
        return slow

    def _ipv6(self, block: PacketBlock, buf: U8, rows: I64, l3: I64, end: I64) -> npt.NDArray[np.bool_]:
        short = l3 + 40 > end
        version = _u8(buf, l3) >> 4
        plen = _be16(buf, l3 + 4)
        nxt = _u8(buf, l3 + 6)
        bad = ~short & (version != 6)
        simple = np.isin(nxt, (TCP, UDP, ICMP6))
        go = ~short & ~bad & simple
        self._mark(block, rows, short, PacketStatus.TRUNCATED_IP)
        self._mark(block, rows, bad, PacketStatus.BAD_IP_HEADER)
        block.ip_version[rows] = 6
        block.proto[rows] = nxt
        block.ttl[rows] = _u8(buf, l3 + 7)
        block.src_hi[rows] = _be64(buf, l3 + 8)
        block.src_lo[rows] = _be64(buf, l3 + 16)
        block.dst_hi[rows] = _be64(buf, l3 + 24)
        block.dst_lo[rows] = _be64(buf, l3 + 32)
        plen = np.where(plen == 0, end - l3 - 40, plen)  # jumbogram or GSO: take what was captured
        block.ip_len[rows] = np.maximum(plen + 40, 0)
        l4 = l3[go] + 40
        slow_l4 = self._l4(block, buf, rows[go], nxt[go], l4, l4 + plen[go], end[go])
        slow: npt.NDArray[np.bool_] = ~short & ~bad & ~simple
        slow[np.flatnonzero(go)[slow_l4]] = True
        return slow

    def _l4(
        self, block: PacketBlock, buf: U8, rows: I64, proto: I64, l4: I64, ip_end: I64, end: I64
    ) -> npt.NDArray[np.bool_]:
        """Fill L4 columns of ``rows``; return the mask (over ``rows``) of tunnels for the slow path."""
        is_tcp, is_udp = proto == TCP, proto == UDP
        is_icmp = (proto == ICMP) | (proto == ICMP6)
        hlen = np.where(is_tcp, 20, np.where(is_udp | is_icmp, 8, 0))
        short = (l4 + hlen > end) | (l4 + hlen > ip_end)
        self._mark(block, rows, short & (l4 + hlen > ip_end), PacketStatus.BAD_L4_HEADER)
        self._mark(block, rows, short & (l4 + hlen <= ip_end), PacketStatus.TRUNCATED_L4)
        ports = is_tcp | is_udp
        words = unaligned(buf, ">u4")
        both = words[l4].astype(np.int64)  # source and destination port (ICMP: type, code, checksum)
        sport, dport = both >> 16, both & 0xFFFF
        block.sport[rows] = np.where(ports, sport, np.where(is_icmp, sport >> 8, 0))
        block.dport[rows] = np.where(ports, dport, np.where(is_icmp, sport & 255, 0))
        tcp = np.flatnonzero(is_tcp & ~short)
        t_rows, t_l4 = rows[tcp], l4[tcp]
        control = words[t_l4 + 12].astype(np.int64)  # data offset, flags, window
        doff = (control >> 28) * 4
        block.seq[t_rows] = words[t_l4 + 4]
        block.ack[t_rows] = words[t_l4 + 8]
        block.tcp_flags[t_rows] = (control >> 16) & 255
        block.window[t_rows] = control & 0xFFFF
        hlen[tcp] = doff
        bad_doff = (doff < 20) | (t_l4 + doff > ip_end[tcp])
        self._mark(block, t_rows, bad_doff, PacketStatus.BAD_L4_HEADER)
        pay = l4 + hlen
        plen = np.maximum(ip_end - pay, 0)
        block.payload_off[rows] = np.minimum(pay, end)  # snaplen may cut inside the L4 header options
        block.payload_len[rows] = plen
        block.payload_caplen[rows] = np.clip(np.minimum(end, ip_end) - pay, 0, plen)
        udp = is_udp & ~short
        tunnels: npt.NDArray[np.bool_] = udp & (np.isin(dport, TUNNEL_UDP_PORTS) | np.isin(sport, TUNNEL_UDP_PORTS))
        maybe = np.flatnonzero(udp & ~tunnels)
        tunnels[maybe] = _maybe_detected_tunnel(buf, pay[maybe], block.payload_caplen[rows[maybe]].astype(np.int64))
        return tunnels

    @staticmethod
    def _mark(block: PacketBlock, rows: I64, mask: npt.NDArray[np.bool_], status: PacketStatus) -> None:
        if mask.any():
            block.status[rows[mask]] = status

    # --- slow path and points -----------------------------------------------------------------

    def _slow_path(self, block: PacketBlock, raw: RawBlock, rows: I64, linktypes: I64, ifindex: I64) -> _Extra:
        """Decode ``rows`` one by one with ``layers.decode_frame`` (``linktypes`` has one entry per row).

        A row gets the frame's first packet; the frame's further packets (the inner packets of UDP
        tunnels) are returned, to become rows of their own after it (``_insert_rows``). An inner packet
        that does not decode behind a decoded outer datagram is counted in ``skips`` by its reason."""
        self.slow_packets += len(rows)
        extra = _Extra(base=len(block.buf))
        scopes = (raw.iface[rows].astype(np.int64) << 32) | ifindex[rows]
        for i, lt, scope in zip(rows.tolist(), linktypes.tolist(), scopes.tolist(), strict=True):
            start = int(raw.offset[i])
            frame = memoryview(raw.buf[start : start + int(raw.caplen[i])])  # type: ignore[arg-type]
            result = layers.decode_frame(frame, lt, self.fragments, scope)
            if not result.packets:
                _clear_row(block, i)
                block.status[i] = result.status
                continue
            if result.status != PacketStatus.OK:
                self.skips[result.status.name.lower()] += 1
            first, *rest = result.packets
            _fill_row(block, i, first, extra.offset(first, start), extra.tunnel_id(block, first.tunnel))
            if rest:
                extra.rows[i] = [(p, extra.offset(p, start), extra.tunnel_id(block, p.tunnel)) for p in rest]
        given_up = {"fragment_evicted": self.fragments.evicted, "fragment_oversized": self.fragments.oversized}
        for name, dropped in given_up.items():
            if dropped:  # datagrams the reassembler gave up on (its limits), counted like skips
                self.skips[name] = dropped
        return extra

    def _assign_points(self, block: PacketBlock, raw: RawBlock, ifindex: I64) -> None:
        if self.resolve_point is None:
            block.point_names, block.point_ifaces = tuple(self.point_names), tuple(self.point_ifaces)
            return
        keys = raw.iface.astype(np.int64) << 32 | ifindex
        one = len(keys) > 0 and bool((keys == keys[0]).all())  # one interface (the usual case): no sort
        uniq, inv = (keys[:1], None) if one else np.unique(keys, return_inverse=True)
        ids = np.empty(len(uniq), np.uint16)
        for j, key in enumerate(uniq.tolist()):
            idx, ifx = key >> 32, key & 0xFFFFFFFF
            name = raw.interfaces[idx].name
            ids[j] = self._point_id((idx, name, ifx))
        block.point[:] = ids[0] if inv is None else ids[inv]
        block.point_names, block.point_ifaces = tuple(self.point_names), tuple(self.point_ifaces)

    def _point_id(self, key: tuple[int, str, int]) -> int:
        pid = self._point_ids.get(key)
        if pid is None:
            assert self.resolve_point is not None
            name = self.resolve_point(*key)
            if name in self.point_names:
                pid = self.point_names.index(name)
            else:
                pid = len(self.point_names)
                self.point_names.append(name)
                self.point_ifaces.append(interface_label(key[1], key[2]))
            self._point_ids[key] = pid
        return pid


def interface_label(name: str, ifindex: int) -> str:
    """How a packet's interface is called: the SLL2 interface index if the link header has one (a
    ``tcpdump -i any`` capture, whose pcapng interface is just "any"), else the pcapng ``if_name``."""
    return f"if{ifindex}" if ifindex else name


_ROW_FIELDS: Final = (
    "ip_version", "proto", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "tcp_flags", "seq",
    "ack", "window", "ip_id", "ttl", "ip_len", "payload_len", "payload_caplen", "encap",
)  # fmt: skip


#: The ``PacketBlock`` columns ``_decode.decode_fast`` fills, in its argument order (decode.c: C_STATUS...).
_NATIVE_COLUMNS: Final = (
    "status", "ip_version", "proto", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "tcp_flags", "seq",
    "ack", "window", "ip_id", "ttl", "ip_len", "payload_off", "payload_len", "payload_caplen", "vlan",
)  # fmt: skip


@dataclass(slots=True)
class _Extra:
    """What the slow path adds to a block: rows for the further packets of a frame (inserted after the
    frame's row, in order) and the reassembled datagrams their payloads lie in (appended to ``buf``)."""

    base: int  # len(block.buf): where appended datagrams start
    #: row -> its frame's further packets: (packet, payload offset, tunnel id)
    rows: dict[int, list[tuple[layers.Decoded, int, int]]] = field(default_factory=dict)
    buffers: list[bytes] = field(default_factory=list)
    _buffer_off: dict[int, int] = field(default_factory=dict)  # id(buffer) -> its offset past ``base``
    _tunnels: dict[str, int] | None = None
    _size: int = 0

    def offset(self, pkt: layers.Decoded, frame_start: int) -> int:
        """The payload offset of ``pkt`` in the block's (extended) buffer."""
        if pkt.buffer is None:
            return frame_start + pkt.payload_off
        at = self._buffer_off.get(id(pkt.buffer))
        if at is None:
            at = self._buffer_off[id(pkt.buffer)] = self._size
            self.buffers.append(pkt.buffer)
            self._size += len(pkt.buffer)
        return self.base + at + pkt.payload_off

    def tunnel_id(self, block: PacketBlock, tunnel: str) -> int:
        if not tunnel:
            return 0
        if self._tunnels is None:
            self._tunnels = {t: i for i, t in enumerate(block.tunnels)}
        tid = self._tunnels.get(tunnel)
        if tid is None:
            tid = self._tunnels[tunnel] = len(block.tunnels)
            block.tunnels.append(tunnel)
        return tid

    def row_frames(self, count: int) -> npt.NDArray[np.int64] | None:
        """The frame of each row ``insert_rows`` makes of a block of ``count`` frames (None: no rows added)."""
        if not self.rows:
            return None
        counts = np.ones(count, np.int64)
        for i, packets in self.rows.items():
            counts[i] += len(packets)
        return np.repeat(np.arange(count), counts)

    def insert_rows(self, block: PacketBlock) -> PacketBlock:
        """``block`` with the added rows and datagrams (itself when there are none)."""
        if self.buffers:
            block.buf = np.concatenate([block.buf, np.frombuffer(b"".join(self.buffers), np.uint8)])
        if not self.rows:
            return block
        counts = np.ones(block.count, np.int64)
        for i, packets in self.rows.items():
            counts[i] += len(packets)
        firsts = np.cumsum(counts) - counts  # where each original row lands
        out = block.take(np.repeat(np.arange(block.count), counts))
        out.buf, out.tunnels = block.buf, block.tunnels
        for i, packets in self.rows.items():
            for k, (pkt, payload_off, tid) in enumerate(packets, start=int(firsts[i]) + 1):
                _fill_row(out, k, pkt, payload_off, tid)
        return out


def _maybe_detected_tunnel(buf: U8, pay: I64, cap: I64) -> npt.NDArray[np.bool_]:
    """UDP payloads that may be Teredo or AYIYA on another port (``layers.UDP_DETECTORS``): the cheap
    first checks of Zeek's detectors, exactly as decode.c makes them; the slow path decides."""
    out = np.zeros(len(pay), np.bool_)
    some = np.flatnonzero(cap >= 3)
    p = pay[some]
    b0, b1, b2 = _u8(buf, p), _u8(buf, p + 1), _u8(buf, p + 2)
    ayiya = (b1 == 0x52) & (b2 == 0x11)
    v6 = (b0 >> 4) == 6
    teredo = (cap[some] >= 40) & ((v6 & (b1 <= 1)) | ((b0 == 0) & (b1 <= 1)))
    check = np.flatnonzero((cap[some] >= 40) & v6 & ~teredo)
    prefix = 0x20010000
    teredo[check] = (_be32(buf, p[check] + 8) == prefix) | (_be32(buf, p[check] + 24) == prefix)
    out[some] = ayiya | teredo
    return out


def _clear_row(block: PacketBlock, i: int) -> None:
    for name in _ROW_FIELDS:
        getattr(block, name)[i] = 0


def _fill_row(block: PacketBlock, i: int, pkt: layers.Decoded, payload_off: int, tunnel_id: int) -> None:
    block.status[i] = PacketStatus.OK
    for name in _ROW_FIELDS:
        getattr(block, name)[i] = getattr(pkt, name)
    block.payload_off[i] = payload_off
    if pkt.vlan:
        block.vlan[i] = pkt.vlan
    block.tunnel[i] = tunnel_id


_LINK_HEADER_LEN: Final[Mapping[int, int]] = {
    LINKTYPE_ETHERNET: 14,
    LINKTYPE_LINUX_SLL: 16,
    LINKTYPE_LINUX_SLL2: 20,
    LINKTYPE_RAW: 0,
    LINKTYPE_RAW_OLD: 0,
    LINKTYPE_IPV4: 0,
    LINKTYPE_IPV6: 0,
    LINKTYPE_NULL: 4,
    LINKTYPE_LOOP: 4,
}
_LINK_HEADER_LEN_KEYS: Final = np.array(list(_LINK_HEADER_LEN), np.int64)


def _link_layer(raw: RawBlock, linktypes: I64) -> tuple[I64, I64, I64, I64, npt.NDArray[np.bool_]]:
    """Per frame: L3 offset, ethertype, outer VLAN id, SLL2 ifindex, and whether the link layer decoded."""
    n, buf, off = raw.count, raw.buf, raw.offset
    caplen = raw.caplen.astype(np.int64)
    l3 = np.zeros(n, np.int64)
    et = np.zeros(n, np.int64)
    vlan = np.zeros(n, np.int64)
    ifindex = np.zeros(n, np.int64)
    ok = np.zeros(n, np.bool_)
    for lt in np.unique(linktypes).tolist():
        sel = np.flatnonzero(linktypes == lt)
        hlen = _LINK_HEADER_LEN.get(lt)
        if lt in layers.SLOW_LINKTYPES:
            et[sel], ok[sel] = SLOW_LINK, True
            continue
        if hlen is None:
            continue
        o = off[sel]
        fits = caplen[sel] >= max(hlen, 1)
        if lt == LINKTYPE_ETHERNET:
            e = _be16(buf, o + 12)
            tagged = (e == ETH_VLAN) & (caplen[sel] >= 18)
            vlan[sel] = np.where(tagged, _be16(buf, o + 14) & 0xFFF, 0)
            et[sel] = np.where(tagged, _be16(buf, o + 16), e)
            l3[sel] = o + np.where(tagged, 18, 14)
        elif lt == LINKTYPE_LINUX_SLL:
            et[sel], l3[sel] = _be16(buf, o + 14), o + 16
        elif lt == LINKTYPE_LINUX_SLL2:
            et[sel], l3[sel] = _be16(buf, o), o + 20
            ifindex[sel] = np.where(fits, _be32(buf, o + 4), 0)
        elif lt in (LINKTYPE_NULL, LINKTYPE_LOOP):
            fam = buf[o[:, None] + np.arange(4)].view("<u4" if lt == LINKTYPE_NULL else ">u4")[:, 0]
            fam = np.where(fam > 0xFFFF, fam.byteswap(), fam)  # NULL is host order: accept both
            et[sel] = np.where(fam == 2, ETH_IPV4, np.where(np.isin(fam, (10, 24, 28, 30)), ETH_IPV6, 0))
            l3[sel] = o + 4
        else:
            version = _u8(buf, o) >> 4
            et[sel] = np.where(version == 4, ETH_IPV4, np.where(version == 6, ETH_IPV6, 0))
            l3[sel] = o
        ok[sel] = fits
    return l3, et, vlan, ifindex, ok
