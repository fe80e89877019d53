"""Drive an ``L7Tracker`` from metered ``PacketBlock``s (the probe's fast path hands blocks, not packets).

Rows are selected with numpy first, so the per-packet Python work is spent only on packets the L7
stage may parse: TCP segments with payload or SYN/FIN/RST of flows not known to be "not L7" (and, when
``detect_http`` is off, only on HTTP/DNS/TLS ports), and UDP datagrams on DNS ports. A block of a UDP flood
on other ports costs a few numpy passes and no Python loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from hopscope.probes import kernels
from hopscope.probes.l7.tracker import L7Tracker
from hopscope.probes.packets import FIN, RST, SYN, TCP, UDP, PacketBlock

_NO_ADDR = ("", 0)
#: The compiled row loop (probes/csrc/l7.c ``feed_rows``), or None: ``feed_rows_reference`` then runs.
_L7 = kernels.load("_l7")
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

        The loop over the rows runs in the ``_l7`` kernel (``feed_rows``) when it is built and on, else
        in ``feed_rows_reference``."""
        rows = self.select(block)
        if not len(rows):
            return 0
        trk = self.tracker

        def ends(i: int, sport: int, dport: int) -> tuple[tuple[str, int], tuple[str, int]]:
            return (block.src_str(i), sport), (block.dst_str(i), dport)

        cols = [getattr(block, name)[rows] for name in _FED]
        feed_rows = feed_rows_reference if _L7 is None else _L7.feed_rows
        feed_rows(rows, *cols, block.buf, trk.tcp_table(), trk.tcp_segment, trk.udp_datagram, ends, _NO_ADDR)
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


def feed_rows_reference(rows: npt.NDArray[np.intp], *args: Any) -> None:
    """Hand the selected rows of a block to a tracker, one call per row in order: the Python twin of the
    ``_l7`` kernel's ``feed_rows`` (tests/probes/l7/test_l7_native.py).

    ``args``: the columns of ``_FED`` gathered for ``rows``, the block's buffer, the tracker's
    ``tcp_table()``, ``tcp_segment``, ``udp_datagram``, ``ends(row, sport, dport)`` (the (address, port)
    of the source and the destination) and the (address, port) passed for a tracked flow's."""
    *cols, buf, tracked, tcp_segment, udp_datagram, ends, no_addr = args
    # the columns as lists once (a numpy scalar per field and row costs more than the tracker's own
    # work on a short segment)
    lists = [col.tolist() for col in cols]
    for i, fid, ts, fo, proto, sp, dp, seq, ack, flags, off, caplen in zip(rows.tolist(), *lists, strict=True):
        payload = buf[off : off + caplen].tobytes()
        if proto != TCP:
            udp_datagram(fid, ts, payload, *ends(i, sp, dp))
        elif fid in tracked:  # its addresses are known already
            tcp_segment(fid, ts, fo, seq, ack, flags, payload, no_addr, no_addr)
        else:
            tcp_segment(fid, ts, fo, seq, ack, flags, payload, *ends(i, sp, dp))
