"""The reference flow meter: one plain loop over the packets of a block, in capture order.

This is the specification of flow metering; the compiled kernel (``probes/csrc/meter.c``) follows it
function for function (same names, same order of operations) and must give identical records on
every input (tests/probes/test_meter_native.py). It is also the fallback when the kernel is not built.

A flow is bidirectional and keyed by (capture point, protocol, the two endpoints as seen at that
point), direction-normalised, so both directions of a connection meet in one flow
(``hopscope.ids.flow_key``). As in Zeek's default ``fivetuple`` key, neither the enclosing tunnel nor
the VLAN is part of the key (the record reports those its first packet had); one-way ICMP messages
keep their direction (``meter_common.icmp_key_ports``). Per packet (``_meter_packet``):

1. find the flow by key, or create it: the originator is the sender of the first packet unless
   ``meter_common.flip_roles`` says it came from the responder (history ``^``). A TCP packet on a known
   flow starts a new one (the old one is finished at the end of the slice) when Zeek would: a tuple
   reuse (``tcpstate.TcpConn.is_reuse``: any SYN once either side closed, a SYN with a new sequence
   number on an open connection), or an attempt whose SYN went unanswered for ``tcp_attempt_delay_s``
   (Zeek's ``AttemptTimer``). UDP and ICMP flows are never reused;
2. count packets, payload and IP bytes per direction; the flow's end time (Zeek's ``SetLastTime``:
   for TCP only until both sides have closed, so the last ACK and later stragglers are counted but
   do not lengthen the flow);
3. TCP (``_tcp_packet``): Zeek's sequence numbers, history letters, state machine and content gaps
   (``tcpstate.TcpConn``, every packet, as Zeek does), the counts of its events, then the handshake
   anchors; other
   protocols: the UDP history letter of the first datagram per direction (with or without payload)
   and the payload hash of the first payload.

A packet whose L4 checksum failed (``PacketStatus.BAD_L4_CHECKSUM``) finds or creates its flow (step 1)
and adds ``C``/``c`` to its history on the 1st, 10th, 100th, ... of a direction, nothing else: Zeek
validates the checksum after the connection lookup (``TCPAnalyzer::ValidateChecksum``,
``UDPSessionAdapter::HandleBadChecksum``, and ICMP as of Zeek 8.2) and drops the packet there.

Tunnels: a UDP flow whose datagrams carry a tunnel the decoder opened (``PacketBlock.encap``) gets the
tunnel as its ``service`` (Zeek confirms the tunnel analyzer on the outer connection; Teredo once both
directions carried it, ``Tunnel::delay_teredo_confirmation``); a packet that came in a UDP tunnel names
the outer datagram's flow in its flow's ``tunnel_parents`` (Zeek: the innermost encapsulation's uid at
``new_connection`` and at each ``tunnel_changed``, at most ``MAX_TUNNEL_CHANGES`` changes).

Sizes: a TCP record's ``orig_bytes``/``resp_bytes`` are Zeek's ``TCP_Endpoint::Size``: the sequence
range from the start to the highest sequence end or the peer's highest ACK, less SYN and FIN, so
retransmitted and overlapping data count once and data acknowledged but not captured counts; UDP and
ICMP sizes are the payload bytes per the IP header (UDP: the UDP length less its header).

Definitions: a retransmission is a segment with payload that does not advance the highest sequence
end of its direction (Zeek's ``update_last_seq`` calling ``DidRxmit``, with its exceptions); an
out-of-order segment is one with payload that starts beyond it (data before it is missing or late). A
zero window is Zeek's ``update_window`` rule: no RST, the peer not CLOSED, the sender not RESET. The
``T`` and ``W`` history letters are added on the 1st, 10th, 100th, ... retransmission and zero window
of a direction (Zeek's ``ScaledHistoryEntry``).

Records are emitted when a flow ends (``tcpstate.TcpConn.closed``, after ``linger_s`` of capture time,
Zeek's ``tcp_close_delay``, so late ACKs and retransmissions are counted; later packets start a new
flow), after ``idle_timeout_s`` without packets, every ``interval_s`` for long flows (``final`` = 0,
cumulative counters), when the flow table is full (``evicted``, the least recently active tenth goes),
and at ``flush`` (end of capture). A block is metered in slices of ``sweep_every_s`` of capture time
(the block's running maximum of packet times); after each slice the reused tuples' old flows are
finished and the table is evicted when over its limit, and at a slice boundary the sweep finishes
lingering and idle flows and emits interim records.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any, Final

import numpy as np

from hopscope.ids import endpoint_hash_array, flow_id, flow_key_array, payload_hash
from hopscope.probes import tcpstate
from hopscope.probes.community_id import community_id
from hopscope.probes.meter_common import (
    CLOSE_TYPES,
    CONN_STATES,
    NS,
    RECORD_FIELDS,
    FlowNames,
    MeterConfig,
    address_text,
    close_type,
    flip_roles,
    icmp_key_ports,
    metered_rows,
    outer_rows,
    record_batch,
)  # fmt: skip
from hopscope.probes.packets import ACK, ENCAP_NAMES, FIN, RST, SYN, TCP, UDP, PacketBlock, PacketStatus, packed_addr
from hopscope.probes.tcpstate import TcpConn
from hopscope.records import Batch

#: Indices into ``Flow.stats`` (``meter_common.STAT_NAMES``): 2 * kind + direction.
S_PKTS, S_BYTES, S_IP_BYTES, S_RTX, S_OOO, S_ZW = 0, 2, 4, 6, 8, 10
#: Why a final record is emitted (``close_type``'s ``reason``).
WHY_NONE, WHY_TIMEOUT, WHY_EVICTED, WHY_UNFINISHED = "", "timeout", "evicted", "unfinished"
_STATE_INDEX: Final = {name: k for k, name in enumerate(CONN_STATES)}
#: Zeek's Tunnel::max_changes_per_connection: tunnel_changed events (each may add a tunnel parent).
MAX_TUNNEL_CHANGES: Final = 5
#: At most this many tunnel parents are kept per flow (meter.c: MAX_PARENTS).
MAX_PARENTS: Final = 8
_TEREDO: Final = ENCAP_NAMES.index("teredo")
_CLOSE_INDEX: Final = {name: k for k, name in enumerate(CLOSE_TYPES)}


class Flow:
    """The state of one flow (meter.c: ``flow_t``). Directions: 0 originator, 1 responder."""

    __slots__ = (
        "attempt_ns", "bad_checksums", "closed_ns", "closing", "community_id", "encap", "encap_dirs", "end_ns",
        "flipped", "flow_id", "ip_version", "key", "last_report_ns", "orig_ep", "orig_hi", "orig_lo", "orig_p",
        "outer", "outer_changes", "parents", "payload_hash", "point", "proto", "resp_hi", "resp_lo", "resp_p",
        "rtt_client_us", "rtt_server_us", "slot", "start_ns", "stats", "syn_ip_id", "syn_ns", "syn_seq",
        "synack_ns", "synack_seq", "tcp", "tunnel", "udp_history", "vlan",
    )  # fmt: skip

    def __init__(self, key: int, start_ns: int, slot: int) -> None:
        self.key = key
        self.slot = slot  # place in the flow table: sweeps, eviction ties and flush go in slot order
        self.flow_id = flow_id(key, start_ns)
        self.start_ns = self.end_ns = self.last_report_ns = start_ns
        self.closed_ns = 0  # capture time the flow closed (FIN both ways or RST), 0 while open
        self.closing = False
        self.proto = self.ip_version = self.vlan = self.point = self.tunnel = 0
        self.orig_hi = self.orig_lo = self.resp_hi = self.resp_lo = self.orig_p = self.resp_p = 0
        self.orig_ep = 0  # endpoint hash of the originator (decides the direction of each packet)
        self.flipped = False
        # TCP handshake anchors (0: not seen)
        self.syn_seq = self.syn_ip_id = self.syn_ns = self.synack_seq = self.synack_ns = 0
        self.rtt_client_us = self.rtt_server_us = 0
        self.attempt_ns = 0  # capture time of the originator's first SYN (Zeek's AttemptTimer), 0: none
        self.stats = [0] * 12
        self.payload_hash = [0, 0]  # per direction: hash of the first payload bytes (1: not captured)
        self.tcp: TcpConn | None = None
        self.udp_history = ""  # history letters of a UDP or ICMP flow
        self.community_id = ""
        self.bad_checksums = [0, 0]  # per direction: packets with a bad L4 checksum (the C scale)
        self.encap = 0  # ENCAP_NAMES index of the tunnel the datagrams carry (the service), 0: none
        self.encap_dirs = 0  # Teredo: bit 1 seen from the originator, bit 2 from the responder
        self.outer = 0  # flow_id of the outer flow of the last packet (Zeek's stored encapsulation), 0: none
        self.outer_changes = 0
        self.parents: list[int] = []  # tunnel_parents, in the order found

    def ends_at(self, flags: int, seq: int, ts: int, attempt_ns: int) -> str:
        """Why this TCP packet starts a new connection on the flow's tuple ("" if it does not): Zeek's
        ``AttemptTimer`` removed an unanswered attempt ``tcp_attempt_delay`` after its SYN
        (``attempt_ns``, 0: never), or ``TcpConn.is_reuse``."""
        tcp = self.tcp
        assert tcp is not None
        if attempt_ns and self.attempt_ns and ts >= self.attempt_ns + attempt_ns and tcp.attempt:
            return "expired_attempts"
        return "reused_tuples" if tcp.is_reuse(flags, seq) else ""

    def history(self) -> str:
        """The history letters, ``^`` first when the roles were flipped (TCP and UDP)."""
        flip = "^" if self.flipped and self.proto in (TCP, UDP) else ""
        letters = "".join(self.tcp.history) if self.tcp is not None else self.udp_history
        return flip + letters

    def conn_state(self, history: str, sizes: tuple[int, int]) -> str:
        """Zeek's conn_state (main.zeek): ``tcpstate`` for TCP (``sizes``: ``TcpConn.sizes``) and UDP,
        OTH for other protocols."""
        if self.proto == TCP and self.tcp is not None:
            return self.tcp.conn_state(*sizes, history)
        if self.proto == UDP:
            return tcpstate.udp_conn_state(self.stats[S_PKTS], self.stats[S_PKTS + 1])
        return "OTH"


class _Rows:
    """The ok rows of a block as Python lists (one ``tolist`` per column, read in the packet loop)."""

    __slots__ = (
        "ack", "bad", "captured", "clock", "dst_ep", "encap", "flags", "flow_id", "from_orig", "ip_len", "key",
        "outer", "plen", "proto", "row", "rport", "seq", "src_ep", "ts", "window",
    )  # fmt: skip

    def __init__(self, block: PacketBlock, rows: Any, pt_hash: Any) -> None:
        proto = block.proto[rows]
        sport = block.sport[rows].astype(np.uint64)
        rport, dport = icmp_key_ports(proto, sport, block.dport[rows].astype(np.uint64))
        src_ep = endpoint_hash_array(block.src_hi[rows], block.src_lo[rows], sport)
        dst_ep = endpoint_hash_array(block.dst_hi[rows], block.dst_lo[rows], dport)
        # Zeek's default fivetuple key: no tunnel, no VLAN; hopscope adds the capture point
        key = flow_key_array(src_ep, dst_ep, proto.astype(np.uint64), pt_hash[block.point[rows]])
        self.rport = rport.tolist()
        self.row = rows.tolist()
        self.key, self.src_ep, self.dst_ep = key.tolist(), src_ep.tolist(), dst_ep.tolist()
        self.ts = block.ts_ns[rows].tolist()
        self.clock = np.maximum.accumulate(block.ts_ns[rows]).tolist()
        self.proto, self.flags = proto.tolist(), block.tcp_flags[rows].tolist()
        self.seq, self.plen = block.seq[rows].tolist(), block.payload_len[rows].tolist()
        self.ack = block.ack[rows].tolist()
        self.ip_len, self.window = block.ip_len[rows].tolist(), block.window[rows].tolist()
        self.bad = (block.status[rows] == PacketStatus.BAD_L4_CHECKSUM).tolist()
        self.captured = (block.payload_caplen[rows] >= block.payload_len[rows]).tolist()
        self.encap = block.encap[rows].tolist()
        # per packet: the position (in these rows) of its tunnel's outer datagram, -1: none
        position = np.full(block.count, -1, np.int64)
        position[rows] = np.arange(len(rows))
        outer = outer_rows(block)[rows]
        self.outer = np.where(outer >= 0, position[np.maximum(outer, 0)], -1).tolist()
        self.flow_id = [0] * len(self.row)  # per packet: its flow's id and direction (the meter's output)
        self.from_orig = [False] * len(self.row)


def _is_power_of_ten(n: int) -> bool:
    return n > 0 and 10 ** (len(str(n)) - 1) == n


class ReferenceMeter:
    """Meters blocks one packet at a time; see the module docstring. Same interface as ``NativeMeter``."""

    def __init__(self, config: MeterConfig, names: FlowNames, host: str = "", hop_kind: str = "") -> None:
        self.config = config
        self.names = names
        self.host = host
        self.hop_kind = hop_kind
        self.flows: dict[int, Flow] = {}  # flow key -> the flow's state (the index of the flow table)
        self.slots: list[Flow | None] = []  # the flow table (meter.c: flows); None: free
        self.free: list[int] = []  # free slots, the next one last
        self.retiring: list[Flow] = []  # flows replaced by a reused tuple, finished at the end of the slice
        self.counts: Counter[str] = Counter()
        self.now_ns = 0
        self.next_sweep_ns = 0
        self._out: list[tuple[int, ...]] = []  # emitted records (RECORD_FIELDS), until take()
        self._texts: list[str] = []  # five per emitted record (meter_common.TEXT_FIELDS)
        self._addresses: dict[tuple[int, int], str] = {}
        self._tcp_idle_ns, self._udp_idle_ns = int(config.tcp_idle_timeout_s * NS), int(config.udp_idle_timeout_s * NS)
        self._linger_ns, self._interval_ns = int(config.linger_s * NS), int(config.interval_s * NS)
        self._attempt_ns = int(config.tcp_attempt_delay_s * NS)
        self._sweep_ns = max(int(config.sweep_every_s * NS), 1)
        self._block: PacketBlock = PacketBlock.empty(0)
        self._ids: tuple[Any, ...] = ()

    # --- the per-block loop (meter.c: meter_rows) ------------------------------------------------

    def process(self, block: PacketBlock) -> Batch:
        """Meter the ok rows of ``block`` (filling ``flow_id``/``from_orig``); return the records due.

        Slices of ``sweep_every_s`` of capture time: each slice takes at least one row; after it, the
        end-of-slice work; at a slice boundary (or when the clock has passed the next sweep) the sweep.
        """
        rows = metered_rows(block)
        if len(rows) == 0:
            return self.take()
        ids = self.names.of_block(block)
        self._block, self._ids = block, ids
        r = _Rows(block, rows, ids[0])
        n, start, clock = len(r.row), 0, r.clock
        while start < n:
            if self.next_sweep_ns == 0:
                self.next_sweep_ns = clock[start] + self._sweep_ns
            stop = start
            while stop < n and (clock[stop] < self.next_sweep_ns or stop == start):
                self._meter_packet(r, stop)
                stop += 1
            self.now_ns = max(self.now_ns, clock[stop - 1])
            self._end_of_slice()
            if stop < n or self.now_ns >= self.next_sweep_ns:
                self.now_ns = max(self.now_ns, clock[min(stop, n - 1)])
                self._sweep()
                self.next_sweep_ns = self.now_ns + self._sweep_ns
            start = stop
        block.flow_id[rows] = np.array(r.flow_id, np.uint64)
        block.from_orig[rows] = r.from_orig
        bad = sum(r.bad)
        self.counts["packets"] += n - bad
        if bad:
            self.counts["bad_checksums"] += bad
        return self.take()

    def _meter_packet(self, r: _Rows, k: int) -> None:
        """Lookup (or creation, or reuse) and metering of the k-th ok packet (meter.c: meter_packet)."""
        key, proto, flags = r.key[k], r.proto[k], r.flags[k]
        flow = self.flows.get(key)
        if flow is None:
            flow = self._create(r, k)
        elif proto == TCP and (flags & SYN or (flow.attempt_ns and r.ts[k] - flow.attempt_ns >= self._attempt_ns)):
            why = flow.ends_at(flags, r.seq[k], r.ts[k], self._attempt_ns)
            if why:
                self.retiring.append(flow)  # Zeek: the old connection ends, this packet starts a new one
                flow = self._create(r, k)
                self.counts[why] += 1
        fo = r.src_ep[k] == flow.orig_ep
        d = 0 if fo else 1
        if r.outer[k] >= 0 or flow.outer:
            self._tunnel_parent(flow, r.flow_id[r.outer[k]] if r.outer[k] >= 0 else 0, False)
        if r.bad[k]:  # found or created, then dropped: only the scaled C/c
            flow.bad_checksums[d] += 1
            if _is_power_of_ten(flow.bad_checksums[d]):
                self._add_letter(flow, fo, "C")
            return
        ts, length = r.ts[k], r.plen[k]
        stats = flow.stats
        stats[S_PKTS + d] += 1
        stats[S_BYTES + d] += length
        stats[S_IP_BYTES + d] += r.ip_len[k]
        # duration (Zeek's SetLastTime): TCP packets once both sides closed (the last ACK, stragglers)
        # no longer move it (TCPSessionAdapter::Process); UDP and ICMP: every packet
        tcp = flow.tcp
        if ts > flow.end_ns and (tcp is None or not (tcp.orig.did_close and tcp.resp.did_close)):
            flow.end_ns = ts
        i = r.row[k]
        if proto == TCP:
            self._tcp_packet(r, k, flow, fo)
        else:
            if proto == UDP and stats[S_PKTS + d] == 1:  # UDP.cc: D/d for the first datagram, payload or not
                flow.udp_history += "D" if fo else "d"
            if r.encap[k] and not flow.encap:
                self._confirm_tunnel(flow, r.encap[k], d)
            if length > 0 and flow.payload_hash[d] == 0:  # first payload of the direction
                flow.payload_hash[d] = self._hash_payload(i) or 1  # 1: payload seen, not captured
        r.flow_id[k] = flow.flow_id
        r.from_orig[k] = fo

    def _create(self, r: _Rows, k: int) -> Flow:
        """A new flow whose first packet is the k-th ok packet (meter.c: create)."""
        b, i = self._block, r.row[k]
        proto, sport, dport = r.proto[k], int(b.sport[i]), r.rport[k]
        src, dst = (int(b.src_hi[i]), int(b.src_lo[i])), (int(b.dst_hi[i]), int(b.dst_lo[i]))
        payload = bytes(b.payload_view(i, 64)) if proto == UDP and not r.bad[k] else b""
        flip = flip_roles(proto, r.flags[k], sport, dport, *dst, payload)
        flow = Flow(r.key[k], r.ts[k], self._slot_alloc())
        flow.proto, flow.ip_version, flow.vlan = proto, int(b.ip_version[i]), int(b.vlan[i])
        flow.point, flow.tunnel = int(self._ids[1][b.point[i]]), int(self._ids[3][b.tunnel[i]])
        (flow.orig_hi, flow.orig_lo), (flow.resp_hi, flow.resp_lo) = (dst, src) if flip else (src, dst)
        flow.orig_p, flow.resp_p = (dport, sport) if flip else (sport, dport)
        flow.orig_ep = r.dst_ep[k] if flip else r.src_ep[k]
        flow.flipped = flip
        if proto == TCP:
            flow.tcp = TcpConn()
        if r.outer[k] >= 0 and r.flow_id[r.outer[k]]:  # Zeek's set_conn at new_connection: the innermost
            self._tunnel_parent(flow, r.flow_id[r.outer[k]], True)  # encapsulation's uid
        self.slots[flow.slot] = flow
        self.flows[flow.key] = flow
        self.counts["flows"] += 1
        return flow

    @staticmethod
    def _add_letter(flow: Flow, fo: bool, letter: str) -> None:
        if flow.tcp is not None:
            flow.tcp.add(fo, letter)
        elif len(flow.udp_history) < tcpstate.HIST_MAX:
            flow.udp_history += letter if fo else letter.lower()

    @staticmethod
    def _tunnel_parent(flow: Flow, outer: int, new: bool) -> None:
        """Zeek's ``Connection::CheckEncapsulation`` with the outer flow of this packet (0: none): a
        change from one encapsulation to another raises ``tunnel_changed`` (at most
        ``MAX_TUNNEL_CHANGES`` times), from none to one always; each adds the new parent (conn/main.zeek)."""
        if new:
            flow.outer, flow.parents = outer, [outer]
            return
        if outer == flow.outer:
            return
        if flow.outer and outer:
            if flow.outer_changes >= MAX_TUNNEL_CHANGES:
                flow.outer = outer
                return
            flow.outer_changes += 1
        flow.outer = outer
        if outer and outer not in flow.parents and len(flow.parents) < MAX_PARENTS:
            flow.parents.append(outer)

    @staticmethod
    def _confirm_tunnel(flow: Flow, encap: int, d: int) -> None:
        """The outer flow's service: the tunnel, confirmed at once; Teredo once both directions
        carried it (``Tunnel::delay_teredo_confirmation``)."""
        if encap != _TEREDO:
            flow.encap = encap
            return
        flow.encap_dirs |= 1 << d
        if flow.encap_dirs == 3:
            flow.encap = encap

    def _slot_alloc(self) -> int:
        """A free slot of the flow table, the lowest of a fresh table first; the table doubles when full."""
        if not self.free:
            old = len(self.slots)
            new = old * 2 if old else 1 << 14
            self.slots.extend([None] * (new - old))
            self.free.extend(range(new - 1, old - 1, -1))
        return self.free.pop()

    def _hash_payload(self, i: int) -> int:
        """``payload_hash`` of the first ``payload_hash_bytes`` captured payload bytes of row i (0: none)."""
        return payload_hash(self._block.payload_view(i, max(self.config.payload_hash_bytes, 0)))

    # --- TCP (meter.c: tcp_packet_meter) ----------------------------------------------------------

    def _tcp_packet(self, r: _Rows, k: int, flow: Flow, fo: bool) -> None:
        """Zeek's sequence numbers, history letters and state machine, the retransmission, out-of-order
        and zero-window counts, and the handshake anchors of one packet."""
        d, flags, seq, length, ts = 0 if fo else 1, r.flags[k], r.seq[k], r.plen[k], r.ts[k]
        if length and not flags & RST and not flow.payload_hash[d] and self._block.payload_caplen[r.row[k]]:
            flow.payload_hash[d] = self._hash_payload(r.row[k])
        tcp = flow.tcp
        assert tcp is not None
        if fo and flags & SYN and tcp.orig.state == tcpstate.INACTIVE:
            flow.attempt_ns = ts  # UpdateInactiveState schedules the AttemptTimer
        events = tcp.packet(fo, flags, seq, r.ack[k], length, r.window[k], r.captured[k])
        if events:
            self._count_events(flow, tcp, fo, events)
        if tcp.gaps:  # G/g for the peer's data, scaled (TCP_Endpoint::Gap), after W and T
            peer = tcp.resp if fo else tcp.orig
            for _ in range(tcp.gaps):
                peer.gap_cnt += 1
                if _is_power_of_ten(peer.gap_cnt):
                    tcp.add(not fo, "G")
        if flow.attempt_ns and not tcp.attempt:
            flow.attempt_ns = 0  # answered (or closed): the AttemptTimer will find nothing to end, ever
        if flags & SYN or (flow.synack_ns and not flow.rtt_client_us):  # else no anchor can change
            self._anchors(r, k, flow, fo, flags, seq, ts)
        if flags & (FIN | RST) and not flow.closing and tcp.closed:  # only a FIN or RST closes (TcpConn.closed)
            flow.closed_ns = ts
            flow.closing = True  # its final record waits linger_s for stragglers

    @staticmethod
    def _count_events(flow: Flow, tcp: TcpConn, fo: bool, events: int) -> None:
        """Zero-window, retransmission and out-of-order counts; ``W`` and ``T`` on the 1st, 10th, 100th
        ... of a direction (Zeek's ``ScaledHistoryEntry``), after the packet's other letters."""
        stats, d = flow.stats, 0 if fo else 1
        if events & tcpstate.EV_ZERO_WINDOW:
            stats[S_ZW + d] += 1
            if _is_power_of_ten(stats[S_ZW + d]):
                tcp.add(fo, "W")
        if events & tcpstate.EV_RXMIT:
            stats[S_RTX + d] += 1
            if _is_power_of_ten(stats[S_RTX + d]):
                tcp.add(fo, "T")
        if events & tcpstate.EV_OOO:
            stats[S_OOO + d] += 1

    def _anchors(self, r: _Rows, k: int, flow: Flow, fo: bool, flags: int, seq: int, ts: int) -> None:
        """The originator's SYN (ISN, IP id, time), the responder's SYN-ACK and the two handshake RTTs."""
        if flags & (SYN | ACK | RST | FIN) == SYN:
            if fo:
                if not flow.syn_seq:
                    flow.syn_seq, flow.syn_ip_id = seq, int(self._block.ip_id[r.row[k]])
                flow.syn_ns = ts  # the last SYN sent: a retransmitted SYN restarts the server RTT
        elif flags & (SYN | ACK | RST) == SYN | ACK:
            if not fo and not flow.synack_seq:
                flow.synack_seq, flow.synack_ns = seq, ts
                if flow.syn_ns:
                    flow.rtt_server_us = max((ts - flow.syn_ns) // 1000, 0)
        elif fo and flags & ACK and not flags & SYN and flow.synack_ns and not flow.rtt_client_us:
            # the handshake's third packet: the originator's first ACK without SYN after the SYN-ACK
            flow.rtt_client_us = max((ts - flow.synack_ns) // 1000, 1)  # 1 at least: 0 means not seen

    # --- emission (meter.c: end_of_slice, sweep, evict, finish, emit) ------------------------------

    def _end_of_slice(self) -> None:
        """Finish reused tuples' old flows; evict when the table is over its limit."""
        retiring, self.retiring = self.retiring, []
        for flow in retiring:
            self._finish(flow, WHY_NONE)
        if len(self.flows) > self.config.max_flows:
            self._evict()

    def _sweep(self) -> None:
        """Finish lingering closed flows and idle flows; emit interim records of long flows."""
        now = self.now_ns
        for flow in self.slots:
            if flow is None:
                continue
            idle_ns = self._tcp_idle_ns if flow.proto == TCP else self._udp_idle_ns
            if flow.closing and flow.end_ns + self._linger_ns <= now:
                self._finish(flow, WHY_NONE)
            elif flow.end_ns + idle_ns <= now:  # Zeek's tcp_/udp_inactivity_timeout
                self._finish(flow, WHY_TIMEOUT)
            elif self._interval_ns and flow.last_report_ns + self._interval_ns <= now:
                flow.last_report_ns = now
                self._emit(flow, False, "open")
                self.counts["interim_records"] += 1

    def _evict(self) -> None:
        """The least recently active tenth of the flows goes (ties by flow_id)."""
        oldest = sorted((f for f in self.slots if f is not None), key=lambda f: (f.end_ns, f.flow_id))
        victims = oldest[: max(1, len(oldest) // 10)]
        self.counts["evictions"] += len(victims)
        for flow in victims:
            self._finish(flow, WHY_EVICTED)

    def _finish(self, flow: Flow, why: str) -> None:
        """A final record for ``flow``, which leaves the table."""
        self._emit(flow, True, why)
        self.counts["records"] += 1
        if self.flows.get(flow.key) is flow:
            del self.flows[flow.key]
        self.slots[flow.slot] = None
        self.free.append(flow.slot)

    def flush_batches(self, chunk: int) -> Iterator[Batch]:
        """Final records of every flow still in the table, ``chunk`` flows per batch."""
        flows = [f for f in self.slots if f is not None]
        for start in range(0, len(flows), chunk):
            for flow in flows[start : start + chunk]:
                self._finish(flow, WHY_NONE if flow.closed_ns else WHY_UNFINISHED)
            yield self.take()

    def _emit(self, flow: Flow, final: bool, why: str) -> None:
        """Append the record of ``flow`` (final or interim) to the output."""
        history = flow.history()
        stats = flow.stats
        sizes = (stats[S_BYTES], stats[S_BYTES + 1])
        missed = 0
        if flow.tcp is not None:  # TCP bytes: TCP_Endpoint::Size (sequence range), not the payload sum
            sizes = flow.tcp.sizes()
            stats = [*stats[:S_BYTES], *sizes, *stats[S_BYTES + 2 :]]
            missed = flow.tcp.orig.missed + flow.tcp.resp.missed
        state = flow.conn_state(history[1:] if history.startswith("^") else history, sizes)
        ack_miss = flow.synack_seq != 0 and flow.rtt_client_us == 0
        close = close_type(state, why, final, flow.proto, ack_miss)
        self._out.append((
            flow.flow_id, flow.start_ns, flow.end_ns, flow.ip_version, flow.proto, flow.orig_p, flow.resp_p,
            flow.vlan, flow.point, flow.tunnel, flow.orig_hi, flow.orig_lo, flow.resp_hi, flow.resp_lo,
            *stats, *flow.payload_hash, flow.syn_seq, flow.synack_seq, flow.syn_ip_id, flow.rtt_client_us,
            flow.rtt_server_us, int(final), _STATE_INDEX[state], _CLOSE_INDEX[close], missed, flow.encap,
        ))  # fmt: skip
        if not flow.community_id:
            orig, resp = packed_addr(flow.orig_hi, flow.orig_lo), packed_addr(flow.resp_hi, flow.resp_lo)
            flow.community_id = community_id(flow.proto, orig, resp, flow.orig_p, flow.resp_p)
        parents = ",".join(f"{p:016x}" for p in flow.parents)
        self._texts += (self._address(flow.orig_hi, flow.orig_lo), self._address(flow.resp_hi, flow.resp_lo),
                        history, flow.community_id, parents)  # fmt: skip

    def _address(self, hi: int, lo: int) -> str:
        text = self._addresses.get((hi, lo))
        if text is None:
            if len(self._addresses) > 1_000_000:
                self._addresses.clear()
            text = self._addresses[hi, lo] = address_text(hi, lo)
        return text

    def take(self) -> Batch:
        """The records emitted since the last call, as a FlowRecord batch."""
        out, texts, self._out, self._texts = self._out, self._texts, [], []
        n = len(out)
        if n == 0:
            return record_batch({}, [], 0, self.names, self.host, self.hop_kind)
        columns = list(zip(*out, strict=True))
        ints = {name: _int_column(values) for name, values in zip(RECORD_FIELDS, columns, strict=True)}
        return record_batch(ints, texts, n, self.names, self.host, self.hop_kind)

    def counters(self) -> dict[str, int]:
        return dict(self.counts)


def _int_column(values: tuple[int, ...]) -> Any:
    """A record column as int64 (values of 2^63 and more, hashes and ids, as their two's complement)."""
    return np.array(values, np.uint64).view(np.int64) if max(values) >= 1 << 63 else np.array(values, np.int64)
