"""TCP stream reassembly for one direction of one connection: segments in, in-order bytes out.

Sequence numbers are unwrapped into *stream offsets* (Python ints, offset 0 = the first byte after the
SYN, or the first byte seen when the capture started mid-connection), so wrap-around at 2**32 is
invisible above this layer; ``seq_of(offset)`` maps back to the 32-bit TCP sequence number.

A segment whose bytes were all delivered already is a retransmission; one that overlaps delivered bytes
is a partial retransmission (its new tail is delivered). Both are remembered as offset ranges
(``retrans_ranges``) so the message parser can charge them to the request or response they belong to,
even when they arrive after that message was complete. A segment ahead of the next expected offset waits
in a bounded buffer; when the buffer is full, when the peer ACKs past the hole while later data waits
(the receiver has the bytes, so the capture will never see them: ``acked``), or when the stream is
flushed, the missing bytes become a ``GAP`` event and the parser above keeps framing across it (inside
a body of known length) or resynchronises. Caveat: a capture that reorders packets across CPUs (``-i
any`` on a multi-queue NIC) can show an ACK before the data it acknowledges; the hole is then given up
early and the late bytes count as a retransmission.

Events are plain tuples for speed: ``(DATA, offset, ts_ns, payload)``, ``(GAP, offset, ts_ns, length)``,
``(FIN, offset, ts_ns, 0)``.

``stream_reassembler()`` gives the ``_l7`` kernel's ``TcpStream`` (this class in C, offsets in 64 bits)
when it is built and on, else a ``StreamReassembler``, its twin (tests/probes/l7/test_l7_native.py).
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from hopscope.probes import kernels

SEQ_MOD: Final = 1 << 32
_HALF: Final = 1 << 31
#: A segment more than this far ahead of the next expected byte is not from this stream (or is garbage).
MAX_WINDOW: Final = 1 << 30

DATA: Final = 0
GAP: Final = 1
FIN: Final = 2

Event = tuple[int, int, int, "bytes | int"]


class StreamReassembler:
    """Reassembles one direction of a TCP connection.

    ``max_pending_bytes`` and ``max_pending_segments`` bound the out-of-order buffer; past them the
    oldest hole is given up as a gap (counted in ``gap_bytes``). ``max_retrans_ranges`` bounds the memory
    of retransmitted ranges (oldest forgotten first).
    """

    __slots__ = (
        "_pending",
        "base_seq",
        "fin_offset",
        "fin_sent",
        "gap_bytes",
        "max_pending_bytes",
        "max_pending_segments",
        "max_retrans_ranges",
        "next_offset",
        "ooo_segments",
        "pending_bytes",
        "retrans_ranges",
        "retrans_segments",
        "started_mid_stream",
    )

    def __init__(
        self,
        *,
        max_pending_bytes: int = 256 * 1024,
        max_pending_segments: int = 512,
        max_retrans_ranges: int = 256,
    ) -> None:
        self.base_seq: int | None = None  # TCP seq of stream offset 0
        self.started_mid_stream = False  # no SYN seen before the first data
        self.next_offset = 0  # next stream offset to deliver
        self._pending: dict[int, tuple[int, bytes]] = {}  # offset -> (ts_ns, payload)
        self.pending_bytes = 0
        self.fin_offset: int | None = None
        self.fin_sent = False
        self.retrans_ranges: list[tuple[int, int]] = []  # [start, end) offsets of retransmitted bytes
        self.retrans_segments = 0
        self.ooo_segments = 0
        self.gap_bytes = 0
        self.max_pending_bytes = max_pending_bytes
        self.max_pending_segments = max_pending_segments
        self.max_retrans_ranges = max_retrans_ranges

    def syn(self, isn: int) -> None:
        """The SYN (or SYN-ACK) of this direction: the first data byte is ``isn + 1``."""
        if self.base_seq is None:
            self.base_seq = (isn + 1) % SEQ_MOD

    def seq_of(self, offset: int) -> int:
        """The 32-bit TCP sequence number of stream ``offset``."""
        return ((self.base_seq or 0) + offset) % SEQ_MOD

    def offset_of(self, seq: int) -> int:
        """The stream offset of ``seq``, taken as the one nearest the next expected byte."""
        expected = ((self.base_seq or 0) + self.next_offset) % SEQ_MOD
        delta = (seq - expected + _HALF) % SEQ_MOD - _HALF
        return self.next_offset + delta

    def segment(self, ts_ns: int, seq: int, payload: bytes, fin: bool = False) -> list[Event]:
        """Accept one segment; return the events it makes deliverable, in stream order."""
        base = self.base_seq
        if base is None:
            if not payload and not fin:
                return []
            base = self.base_seq = seq % SEQ_MOD
            self.started_mid_stream = True
        nxt = self.next_offset
        offset = nxt + (seq - base - nxt + _HALF) % SEQ_MOD - _HALF  # offset_of(seq)
        end = offset + len(payload)
        if offset == nxt and payload and not self._pending and end - nxt <= MAX_WINDOW:
            # the common case, the next bytes in order with nothing held: no drain, no skip
            self.next_offset = end
            if fin and self.fin_offset is None:
                self.fin_offset = end
            events: list[Event] = [(DATA, offset, ts_ns, payload)]
            self._maybe_fin(events, ts_ns)
            return events
        if fin and self.fin_offset is None and offset + len(payload) >= self.next_offset:
            self.fin_offset = end
        if end - self.next_offset > MAX_WINDOW:
            return []
        events = []
        if payload:
            if end <= self.next_offset:
                self._retrans(offset, end)
            elif offset < self.next_offset:
                self._retrans(offset, self.next_offset)
                cut = self.next_offset - offset
                events.append((DATA, self.next_offset, ts_ns, payload[cut:]))
                self.next_offset = end
            elif offset == self.next_offset:
                events.append((DATA, offset, ts_ns, payload))
                self.next_offset = end
            else:
                self._hold(offset, ts_ns, payload)
        self._drain(events)
        if len(self._pending) > self.max_pending_segments or self.pending_bytes > self.max_pending_bytes:
            self._skip_to_pending(events, ts_ns)
        self._maybe_fin(events, ts_ns)
        return events

    def acked(self, ack: int, ts_ns: int) -> list[Event]:
        """The peer acknowledged up to ``ack``: holes below it will never be filled, give them up."""
        if not self._pending or self.base_seq is None:
            return []
        acked_offset = self.offset_of(ack)
        events: list[Event] = []
        while self._pending and min(self._pending) <= acked_offset and acked_offset - self.next_offset < MAX_WINDOW:
            self._skip_to_pending(events, ts_ns)
        self._maybe_fin(events, ts_ns)
        return events

    def flush(self, ts_ns: int) -> list[Event]:
        """Give up on every hole: deliver what waits, then FIN if one was seen."""
        events: list[Event] = []
        while self._pending:
            self._skip_to_pending(events, ts_ns)
        if self.fin_offset is not None and self.fin_offset > self.next_offset:
            length = self.fin_offset - self.next_offset
            self.gap_bytes += length
            events.append((GAP, self.next_offset, ts_ns, length))
            self.next_offset = self.fin_offset
        self._maybe_fin(events, ts_ns)
        return events

    def _retrans(self, start: int, end: int) -> None:
        self.retrans_segments += 1
        self.retrans_ranges.append((start, end))
        if len(self.retrans_ranges) > self.max_retrans_ranges:
            del self.retrans_ranges[0]

    def _hold(self, offset: int, ts_ns: int, payload: bytes) -> None:
        held = self._pending.get(offset)
        if held is not None and len(held[1]) >= len(payload):
            self._retrans(offset, offset + len(payload))
            return
        self.ooo_segments += 1
        if held is not None:
            self.pending_bytes -= len(held[1])
        self._pending[offset] = (ts_ns, payload)
        self.pending_bytes += len(payload)

    def _drain(self, events: list[Event]) -> None:
        while self._pending:
            nxt = min(self._pending)
            if nxt > self.next_offset:
                return
            ts_ns, payload = self._pending.pop(nxt)
            self.pending_bytes -= len(payload)
            end = nxt + len(payload)
            if end <= self.next_offset:
                self._retrans(nxt, end)
                continue
            if nxt < self.next_offset:
                self._retrans(nxt, self.next_offset)
                payload = payload[self.next_offset - nxt :]
            events.append((DATA, self.next_offset, ts_ns, payload))
            self.next_offset = end

    def _skip_to_pending(self, events: list[Event], ts_ns: int) -> None:
        nxt = min(self._pending)
        if nxt > self.next_offset:
            length = nxt - self.next_offset
            self.gap_bytes += length
            events.append((GAP, self.next_offset, ts_ns, length))
            self.next_offset = nxt
        self._drain(events)

    def _maybe_fin(self, events: list[Event], ts_ns: int) -> None:
        if not self.fin_sent and self.fin_offset is not None and self.next_offset >= self.fin_offset:
            self.fin_sent = True
            events.append((FIN, self.next_offset, ts_ns, 0))


def retrans_overlapping(ranges: list[tuple[int, int]], start: int, end: int) -> int:
    """How many of a reassembler's ``retrans_ranges`` overlap the stream bytes [start, end)."""
    if not ranges:  # the common case: nothing retransmitted
        return 0
    return sum(1 for lo, hi in ranges if lo < end and hi > start)


