"""Drive an ``L7Tracker`` from metered ``PacketBlock``s (the probe's fast path hands blocks, not packets).

Rows are selected with numpy first, so the per-packet Python work is spent only on packets the L7
stage may parse: TCP segments with payload or SYN/FIN/RST of flows not known to be "not L7" (and, when
``detect_http`` is off, only on HTTP/DNS/TLS ports), and UDP datagrams on DNS ports. A block of a UDP flood
on other ports costs a few numpy passes and no Python loop.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from hopscope.probes.l7.tracker import L7Tracker
from hopscope.probes.packets import FIN, RST, SYN, TCP, UDP, PacketBlock

_NO_ADDR = ("", 0)
#: The columns ``feed`` hands on per row, in the order its loop unpacks them.
_FED = ("flow_id", "ts_ns", "from_orig", "proto", "sport", "dport", "seq", "ack", "tcp_flags", "payload_off",
        "payload_caplen")  # fmt: skip


class BlockFeeder:
    """Selects the rows of each block an ``L7Tracker`` wants and hands them over in capture order."""

    def __init__(self, tracker: L7Tracker) -> None:
        self.tracker = tracker
        s = tracker.settings
        self._http_ports = np.array(sorted(s.http_ports), dtype=np.uint16)
        self._dns_ports = np.array(sorted(s.dns_ports), dtype=np.uint16)
        self._tls_ports = np.array(sorted(s.tls_ports), dtype=np.uint16)
        self._ignored = np.zeros(0, dtype=np.uint64)
        self._ignored_len = -1
        self.rows_fed = 0  # rows handed to the tracker (cumulative)

    def feed(self, block: PacketBlock) -> int:
        """Feed one metered block; returns the number of rows handed to the tracker.

        The selected rows' columns become Python lists once per block (a numpy scalar per field and
        row cost more than the tracker's own work on a short segment)."""
        rows = self.select(block)
        if not len(rows):
            return 0
        trk = self.tracker
        cols = [getattr(block, name)[rows].tolist() for name in _FED]
        buf = block.buf
        tcp_segment, tracked = trk.tcp_segment, trk.tcp_table()
        for i, fid, ts, fo, proto, sp, dp, seq, ack, flags, off, caplen in zip(rows.tolist(), *cols, strict=True):
            payload = buf[off : off + caplen].tobytes()
            if proto != TCP:
                trk.udp_datagram(fid, ts, payload, (block.src_str(i), sp), (block.dst_str(i), dp))
            elif fid in tracked:  # its addresses are known already
                tcp_segment(fid, ts, fo, seq, ack, flags, payload, _NO_ADDR, _NO_ADDR)
            else:
                tcp_segment(fid, ts, fo, seq, ack, flags, payload, (block.src_str(i), sp), (block.dst_str(i), dp))
        self.rows_fed += len(rows)
        return len(rows)

    def select(self, block: PacketBlock) -> npt.NDArray[np.intp]:
        """Row indices (ascending) the tracker may want."""
        base = block.ok & (block.flow_id != 0)
        has_payload = block.payload_caplen > 0
        tcp = base & (block.proto == TCP) & (has_payload | ((block.tcp_flags & (SYN | FIN | RST)) != 0))
        if not self.tracker.settings.detect_http:
            ports = np.concatenate([self._http_ports, self._dns_ports, self._tls_ports])
            tcp &= np.isin(block.sport, ports) | np.isin(block.dport, ports)
        if tcp.any():
            tcp &= ~np.isin(block.flow_id, self._ignored_ids())
        udp = base & (block.proto == UDP) & has_payload
        if udp.any():
            udp &= np.isin(block.sport, self._dns_ports) | np.isin(block.dport, self._dns_ports)
        return np.flatnonzero(tcp | udp)

    def _ignored_ids(self) -> npt.NDArray[np.uint64]:
        ignored = self.tracker.ignored_flow_ids()
        if len(ignored) != self._ignored_len:
            self._ignored = np.fromiter(ignored, dtype=np.uint64, count=len(ignored))
            self._ignored_len = len(ignored)
        return self._ignored
