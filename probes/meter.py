"""Flow metering per capture point: ``PacketBlock`` in, ``FlowRecord``s out.

A flow is bidirectional and keyed by (capture point, outer VLAN, tunnel, protocol, the two endpoints
as seen at that point), direction-normalised, so both directions of a connection meet in one flow.
The originator is the sender of the first SYN (or of the first packet when no handshake is seen; a flow
first seen as a SYN-ACK is flipped, history ``^``).

Per block the meter works on columns, not packets:

1. a 64-bit key per packet (hash of the normalised tuple), grouped with one stable argsort;
2. one dict lookup per flow of the block (not per packet);
3. the TCP state machine (``tcpstate.TcpConn``) runs in Python over the few packets that can change
   state or history: SYN/FIN/RST packets, and per direction the first packet, first pure ACK and first
   data packet. A pure SYN with a new ISN on an existing flow starts a new flow (Zeek's reuse rule);
   the rest of that flow's packets in the block are then walked one by one.
4. counters (packets, IP and payload bytes per direction, retransmissions, out-of-order segments, zero
   windows) with ``np.bincount`` over (flow, direction); retransmission and out-of-order detection use a
   running maximum of the sequence space per (flow, direction) (``np.maximum.accumulate``).

Definitions: a retransmission is a segment with payload whose end does not advance the highest sequence
number seen in its direction (Zeek's rule); an out-of-order segment is one with payload that starts
beyond it (data before it is missing or late). Zero windows are counted on non-RST TCP packets.

Records are emitted when a flow ends (FIN both ways or RST, after ``linger_s`` of capture time so late
ACKs and retransmissions are counted), after ``idle_timeout_s`` without packets, every
``interval_s`` for long flows (``final`` = 0, cumulative counters), when the flow table is full
(``evicted``, the least recently active tenth goes), and at ``flush()`` (end of capture).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from hopscope.probes import tcpstate
from hopscope.probes.community_id import ICMP4_PAIRS, ICMP6_PAIRS, community_id
from hopscope.probes.packets import ACK, FIN, ICMP, ICMP6, RST, SYN, TCP, UDP, PacketBlock, format_addr
from hopscope.records import FlowRecord

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

_M1: Final = np.uint64(0xBF58476D1CE4E5B9)
_M2: Final = np.uint64(0x94D049BB133111EB)
_GOLD: Final = np.uint64(0x9E3779B97F4A7C15)
_NS: Final = 1_000_000_000


def _mix(x: U64) -> U64:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _icmp_pair_table(pairs: dict[int, int]) -> tuple[I64, npt.NDArray[np.bool_]]:
    counterpart = np.zeros(256, np.int64)
    two_way = np.zeros(256, np.bool_)
    for t, c in pairs.items():
        counterpart[t], two_way[t] = c, True
    return counterpart, two_way


_ICMP4: Final = _icmp_pair_table(ICMP4_PAIRS)
_ICMP6: Final = _icmp_pair_table(ICMP6_PAIRS)


@dataclass(frozen=True, slots=True)
class MeterConfig:
    """Timeouts in seconds of capture time, sizes in flows and bytes."""

    tcp_idle_timeout_s: float = 300.0  # Zeek's tcp_inactivity_timeout
    udp_idle_timeout_s: float = 60.0  # Zeek's udp_inactivity_timeout (also ICMP and others)
    linger_s: float = 1.0  # after FIN/FIN or RST, wait this long for stragglers before the final record
    interval_s: float = 60.0  # interim record period for long flows (0: never)
    max_flows: int = 1_000_000  # flow table limit; beyond it the least recently active are evicted
    payload_hash_bytes: int = 64  # first payload bytes hashed per direction
    sweep_every_s: float = 1.0  # how often (capture time) idle/linger/interim checks run


class Flow:
    """Mutable state of one flow in the table (internal to the meter)."""

    __slots__ = (
        "close_reason",
        "closed_ns",
        "community_id",
        "end_ns",
        "first_seq",
        "flipped",
        "flow_id",
        "hist",
        "hop_ip_id",
        "icmp_code",
        "icmp_type",
        "ip_version",
        "key",
        "last_report_ns",
        "max_end",
        "orig_ep",
        "orig_h",
        "orig_p",
        "payload_hash",
        "point",
        "proto",
        "resp_h",
        "resp_p",
        "rtt_client_us",
        "rtt_server_us",
        "seq_base",
        "start_ns",
        "stats",
        "stats_flags",
        "syn_ns",
        "syn_seq",
        "synack_ns",
        "synack_seq",
        "tcp",
        "tunnel",
        "vlan",
    )  # fmt: skip

    def __init__(self) -> None:
        self.tcp: tcpstate.TcpConn | None = None
        self.flipped = False
        self.closed_ns = 0
        self.close_reason = ""
        self.syn_seq = self.synack_seq = self.hop_ip_id = 0
        self.syn_ns = self.synack_ns = 0
        self.rtt_client_us = self.rtt_server_us = 0
        self.first_seq: list[int] = [-1, -1]  # per direction (0 orig, 1 resp): first seq seen
        self.seq_base: list[int] = [-1, -1]  # per direction: seq that relative numbering starts at
        self.max_end: list[int] = [-(1 << 62), -(1 << 62)]  # per direction: highest relative seq end
        self.payload_hash = [0, 0]
        # counters: orig_pkts, resp_pkts, orig_bytes, resp_bytes, orig_ip, resp_ip, retrans o/r,
        # ooo o/r, zero window o/r
        self.stats = [0] * 12
        self.last_report_ns = 0
        self.hist: list[str] = []  # UDP history letters (TCP keeps its own in ``tcp``)
        self.stats_flags = 0
        self.community_id = ""


_STAT_NAMES: Final = (
    "orig_pkts", "resp_pkts", "orig_bytes", "resp_bytes", "orig_ip_bytes", "resp_ip_bytes",
    "orig_retrans_pkts", "resp_retrans_pkts", "orig_ooo_pkts", "resp_ooo_pkts", "orig_zero_win",
    "resp_zero_win",
)  # fmt: skip


class FlowMeter:
    """Meters flows of ``PacketBlock``s; ``process`` returns the records that became due.

    ``counters`` (a ``Counter``) exposes packets metered, flows created, records emitted, evictions and
    reused 5-tuples.
    """

    def __init__(self, config: MeterConfig | None = None, host: str = "", hop_kind: str = "") -> None:
        self.config = config or MeterConfig()
        self.host = host
        self.hop_kind = hop_kind
        self.flows: dict[int, Flow] = {}
        self.closing: dict[int, Flow] = {}
        self.counters: Counter[str] = Counter()
        self._pending: list[FlowRecord] = []
        self._now_ns = 0
        self._next_sweep_ns = 0
        self._retiring: list[Flow] = []

    # --- the per-block pipeline ---------------------------------------------------------------

    def process(self, block: PacketBlock) -> list[FlowRecord]:
        """Meter the ok rows of ``block`` (filling its ``flow_id``/``from_orig``); return due records."""
        rows = np.flatnonzero(block.ok)
        if len(rows):
            self._meter(block, rows)
        if block.count:
            self._now_ns = max(self._now_ns, int(block.ts_ns.max()))
        if self._now_ns >= self._next_sweep_ns:
            self._sweep()
            self._next_sweep_ns = self._now_ns + int(self.config.sweep_every_s * _NS)
        out, self._pending = self._pending, []
        return out

    def flush(self) -> list[FlowRecord]:
        """Emit a final record for every flow still in the table (end of capture)."""
        for flow in list(self.flows.values()):
            self._finish(flow, "" if flow.closed_ns else "unfinished")
        out, self._pending = self._pending, []
        return out

    def _meter(self, block: PacketBlock, rows: I64) -> None:
        key, src_ep = self._keys(block, rows)
        order = np.argsort(key, kind="stable")
        rows, key, src_ep = rows[order], key[order], src_ep[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(rows)]))
        flows = self._lookup(block, rows, key, src_ep, starts)
        orig_ep = np.array([f.orig_ep for f in flows], np.uint64)
        from_orig = src_ep == orig_ep[group]
        rtx, ooo, zw, letters = self._seq_analysis(block, rows, from_orig, group, flows)
        seg_flows, seg = self._events(
            block, rows, from_orig, src_ep, starts, group, flows, letters, (rtx, ooo, zw)
        )
        self._counters(block, rows, from_orig, seg, seg_flows, (rtx, ooo, zw))
        block.flow_id[rows] = np.array([f.flow_id for f in seg_flows], np.uint64)[seg]
        block.from_orig[rows] = from_orig
        self.counters["packets"] += len(rows)
        for old in self._retiring:
            self._finish(old, "")
        self._retiring.clear()
        if len(self.flows) > self.config.max_flows:
            self._evict()

    def _keys(self, block: PacketBlock, rows: I64) -> tuple[U64, U64]:
        """Direction-normalised flow key and the source endpoint's hash, per row."""
        proto = block.proto[rows].astype(np.int64)
        sp = block.sport[rows].astype(np.int64)
        dp = block.dport[rows].astype(np.int64)
        for number, (counterpart, two_way) in ((ICMP, _ICMP4), (ICMP6, _ICMP6)):
            icmp = np.flatnonzero(proto == number)
            if len(icmp):
                t = sp[icmp]
                dp[icmp] = np.where(two_way[t & 255], counterpart[t & 255], dp[icmp])
        ea = _mix(_mix(block.src_hi[rows] ^ _GOLD) ^ block.src_lo[rows]) ^ _mix(sp.astype(np.uint64) + _GOLD)
        eb = _mix(_mix(block.dst_hi[rows] ^ _GOLD) ^ block.dst_lo[rows]) ^ _mix(dp.astype(np.uint64) + _GOLD)
        tun = np.array([hash(t) & 0xFFFFFFFF for t in block.tunnels], np.uint64)[block.tunnel[rows]]
        ctx = (
            proto.astype(np.uint64) << np.uint64(56)
            | block.point[rows].astype(np.uint64) << np.uint64(40)
            | block.vlan[rows].astype(np.uint64) << np.uint64(24)
        ) ^ _mix(tun)
        lo, hi = np.minimum(ea, eb), np.maximum(ea, eb)
        key = _mix(_mix(lo ^ _mix(ctx)) + hi)
        key[key == 0] = 1
        return key, ea

    def _lookup(self, block: PacketBlock, rows: I64, key: U64, src_ep: U64, starts: I64) -> list[Flow]:
        """The flow of every group (created on its first packet)."""
        flows: list[Flow] = []
        table = self.flows
        for g, k in enumerate(key[starts].tolist()):
            flow = table.get(k)
            if flow is None:
                flow = self._new_flow(block, int(rows[starts[g]]), k)
                table[k] = flow
            flows.append(flow)
        return flows

    def _new_flow(self, block: PacketBlock, i: int, key: int, force_orig: bool | None = None) -> Flow:
        f = Flow()
        f.key = key
        f.proto = int(block.proto[i])
        f.ip_version = int(block.ip_version[i])
        f.point = block.point_names[int(block.point[i])]
        f.vlan = int(block.vlan[i])
        f.tunnel = block.tunnels[int(block.tunnel[i])]
        f.start_ns = f.end_ns = f.last_report_ns = int(block.ts_ns[i])
        flags = int(block.tcp_flags[i])
        flip = f.proto == TCP and flags & (SYN | ACK | RST) == SYN | ACK
        if force_orig is not None:
            flip = not force_orig
        f.flipped = flip and force_orig is None
        src = (int(block.src_hi[i]), int(block.src_lo[i]))
        dst = (int(block.dst_hi[i]), int(block.dst_lo[i]))
        sp, dp = int(block.sport[i]), int(block.dport[i])
        if f.proto in (ICMP, ICMP6):
            f.orig_h, f.resp_h, f.orig_p, f.resp_p = src, dst, sp, dp  # Zeek: orig_p type, resp_p code
        elif flip:
            f.orig_h, f.resp_h, f.orig_p, f.resp_p = dst, src, dp, sp
        else:
            f.orig_h, f.resp_h, f.orig_p, f.resp_p = src, dst, sp, dp
        f.orig_ep = self._endpoint_hash(block, i, use_dst=flip)
        if f.proto == TCP:
            f.tcp = tcpstate.TcpConn()
        digest = hashlib.blake2b(
            f"{f.point}|{f.vlan}|{f.tunnel}|{f.proto}|{f.orig_h}|{f.orig_p}|{f.resp_h}|{f.resp_p}|{f.start_ns}"
            .encode(), digest_size=8,
        ).digest()  # fmt: skip
        f.flow_id = int.from_bytes(digest, "big") or 1
        self.counters["flows"] += 1
        return f

    @staticmethod
    def _endpoint_hash(block: PacketBlock, i: int, use_dst: bool) -> int:
        rows = np.array([i])
        sp = block.sport[rows].astype(np.int64)
        dp = block.dport[rows].astype(np.int64)
        proto = int(block.proto[i])
        if proto in (ICMP, ICMP6):
            counterpart, two_way = _ICMP4 if proto == ICMP else _ICMP6
            t = int(sp[0]) & 255
            if two_way[t]:
                dp[0] = counterpart[t]
        if use_dst:
            hi, lo, port = block.dst_hi[rows], block.dst_lo[rows], dp
        else:
            hi, lo, port = block.src_hi[rows], block.src_lo[rows], sp
        return int((_mix(_mix(hi ^ _GOLD) ^ lo) ^ _mix(port.astype(np.uint64) + _GOLD))[0])

    # --- TCP sequence analysis (vectorised) -----------------------------------------------------

    def _seq_analysis(
        self, block: PacketBlock, rows: I64, from_orig: npt.NDArray[np.bool_], group: I64, flows: list[Flow]
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_], I64]:
        """Per row: retransmission, out-of-order, zero window, and history letter code (1 W, 2 T, 3 both).

        Runs per (flow, direction) over the rows in capture order, continuing the state kept on each
        flow from earlier blocks (sequence base, highest sequence end, T/W counts).
        """
        n = len(rows)
        rtx = np.zeros(n, np.bool_)
        ooo = np.zeros(n, np.bool_)
        zw = np.zeros(n, np.bool_)
        letters = np.zeros(n, np.int64)
        is_tcp = block.proto[rows] == TCP
        if not is_tcp.any():
            return rtx, ooo, zw, letters
        flags = block.tcp_flags[rows].astype(np.int64)
        seq = block.seq[rows].astype(np.int64)
        plen = block.payload_len[rows].astype(np.int64)
        rst = (flags & RST) != 0
        zw = is_tcp & (block.window[rows] == 0) & ~rst
        for d in (0, 1):
            idx = np.flatnonzero(is_tcp & (from_orig if d == 0 else ~from_orig))
            if len(idx) == 0:
                continue
            g = group[idx]
            first = np.r_[True, g[1:] != g[:-1]]
            run = np.cumsum(first) - 1
            run_groups = g[first]
            base = np.array([flows[x].seq_base[d] for x in run_groups.tolist()], np.int64)
            base = np.where(base < 0, seq[idx][first], base)
            init = np.array([flows[x].max_end[d] for x in run_groups.tolist()], np.int64)
            rel = ((seq[idx] - base[run] + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
            seglen = np.where(rst[idx], 0, plen[idx]) + ((flags[idx] & SYN) != 0) + ((flags[idx] & FIN) != 0)
            end = np.where(rst[idx], -(1 << 40), rel + seglen)
            big = np.int64(1 << 42)
            cm = np.maximum.accumulate(end + run * big) - run * big
            prev = np.r_[-(1 << 62), cm[:-1]]
            prev = np.where(first, -(1 << 62), prev)
            prev = np.maximum(prev, init[run])
            has_data = (plen[idx] > 0) & ~rst[idx]
            started = prev > -(1 << 41)
            rtx[idx] = has_data & started & (end <= prev)
            ooo[idx] = has_data & started & (rel > prev)
            last = np.r_[np.flatnonzero(first)[1:] - 1, len(idx) - 1]
            new_max = np.maximum(cm[last], init)
            counts_r = np.array([flows[x].stats[6 + d] for x in run_groups.tolist()], np.int64)
            counts_z = np.array([flows[x].stats[10 + d] for x in run_groups.tolist()], np.int64)
            letters[idx] |= _scaled_marks(zw[idx], run, counts_z) * 1
            letters[idx] |= _scaled_marks(rtx[idx], run, counts_r) * 2
            for x, b, m in zip(run_groups.tolist(), base.tolist(), new_max.tolist(), strict=True):
                flows[x].seq_base[d] = b
                flows[x].max_end[d] = m
        return rtx, ooo, zw, letters

    # --- events: state machine, handshake, payload hashes ---------------------------------------

    def _events(
        self, block: PacketBlock, rows: I64, from_orig: npt.NDArray[np.bool_], src_ep: U64, starts: I64,
        group: I64, flows: list[Flow], letters: I64, per_row: tuple[npt.NDArray[np.bool_], ...],
    ) -> tuple[list[Flow], I64]:  # fmt: skip
        """Run the per-packet state over the rows that matter; returns (flow per segment, segment per row)."""
        n = len(rows)
        flags = block.tcp_flags[rows].astype(np.int64)
        plen = block.payload_len[rows].astype(np.int64)
        is_tcp = block.proto[rows] == TCP
        control = is_tcp & ((flags & (SYN | FIN | RST)) != 0)
        interesting = control | (letters != 0)
        plain = ~control
        for d_mask in (from_orig, ~from_orig):
            for cat in (d_mask, d_mask & plain & (plen > 0), d_mask & plain & (plen == 0) & is_tcp):
                idx = np.flatnonzero(cat)
                if len(idx):
                    g = group[idx]
                    interesting[idx[np.r_[True, g[1:] != g[:-1]]]] = True
        seg = group.copy()
        seg_flows = list(flows)
        ev = np.flatnonzero(interesting)
        cols = zip(
            ev.tolist(), group[ev].tolist(), from_orig[ev].tolist(), flags[ev].tolist(),
            block.seq[rows[ev]].tolist(), plen[ev].tolist(), block.ts_ns[rows[ev]].tolist(),
            letters[ev].tolist(), strict=True,
        )  # fmt: skip
        walked: set[int] = set()
        ends = np.r_[starts[1:], n]
        for p, g, fo, fl, sq, ln, ts, lt in cols:
            if g in walked:
                continue
            flow = seg_flows[g]
            if self._is_reuse(flow, fo, fl, sq):
                walked.add(g)
                self._walk(block, rows, p, int(ends[g]), src_ep, from_orig, seg, seg_flows, per_row)
                continue
            self._event(flow, block, int(rows[p]), fo, fl, sq, ln, ts, lt)
        return seg_flows, seg

    @staticmethod
    def _is_reuse(flow: Flow, from_orig: bool, flags: int, seq: int) -> bool:
        """Zeek's reuse rule: a pure SYN whose ISN differs from the originator's starts a new connection."""
        if flow.tcp is None or flags & (SYN | ACK) != SYN or (flow.first_seq[0] < 0 and flow.first_seq[1] < 0):
            return False
        if flow.syn_seq:
            orig_start = flow.syn_seq
        elif flow.first_seq[0] >= 0:
            orig_start = (flow.first_seq[0] - 1) & 0xFFFFFFFF
        else:
            orig_start = 0
        return seq != orig_start

    def _event(
        self, flow: Flow, block: PacketBlock, i: int, fo: bool, flags: int, seq: int, length: int, ts: int,
        letters: int,
    ) -> None:  # fmt: skip
        d = 0 if fo else 1
        if flow.first_seq[d] < 0:
            flow.first_seq[d] = seq
        if length and not flow.payload_hash[d] and block.payload_caplen[i]:
            flow.payload_hash[d] = payload_hash(block.payload(i)[: self.config.payload_hash_bytes])
        tcp = flow.tcp
        if tcp is None:
            if length and flow.proto == UDP:
                bit = 1 << d
                if not flow.stats_flags & bit:
                    flow.stats_flags |= bit
                    flow.hist.append("D" if fo else "d")
            return
        was_closed = tcp.closed
        tcp.packet(fo, flags, seq, length)
        if letters & 1:
            tcp.add(fo, "W")
        if letters & 2:
            tcp.add(fo, "T")
        self._handshake(flow, block, i, fo, flags, seq, ts)
        if tcp.closed and not was_closed:
            flow.closed_ns = ts
            self.closing[flow.key] = flow

    @staticmethod
    def _handshake(flow: Flow, block: PacketBlock, i: int, fo: bool, flags: int, seq: int, ts: int) -> None:
        if flags & (SYN | ACK | RST | FIN) == SYN and fo:
            if not flow.syn_seq:
                flow.syn_seq = seq
                flow.hop_ip_id = int(block.ip_id[i])
            flow.syn_ns = ts
        elif flags & (SYN | ACK | RST) == SYN | ACK and not fo:
            if not flow.synack_seq:
                flow.synack_seq = seq
                flow.synack_ns = ts
                if flow.syn_ns:
                    flow.rtt_server_us = max((ts - flow.syn_ns) // 1000, 0)
        elif fo and flags & ACK and not flags & SYN and flow.synack_ns and not flow.rtt_client_us:
            flow.rtt_client_us = max((ts - flow.synack_ns) // 1000, 1)

    def _walk(
        self, block: PacketBlock, rows: I64, p: int, end: int, src_ep: U64, from_orig: npt.NDArray[np.bool_],
        seg: I64, seg_flows: list[Flow], per_row: tuple[npt.NDArray[np.bool_], ...],
    ) -> None:  # fmt: skip
        """Slow path after a reused 5-tuple: every remaining packet of the group, one by one."""
        rtx, ooo, zw = per_row
        flow = seg_flows[int(seg[p])]
        counts = [[0, 0], [0, 0]]  # per direction: retransmissions, zero windows
        for q in range(p, end):
            i = int(rows[q])
            flags, seq, length = int(block.tcp_flags[i]), int(block.seq[i]), int(block.payload_len[i])
            if q == p or self._is_reuse(flow, bool(from_orig[q]), flags, seq):
                self._retire(flow)
                flow = self._new_flow(block, i, flow.key, force_orig=True)
                self.flows[flow.key] = flow
                seg_flows.append(flow)
                counts = [[0, 0], [0, 0]]
                self.counters["reused_tuples"] += 1
            seg[q] = len(seg_flows) - 1
            fo = bool(src_ep[q] == np.uint64(flow.orig_ep))
            from_orig[q] = fo
            letters = self._walk_seq(flow, block, i, fo, flags, seq, length, counts, (rtx, ooo, zw), q)
            self._event(flow, block, i, fo, flags, seq, length, int(block.ts_ns[i]), letters)

    @staticmethod
    def _walk_seq(
        flow: Flow, block: PacketBlock, i: int, fo: bool, flags: int, seq: int, length: int,
        counts: list[list[int]], per_row: tuple[npt.NDArray[np.bool_], ...], q: int,
    ) -> int:  # fmt: skip
        """The per-packet twin of ``_seq_analysis`` for walked rows."""
        rtx, ooo, zw = per_row
        d = 0 if fo else 1
        if flow.seq_base[d] < 0:
            flow.seq_base[d] = seq
        rel = ((seq - flow.seq_base[d] + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
        rst = bool(flags & RST)
        seglen = (0 if rst else length) + bool(flags & SYN) + bool(flags & FIN)
        prev = flow.max_end[d]
        started = prev > -(1 << 41)
        data = length > 0 and not rst
        rtx[q] = data and started and rel + seglen <= prev
        ooo[q] = data and started and rel > prev
        zw[q] = not rst and int(block.window[i]) == 0
        if not rst:
            flow.max_end[d] = max(prev, rel + seglen)
        letters = 0
        for bit, hit, k in ((1, zw[q], 1), (2, rtx[q], 0)):
            if hit:
                counts[d][k] += 1
                if _is_power_of_ten(counts[d][k]):
                    letters |= bit
        return letters

    def _retire(self, flow: Flow) -> None:
        """End ``flow`` because its 5-tuple was reused; it is finished after this block's counters."""
        self._retiring.append(flow)

    # --- counters ---------------------------------------------------------------------------------

    def _counters(
        self, block: PacketBlock, rows: I64, from_orig: npt.NDArray[np.bool_], seg: I64,
        seg_flows: list[Flow], per_row: tuple[npt.NDArray[np.bool_], ...],
    ) -> None:  # fmt: skip
        rtx, ooo, zw = per_row
        nseg = len(seg_flows)
        sd = seg * 2 + (~from_orig).astype(np.int64)
        size = 2 * nseg
        columns = (
            np.bincount(sd, minlength=size),
            np.bincount(sd, weights=block.payload_len[rows], minlength=size),
            np.bincount(sd, weights=block.ip_len[rows], minlength=size),
            np.bincount(sd[rtx], minlength=size),
            np.bincount(sd[ooo], minlength=size),
            np.bincount(sd[zw], minlength=size),
        )
        stacked = np.stack([c.astype(np.int64).reshape(nseg, 2) for c in columns], axis=1).reshape(nseg, 12).tolist()
        ts = block.ts_ns[rows]
        last_pos = np.full(nseg, -1, np.int64)
        last_pos[seg] = np.arange(len(seg))  # the last write wins: highest position per segment
        ends = ts[last_pos].tolist()
        for flow, add, end in zip(seg_flows, stacked, ends, strict=True):
            st = flow.stats
            for k in range(12):
                st[k] += add[k]
            if end > flow.end_ns:
                flow.end_ns = end

    # --- emission -----------------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Finish lingering closed flows and idle flows; emit interim records for long flows."""
        now, cfg = self._now_ns, self.config
        linger = int(cfg.linger_s * _NS)
        for flow in list(self.closing.values()):
            if flow.end_ns + linger <= now:
                self._finish(flow, "")
        tcp_idle, udp_idle = int(cfg.tcp_idle_timeout_s * _NS), int(cfg.udp_idle_timeout_s * _NS)
        interval = int(cfg.interval_s * _NS)
        for flow in list(self.flows.values()):
            idle = tcp_idle if flow.proto == TCP else udp_idle
            if flow.end_ns + idle <= now:
                self._finish(flow, "timeout")
            elif interval and flow.last_report_ns + interval <= now:
                flow.last_report_ns = now
                self._pending.append(self._record(flow, final=False, reason=""))
                self.counters["interim_records"] += 1

    def _evict(self) -> None:
        flows = sorted(self.flows.values(), key=lambda f: f.end_ns)
        for flow in flows[: max(1, len(flows) // 10)]:
            self._finish(flow, "evicted")
            self.counters["evictions"] += 1

    def _finish(self, flow: Flow, reason: str) -> None:
        if self.flows.get(flow.key) is flow:
            del self.flows[flow.key]
        if self.closing.get(flow.key) is flow:
            del self.closing[flow.key]
        self._pending.append(self._record(flow, final=True, reason=reason))
        self.counters["records"] += 1

    def _record(self, flow: Flow, final: bool, reason: str) -> FlowRecord:
        st = flow.stats
        if flow.tcp is not None:
            history = flow.tcp.history_text(flow.flipped)
            state = flow.tcp.conn_state(st[2], st[3], history)
        else:
            history = "".join(flow.hist)
            state = tcpstate.udp_conn_state(st[0], st[1]) if flow.proto == UDP else "OTH"
        orig_h, resp_h = format_addr(*flow.orig_h), format_addr(*flow.resp_h)
        if not flow.community_id:
            flow.community_id = community_id(flow.proto, orig_h, resp_h, flow.orig_p, flow.resp_p)
        return FlowRecord(
            point=flow.point, host=self.host, iface=flow.point, hop_kind=self.hop_kind,
            flow_id=flow.flow_id, start_ns=flow.start_ns, end_ns=flow.end_ns, final=int(final),
            ip_version=flow.ip_version, proto=flow.proto, orig_h=orig_h, orig_p=flow.orig_p,
            resp_h=resp_h, resp_p=flow.resp_p,
            **dict(zip(_STAT_NAMES, st, strict=True)),
            syn_seq=flow.syn_seq, synack_seq=flow.synack_seq, syn_ip_id=flow.hop_ip_id,
            rtt_client_us=min(flow.rtt_client_us, 0xFFFFFFFF), rtt_server_us=min(flow.rtt_server_us, 0xFFFFFFFF),
            conn_state=state, history=history, close_type=close_type(state, history, reason, final, flow),
            community_id=flow.community_id, vlan=flow.vlan, tunnel=flow.tunnel,
            orig_payload_hash=flow.payload_hash[0], resp_payload_hash=flow.payload_hash[1],
        )  # fmt: skip


def close_type(state: str, history: str, reason: str, final: bool, flow: Flow) -> str:
    """How a flow ended, from its conn_state and what ended the record.

    ``normal`` FIN both ways; ``client_rst``/``server_rst`` a RST from the originator/responder (REJ is
    ``server_rst``); ``server_syn_miss`` SYN(s) never answered; ``client_ack_miss`` SYN-ACK never
    acknowledged; ``half_close`` a FIN from one side only; ``timeout`` idle; ``evicted`` flow table full;
    ``unfinished`` still open at the end of the capture; ``open`` interim record of a live flow.
    """
    if not final:
        return "open"
    if reason == "evicted":
        return reason
    if flow.proto == TCP:
        by_state = {
            "SF": "normal", "REJ": "server_rst", "RSTR": "server_rst", "RSTRH": "server_rst",
            "RSTO": "client_rst", "RSTOS0": "client_rst", "S0": "server_syn_miss",
            "S2": "half_close", "S3": "half_close", "SH": "half_close", "SHR": "half_close",
        }  # fmt: skip
        if state in by_state:
            return by_state[state]
        if state == "S1" and flow.synack_seq and not flow.rtt_client_us:
            return "client_ack_miss"
    return reason or "unfinished"


def payload_hash(data: bytes) -> int:
    """64-bit hash of payload bytes (the first ``payload_hash_bytes`` of a direction); 0 means none."""
    if not data:
        return 0
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") or 1


_POWERS_OF_TEN: Final = np.array([10**k for k in range(19)], np.int64)


def _is_power_of_ten(n: int) -> bool:
    return n > 0 and 10 ** (len(str(n)) - 1) == n


def _scaled_marks(mask: npt.NDArray[np.bool_], run: I64, init: I64) -> npt.NDArray[np.bool_]:
    """Rows where a per-run running count of ``mask`` (starting at ``init``) reaches 1, 10, 100, ..."""
    if not mask.any():
        return np.zeros(len(mask), np.bool_)
    cs = np.cumsum(mask)
    first = np.r_[True, run[1:] != run[:-1]]
    before = (cs - mask)[first]
    count = cs - before[run] + init[run]
    return mask & np.isin(count, _POWERS_OF_TEN)
