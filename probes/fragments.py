"""IP fragment reassembly for the decoder: fragments in, whole datagram payloads out.

Zeek reassembles every IPv4 and IPv6 datagram before its transport header or any tunnel inside it is
decoded, and processes the datagram once, at the fragment that completed it
(``IPAnalyzer::AnalyzePacket`` and ``FragReassembler``, src/packet_analysis/protocol/ip/IP.cc,
src/Frag.cc). ``Reassembler`` is that step for hopscope's slow path: the decoder hands it each fragment
of a fully captured datagram and gets back ``None`` (held) or the reassembled payload (the bytes after
the IP header, or after the IPv6 fragment header).

Zeek keeps incomplete datagrams forever (``frag_timeout = 0``); a probe cannot, so the reassembler holds
at most ``max_datagrams`` datagrams and ``max_bytes`` bytes and drops the oldest beyond that, counting
each dropped datagram in ``evicted``. Overlapping bytes keep the copy that arrived first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

#: The largest reassembled payload accepted (an IPv4 datagram is at most 65,535 bytes).
MAX_DATAGRAM_BYTES: Final = 65535

#: Identifies one datagram: (capture scope, depth, IP version, source, destination, protocol, id).
FragmentKey = tuple[int, int, int, int, int, int, int]


@dataclass(slots=True)
class _Pending:
    """The fragments of one datagram received so far."""

    pieces: list[tuple[int, bytes]] = field(default_factory=list)  # (offset, bytes), arrival order
    total: int = -1  # payload length, known once the last fragment (more == False) arrived
    size: int = 0  # bytes held


class Reassembler:
    """Holds fragments by ``FragmentKey`` until their datagram is complete (see the module docstring)."""

    def __init__(self, max_datagrams: int = 4096, max_bytes: int = 32 << 20) -> None:
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.evicted = 0  # incomplete datagrams dropped to stay within the limits
        self.oversized = 0  # fragments that would extend a datagram beyond 65,535 bytes
        self._pending: dict[FragmentKey, _Pending] = {}
        self._bytes = 0

    @property
    def pending(self) -> int:
        """Datagrams waiting for more fragments."""
        return len(self._pending)

    def add(self, key: FragmentKey, offset: int, more: bool, data: bytes) -> bytes | None:
        """Add one fragment; return the whole payload when this fragment completes the datagram."""
        if offset + len(data) > MAX_DATAGRAM_BYTES:
            self.oversized += 1
            return None
        entry = self._pending.get(key)
        if entry is None:
            entry = self._pending[key] = _Pending()
        entry.pieces.append((offset, data))
        entry.size += len(data)
        self._bytes += len(data)
        if not more:
            entry.total = offset + len(data)
        whole = _assemble(entry)
        if whole is not None:
            self._drop(key)
            return whole
        self._trim()
        return None

    def _drop(self, key: FragmentKey) -> None:
        entry = self._pending.pop(key)
        self._bytes -= entry.size

    def _trim(self) -> None:
        while self._pending and (len(self._pending) > self.max_datagrams or self._bytes > self.max_bytes):
            self._drop(next(iter(self._pending)))  # dicts keep insertion order: the oldest first
            self.evicted += 1


def _assemble(entry: _Pending) -> bytes | None:
    """The datagram's payload if its fragments cover ``[0, total)``, else None."""
    if entry.total < 0:
        return None
    covered = 0
    for start, data in sorted(entry.pieces, key=lambda p: p[0]):
        if start > covered:
            return None
        covered = max(covered, start + len(data))
    if covered < entry.total:
        return None
    out = bytearray(entry.total)
    for start, data in reversed(entry.pieces):  # the first arrival is written last: it wins overlaps
        out[start : start + len(data)] = data[: max(entry.total - start, 0)]
    return bytes(out)