class Reassembler(Protocol):
    """What the L7 parsers use of a ``StreamReassembler`` (or of the kernel's ``TcpStream``)."""

    @property
    def base_seq(self) -> int | None: ...
    @property
    def started_mid_stream(self) -> bool: ...
    @property
    def next_offset(self) -> int: ...
    @property
    def pending_bytes(self) -> int: ...
    @property
    def fin_offset(self) -> int | None: ...
    @property
    def fin_sent(self) -> bool: ...
    @property
    def retrans_ranges(self) -> list[tuple[int, int]]: ...
    @property
    def retrans_segments(self) -> int: ...
    @property
    def ooo_segments(self) -> int: ...
    @property
    def gap_bytes(self) -> int: ...
    def syn(self, isn: int, /) -> None: ...
    def seq_of(self, offset: int, /) -> int: ...
    def offset_of(self, seq: int, /) -> int: ...
    def segment(self, ts_ns: int, seq: int, payload: bytes, fin: bool = False, /) -> list[Event]: ...
    def acked(self, ack: int, ts_ns: int, /) -> list[Event]: ...
    def flush(self, ts_ns: int, /) -> list[Event]: ...


#: The compiled reassembler (probes/csrc/l7.c ``TcpStream``), or None: ``StreamReassembler`` then runs.
_L7 = kernels.load("_l7")


def stream_reassembler(**limits: Any) -> Reassembler:
    """A reassembler of one direction (``limits``: ``StreamReassembler``'s keyword arguments): the
    ``_l7`` kernel's ``TcpStream`` when it is built and on, else ``StreamReassembler``."""
    if _L7 is None:
        return StreamReassembler(**limits)
    stream: Reassembler = _L7.TcpStream(**limits)
    return stream
