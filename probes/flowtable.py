"""The flow table: the meter's per-flow state as columns, one slot per flow.

Counters, times, addresses and sequence bookkeeping live in numpy arrays indexed by slot, so the meter
updates them for a whole block at once (``np.bincount`` then one fancy-indexed add). What a per-packet
state machine must mutate (the TCP endpoints and history, ``tcpstate.TcpConn``) and text (payload
hashes are ints, UDP history, Community ID cache) live in plain lists indexed by the same slot.
Freed slots are reused; the arrays double when full.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]

#: Scalar columns: name -> dtype.
SCALARS: Final[dict[str, Any]] = {
    "key": np.uint64,  # direction-normalised flow key (0: slot free)
    "flow_id": np.uint64,
    "start_ns": np.int64,
    "end_ns": np.int64,
    "last_report_ns": np.int64,
    "closed_ns": np.int64,  # capture time the flow closed (FIN both ways or RST), 0 while open
    "proto": np.int64,
    "ip_version": np.int64,
    "vlan": np.int64,
    "point": np.int64,  # index into the meter's point names
    "tunnel": np.int64,  # index into the meter's tunnel descriptions
    "orig_hi": np.uint64,
    "orig_lo": np.uint64,
    "resp_hi": np.uint64,
    "resp_lo": np.uint64,
    "orig_p": np.int64,
    "resp_p": np.int64,
    "orig_ep": np.uint64,  # endpoint hash of the originator (decides from_orig per packet)
    "flipped": np.bool_,
    "evicted": np.bool_,
    # TCP handshake anchors (0: not seen)
    "syn_seq": np.int64,
    "syn_ip_id": np.int64,
    "syn_ns": np.int64,
    "synack_seq": np.int64,
    "synack_ns": np.int64,
    "rtt_client_us": np.int64,
    "rtt_server_us": np.int64,
}
NO_SEQ: Final = -(1 << 62)
#: Two-column (originator, responder) arrays and the value a free slot holds.
PAIRS: Final[dict[str, int]] = {
    "seq_base": -1, "max_end": NO_SEQ, "first_seq": -1, "last_syn": -1, "last_fin": -1, "last_rst": -1,
}  # fmt: skip
#: The TCP handshake anchors a FlowRecord carries (columns above, clamped to 32 bits on output).
ANCHOR_NAMES: Final = ("syn_seq", "synack_seq", "syn_ip_id", "rtt_client_us", "rtt_server_us")
STAT_NAMES: Final = (
    "orig_pkts", "resp_pkts", "orig_bytes", "resp_bytes", "orig_ip_bytes", "resp_ip_bytes",
    "orig_retrans_pkts", "resp_retrans_pkts", "orig_ooo_pkts", "resp_ooo_pkts", "orig_zero_win",
    "resp_zero_win",
)  # fmt: skip


class FlowTable:
    """Slots of flows; see the module docstring. ``cols`` holds the arrays by name."""

    def __init__(self, capacity: int = 1 << 14) -> None:
        self.capacity = 0
        self.cols: dict[str, np.ndarray[Any, Any]] = {}
        self.stats: I64 = np.zeros((0, 12), np.int64)
        self.tcp: list[Any] = []  # None, a shared template (anchors in the arrays) or the flow's TcpConn
        self.payload_hash = np.zeros((0, 2), np.uint64)  # first payload bytes hashed, per direction
        self.udp_history: list[str] = []
        self.community_id: list[str] = []
        self.free: list[int] = []
        self.used = 0
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        for name, dtype in SCALARS.items():
            arr = np.zeros(capacity, dtype)
            if old:
                arr[:old] = self.cols[name]
            self.cols[name] = arr
        for name, empty in PAIRS.items():
            arr = np.full((capacity, 2), empty, np.int64)
            if old:
                arr[:old] = self.cols[name]
            self.cols[name] = arr
        stats = np.zeros((capacity, 12), np.int64)
        stats[:old] = self.stats
        self.stats = stats
        hashes = np.zeros((capacity, 2), np.uint64)
        hashes[:old] = self.payload_hash
        self.payload_hash = hashes
        extra = capacity - old
        self.tcp.extend([None] * extra)
        self.udp_history.extend([""] * extra)
        self.community_id.extend([""] * extra)
        self.free.extend(range(capacity - 1, old - 1, -1))
        self.capacity = capacity

    def alloc(self, n: int) -> I64:
        """``n`` fresh slots (their columns reset)."""
        while len(self.free) < n:
            self._grow(self.capacity * 2)
        slots = np.array(self.free[len(self.free) - n :][::-1], np.int64)
        del self.free[len(self.free) - n :]
        self.used += n
        return slots

    def release(self, slots: I64) -> None:
        """Free ``slots`` and reset their columns."""
        if len(slots) == 0:
            return
        for name, arr in self.cols.items():
            if name in PAIRS:
                arr[slots] = PAIRS[name]
            else:
                arr[slots] = 0
        self.stats[slots] = 0
        self.payload_hash[slots] = 0
        for s in slots.tolist():
            self.tcp[s] = None
            self.udp_history[s] = ""
            self.community_id[s] = ""
            self.free.append(s)
        self.used -= len(slots)
