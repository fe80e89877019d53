"""Finding the next plausible record after damage in a capture file (what ``pcapfix`` does, and
Wireshark and Arkime do not): the reader reads on from there instead of giving up the rest of the file.

A pcap record is plausible when its header is (captured length at most the snaplen and 1 MiB and not
above the original length, sub-second part below one second, a timestamp within a day of the last good
record's) and the header its length points to is plausible too, or the file ends exactly there. A
pcapng block is plausible when its type is one the format defines, its length is a multiple of 4 from 12
to ``MAX_BLOCK_BYTES``, the copy of the length that ends the block agrees, and the block after it is
plausible too (or the file ends there); a section header block is always a place to resume (the walk
checks it). The scan looks at every byte (damage breaks alignment) from the byte after the damage, at
most ``SCAN_BYTES`` far, in windows, vectorised with numpy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO, Final

import numpy as np
import numpy.typing as npt

#: How far past the damage the scan looks before it gives the rest of the file up.
SCAN_BYTES: Final = 64 << 20
#: Candidates are looked for in windows of this many bytes (plus room for the record they point to).
WINDOW_BYTES: Final = 1 << 20
#: A resumed pcap record's timestamp is within this much of the last good record's.
MAX_GAP_S: Final = 86_400
#: pcapng block types (pcapng specification, "Block Type Codes"): SHB, IDB, PB, SPB, NRB, ISB, EPB,
#: systemd journal export, decryption secrets, custom blocks.
PCAPNG_TYPES: Final = (0x0A0D0D0A, 1, 2, 3, 4, 5, 6, 9, 0xA, 0xBAD, 0x40000BAD)
_SHB: Final = 0x0A0D0D0A
_BOMS: Final = (0x1A2B3C4D, 0x4D3C2B1A)


def _u32(buf: npt.NDArray[np.uint8], endian: str) -> npt.NDArray[np.int64]:
    """A u32 starting at every byte of ``buf`` (as int64, to add to offsets without overflow)."""
    if len(buf) < 4:
        return np.zeros(0, np.int64)
    view = np.ndarray(shape=(len(buf) - 3,), dtype=endian + "u4", buffer=buf, strides=(1,))
    return view.astype(np.int64)


def _windows(fh: BinaryIO, start: int, size: int, lookahead: int) -> Iterator[tuple[int, npt.NDArray[np.uint8], int]]:
    """(file offset, bytes, candidates in it) for each scan window from ``start``; ``lookahead`` more bytes
    are read so a candidate near the window's end can be checked against what follows it."""
    end = min(size, start + SCAN_BYTES)
    pos = start
    while pos < end:
        fh.seek(pos)
        data = np.frombuffer(fh.read(WINDOW_BYTES + lookahead), np.uint8)
        yield pos, data, min(WINDOW_BYTES, end - pos)
        pos += WINDOW_BYTES


def next_pcap_record(fh: BinaryIO, start: int, endian: str, snaplen: int, frac_limit: int,
                     near_s: int | None, max_record: int) -> int | None:  # fmt: skip
    """File offset of the first plausible pcap record at or after ``start`` (None: none within reach).
    ``frac_limit``: 10**6 (µs files) or 10**9 (ns); ``near_s``: the last good record's seconds."""
    size = os.fstat(fh.fileno()).st_size
    limit = min(snaplen or max_record, max_record)
    for base, data, count in _windows(fh, start, size, max_record + 32):
        words = _u32(data, endian)
        n = len(words) - 12  # headers that fit
        if n <= 0:
            continue
        sec, frac, cap, orig = words[:n], words[4 : n + 4], words[8 : n + 8], words[12 : n + 12]
        ok = (cap > 0) & (cap <= limit) & (orig >= cap) & (orig <= max_record) & (frac < frac_limit)
        if near_s is not None:
            ok &= np.abs(sec - near_s) <= MAX_GAP_S
        found = _chained(ok, np.arange(n) + 16 + cap, base, size, count)
        if found is not None:
            return found
    return None


def next_pcapng_block(fh: BinaryIO, start: int, endian: str, max_block: int) -> int | None:
    """File offset of the first plausible pcapng block at or after ``start`` in a section of byte order
    ``endian``, or of a section header block (None: none within reach)."""
    size = os.fstat(fh.fileno()).st_size
    for base, data, count in _windows(fh, start, size, max_block + 16):
        words = _u32(data, endian)
        n = len(words) - 8
        if n <= 0:
            continue
        btype, blen = words[:n], words[4 : n + 4]
        ok = np.isin(btype, PCAPNG_TYPES) & (blen % 4 == 0) & (blen >= 12) & (blen <= max_block)
        tail_at = np.arange(n) + blen - 4
        inside = ok & (tail_at < len(words))
        ok &= inside
        ok[inside] &= words[tail_at[inside]] == blen[inside]
        shb = (btype == _SHB) & np.isin(words[8 : n + 8], _BOMS)
        found = _chained(ok, np.arange(n) + blen, base, size, count, always=shb)
        if found is not None:
            return found
    return None


def _chained(ok: npt.NDArray[np.bool_], nxt: npt.NDArray[np.int64], base: int, size: int, count: int,
             always: npt.NDArray[np.bool_] | None = None) -> int | None:  # fmt: skip
    """The first position below ``count`` that is plausible and whose successor (at ``nxt``) is plausible
    too or the end of the file, or that ``always`` marks; as a file offset."""
    n = len(ok)
    follow = np.zeros(n, bool)
    inside = nxt < n
    follow[inside] = ok[nxt[inside]]
    good = ok & (follow | (base + nxt == size))
    if always is not None:
        good |= always
    hits = np.flatnonzero(good[:count])
    return base + int(hits[0]) if len(hits) else None
