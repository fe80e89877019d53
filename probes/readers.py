"""Capture file readers: pcap (µs and ns, both byte orders) and pcapng (several interfaces, if_tsresol).

A reader yields ``RawBlock``s: a big chunk of the file as one uint8 array plus, per frame, its offset in
that array, its captured and original length, its timestamp in ns and its interface index. It never
looks inside a frame (dpkt style); decoding is ``hopscope.probes.decode``'s job.

The file is read in big chunks (``chunk_bytes``, 8 MiB by default); a record cut by a chunk boundary is
carried into the next chunk. Walking the record headers is sequential (record lengths chain). It runs
in C (``_decode.walk_pcap``/``walk_pcapng``, probes/csrc/decode.c) when the kernel is built; the Python
walks below are its reference twins (``HOPSCOPE_NATIVE=0``): a loop over the record headers, then numpy
gathers of the columns through unaligned stride-1 views (``_words``).

With the C walks, the file is mapped window by window (``_Chunks``: ``mmap``, read-only,
``MAP_POPULATE``) instead of copied into buffers; the windows are exactly the chunks the reads would
give, and the copy into buffers is saved (bench/probe_read_decode.py times both). The last
window's worth of the file is read as before, so a capture still being written and a truncated last
record behave the same. Caveat of any mapping: a file cut short by another process *while* it is read
ends this process with SIGBUS (``map_file=False`` avoids it).

Errors and damage: a file that is not a capture (bad magic, a pcap file header cut short) raises
``CaptureError`` naming the file and the byte offset. Damage further in (a record length beyond any sane
snaplen, a pcapng block whose length field is impossible, a packet block naming an undeclared
interface, garbage between or after the records) and a last record the file ends inside (a capture
still being written, a copy cut short) lose nothing that came before: every record before the damage is
yielded, ``stats.damages`` says where and what (``Damage``), and one warning line per damage names the
file, the byte offset and the problem. Then reading goes on at the next plausible record
(``probes.resync``, as ``pcapfix`` finds it; Wireshark and Arkime stop): a damaged packet block whose
length is sound is skipped whole; otherwise the bytes after the damage are scanned. What was skipped is
counted (``Damage.resumed_at``, ``stats.skipped_bytes``); after ``MAX_DAMAGES`` reading stops at the
next. With ``strict`` the first damage is a ``CaptureError`` instead, raised after the records before it
were yielded, and nothing after it is read.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import os
import struct
import weakref
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

import numpy as np
import numpy.typing as npt

from hopscope.errors import CaptureError
from hopscope.probes import kernels, resync

I64 = npt.NDArray[np.int64]
log = logging.getLogger(__name__)

#: Link types (LINKTYPE_* from tcpdump.org/linktypes.html) that hopscope decodes.
LINKTYPE_NULL: Final = 0
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_PPP: Final = 9  # PPP, with or without HDLC-like framing (ff 03)
LINKTYPE_PPP_HDLC: Final = 50  # PPP in HDLC-like framing (DLT_PPP_SERIAL)
LINKTYPE_RAW: Final = 101
LINKTYPE_RAW_OLD: Final = 12  # OpenBSD's DLT_RAW number, seen in some files
LINKTYPE_IEEE802_11: Final = 105  # 802.11 frames without radio header
LINKTYPE_LOOP: Final = 108
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_IEEE802_11_RADIOTAP: Final = 127  # 802.11 frames after a radiotap header
LINKTYPE_IPV4: Final = 228
LINKTYPE_IPV6: Final = 229
LINKTYPE_LINUX_SLL2: Final = 276

#: Largest record accepted; larger length fields mean a corrupt file (libpcap's limit is 256 KiB).
MAX_RECORD_BYTES: Final = 1 << 20
#: Largest pcapng block accepted (a record plus room for its header and options).
MAX_BLOCK_BYTES: Final = MAX_RECORD_BYTES + 4096
#: Damages a file may have before the reader stops looking for records after them.
MAX_DAMAGES: Final = 100
#: Zero bytes appended after every chunk so the decoder may gather a few bytes past a frame's end.
PAD_BYTES: Final = 512
DEFAULT_CHUNK_BYTES: Final = 8 << 20
_POPULATE: Final = getattr(mmap, "MAP_POPULATE", 0)  # Linux: map the whole window in one system call
#: Mapped windows alive at once (a caller keeping every block of a big file): beyond, chunks are read.
MAX_MAPPED_WINDOWS = 64

_PCAP_MAGICS: Final = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),  # µs, little-endian
    b"\xa1\xb2\xc3\xd4": (">", 1000),  # µs, big-endian
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # ns, little-endian
    b"\xa1\xb2\x3c\x4d": (">", 1),  # ns, big-endian
}
_PCAPNG_SHB: Final = 0x0A0D0D0A
_PCAPNG_BOM: Final = 0x1A2B3C4D
_IDB, _PB, _SPB, _EPB = 1, 2, 3, 6


@dataclass(frozen=True, slots=True)
class Interface:
    """One capture interface of a file (pcap files have exactly one)."""

    index: int  # index in the file's interface list (pcapng: over all sections)
    linktype: int  # LINKTYPE_* of its frames
    snaplen: int  # 0: unlimited
    name: str = ""  # pcapng if_name ('' when absent)
    tsresol: int = 1_000_000  # timestamp units per second (pcapng if_tsresol; pcap: 10^6 or 10^9)
    tsoffset_s: int = 0  # pcapng if_tsoffset, seconds added to every timestamp


@dataclass(slots=True)
class RawBlock:
    """Frames of one chunk of a capture file, undecoded."""

    buf: npt.NDArray[np.uint8]  # chunk bytes followed by PAD_BYTES readable bytes (read-only when mapped)
    offset: npt.NDArray[np.int64]  # start of each frame in ``buf``
    caplen: npt.NDArray[np.uint32]  # captured bytes of each frame
    origlen: npt.NDArray[np.uint32]  # length of the frame on the wire
    ts_ns: npt.NDArray[np.int64]  # capture time, ns since the epoch
    iface: npt.NDArray[np.uint16]  # index into ``interfaces``
    interfaces: tuple[Interface, ...]
    file_offset: int = 0  # byte offset of buf[0] in the file

    @property
    def count(self) -> int:
        return len(self.offset)

    def frame(self, i: int) -> bytes:
        """The captured bytes of frame ``i``."""
        start = int(self.offset[i])
        return self.buf[start : start + int(self.caplen[i])].tobytes()


@dataclass(frozen=True, slots=True)
class Damage:
    """Where a capture file stops making sense, why, and where reading resumed (if it did)."""

    offset: int  # byte offset in the file of the damaged record or block
    problem: str  # what is wrong there, naming the offset ("corrupt pcap record at offset 96: ...")
    records_before: int  # records read before it (every one of them was yielded)
    bytes_after: int  # bytes from ``offset`` not read: to ``resumed_at``, or to the end of the file
    truncated: bool = False  # the file ends inside its last record (nothing after it)
    resumed_at: int = -1  # offset of the next plausible record, where reading went on (-1: it did not)

    def message(self, path: str | os.PathLike[str]) -> str:
        """One line: the file, the offset and the problem, what was kept and what was skipped."""
        kept = f"kept the {self.records_before} records before it"
        if self.truncated:
            return f"{path}: {self.problem}; {kept}"
        if self.resumed_at >= 0:
            return (f"{path}: {self.problem}; {kept}, skipped {self.bytes_after} bytes to the next plausible "
                    f"record at offset {self.resumed_at} and read on")
        return f"{path}: {self.problem}; {kept}, did not read the {self.bytes_after} bytes from there to the end"


class _Damaged(Exception):
    """Raised inside a walk at the first damaged record or block; the reader turns it into a ``Damage``."""

    def __init__(self, offset: int, problem: str) -> None:
        super().__init__(problem)
        self.offset = offset
        self.problem = problem


@dataclass(slots=True)
class ReadStats:
    """What a reader saw: frames, bytes and the damage it stopped at."""

    frames: int = 0
    bytes: int = 0
    truncated_tail: int = 0  # bytes of an incomplete last record, dropped
    skipped_blocks: dict[str, int] = field(default_factory=dict)  # pcapng blocks not carrying frames
    damage: Damage | None = None  # the first damage, and why
    damages: list[Damage] = field(default_factory=list)  # every damage, in file order
    skipped_bytes: int = 0  # bytes between damages and the records reading resumed at


def _read_chunk(fh: BinaryIO, carry: bytes, size: int) -> tuple[npt.NDArray[np.uint8], int]:
    """``carry`` followed by up to ``size`` bytes of ``fh`` and PAD_BYTES zeros; returns (buffer, data length)."""
    buf = np.empty(len(carry) + size + PAD_BYTES, np.uint8)  # not zeroed: only the padding must be
    buf[: len(carry)] = np.frombuffer(carry, np.uint8)
    got = fh.readinto(buf.data[len(carry) : len(carry) + size])  # type: ignore[attr-defined]
    end = len(carry) + (got or 0)
    buf[end : end + PAD_BYTES] = 0
    return buf, end


class _Chunks:
    """The chunks of a capture file from ``start`` on, as the walks consume them: each is the bytes the
    previous walk left (the carry) plus ``chunk_bytes`` more, followed by PAD_BYTES readable bytes.

    With ``map_file`` the chunks are windows of the file mapped read-only (mmap, no copy) as long as a
    whole chunk and its padding are left; the rest is read into buffers (``_read_chunk``), so a file
    cut short or still growing is read as before. Both give the same chunks, hence the same blocks.
    """

    def __init__(self, fh: BinaryIO, start: int, chunk_bytes: int, map_file: bool) -> None:
        self.fh, self.chunk_bytes = fh, chunk_bytes
        self.file_pos = start  # file offset of the next chunk's first byte
        self.carry = b""  # unconsumed bytes of a read chunk
        self.carry_len = 0  # unconsumed bytes of the last chunk (read or mapped)
        self.mapped = False  # the last chunk was a mapped window
        self.map_until = 0  # file size when mapping (0: read only)
        self.windows: list[weakref.ref[mmap.mmap]] = []  # mappings handed out (alive while a block uses one)
        if map_file:
            with contextlib.suppress(OSError):  # not a file with a size: read it
                self.map_until = os.fstat(fh.fileno()).st_size

    def next(self) -> tuple[npt.NDArray[np.uint8], int] | None:
        """The next chunk (buffer, data length), None once nothing new follows the carry."""
        n = self.carry_len + self.chunk_bytes
        if self.map_until - self.file_pos >= n + PAD_BYTES:
            data = self._map(n)
            if data is not None:
                self.mapped = True
                return data, n
        if self.mapped:  # switching from windows to reads: read the carry again
            self.mapped = False
            self.fh.seek(self.file_pos)
            self.carry = self.fh.read(self.carry_len)
            self.carry_len = len(self.carry)
        data, size = _read_chunk(self.fh, self.carry, self.chunk_bytes)
        return None if size == len(self.carry) else (data, size)

    def _map(self, n: int) -> npt.NDArray[np.uint8] | None:
        """The window of ``n`` bytes (and padding) at ``file_pos``; None to read this chunk instead."""
        self.windows = [w for w in self.windows if w() is not None]
        if len(self.windows) >= MAX_MAPPED_WINDOWS:  # the caller keeps many blocks: each mapping holds an fd
            return None
        base = self.file_pos - self.file_pos % mmap.ALLOCATIONGRANULARITY
        try:
            window = mmap.mmap(self.fh.fileno(), self.file_pos - base + n + PAD_BYTES, mmap.MAP_SHARED | _POPULATE,
                               mmap.PROT_READ, offset=base)  # fmt: skip
        except OSError:  # a file system without mmap, or no file descriptor left: read from now on
            self.map_until = 0
            return None
        self.windows.append(weakref.ref(window))
        return np.frombuffer(window, np.uint8)[self.file_pos - base :]  # unmapped when no view is left

    def consumed(self, data: npt.NDArray[np.uint8], size: int, end: int) -> None:
        """The walk used ``data[:end]`` of the chunk ``next`` returned (``size`` bytes)."""
        self.file_pos += end
        self.carry_len = size - end
        if not self.mapped:
            self.carry = data[end:size].tobytes()


def _words(buf: npt.NDArray[np.uint8], endian: str) -> npt.NDArray[np.uint32]:
    """A u4 starting at every byte of ``buf`` (unaligned view): ``_words(buf, e)[offsets]`` gathers fields."""
    return np.ndarray(shape=(max(len(buf) - 3, 0),), dtype=endian + "u4", buffer=buf, strides=(1,))


def _padded(data: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return data


class CaptureReader:
    """Reads one pcap or pcapng file as ``RawBlock``s. Use ``open_capture`` to get one."""

    def __init__(
        self, path: str | os.PathLike[str], chunk_bytes: int = DEFAULT_CHUNK_BYTES, map_file: bool = True,
        strict: bool = False,
    ) -> None:  # fmt: skip
        self.path = Path(path)
        self.chunk_bytes = max(chunk_bytes, 1 << 16)
        self.map_file = map_file  # with the C walks: map windows of the file instead of reading them
        self.strict = strict  # damage is a CaptureError (after the records before it), not a warning
        self.stats = ReadStats()
        self.interfaces: list[Interface] = []
        self._size = 0  # bytes in the file, when blocks() opened it
        self._kernel = kernels.load("_decode")  # probes/csrc/decode.c; None: the Python walks below
        try:
            with self.path.open("rb") as fh:
                self._head = fh.read(64)
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot open capture: {exc.strerror}") from exc
        if len(self._head) < 4:
            raise CaptureError(f"{self.path}: not a capture file: {len(self._head)} bytes, offset 0")
        self.format = self._detect()

    def _detect(self) -> str:
        magic = self._head[:4]
        if magic in _PCAP_MAGICS:
            if len(self._head) < 24:
                raise CaptureError(f"{self.path}: pcap file header truncated at offset {len(self._head)}")
            return "pcap"
        if struct.unpack("<I", magic)[0] == _PCAPNG_SHB:
            return "pcapng"
        raise CaptureError(f"{self.path}: not a pcap or pcapng file (magic {magic.hex()} at offset 0)")

    def blocks(self) -> Iterator[RawBlock]:
        """Yield the capture's frames chunk by chunk, up to the end of the file or its first damage
        (then: a warning, or with ``strict`` a ``CaptureError``)."""
        with self.path.open("rb") as fh:
            self._size = os.fstat(fh.fileno()).st_size
            if self.format == "pcap":
                yield from self._pcap_blocks(fh)
            else:
                yield from self._pcapng_blocks(fh)
        if self.strict and self.stats.damage is not None:
            raise CaptureError(self.stats.damage.message(self.path))
        for damage in self.stats.damages:
            log.warning("%s", damage.message(self.path))

    def _damaged(self, exc: _Damaged, find_next: Callable[[int], int | None]) -> int | None:
        """``exc`` stopped the walk: find the next plausible record after it (``find_next``, not when
        strict: the damage is an error then), record the damage; return where to read on (None: stop)."""
        resume = None
        if not self.strict and len(self.stats.damages) < MAX_DAMAGES:
            resume = find_next(exc.offset + 1)
        end = self._size if resume is None else resume
        self._add_damage(Damage(exc.offset, exc.problem, self.stats.frames, max(end - exc.offset, 0),
                                resumed_at=-1 if resume is None else resume))  # fmt: skip
        if resume is not None:
            self.stats.skipped_bytes += resume - exc.offset
        return resume

    def _add_damage(self, damage: Damage) -> None:
        self.stats.damages.append(damage)
        if self.stats.damage is None:
            self.stats.damage = damage

    def _cut_tail(self, chunks: _Chunks) -> None:
        """The file ends inside a record: count its bytes (``truncated_tail``) and report it as damage."""
        self.stats.truncated_tail = chunks.carry_len
        if chunks.carry_len:
            at = chunks.file_pos
            problem = f"last record cut short at offset {at}: the file ends {chunks.carry_len} bytes into it"
            self._add_damage(Damage(at, problem, self.stats.frames, chunks.carry_len, truncated=True))

    # --- pcap -------------------------------------------------------------------------------

    def _pcap_blocks(self, fh: BinaryIO) -> Iterator[RawBlock]:
        head = fh.read(24)
        endian, ns_per_unit = _PCAP_MAGICS[head[:4]]
        _major, _minor, _zone, _sigfigs, snaplen, linktype = struct.unpack(endian + "HHiIII", head[4:24])
        iface = Interface(0, linktype & 0x0FFFFFFF, snaplen, "", 1_000_000_000 // ns_per_unit)
        self.interfaces = [iface]
        self._last_s: int | None = None  # seconds of the last good record (resync looks near it)

        def find_next(start: int) -> int | None:
            return resync.next_pcap_record(fh, start, endian, snaplen, 1_000_000_000 // ns_per_unit,
                                           self._last_s, MAX_RECORD_BYTES)  # fmt: skip

        start: int | None = 24
        while start is not None:
            damaged = yield from self._pcap_run(fh, start, endian, ns_per_unit, (iface,))
            start = None if damaged is None else self._damaged(damaged, find_next)

    def _pcap_run(
        self, fh: BinaryIO, start: int, endian: str, ns_per_unit: int, interfaces: tuple[Interface, ...]
    ) -> Generator[RawBlock, None, _Damaged | None]:
        """Yield the records from ``start`` on, up to the end of the file or the damage (returned)."""
        fh.seek(start)  # the reads go on from here (a scan for the next record moved the file position)
        chunks = _Chunks(fh, start, self.chunk_bytes, self._kernel is not None and self.map_file)
        while (chunk := chunks.next()) is not None:
            data, size = chunk
            file_pos = chunks.file_pos
            if self._kernel is not None:
                block, end, damaged = self._walk_pcap_native(data, size, endian, ns_per_unit, interfaces, file_pos)
                if block is not None:
                    yield block
            else:
                offs, end, damaged = self._walk_pcap(data, size, endian, file_pos)
                block = self._pcap_block(data, offs, endian, ns_per_unit, interfaces, file_pos) if offs else None
                if block is not None:
                    yield block
            if block is not None:
                self._last_s = int(block.ts_ns[-1]) // 1_000_000_000
            if damaged is not None:
                return damaged
            chunks.consumed(data, size, end)
        self._cut_tail(chunks)
        return None

    def _walk_pcap(
        self, data: npt.NDArray[np.uint8], n: int, endian: str, file_pos: int
    ) -> tuple[list[int], int, _Damaged | None]:
        """Offsets of the complete records in ``data[:n]``, where the first incomplete one starts, and the
        damage the walk stopped at (a record whose captured length is absurd), if any.

        The loop only chains the length fields (the one per-packet Python loop of the pipeline); the
        lengths are checked afterwards, vectorised.
        """
        unpack = struct.Struct(endian + "8xI").unpack_from
        offs: list[int] = []
        append = offs.append
        pos, last, raw = 0, n - 16, data.data
        while pos <= last:
            append(pos)
            pos += 16 + unpack(raw, pos)[0]
        if not offs:
            return offs, 0, None
        starts = np.asarray(offs, np.int64)
        caplen = _words(data, endian)[starts + 8]
        bad = np.flatnonzero(caplen > MAX_RECORD_BYTES)
        if len(bad):  # the records after it are chained from garbage: dropped
            first = int(bad[0])
            return offs[:first], offs[first], self._oversized(file_pos + offs[first], int(caplen[first]))
        if pos > n:  # the last record continues in the next chunk (or the file is cut there)
            pos = offs.pop()
        return offs, pos, None

    def _oversized(self, offset: int, caplen: int) -> _Damaged:
        """The damage of a pcap record whose captured length is beyond any real frame (both walks)."""
        return _Damaged(
            offset, f"corrupt pcap record at offset {offset}: captured length {caplen} exceeds {MAX_RECORD_BYTES}"
        )

    def _walk_pcap_native(
        self, data: npt.NDArray[np.uint8], n: int, endian: str, ns_per_unit: int,
        interfaces: tuple[Interface, ...], file_pos: int,
    ) -> tuple[RawBlock | None, int, _Damaged | None]:  # fmt: skip
        """``_walk_pcap`` and ``_pcap_block`` in one C call (``_decode.walk_pcap``): same block, same damage."""
        assert self._kernel is not None
        # Rows for records of 64 bytes and more first (frames of 48 bytes and more), then, if the chunk
        # holds more, for the most it can hold (records are at least 16 bytes). Columns of 4 MB and
        # more get huge pages from numpy (madvise), and the kernel zeroes 2 MB at their first write:
        # sized for the worst case, the walk's columns cost more than the walk (10% of `hopscope flows`).
        bound, end, count, nbytes = n // 16 + 1, 0, 0, 0
        cap = min(bound, n // 64 + 4096)
        offset, ts_ns = np.empty(cap, np.int64), np.empty(cap, np.int64)
        caplen, origlen = np.empty(cap, np.uint32), np.empty(cap, np.uint32)
        while True:
            got, end, more_bytes, bad_pos, bad_caplen = self._kernel.walk_pcap(
                data, n, end, count, endian == ">", ns_per_unit, MAX_RECORD_BYTES, offset, caplen, origlen, ts_ns
            )
            count, nbytes = count + got, nbytes + more_bytes
            if count < cap or bad_pos >= 0 or cap == bound:  # stopped at the chunk's end or at damage
                break
            offset, caplen, origlen, ts_ns = (np.concatenate([col, np.empty(bound - cap, col.dtype)])
                                              for col in (offset, caplen, origlen, ts_ns))  # fmt: skip
            cap = bound
        damaged = self._oversized(file_pos + bad_pos, bad_caplen) if bad_pos >= 0 else None
        if count == 0:
            return None, end, damaged
        self.stats.frames += count
        self.stats.bytes += nbytes
        block = RawBlock(
            buf=data, offset=offset[:count], caplen=caplen[:count], origlen=origlen[:count], ts_ns=ts_ns[:count],
            iface=np.zeros(count, np.uint16), interfaces=interfaces, file_offset=file_pos,
        )  # fmt: skip
        return block, end, damaged

    def _pcap_block(
        self, data: npt.NDArray[np.uint8], offs: list[int], endian: str, ns_per_unit: int,
        interfaces: tuple[Interface, ...], file_pos: int,
    ) -> RawBlock:  # fmt: skip
        buf = _padded(data)
        starts = np.asarray(offs, dtype=np.int64)
        words = _words(buf, endian)
        sec, frac = words[starts].astype(np.int64), words[starts + 4].astype(np.int64)
        caplen = words[starts + 8].astype(np.uint32)
        self.stats.frames += len(starts)
        self.stats.bytes += int(caplen.sum())
        return RawBlock(
            buf=buf,
            offset=starts + 16,
            caplen=caplen,
            origlen=words[starts + 12].astype(np.uint32),
            ts_ns=sec * 1_000_000_000 + frac * ns_per_unit,
            iface=np.zeros(len(starts), np.uint16),
            interfaces=interfaces,
            file_offset=file_pos,
        )

    # --- pcapng -----------------------------------------------------------------------------

    def _pcapng_blocks(self, fh: BinaryIO) -> Iterator[RawBlock]:
        self._endian = "<"
        self._block_head: Callable[..., tuple[Any, ...]] = struct.Struct("<II").unpack_from
        self._section_base = 0

        def find_next(start: int) -> int | None:
            return resync.next_pcapng_block(fh, start, self._endian, MAX_BLOCK_BYTES)

        start: int | None = 0
        while start is not None:
            damaged = yield from self._pcapng_run(fh, start)
            start = None if damaged is None else self._damaged(damaged, find_next)

    def _pcapng_run(self, fh: BinaryIO, start: int) -> Generator[RawBlock, None, _Damaged | None]:
        """Yield the frames of the blocks from ``start`` on, up to the end of the file or the damage
        (returned)."""
        fh.seek(start)  # the reads go on from here (a scan for the next record moved the file position)
        chunks = _Chunks(fh, start, self.chunk_bytes, self._kernel is not None and self.map_file)
        while (chunk := chunks.next()) is not None:
            data, size = chunk
            file_pos = chunks.file_pos
            if self._kernel is not None:
                starts, btypes, bases, bigs, end, damaged = self._walk_pcapng_native(data, size, file_pos)
            else:
                frames, end, damaged = self._walk_pcapng(data, size, file_pos)
                starts, btypes, bases, bigs = np.asarray(frames, dtype=np.int64).reshape(-1, 4).T
            if len(starts):
                block, bad_frame = self._pcapng_block(data, starts, btypes, bases, bigs, file_pos)
                if block is not None:
                    yield block
                damaged = bad_frame or damaged  # a bad packet block comes before where the walk stopped
            if damaged is not None:
                return damaged
            chunks.consumed(data, size, end)
        self._cut_tail(chunks)
        return None

    def _walk_pcapng(
        self, data: npt.NDArray[np.uint8], n: int, file_pos: int
    ) -> tuple[list[tuple[int, int, int, int]], int, _Damaged | None]:
        """Walk the blocks of ``data[:n]``: (offset, block type, section base, big-endian) per frame block,
        where the walk stopped, and the damaged block it stopped at, if any."""
        frames: list[tuple[int, int, int, int]] = []
        pos = 0
        while pos + 12 <= n:
            try:
                step = self._pcapng_step(data, n, pos, file_pos, frames)
            except _Damaged as exc:
                return frames, pos, exc
            if step is None:
                break
            pos = step
        return frames, pos, None

    def _walk_pcapng_native(
        self, data: npt.NDArray[np.uint8], n: int, file_pos: int
    ) -> tuple[I64, npt.NDArray[Any], I64, npt.NDArray[Any], int, _Damaged | None]:
        """``_walk_pcapng`` with the packet blocks walked in C (``_decode.walk_pcapng``); every other block
        (section and interface headers, skipped blocks, damage) goes through ``_pcapng_step``."""
        assert self._kernel is not None
        bound = n // 12 + 1  # blocks are at least 12 bytes; columns first for blocks of 64 (as _walk_pcap_native)
        cap = min(bound, n // 64 + 4096)
        starts, btypes = np.empty(cap, np.int64), np.empty(cap, np.uint8)
        segments: list[tuple[int, int, bool]] = []  # (frames so far, section base and byte order of the next)
        count, pos, extra = 0, 0, list[tuple[int, int, int, int]]()
        damaged: _Damaged | None = None
        while True:
            segments.append((count, self._section_base, self._endian == ">"))
            got, pos, more = self._kernel.walk_pcapng(
                data, n, pos, self._endian == ">", MAX_BLOCK_BYTES, starts, btypes, count
            )
            count += got
            if more and count == cap < bound:  # the columns are full: on in columns for the whole chunk
                starts = np.concatenate([starts, np.empty(bound - cap, np.int64)])
                btypes = np.concatenate([btypes, np.empty(bound - cap, np.uint8)])
                cap = bound
                continue
            if not more:
                break
            try:
                step = self._pcapng_step(data, n, pos, file_pos, extra)
            except _Damaged as exc:
                damaged = exc
                break
            if extra:  # a packet block C declined cannot be well-formed: _pcapng_step raised for it
                raise AssertionError("walk_pcapng stopped at a well-formed packet block")
            if step is None:
                break
            pos = step
        firsts = [c for c, _, _ in segments] + [count]
        runs = [b - a for a, b in itertools.pairwise(firsts)]
        bases = np.repeat(np.array([b for _, b, _ in segments], np.int64), runs)
        bigs = np.repeat(np.array([e for _, _, e in segments], np.uint8), runs)
        return starts[:count], btypes[:count], bases, bigs, pos, damaged

    def _pcapng_step(
        self, data: npt.NDArray[np.uint8], n: int, pos: int, file_pos: int, frames: list[tuple[int, int, int, int]]
    ) -> int | None:
        """Handle the block at ``pos``: returns where the next one starts, None when it is incomplete."""
        btype, blen = self._block_head(data.data, pos)
        if btype == _PCAPNG_SHB:
            self._block_head = self._section_header(data, pos, file_pos)
            btype, blen = self._block_head(data.data, pos)
        if blen < 12 or blen % 4 or blen > MAX_BLOCK_BYTES:
            at = file_pos + pos
            raise _Damaged(at, f"corrupt pcapng block at offset {at}: type {btype:#x}, length {blen}")
        if pos + blen > n:
            return None
        if btype in (_EPB, _SPB, _PB):
            frames.append((pos, btype, self._section_base, self._endian == ">"))
        elif btype == _IDB:
            self._interface(data, pos, blen, file_pos)
        elif btype != _PCAPNG_SHB:
            key = f"pcapng_block_{btype:#x}"
            self.stats.skipped_blocks[key] = self.stats.skipped_blocks.get(key, 0) + 1
        return int(pos + blen)

    def _section_header(self, data: npt.NDArray[np.uint8], pos: int, file_pos: int) -> Callable[..., tuple[Any, ...]]:
        if pos + 12 > len(data):
            raise _Damaged(file_pos + pos, f"pcapng section header truncated at offset {file_pos + pos}")
        bom = data[pos + 8 : pos + 12].tobytes()
        if bom == struct.pack("<I", _PCAPNG_BOM):
            self._endian = "<"
        elif bom == struct.pack(">I", _PCAPNG_BOM):
            self._endian = ">"
        else:
            raise _Damaged(file_pos + pos, f"bad pcapng byte-order magic at offset {file_pos + pos + 8}")
        self._section_base = len(self.interfaces)
        return struct.Struct(self._endian + "II").unpack_from

    def _interface(self, data: npt.NDArray[np.uint8], pos: int, blen: int, file_pos: int) -> None:
        e = self._endian
        if blen < 20:
            raise _Damaged(file_pos + pos, f"pcapng interface block too short at offset {file_pos + pos}")
        linktype, _res, snaplen = struct.unpack_from(e + "HHI", data.data, pos + 8)
        name, tsresol, tsoffset = "", 1_000_000, 0
        opt, end = pos + 16, pos + blen - 4
        while opt + 4 <= end:
            code, olen = struct.unpack_from(e + "HH", data.data, opt)
            value = data[opt + 4 : min(opt + 4 + olen, end)].tobytes()  # a corrupt length stops at the block end
            if code == 0:
                break
            if code == 2:
                name = value.decode("utf-8", "replace").rstrip("\x00")
            elif code == 9 and len(value) >= 1:
                tsresol = 10 ** (value[0] & 0x7F) if value[0] < 0x80 else 2 ** (value[0] & 0x7F)
                if tsresol >= 1 << 63:
                    raise _Damaged(file_pos + pos, f"pcapng if_tsresol {value[0]:#x} out of range at offset "
                                   f"{file_pos + opt}")  # fmt: skip
            elif code == 14 and len(value) >= 8:
                (tsoffset,) = struct.unpack(e + "q", value[:8])
            opt += 4 + ((olen + 3) & ~3)
        self.interfaces.append(Interface(len(self.interfaces), linktype, snaplen, name, tsresol, tsoffset))

    def _pcapng_block(
        self, data: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64], btype: npt.NDArray[Any],
        base: I64, big: npt.NDArray[Any], file_pos: int,
    ) -> tuple[RawBlock | None, _Damaged | None]:  # fmt: skip
        """Frame columns of the packet blocks starting at ``starts`` (block types ``btype``, section bases
        ``base``, byte orders ``big``: 1 for a big-endian section). A damaged one (an undeclared interface,
        a captured length beyond its block) is skipped and counted: its block length is sound (the walk
        went past it), so the next block is where reading goes on. When strict, or past ``MAX_DAMAGES``,
        the block ends before it and the damage is returned (reading stops there)."""
        try:  # the usual case, without copies
            return self._pcapng_frames(data, starts, btype, base, big, file_pos), None
        except _Damaged as exc:
            damaged = exc
        keep = np.ones(len(starts), bool)
        while True:
            bad = int(np.searchsorted(starts, damaged.offset - file_pos))
            if self.strict or len(self.stats.damages) >= MAX_DAMAGES:
                keep[bad:] = False
                break
            blen = struct.unpack_from(">I" if big[bad] else "<I", data.data, int(starts[bad]) + 4)[0]
            before = self.stats.frames + int(keep[:bad].sum())
            self._add_damage(Damage(damaged.offset, damaged.problem, before, blen, resumed_at=damaged.offset + blen))
            self.stats.skipped_bytes += blen
            keep[bad] = False
            sel = np.flatnonzero(keep)
            if not sel.size:
                return None, None
            try:
                return self._pcapng_frames(data, starts[sel], btype[sel], base[sel], big[sel], file_pos), None
            except _Damaged as exc:
                damaged = exc
        sel = np.flatnonzero(keep)  # the frames before the damage reading stops at
        block = self._pcapng_frames(data, starts[sel], btype[sel], base[sel], big[sel], file_pos) if sel.size else None
        return block, damaged

    def _pcapng_frames(
        self, data: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64], btype: npt.NDArray[Any],
        base: I64, big: npt.NDArray[Any], file_pos: int,
    ) -> RawBlock:  # fmt: skip
        """The frames of well-formed packet blocks; ``_Damaged`` at the first that is not."""
        buf = _padded(data)
        if not self.interfaces:
            at = file_pos + int(starts[0])
            raise _Damaged(at, f"packet block names an undeclared interface at offset {at}")
        columns = self._pcapng_columns_native if self._kernel is not None else self._pcapng_columns
        offset, caplen, origlen, iface, raw_ts = columns(buf, starts, btype, base, big, file_pos)
        ts_ns = self._pcapng_times(raw_ts, iface)
        self.stats.frames += len(starts)
        self.stats.bytes += int(caplen.sum())
        return RawBlock(buf, offset, caplen.astype(np.uint32), origlen.astype(np.uint32), ts_ns,
                        iface.astype(np.uint16), tuple(self.interfaces), file_pos)  # fmt: skip

    def _pcapng_columns(
        self, buf: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64], btype: npt.NDArray[Any],
        base: I64, big: npt.NDArray[Any], file_pos: int,
    ) -> tuple[I64, I64, I64, I64, npt.NDArray[np.uint64]]:  # fmt: skip
        """Per frame: offset, caplen, origlen, interface and raw timestamp (0 for SPB), checked."""
        big = big.astype(np.bool_)
        hdr = _block_words(buf, starts, big)
        epb = btype == _EPB
        pb = btype == _PB
        iface_local = np.where(epb, hdr[:, 2], 0).astype(np.int64)
        if pb.any():
            iface_local[pb] = buf[starts[pb] + np.where(big[pb], 9, 8)]  # PB's u16 interface id
        iface = base + iface_local
        if int(iface.max()) >= len(self.interfaces):
            at = file_pos + int(starts[np.argmax(iface >= len(self.interfaces))])
            raise _Damaged(at, f"packet block names an undeclared interface at offset {at}")
        spb = btype == _SPB
        caplen = np.where(spb, 0, hdr[:, 5]).astype(np.int64)
        origlen = np.where(spb, hdr[:, 2], hdr[:, 6]).astype(np.int64)
        offset = np.where(spb, starts + 12, starts + 28)
        blen = hdr[:, 1].astype(np.int64)
        if spb.any():
            snap = np.array([i.snaplen or MAX_RECORD_BYTES for i in self.interfaces], np.int64)[iface[spb]]
            caplen[spb] = np.maximum(np.minimum(np.minimum(origlen[spb], snap), blen[spb] - 16), 0)
        over = caplen > blen - (offset - starts) - 4
        if over.any():
            at = file_pos + int(starts[np.argmax(over)])
            raise _Damaged(at, f"pcapng packet block at offset {at}: captured length exceeds the block")
        raw = (hdr[:, 3].astype(np.uint64) << np.uint64(32)) | hdr[:, 4].astype(np.uint64)
        return offset, caplen, origlen, iface, np.where(epb | pb, raw, 0)

    def _pcapng_columns_native(
        self, buf: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64], btype: npt.NDArray[Any],
        base: I64, big: npt.NDArray[Any], file_pos: int,
    ) -> tuple[I64, I64, I64, I64, npt.NDArray[np.uint64]]:  # fmt: skip
        """``_pcapng_columns`` in one C call (``_decode.pcapng_frames``): same columns, same errors."""
        assert self._kernel is not None
        n = len(starts)
        offset, caplen, origlen, iface = (np.empty(n, np.int64) for _ in range(4))
        raw_ts = np.empty(n, np.uint64)
        snap = np.array([i.snaplen or MAX_RECORD_BYTES for i in self.interfaces], np.int64)
        bad_iface, over = self._kernel.pcapng_frames(
            buf, np.ascontiguousarray(starts, np.int64), np.ascontiguousarray(btype, np.uint8),
            np.ascontiguousarray(base, np.int64), np.ascontiguousarray(big, np.uint8), snap,
            offset, caplen, origlen, iface, raw_ts,
        )  # fmt: skip
        if bad_iface >= 0:
            at = file_pos + int(starts[bad_iface])
            raise _Damaged(at, f"packet block names an undeclared interface at offset {at}")
        if over >= 0:
            at = file_pos + int(starts[over])
            raise _Damaged(at, f"pcapng packet block at offset {at}: captured length exceeds the block")
        return offset, caplen, origlen, iface, raw_ts

    def _pcapng_times(self, raw: npt.NDArray[np.uint64], iface: I64) -> I64:
        """ns since the epoch from raw timestamps in each frame's interface units (if_tsresol, if_tsoffset)."""
        if len(iface) and (iface == iface[0]).all():  # one interface (the usual case): no masks
            info = self.interfaces[int(iface[0])]
            same: I64 = _units_to_ns(raw, info.tsresol) + info.tsoffset_s * 1_000_000_000
            return same
        out = np.zeros(len(raw), np.int64)
        for idx in np.unique(iface).tolist():
            sel = iface == idx
            info = self.interfaces[idx]
            out[sel] = _units_to_ns(raw[sel], info.tsresol) + info.tsoffset_s * 1_000_000_000
        return out


