"""Flow metering per capture point: ``PacketBlock`` in, ``FlowRecord``s out.

A flow is bidirectional and keyed by (capture point, outer VLAN, tunnel, protocol, the two endpoints
as seen at that point), direction-normalised, so both directions of a connection meet in one flow.
The originator is the sender of the first SYN, else the sender of the flow's first packet, with roles
flipped (history ``^``) when that packet is a SYN-ACK or, as Zeek's heuristic does, when it comes from a
likely server port to a port that is not (``_flip_roles``).

Per block the meter works on columns, not packets:

1. a 64-bit key per packet (hash of the normalised tuple), grouped with one stable argsort;
2. one dict lookup per flow of the block (not per packet); new flows are created column-wise in the
   flow table (``flowtable.FlowTable``: one slot per flow, numpy columns);
3. the TCP state machine (``tcpstate.TcpConn``) only sees the packets that can change state or
   history ("events"): SYN/FIN/RST packets, T/W letter packets, and per direction the first packet,
   first pure ACK and first data packet. For a flow that starts in the block, whose events repeat no
   SYN/FIN/RST in one direction and carry no late pure SYN, the result depends only on the sequence of
   event kinds: each distinct sequence is replayed once (``_Template``) and shared, and the flow's own
   anchors (ISNs, times, RTTs) are gathered column-wise. Other flows get their own ``TcpConn`` and
   their events are walked one by one. A pure SYN with a new ISN on an existing flow starts a new flow
   (Zeek's reuse rule); the rest of that flow's packets in the block are then walked one by one.
4. counters (packets, IP and payload bytes per direction, retransmissions, out-of-order segments, zero
   windows) with ``np.bincount`` over (flow, direction); retransmission and out-of-order detection use a
   running maximum of the sequence space per (flow, direction) (``np.maximum.accumulate``).
5. records are built column-wise into a ``FlowRecord`` ``Batch``: addresses formatted once per
   distinct address (cached), Community IDs packed column-wise (one SHA-1 call per flow), payload
   hashes in one pass per block, conn_state/history taken from the flow's template.

Definitions: a retransmission is a segment with payload whose end does not advance the highest sequence
number seen in its direction (Zeek's rule); an out-of-order segment is one with payload that starts
beyond it (data before it is missing or late). Zero windows are counted on non-RST TCP packets.

Records are emitted when a flow ends (FIN both ways or RST, after ``linger_s`` of capture time so late
ACKs and retransmissions are counted), after ``idle_timeout_s`` without packets, every
``interval_s`` for long flows (``final`` = 0, cumulative counters), when the flow table is full
(``evicted``, the least recently active tenth goes), and at ``flush()`` (end of capture). Blocks are
metered in slices of ``sweep_every_s`` of capture time, so these rules follow capture time.

Measured (bench/probe_speed.py, 1M packets, 63k flows, one core, CPU time): about 0.3 s reading,
0.25 s decoding, 0.7 s metering and 0.3 s writing JSON lines in ``hopscope flows``, plus 0.2 s
start-up (mostly numpy). What is left in the meter is per flow: a blake2b per payload direction, a
SHA-1 per Community ID, dict lookups of flow keys and the TCP state machine of flows that leave the
template path.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import numpy as np
import numpy.typing as npt

from hopscope.ids import GOLDEN, payload_hash, payload_hashes, text_hash64
from hopscope.ids import mix64_array as _mix
from hopscope.probes import kernels, tcpstate
from hopscope.probes.community_id import ICMP4_PAIRS, ICMP6_PAIRS, community_ids
from hopscope.probes.flowtable import ANCHOR_NAMES, NO_SEQ, STAT_NAMES, FlowTable
from hopscope.probes.meter_native import NativeMeter
from hopscope.probes.packets import ACK, FIN, ICMP, ICMP6, RST, SYN, TCP, UDP, PacketBlock, packed_addr
from hopscope.probes.tcpstate import TcpConn
from hopscope.records import Batch, FlowRecord

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

_GOLD: Final = np.uint64(GOLDEN)
_NS: Final = 1_000_000_000
#: A running sequence end below this is a sentinel (none yet, or only RSTs seen): real ends are >= -2^31.
_SEQ_KNOWN: Final = -(1 << 32)


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
    replay_templates: bool = True  # state-machine fast path for new flows (False: every event walked; tests)


PerRow = tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]
#: A flow's event sequence is replayed from a shared template while it is shorter than this (beyond,
#: the flow gets its own state machine), and the template cache is emptied beyond MAX_TEMPLATES.
MAX_SIG: Final = 48
MAX_TEMPLATES: Final = 200_000


class FlowMeter:
    """Meters flows of ``PacketBlock``s; ``process`` returns a ``FlowRecord`` batch of the records due.

    ``counters`` exposes packets metered, flows created, records emitted (final and interim),
    evictions and reused tuples.
    """

    def __init__(
        self, config: MeterConfig | None = None, host: str = "", hop_kind: str = "", native: bool = True
    ) -> None:
        self.config = config or MeterConfig()
        self.host = host
        self.hop_kind = hop_kind
        self.table = FlowTable()
        self.index: dict[int, int] = {}  # flow key -> slot
        self.point_names: list[str] = []
        self.point_ifaces: list[str] = []
        self.tunnel_names: list[str] = [""]
        self._name_ids: dict[tuple[int, str], int] = {(1, ""): 0}
        self._name_hash: dict[str, int] = {}
        self.counters: Counter[str] = Counter()
        self._pending: list[Batch] = []
        self._closing: set[int] = set()
        self._retiring: list[int] = []
        self._addr_text: dict[tuple[int, int], str] = {}
        self._v4_text: dict[int, str] = {}  # keyed by the lower half of IPv4-mapped addresses
        self._templates: dict[bytes, _Template] = {}
        self._now_ns = 0
        self._next_sweep_ns = 0
        kernel = kernels.load("_meter") if native else None
        self.native: NativeMeter | None = NativeMeter(kernel, self) if kernel is not None else None

    # --- the per-block pipeline ---------------------------------------------------------------

    def process(self, block: PacketBlock) -> list[FlowRecord]:
        """``process_batch`` returning ``FlowRecord`` objects (slower: prefer the batch form)."""
        return list(self.process_batch(block).records())  # type: ignore[arg-type]

    def flush(self) -> list[FlowRecord]:
        """``flush_batch`` returning ``FlowRecord`` objects."""
        return list(self.flush_batch().records())  # type: ignore[arg-type]

    def process_batch(self, block: PacketBlock) -> Batch:
        """Meter the ok rows of ``block`` (filling its ``flow_id``/``from_orig``); return due records.

        The rows are metered in slices of ``sweep_every_s`` of capture time, each followed by the
        idle/linger/interim sweep, so emission follows capture time however big the block is.
        """
        if self.native is not None:
            batch = self.native.process(block)
            self._sync_counters()
            return batch
        rows = np.flatnonzero(block.ok)
        if len(rows) == 0:
            return self._take_pending()
        clock = np.maximum.accumulate(block.ts_ns[rows])
        step = max(int(self.config.sweep_every_s * _NS), 1)
        start = 0
        while start < len(rows):
            if self._next_sweep_ns == 0:
                self._next_sweep_ns = int(clock[start]) + step
            stop = int(np.searchsorted(clock, self._next_sweep_ns, side="left"))
            stop = max(stop, start + 1) if stop <= start else stop
            self._meter(block, rows[start:stop])
            self._now_ns = max(self._now_ns, int(clock[stop - 1]))
            if stop < len(rows) or self._now_ns >= self._next_sweep_ns:
                self._now_ns = max(self._now_ns, int(clock[min(stop, len(rows) - 1)]))
                self._sweep()
                self._next_sweep_ns = self._now_ns + step
            start = stop
        return self._take_pending()

    def flush_batch(self) -> Batch:
        """Emit a final record for every flow still in the table (end of capture)."""
        parts = [b for b in self.flush_batches() if len(b)]
        if not parts:
            return Batch(FlowRecord, {}, 0)
        return parts[0] if len(parts) == 1 else Batch.concat(parts)

    def flush_batches(self, chunk: int = 8192) -> Iterator[Batch]:
        """``flush_batch`` in batches of at most ``chunk`` records (bounded memory for big tables)."""
        if self.native is not None:
            for batch in self.native.flush_batches(chunk):
                self._sync_counters()
                yield batch
            self._sync_counters()
            return
        slots = np.flatnonzero(self.table.cols["key"] != 0)
        for start in range(0, len(slots), chunk):
            part = slots[start : start + chunk]
            closed = self.table.cols["closed_ns"][part] != 0
            self._finish(part[closed], "")
            self._finish(part[~closed], "unfinished")
            yield self._take_pending()
        if self._pending:
            yield self._take_pending()

    def _sync_counters(self) -> None:
        assert self.native is not None
        for name, value in self.native.counters().items():
            if value:
                self.counters[name] = value

    def _take_pending(self) -> Batch:
        pending, self._pending = self._pending, []
        if not pending:
            return Batch(FlowRecord, {}, 0)
        return pending[0] if len(pending) == 1 else Batch.concat(pending)

    def _meter(self, block: PacketBlock, rows: I64) -> None:
        key, src_ep, dst_ep = self._keys(block, rows)
        order = np.argsort(key, kind="stable")
        rows, key, src_ep, dst_ep = rows[order], key[order], src_ep[order], dst_ep[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(rows)]))
        slots = self._lookup(block, rows, key, src_ep, dst_ep, starts)
        from_orig = src_ep == self.table.cols["orig_ep"][slots][group]
        per_row, letters = self._seq_analysis(block, rows, from_orig, group, slots)
        seg_slots, seg = self._events(block, rows, from_orig, src_ep, starts, group, slots, letters, per_row)
        self._counters(block, rows, from_orig, seg, seg_slots, per_row)
        block.flow_id[rows] = self.table.cols["flow_id"][seg_slots][seg]
        block.from_orig[rows] = from_orig
        self.counters["packets"] += len(rows)
        if self._retiring:
            retiring, self._retiring = np.array(self._retiring, np.int64), []
            self._finish(retiring, "")
        if self.table.used > self.config.max_flows:
            self._evict()

    def _name_id(self, kind: int, name: str, iface: str = "") -> int:
        """Meter-wide id of a point name (kind 0) or tunnel description (kind 1)."""
        key = (kind, name)
        nid = self._name_ids.get(key)
        if nid is None:
            names = self.point_names if kind == 0 else self.tunnel_names
            nid = len(names)
            names.append(name)
            if kind == 0:
                self.point_ifaces.append(iface)
            self._name_ids[key] = nid
        return nid

    def _stable_hash(self, text: str) -> int:
        value = self._name_hash.get(text)
        if value is None:
            value = text_hash64(text)
            self._name_hash[text] = value
        return value

    def _keys(self, block: PacketBlock, rows: I64) -> tuple[U64, U64, U64]:
        """Direction-normalised flow key, source and destination endpoint hashes, per row."""
        proto = block.proto[rows].astype(np.int64)
        sp = block.sport[rows].astype(np.uint64)
        dp = block.dport[rows].astype(np.int64)
        for number, (counterpart, two_way) in ((ICMP, _ICMP4), (ICMP6, _ICMP6)):
            icmp = np.flatnonzero(proto == number)
            if len(icmp):
                t = sp[icmp].astype(np.int64) & 255
                dp[icmp] = np.where(two_way[t], counterpart[t], dp[icmp])
        ea = _mix(_mix(block.src_hi[rows] ^ _GOLD) ^ block.src_lo[rows]) ^ _mix(sp + _GOLD)
        eb = _mix(_mix(block.dst_hi[rows] ^ _GOLD) ^ block.dst_lo[rows]) ^ _mix(dp.astype(np.uint64) + _GOLD)
        tun = np.array([self._stable_hash(t) for t in block.tunnels], np.uint64)[block.tunnel[rows]]
        pts = np.array([self._stable_hash(p) for p in block.point_names], np.uint64)[block.point[rows]]
        ctx = proto.astype(np.uint64) << np.uint64(56) | block.vlan[rows].astype(np.uint64) << np.uint64(24)
        ctx = ctx ^ _mix(tun) ^ _mix(pts + _GOLD)
        lo, hi = np.minimum(ea, eb), np.maximum(ea, eb)
        key = _mix(_mix(lo ^ _mix(ctx)) + hi)
        key[key == 0] = 1
        return key, ea, eb

    def _lookup(self, block: PacketBlock, rows: I64, key: U64, src_ep: U64, dst_ep: U64, starts: I64) -> I64:
        """The slot of every group's flow (flows created for groups not in the table)."""
        keys = key[starts].tolist()
        get = self.index.get
        slots = np.array([get(k, -1) for k in keys], np.int64)
        new = np.flatnonzero(slots < 0)
        if len(new):
            first = starts[new]
            created = self._create(block, rows[first], key[first], src_ep[first], dst_ep[first])
            slots[new] = created
            self.index.update(zip([keys[g] for g in new.tolist()], created.tolist(), strict=True))
        return slots

    def _create(
        self, block: PacketBlock, first: I64, keys: U64, src_ep: U64, dst_ep: U64, keep_direction: bool = False
    ) -> I64:
        """New flows whose first packets are rows ``first``; returns their slots."""
        n = len(first)
        slots = self.table.alloc(n)
        c = self.table.cols
        proto = block.proto[first].astype(np.int64)
        flags = block.tcp_flags[first].astype(np.int64)
        flip = _flip_roles(proto, flags, block.sport[first].astype(np.int64), block.dport[first].astype(np.int64))
        if keep_direction:
            flip[:] = False
        ts = block.ts_ns[first]
        ifaces = block.point_ifaces if len(block.point_ifaces) == len(block.point_names) else block.point_names
        pmap = np.array([self._name_id(0, p, f) for p, f in zip(block.point_names, ifaces, strict=True)], np.int64)
        tmap = np.array([self._name_id(1, t) for t in block.tunnels], np.int64)
        c["key"][slots] = keys
        c["flow_id"][slots] = _mix(keys ^ _mix(ts.astype(np.uint64))) | np.uint64(1)
        c["start_ns"][slots] = ts
        c["end_ns"][slots] = ts
        c["last_report_ns"][slots] = ts
        c["proto"][slots] = proto
        c["ip_version"][slots] = block.ip_version[first]
        c["vlan"][slots] = block.vlan[first]
        c["point"][slots] = pmap[block.point[first]]
        c["tunnel"][slots] = tmap[block.tunnel[first]]
        for ours, name in (("orig", "src"), ("resp", "dst")):
            other = "dst" if name == "src" else "src"
            c[f"{ours}_hi"][slots] = np.where(flip, getattr(block, f"{other}_hi")[first],
                                              getattr(block, f"{name}_hi")[first])  # fmt: skip
            c[f"{ours}_lo"][slots] = np.where(flip, getattr(block, f"{other}_lo")[first],
                                              getattr(block, f"{name}_lo")[first])  # fmt: skip
        sport, dport = block.sport[first].astype(np.int64), block.dport[first].astype(np.int64)
        c["orig_p"][slots] = np.where(flip, dport, sport)
        c["resp_p"][slots] = np.where(flip, sport, dport)
        c["orig_ep"][slots] = np.where(flip, dst_ep, src_ep)
        c["flipped"][slots] = flip
        self.counters["flows"] += n
        return slots

    # --- TCP sequence analysis (vectorised) -----------------------------------------------------

    def _seq_analysis(
        self, block: PacketBlock, rows: I64, from_orig: npt.NDArray[np.bool_], group: I64, slots: I64
    ) -> tuple[PerRow, I64]:
        """Per row: (retransmission, out-of-order, zero window) masks and history letter code (1 W, 2 T).

        Runs per (flow, direction) over the rows in capture order, continuing the state kept in the
        table from earlier blocks (sequence base, highest sequence end, T/W counts).
        """
        n = len(rows)
        rtx, ooo, letters = np.zeros(n, np.bool_), np.zeros(n, np.bool_), np.zeros(n, np.int64)
        is_tcp = block.proto[rows] == TCP
        if not is_tcp.any():
            return (rtx, ooo, np.zeros(n, np.bool_)), letters
        flags = block.tcp_flags[rows].astype(np.int64)
        seq = block.seq[rows].astype(np.int64)
        plen = block.payload_len[rows].astype(np.int64)
        rst = (flags & RST) != 0
        zw = is_tcp & (block.window[rows] == 0) & ~rst
        seq_base, max_end, stats = self.table.cols["seq_base"], self.table.cols["max_end"], self.table.stats
        for d in (0, 1):
            idx = np.flatnonzero(is_tcp & (from_orig if d == 0 else ~from_orig))
            if len(idx) == 0:
                continue
            g = group[idx]
            first = np.r_[True, g[1:] != g[:-1]]
            run = np.cumsum(first) - 1
            run_slots = slots[g[first]]
            base = seq_base[run_slots, d]
            base = np.where(base < 0, seq[idx][first], base)
            init = max_end[run_slots, d]
            rel = ((seq[idx] - base[run] + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
            seglen = np.where(rst[idx], 0, plen[idx]) + ((flags[idx] & SYN) != 0) + ((flags[idx] & FIN) != 0)
            end = np.where(rst[idx], -(1 << 40), rel + seglen)
            big = np.int64(1 << 42)
            cm = np.maximum.accumulate(end + run * big) - run * big
            prev = np.where(first, NO_SEQ, np.r_[NO_SEQ, cm[:-1]])
            prev = np.maximum(prev, init[run])
            data = (plen[idx] > 0) & ~rst[idx] & (prev >= _SEQ_KNOWN)
            rtx[idx] = data & (end <= prev)
            ooo[idx] = data & (rel > prev)
            last = np.r_[np.flatnonzero(first)[1:] - 1, len(idx) - 1]
            seq_base[run_slots, d] = base
            max_end[run_slots, d] = np.maximum(cm[last], init)
            letters[idx] |= _scaled_marks(zw[idx], run, stats[run_slots, 10 + d]) * 1
            letters[idx] |= _scaled_marks(rtx[idx], run, stats[run_slots, 6 + d]) * 2
        return (rtx, ooo, zw), letters

    # --- events: state machine, handshake, payload hashes ---------------------------------------

    def _events(
        self, block: PacketBlock, rows: I64, from_orig: npt.NDArray[np.bool_], src_ep: U64, starts: I64,
        group: I64, slots: I64, letters: I64, per_row: PerRow,
    ) -> tuple[I64, I64]:  # fmt: skip
        """Run the per-packet state over the rows that matter; returns (slot per segment, segment per row)."""
        n = len(rows)
        flags = block.tcp_flags[rows].astype(np.int64)
        plen = block.payload_len[rows].astype(np.int64)
        is_tcp = block.proto[rows] == TCP
        control = is_tcp & ((flags & (SYN | FIN | RST)) != 0)
        interesting = control | (letters != 0)
        plain = ~control
        for d_mask in (from_orig, ~from_orig):
            for cat in (d_mask & is_tcp, d_mask & plain & (plen > 0), d_mask & plain & (plen == 0) & is_tcp):
                idx = np.flatnonzero(cat)
                if len(idx):
                    g = group[idx]
                    interesting[idx[np.r_[True, g[1:] != g[:-1]]]] = True
        seg = group.copy()
        seg_slots = slots.tolist()
        ev = np.flatnonzero(interesting)
        ends = np.r_[starts[1:], n]
        tcp_states = self.table.tcp
        walked = self._replayed(block, rows, ev, group[ev], from_orig[ev], flags[ev], plen[ev], letters[ev],
                                is_tcp[ev], seg_slots)  # fmt: skip
        if walked:  # the rest goes packet by packet
            ev = ev[~np.isin(group[ev], np.fromiter(walked, np.int64, len(walked)))]
        other = ev[~is_tcp[ev]]
        self._first_data(block, rows[other], np.array(seg_slots, np.int64)[group[other]], from_orig[other])
        ev = ev[is_tcp[ev]]
        ev_rows = rows[ev]
        cols = zip(
            ev.tolist(), group[ev].tolist(), from_orig[ev].tolist(), flags[ev].tolist(),
            block.seq[ev_rows].tolist(), plen[ev].tolist(), block.ts_ns[ev_rows].tolist(),
            letters[ev].tolist(), ev_rows.tolist(), strict=True,
        )  # fmt: skip
        for p, g, fo, fl, sq, ln, ts, lt, i in cols:
            if g in walked:
                continue
            slot = seg_slots[g]
            st = tcp_states[slot]
            if st is None:
                st = tcp_states[slot] = TcpConn()
            elif type(st) is _Template:
                st = self._materialize(slot, st)
            if fl & (SYN | ACK) == SYN and self._is_reuse(slot, sq):
                walked.add(g)
                self._walk(block, rows, p, int(ends[g]), src_ep, from_orig, seg, seg_slots, per_row)
                continue
            self._tcp_event(slot, st, block, i, fo, fl, sq, ln, ts, lt)
        return np.array(seg_slots, np.int64), seg

    def _replayed(
        self, block: PacketBlock, rows: I64, ev: I64, ev_group: I64, fo: npt.NDArray[np.bool_], flags: I64,
        plen: I64, letters: I64, is_tcp: npt.NDArray[np.bool_], seg_slots: list[int],
    ) -> set[int]:  # fmt: skip
        """Fast path of the state machine for flows that start in this block (most flows).

        Such a flow's states and history depend only on the sequence of its event kinds (direction,
        SYN/ACK/FIN/RST, payload or not, W/T letters) as long as no SYN, FIN or RST repeats in one
        direction and no pure SYN follows its first packet (the cases where Zeek compares sequence
        numbers). Each distinct sequence is replayed once through ``TcpConn`` (``_Template``); every
        flow with that sequence copies the result and takes its sequence numbers and times from its
        own packets. Returns the groups handled here; the others go through ``_tcp_event``.
        """
        if len(ev) == 0 or not is_tcp.any() or not self.config.replay_templates:
            return set()
        sfr = flags & (SYN | FIN | RST)
        single = np.select([sfr == SYN, sfr == FIN, sfr == RST], [1, 2, 3], 0)
        first_ev = np.r_[True, ev_group[1:] != ev_group[:-1]]
        bad = ~is_tcp | (((flags & (SYN | ACK)) == SYN) & ~first_ev)
        typed = np.flatnonzero(single > 0)
        if len(typed):
            k = ev_group[typed] * 8 + (~fo[typed]).astype(np.int64) * 4 + single[typed]
            order = np.argsort(k, kind="stable")
            dup = np.r_[False, k[order][1:] == k[order][:-1]]
            bad[typed[order][dup]] = True
        bad_groups = np.unique(ev_group[bad])
        groups = np.setdiff1d(ev_group[first_ev], bad_groups, assume_unique=True)
        tcp_states = self.table.tcp
        group_slots = np.array(seg_slots, np.int64)[groups]
        prior = [tcp_states[s] for s in group_slots.tolist()]
        fresh = np.array([st is None for st in prior], np.bool_)
        codes = (fo.astype(np.int64) | ((flags & SYN) != 0) << 1 | ((flags & ACK) != 0) << 2
                 | ((flags & FIN) != 0) << 3 | ((flags & RST) != 0) << 4 | (plen > 0) << 5 | letters << 6)  # fmt: skip
        codes8 = codes.astype(np.uint8)
        bounds = np.searchsorted(ev_group, groups, side="left")
        ends = np.searchsorted(ev_group, groups, side="right")
        templates = self._templates
        if len(templates) > MAX_TEMPLATES:
            templates.clear()
        short = fresh & (ends - bounds <= MAX_SIG)
        taken, chosen, offsets = self._fresh_templates(groups[short], bounds[short], ends[short], codes8)
        shift, known = [bounds[short]], [np.zeros(len(taken), np.int64)]
        rest = [st for st, f in zip(prior, short.tolist(), strict=True) if not f]
        more = self._continued_templates(groups[~short], bounds[~short], ends[~short], codes8.tobytes(), rest)
        taken = np.r_[taken, more[0]].astype(np.int64)
        chosen += more[1]
        if len(taken) == 0:
            return set()
        offsets = np.concatenate([offsets, more[2]])
        shift.append(more[3])
        known.append(more[4])
        cand_slots = np.array(seg_slots, np.int64)[taken]
        for slot, template in zip(cand_slots.tolist(), chosen, strict=True):
            tcp_states[slot] = template
        known_all, shift_all = np.concatenate(known), np.concatenate(shift) - np.concatenate(known)
        new = offsets >= known_all[:, None]  # set by this block's events (-1 never is)
        at = np.where(new, offsets + shift_all[:, None], -1)
        self._template_anchors(block, rows[ev], plen, cand_slots, at, offsets)
        self._template_hashes(block, rows[ev], cand_slots, at)
        return set(taken.tolist())

    def _fresh_templates(self, groups: I64, bounds: I64, ends: I64, codes: npt.NDArray[np.uint8]
                         ) -> tuple[I64, list[_Template], I64]:  # fmt: skip
        """Templates of flows new in this block, column-wise: each distinct event sequence looked up once.

        Returns the groups, their templates and the templates' event offsets (one row per group)."""
        width = len(_Template.OFFSETS)
        if len(groups) == 0:
            return groups, [], np.zeros((0, width), np.int64)
        lengths = ends - bounds
        cols = int(lengths.max()) + 1
        total = int(lengths.sum())
        within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        mat = np.zeros((len(groups), cols), np.uint8)
        mat[:, 0] = lengths
        mat[np.repeat(np.arange(len(groups)), lengths), 1 + within] = codes[np.repeat(bounds, lengths) + within]
        keys = mat.view(np.dtype((np.void, cols))).ravel()
        _uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        templates = self._templates
        distinct = []
        for g in first.tolist():
            sig = codes[bounds[g] : ends[g]].tobytes()
            template = templates.get(sig)
            if template is None:
                template = templates[sig] = _Template(sig)
            distinct.append(template)
        table = np.array([t.offsets for t in distinct], np.int64).reshape(len(distinct), width)
        inverse = inverse.reshape(-1)
        return groups, [distinct[k] for k in inverse.tolist()], table[inverse]

    def _continued_templates(self, groups: I64, bounds: I64, ends: I64, sigs: bytes, prior: list[Any]
                             ) -> tuple[I64, list[_Template], I64, I64, I64]:  # fmt: skip
        """Templates of flows whose sequence continues one from earlier blocks (or is long), one by one.

        Returns the groups taken, their templates, event offsets, first event index in this block and
        the number of events seen before."""
        templates = self._templates
        taken: list[int] = []
        chosen: list[_Template] = []
        shift: list[int] = []
        known: list[int] = []  # events of the sequence seen in earlier blocks
        for g, a, b, before in zip(groups.tolist(), bounds.tolist(), ends.tolist(), prior, strict=True):
            if before is not None and (type(before) is not _Template or len(before.sig) >= MAX_SIG):
                continue  # the flow has its own state machine
            part = sigs[a:b]
            if before is not None and not before.continues(part):
                continue  # a SYN or a repeated SYN/FIN/RST: the packet-by-packet path decides
            sig = part if before is None else before.sig + part
            template = templates.get(sig)
            if template is None:
                template = templates[sig] = _Template(sig)
            taken.append(g)
            chosen.append(template)
            known.append(0 if before is None else len(before.sig))
            shift.append(a)
        width = len(_Template.OFFSETS)
        offsets = np.array([t.offsets for t in chosen], np.int64).reshape(len(chosen), width)
        return np.array(taken, np.int64), chosen, offsets, np.array(shift, np.int64), np.array(known, np.int64)

    def _template_anchors(self, block: PacketBlock, ev_rows: I64, plen: I64, slots: I64, at: I64, offsets: I64) -> None:
        """Write the anchors of template flows that this block's events set (event indices ``at``, -1:
        not set here; ``offsets``: their place in the whole sequence) into the table."""
        c = self.table.cols
        seq = block.seq[ev_rows].astype(np.int64)
        ts = block.ts_ns[ev_rows]
        col = {name: k for k, name in enumerate(_Template.OFFSETS)}

        def put(column: str, name: str, values: I64, d: int | None = None) -> npt.NDArray[np.bool_]:
            idx = at[:, col[name]]
            has = idx >= 0
            if d is None:
                c[column][slots[has]] = values[idx[has]]
            else:
                c[column][slots[has], d] = values[idx[has]]
            return has

        for d in (0, 1):
            put("first_seq", f"first{d}", seq, d)
            put("last_syn", f"syn{d}", seq, d)
            put("last_fin", f"fin{d}", (seq + plen) & 0xFFFFFFFF, d)
            put("last_rst", f"rst{d}", seq, d)
        put("syn_seq", "syn", seq)
        put("syn_ip_id", "syn", block.ip_id[ev_rows].astype(np.int64))
        put("syn_ns", "syn", ts)
        put("synack_seq", "synack", seq)
        new_synack = put("synack_ns", "synack", ts)
        syn_before = (offsets[:, col["syn"]] >= 0) & (offsets[:, col["syn"]] < offsets[:, col["synack"]])
        server = slots[new_synack & syn_before]
        c["rtt_server_us"][server] = np.maximum((c["synack_ns"][server] - c["syn_ns"][server]) // 1000, 0)
        ack = at[:, col["ack"]]
        client = slots[ack >= 0]
        c["rtt_client_us"][client] = np.maximum((ts[ack[ack >= 0]] - c["synack_ns"][client]) // 1000, 1)
        closed = at[:, col["closed"]]
        closing = slots[closed >= 0]
        c["closed_ns"][closing] = ts[closed[closed >= 0]]
        self._closing.update(closing.tolist())

    def _template_hashes(self, block: PacketBlock, ev_rows: I64, slots: I64, at: I64) -> None:
        """Payload hashes of the first payload of each direction of template flows."""
        limit = self.config.payload_hash_bytes
        for d in (0, 1):
            idx = at[:, _Template.OFFSETS.index(f"data{d}")]
            has = np.flatnonzero(idx >= 0)
            rows = ev_rows[idx[has]]
            caplen = block.payload_caplen[rows].astype(np.int64)
            keep = caplen > 0
            rows = rows[keep]
            hashes = payload_hashes(block.buf, block.payload_off[rows], np.minimum(caplen[keep], limit))
            self.table.payload_hash[slots[has][keep], d] = hashes

    def _materialize(self, slot: int, template: _Template) -> TcpConn:
        """A flow's own TcpConn from its template and the last SYN/FIN/RST seqs kept in the table."""
        c = self.table.cols
        st = TcpConn()
        template.copy_states(st)
        for d, ep in ((0, st.orig), (1, st.resp)):
            ep.last_syn, ep.last_fin = int(c["last_syn"][slot, d]), int(c["last_fin"][slot, d])
            ep.last_rst = int(c["last_rst"][slot, d])
        self.table.tcp[slot] = st
        return st

    def _is_reuse(self, slot: int, seq: int) -> bool:
        """Zeek's reuse rule for a pure SYN: its ISN differs from the originator's start of sequence."""
        c = self.table.cols
        first_orig, first_resp = int(c["first_seq"][slot, 0]), int(c["first_seq"][slot, 1])
        if first_orig < 0 and first_resp < 0:
            return False
        syn_seq = int(c["syn_seq"][slot])
        if syn_seq:
            orig_start = syn_seq
        elif first_orig >= 0:
            orig_start = (first_orig - 1) & 0xFFFFFFFF
        else:
            orig_start = 0
        return seq != orig_start

    def _first_data(self, block: PacketBlock, rows: I64, slots: I64, fo: npt.NDArray[np.bool_]) -> None:
        """Events of non-TCP flows: the first payload per direction sets its payload hash and UDP history
        letter (``rows`` in capture order per flow, at most one per flow and direction)."""
        d = (~fo).astype(np.int64)
        hashes = self.table.payload_hash
        first = (block.payload_len[rows] > 0) & (hashes[slots, d] == 0)
        rows, slots, d = rows[first], slots[first], d[first]
        caplen = np.minimum(block.payload_caplen[rows].astype(np.int64), self.config.payload_hash_bytes)
        values = payload_hashes(block.buf, block.payload_off[rows], caplen)
        values[values == 0] = 1  # payload beyond the snaplen: known, not hashed
        hashes[slots, d] = values
        udp = block.proto[rows] == UDP
        history = self.table.udp_history
        for slot, letter in zip(slots[udp].tolist(), np.where(d[udp] == 0, "D", "d").tolist(), strict=True):
            history[slot] += letter

    def _tcp_event(
        self, slot: int, st: TcpConn, block: PacketBlock, i: int, fo: bool, flags: int, seq: int,
        length: int, ts: int, letters: int,
    ) -> None:  # fmt: skip
        """One packet through the state machine (the slow path: flows not handled by templates)."""
        c = self.table.cols
        d = 0 if fo else 1
        if c["first_seq"][slot, d] < 0:
            c["first_seq"][slot, d] = seq
        if length and not flags & RST:
            hashes = self.table.payload_hash
            if not hashes[slot, d] and block.payload_caplen[i]:
                hashes[slot, d] = payload_hash(block.payload_view(i, self.config.payload_hash_bytes))
        was_closed = st.closed
        st.packet(fo, flags, seq, length)
        if letters & 1:
            st.add(fo, "W")
        if letters & 2:
            st.add(fo, "T")
        if flags & (SYN | ACK | RST | FIN) == SYN:
            if fo:
                if not c["syn_seq"][slot]:
                    c["syn_seq"][slot], c["syn_ip_id"][slot] = seq, int(block.ip_id[i])
                c["syn_ns"][slot] = ts
        elif flags & (SYN | ACK | RST) == SYN | ACK:
            if not fo and not c["synack_seq"][slot]:
                c["synack_seq"][slot], c["synack_ns"][slot] = seq, ts
                if c["syn_ns"][slot]:
                    c["rtt_server_us"][slot] = max((ts - int(c["syn_ns"][slot])) // 1000, 0)
        elif fo and flags & ACK and c["synack_ns"][slot] and not c["rtt_client_us"][slot]:
            c["rtt_client_us"][slot] = max((ts - int(c["synack_ns"][slot])) // 1000, 1)
        if not was_closed and st.closed:
            c["closed_ns"][slot] = ts
            self._closing.add(slot)

    def _walk(
        self, block: PacketBlock, rows: I64, p: int, end: int, src_ep: U64, from_orig: npt.NDArray[np.bool_],
        seg: I64, seg_slots: list[int], per_row: PerRow,
    ) -> None:  # fmt: skip
        """Slow path after a reused 5-tuple: every remaining packet of the group, one by one."""
        slot = seg_slots[int(seg[p])]
        key = int(self.table.cols["key"][slot])
        counts = [[0, 0], [0, 0]]  # per direction: retransmissions, zero windows
        for q in range(p, end):
            i = int(rows[q])
            flags, seq, length = int(block.tcp_flags[i]), int(block.seq[i]), int(block.payload_len[i])
            st = self.table.tcp[slot]
            if type(st) is _Template:
                st = self._materialize(slot, st)
            if q == p or (flags & (SYN | ACK) == SYN and st is not None and self._is_reuse(slot, seq)):
                self._retiring.append(slot)
                one = np.array([i], np.int64)
                slot = int(self._create(block, one, np.array([key], np.uint64), src_ep[q : q + 1],
                                        src_ep[q : q + 1], keep_direction=True)[0])  # fmt: skip
                self.index[key] = slot
                self.table.tcp[slot] = st = TcpConn()
                seg_slots.append(slot)
                counts = [[0, 0], [0, 0]]
                self.counters["reused_tuples"] += 1
            assert st is not None
            seg[q] = len(seg_slots) - 1
            fo = bool(src_ep[q] == self.table.cols["orig_ep"][slot])
            from_orig[q] = fo
            letters = self._walk_seq(slot, block, i, fo, flags, seq, length, counts, per_row, q)
            self._tcp_event(slot, st, block, i, fo, flags, seq, length, int(block.ts_ns[i]), letters)

    def _walk_seq(
        self, slot: int, block: PacketBlock, i: int, fo: bool, flags: int, seq: int, length: int,
        counts: list[list[int]], per_row: PerRow, q: int,
    ) -> int:  # fmt: skip
        """The per-packet twin of ``_seq_analysis`` for walked rows."""
        rtx, ooo, zw = per_row
        d = 0 if fo else 1
        seq_base, max_end = self.table.cols["seq_base"], self.table.cols["max_end"]
        if seq_base[slot, d] < 0:
            seq_base[slot, d] = seq
        rel = ((seq - int(seq_base[slot, d]) + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
        rst = bool(flags & RST)
        seglen = (0 if rst else length) + bool(flags & SYN) + bool(flags & FIN)
        prev = int(max_end[slot, d])
        data = length > 0 and not rst and prev >= _SEQ_KNOWN
        rtx[q] = data and rel + seglen <= prev
        ooo[q] = data and rel > prev
        zw[q] = not rst and int(block.window[i]) == 0
        if not rst:
            max_end[slot, d] = max(prev, rel + seglen)
        letters = 0
        for bit, hit, k in ((1, zw[q], 1), (2, rtx[q], 0)):
            if hit:
                counts[d][k] += 1
                if _is_power_of_ten(counts[d][k]):
                    letters |= bit
        return letters

    # --- counters ---------------------------------------------------------------------------------

    def _counters(
        self, block: PacketBlock, rows: I64, from_orig: npt.NDArray[np.bool_], seg: I64, seg_slots: I64,
        per_row: PerRow,
    ) -> None:  # fmt: skip
        rtx, ooo, zw = per_row
        nseg = len(seg_slots)
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
        add = np.stack([c.astype(np.int64).reshape(nseg, 2) for c in columns], axis=1).reshape(nseg, 12)
        self.table.stats[seg_slots] += add
        # the latest packet time per flow (a segment left without rows by a reused tuple keeps its own)
        np.maximum.at(self.table.cols["end_ns"], seg_slots[seg], block.ts_ns[rows])

    # --- emission -----------------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Finish lingering closed flows and idle flows; emit interim records for long flows."""
        now, cfg, c = self._now_ns, self.config, self.table.cols
        if self._closing:
            closing = np.array(sorted(self._closing), np.int64)
            done = closing[c["end_ns"][closing] + int(cfg.linger_s * _NS) <= now]
            self._finish(done, "")
        active = np.flatnonzero(c["key"] != 0)
        idle = np.where(c["proto"][active] == TCP, int(cfg.tcp_idle_timeout_s * _NS),
                        int(cfg.udp_idle_timeout_s * _NS))  # fmt: skip
        expired = c["end_ns"][active] + idle <= now
        self._finish(active[expired], "timeout")
        if cfg.interval_s:
            live = active[~expired]
            due = live[c["last_report_ns"][live] + int(cfg.interval_s * _NS) <= now]
            if len(due):
                c["last_report_ns"][due] = now
                self._pending.append(self._batch(due, final=False, reasons=["open"] * len(due)))
                self.counters["interim_records"] += len(due)

    def _evict(self) -> None:
        active = np.flatnonzero(self.table.cols["key"] != 0)
        c = self.table.cols  # least recently active first; ties by flow_id (independent of slot numbers)
        oldest = active[np.lexsort((c["flow_id"][active], c["end_ns"][active]))]
        victims = oldest[: max(1, len(active) // 10)]
        self.counters["evictions"] += len(victims)
        self._finish(victims, "evicted")

    def _finish(self, slots: I64, reason: str) -> None:
        """Emit final records for ``slots`` and free them."""
        if len(slots) == 0:
            return
        self._pending.append(self._batch(slots, final=True, reasons=[reason] * len(slots)))
        self.counters["records"] += len(slots)
        keys, slot_list = self.table.cols["key"][slots].tolist(), slots.tolist()
        index = self.index
        for k, s in zip(keys, slot_list, strict=True):
            if index.get(k) == s:
                del index[k]
        self._closing.difference_update(slot_list)
        self.table.release(slots)

    def _addresses(self, hi: U64, lo: U64) -> list[str]:
        """Text form of addresses, each distinct address formatted once (cached: a capture repeats them)."""
        if len(self._addr_text) + len(self._v4_text) > 1_000_000:
            self._addr_text.clear()
            self._v4_text.clear()
        if len(hi) == 0:
            return []
        if hi.any():  # IPv6 present: distinct (hi, lo) pairs
            pairs = np.empty(len(hi), [("hi", np.uint64), ("lo", np.uint64)])
            pairs["hi"], pairs["lo"] = hi, lo
            uniq, inverse = np.unique(pairs, return_inverse=True)
            texts = [self._address(pair) for pair in zip(uniq["hi"].tolist(), uniq["lo"].tolist(), strict=True)]
        else:  # IPv4-mapped (or IPv6 with a zero upper half): distinct lower halves, cached by them
            low, inverse = np.unique(lo, return_inverse=True)
            cache = self._v4_text
            lows = low.tolist()
            missing = [v for v in lows if v not in cache]
            if missing:
                fresh = _v4_texts(np.array(missing, np.uint64))
                cache.update((v, t if t is not None else self._address((0, v)))
                             for v, t in zip(missing, fresh, strict=True))  # fmt: skip
            texts = [cache[v] for v in lows]
        out: list[str] = np.array(texts, object)[inverse.reshape(-1)].tolist()
        return out

    def _address(self, pair: tuple[int, int]) -> str:
        known = self._addr_text.get(pair)
        if known is None:
            raw = packed_addr(*pair)
            known = self._addr_text[pair] = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
        return known

    def _batch(self, slots: I64, final: bool, reasons: list[str]) -> Batch:
        """A FlowRecord batch of the flows in ``slots``."""
        t, c, n = self.table, self.table.cols, len(slots)
        proto = c["proto"][slots]
        orig_h = self._addresses(c["orig_hi"][slots], c["orig_lo"][slots])
        resp_h = self._addresses(c["resp_hi"][slots], c["resp_lo"][slots])
        point_ids = c["point"][slots].tolist()
        cols: dict[str, Any] = {
            "point": [self.point_names[p] for p in point_ids],
            "iface": [self.point_ifaces[p] for p in point_ids],
            "host": [self.host] * n, "hop_kind": [self.hop_kind] * n, "final": np.full(n, int(final)),
            "orig_h": orig_h, "resp_h": resp_h,
            "tunnel": [self.tunnel_names[x] for x in c["tunnel"][slots].tolist()],
        }  # fmt: skip
        for name in ("flow_id", "start_ns", "end_ns", "ip_version", "proto", "orig_p", "resp_p", "vlan"):
            cols[name] = c[name][slots]
        stats = t.stats[slots]
        for k, name in enumerate(STAT_NAMES):
            cols[name] = stats[:, k]
        cols["orig_payload_hash"] = t.payload_hash[slots, 0]
        cols["resp_payload_hash"] = t.payload_hash[slots, 1]
        cols.update(self._tcp_columns(slots, proto, stats, reasons, final))
        cols["community_id"] = self._community_ids(slots, proto)
        return Batch(FlowRecord, cols, n)

    def _tcp_columns(self, slots: I64, proto: I64, stats: I64, reasons: list[str], final: bool) -> dict[str, Any]:
        """conn_state, history, close_type and the handshake anchors of the flows in ``slots``."""
        t, c = self.table, self.table.cols
        values = {a: c[a][slots] for a in ANCHOR_NAMES}
        sized = ((stats[:, 2] > 0) | (stats[:, 3] > 0)).tolist()
        states, histories = [], []
        tcp = [t.tcp[s] for s in slots.tolist()]
        rows = zip(slots.tolist(), proto.tolist(), c["flipped"][slots].tolist(), sized, tcp, strict=True)
        for j, (s, pr, flip, any_bytes, st) in enumerate(rows):
            if type(st) is _Template:
                history = st.histories[flip]
                state = st.conn_states[flip][any_bytes]
            elif pr == TCP and st is not None:
                history = st.history_text(flip)
                state = st.conn_state(int(stats[j, 2]), int(stats[j, 3]), history)
            else:
                history = ("^" if flip and pr == UDP else "") + t.udp_history[s]
                state = tcpstate.udp_conn_state(int(stats[j, 0]), int(stats[j, 1])) if pr == UDP else "OTH"
            states.append(state)
            histories.append(history)
        ack_miss = (values["synack_seq"] != 0) & (values["rtt_client_us"] == 0)
        keys = zip(states, reasons, (proto == TCP).tolist(), ack_miss.tolist(), strict=True)
        memo: dict[tuple[str, str, bool, bool], str] = {}
        closes = []
        for key in keys:
            close = memo.get(key)
            if close is None:
                state, reason, is_tcp, miss = key
                close = memo[key] = close_type(state, reason, final, TCP if is_tcp else 0, int(miss), 0)
            closes.append(close)
        for a in ANCHOR_NAMES:
            values[a] = np.minimum(values[a], 0xFFFFFFFF)
        return {"conn_state": states, "history": histories, "close_type": closes, **values}

    def _community_ids(self, slots: I64, proto: I64) -> list[str]:
        """Community IDs of the flows in ``slots``, computed once per flow (interim records reuse them)."""
        t, c = self.table, self.table.cols
        cached = [t.community_id[s] for s in slots.tolist()]
        todo = np.flatnonzero(np.array([not v for v in cached], np.bool_))
        if len(todo):
            sel = slots[todo]
            fresh = community_ids(proto[todo], c["orig_hi"][sel], c["orig_lo"][sel], c["resp_hi"][sel],
                                  c["resp_lo"][sel], c["orig_p"][sel], c["resp_p"][sel])  # fmt: skip
            for j, s, cid in zip(todo.tolist(), sel.tolist(), fresh, strict=True):
                cached[j] = t.community_id[s] = cid
        return cached


class _Template:
    """The result of replaying one sequence of event kinds through ``TcpConn`` from a fresh state.

    ``offsets`` gives, per name in ``OFFSETS``, the index of the event (within the sequence) that sets
    that anchor, or -1: the first event per direction, the last SYN/FIN/RST per direction, the first
    payload per direction, the originator's SYN, the responder's SYN-ACK, the originator's first ACK
    after it, and the event that closed the connection.
    """

    OFFSETS: ClassVar[tuple[str, ...]] = (
        "first0", "first1", "syn0", "syn1", "fin0", "fin1", "rst0", "rst1", "data0", "data1", "syn", "synack",
        "ack", "closed",
    )  # fmt: skip
    __slots__ = ("conn_states", "histories", "offsets", "sig", "states", "tcp", "typed")

    def __init__(self, sig: bytes) -> None:
        self.sig = sig
        self.typed = _typed(sig)
        st = TcpConn()
        at = dict.fromkeys(self.OFFSETS, -1)
        for k, code in enumerate(sig):
            fo = bool(code & 1)
            flags = (SYN if code & 2 else 0) | (ACK if code & 4 else 0) | (FIN if code & 8 else 0)
            flags |= RST if code & 16 else 0
            length = 1 if code & 32 else 0
            _note(at, k, 0 if fo else 1, flags, length)
            was_closed = st.closed
            st.packet(fo, flags, 0, length)
            if code & 64:
                st.add(fo, "W")
            if code & 128:
                st.add(fo, "T")
            if not was_closed and st.closed:
                at["closed"] = k
        self.offsets = [at[name] for name in self.OFFSETS]
        self.states = tuple((ep.state, ep.prev, ep.seen, ep.did_close) for ep in (st.orig, st.resp))
        self.histories = (st.history_text(False), st.history_text(True))  # indexed by "flipped"
        # conn_state per (flipped, any payload bytes): the sizes only matter for REJ
        self.conn_states = tuple(
            (st.conn_state(0, 0, h), st.conn_state(1, 1, h)) for h in self.histories
        )  # fmt: skip
        self.tcp = st

    def continues(self, part: bytes) -> bool:
        """Whether ``sig + part`` still qualifies: no pure SYN and no SYN/FIN/RST repeated per direction."""
        if any(code & 0b110 == 0b010 for code in part):
            return False
        added = _typed(part)
        return not (added & self.typed) and len(added) == sum(1 for c in part if c & 0b11010 in _SINGLE)

    def copy_states(self, st: TcpConn) -> None:
        for ep, (state, prev, seen, did_close) in zip((st.orig, st.resp), self.states, strict=True):
            ep.state, ep.prev, ep.seen, ep.did_close = state, prev, seen, did_close
        st.history = list(self.tcp.history)


_SINGLE: Final = (0b00010, 0b01000, 0b10000)  # event code bits of a lone SYN, FIN, RST


def _typed(sig: bytes) -> frozenset[int]:
    """The (direction, lone SYN/FIN/RST) kinds in an event sequence, as ``code & 0b11011``."""
    return frozenset(code & 0b11011 for code in sig if code & 0b11010 in _SINGLE)


def _note(at: dict[str, int], k: int, d: int, flags: int, length: int) -> None:
    """Record which anchors event ``k`` (direction ``d``) sets, as ``FlowMeter._tcp_event`` does."""
    if at[f"first{d}"] < 0:
        at[f"first{d}"] = k
    if length and not flags & RST and at[f"data{d}"] < 0:
        at[f"data{d}"] = k
    single = flags & (SYN | FIN | RST)
    if single in (SYN, FIN, RST):
        at[{SYN: "syn", FIN: "fin", RST: "rst"}[single] + str(d)] = k
    if flags & (SYN | ACK | RST | FIN) == SYN:
        if d == 0 and at["syn"] < 0:
            at["syn"] = k
    elif flags & (SYN | ACK | RST) == SYN | ACK:
        if d == 1 and at["synack"] < 0:
            at["synack"] = k
    elif d == 0 and flags & ACK and not flags & SYN and at["synack"] >= 0 and at["ack"] < 0:
        at["ack"] = k


def _likely_server_ports() -> npt.NDArray[np.bool_]:
    """An approximation of Zeek's ``likely_server_ports``: the well-known ports and common service ports."""
    table = np.zeros(65536, np.bool_)
    table[1:1024] = True
    table[list(_SERVICE_PORTS)] = True
    return table


_SERVICE_PORTS: Final = (
    1080, 1194, 1433, 1521, 1723, 1883, 2049, 2181, 2379, 2380, 3128, 3306, 3389, 4789, 5060, 5061, 5222,
    5432, 5672, 5900, 6081, 6379, 6443, 8000, 8008, 8080, 8081, 8443, 8888, 9000, 9042, 9090, 9092, 9200,
    9418, 10250, 11211, 15000, 15001, 15006, 27017,
)  # fmt: skip
LIKELY_SERVER: Final = _likely_server_ports()


def _flip_roles(proto: I64, flags: I64, sport: I64, dport: I64) -> npt.NDArray[np.bool_]:
    """Whether a new flow's first packet came from its responder, so the roles flip (history ``^``).

    TCP: a SYN-ACK first means the handshake names the roles (its sender is the server); another
    first packet other than a pure SYN flips as Zeek's ``TCPAnalyzer::WantConnection`` does: when its
    source port is a likely server port and its destination port is not (both likely: when the
    source port is the lower one). UDP: source port likely, destination port not (Zeek's UDP rule).
    """
    src_likely, dst_likely = LIKELY_SERVER[sport], LIKELY_SERVER[dport]
    tcp = proto == TCP
    synack = (flags & (SYN | ACK | RST)) == (SYN | ACK)
    pure_syn = (flags & (SYN | ACK)) == SYN
    by_port = src_likely & (~dst_likely | (sport < dport))
    tcp_flip = tcp & (synack | (~pure_syn & ((flags & SYN) == 0) & by_port))
    udp_flip = (proto == UDP) & src_likely & ~dst_likely
    flip: npt.NDArray[np.bool_] = tcp_flip | udp_flip
    return flip


def close_type(state: str, reason: str, final: bool, proto: int, synack_seq: int, rtt_client_us: int) -> str:
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
    if proto == TCP:
        by_state = _CLOSE_BY_STATE.get(state)
        if by_state:
            return by_state
        if state == "S1" and synack_seq and not rtt_client_us:
            return "client_ack_miss"
    return reason or "unfinished"


_CLOSE_BY_STATE: Final = {
    "SF": "normal", "REJ": "server_rst", "RSTR": "server_rst", "RSTRH": "server_rst", "RSTO": "client_rst",
    "RSTOS0": "client_rst", "S0": "server_syn_miss", "S2": "half_close", "S3": "half_close",
    "SH": "half_close", "SHR": "half_close",
}  # fmt: skip


_OCTETS: Final = np.array([str(k) for k in range(256)], object)


def _v4_texts(lo: U64) -> list[str]:
    """Dotted quads of lower halves (IPv4-mapped ones; others get None, formatted by the caller)."""
    v4 = (lo >> np.uint64(32)) == 0xFFFF
    out: list[Any] = [None] * len(lo)
    rows = np.flatnonzero(v4)
    if len(rows):
        a = lo[rows].astype(np.int64)
        text = _OCTETS[(a >> 24) & 255] + "." + _OCTETS[(a >> 16) & 255] + "." + _OCTETS[(a >> 8) & 255]
        for r, t in zip(rows.tolist(), (text + "." + _OCTETS[a & 255]).tolist(), strict=True):
            out[r] = t
    return out


_POWERS_OF_TEN: Final = np.array([10**k for k in range(19)], np.int64)


def _is_power_of_ten(n: int) -> bool:
    return n > 0 and 10 ** (len(str(n)) - 1) == n


def _scaled_marks(mask: npt.NDArray[np.bool_], run: I64, init: I64) -> npt.NDArray[np.bool_]:
    """Rows where a per-run running count of ``mask`` (starting at ``init``) reaches 1, 10, 100, ..."""
    if not mask.any():
        return np.zeros(len(mask), np.bool_)
    cs = np.cumsum(mask)
    first = np.r_[True, run[1:] != run[:-1]]
    before: I64 = (cs - mask)[first]
    count = cs - before[run] + init[run]
    return mask & np.isin(count, _POWERS_OF_TEN)