def _block_words(buf: npt.NDArray[np.uint8], starts: I64, big: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint32]:
    """The first 7 words of each block, in its section's byte order (sections of a file may differ)."""
    index = starts[:, None] + 4 * np.arange(7)
    words: npt.NDArray[np.uint32]
    if not big.any():
        words = _words(buf, "<")[index]
    elif big.all():
        words = _words(buf, ">")[index]
    else:
        words = np.where(big[:, None], _words(buf, ">")[index], _words(buf, "<")[index])
    return words


def _units_to_ns(raw: npt.NDArray[np.uint64], per_second: int) -> npt.NDArray[np.int64]:
    if per_second == 1_000_000_000:
        return raw.astype(np.int64)
    if 1_000_000_000 % per_second == 0:
        return raw.astype(np.int64) * (1_000_000_000 // per_second)
    whole = (raw // np.uint64(per_second)).astype(np.int64)
    frac = (raw % np.uint64(per_second)).astype(np.float64)
    return whole * 1_000_000_000 + np.round(frac * (1e9 / per_second)).astype(np.int64)


def open_capture(
    path: str | os.PathLike[str], chunk_bytes: int = DEFAULT_CHUNK_BYTES, map_file: bool = True,
    strict: bool = False,
) -> CaptureReader:  # fmt: skip
    """Open a pcap or pcapng file; raises ``CaptureError`` when it is neither or cannot be read.

    ``map_file=False`` reads the file into buffers even when the C walks could map it (see the module
    docstring: a mapped file cut short by another process while it is read ends this one with SIGBUS).
    ``strict``: damage in the file (see the module docstring) is a ``CaptureError``, not a warning.
    """
    return CaptureReader(path, chunk_bytes, map_file, strict)
