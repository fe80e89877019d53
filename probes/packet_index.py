"""Where each flow's packets lie in a capture file: the ``packet_index`` rows, built block by block.

A ``PacketIndexer`` watches the blocks of one capture file go by (the raw frames and their decoded,
metered rows) and remembers, per capture point, flow and link type, each packet's frame: its byte
offset in the file, captured and original length and time (``FRAME_DTYPE``). ``batch()`` turns that
into ``PacketIndex`` records, one per flow and file, which the store keeps beside the flows; reading
a flow's packets back is then one ``pread`` per packet (``read_frames``), with no walk over the file
and no knowledge of its format. The same records describe a rolling packet store's segments
(``hopscope.probes.packet_store``).

A frame carrying a UDP tunnel decodes into two rows (the outer datagram and the inner packet, two
flows): both flows index the frame. IP fragments other than the one completing a datagram are not
in any flow (the decoder marks them ``FRAGMENT``) and so are not indexed.
"""

from __future__ import annotations

import base64
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from hopscope.errors import HopscopeError
from hopscope.probes.packets import PacketBlock
from hopscope.probes.readers import RawBlock
from hopscope.records import Batch, PacketIndex

#: One packet of a ``PacketIndex.frames`` text, before compression (little-endian, 24 bytes).
FRAME_DTYPE: Final = np.dtype([("offset", "<u8"), ("caplen", "<u4"), ("origlen", "<u4"), ("ts_ns", "<i8")])

Frames = npt.NDArray[np.void]


class PacketsUnavailable(HopscopeError):
    """The packets asked for are not where their index says (file gone or cut short), or never were
    indexed. The message says which and why."""


def pack_frames(frames: Frames) -> str:
    """``FRAME_DTYPE`` rows as the text of ``PacketIndex.frames``: zlib-compressed, then base64."""
    return base64.b64encode(zlib.compress(np.ascontiguousarray(frames, FRAME_DTYPE).tobytes(), 6)).decode("ascii")


def unpack_frames(text: str) -> Frames:
    """Inverse of ``pack_frames``; a malformed text raises ``PacketsUnavailable``."""
    try:
        raw = zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True))
    except (ValueError, zlib.error) as exc:
        raise PacketsUnavailable(f"corrupt packet index entry: {exc}") from exc
    if len(raw) % FRAME_DTYPE.itemsize:
        raise PacketsUnavailable(f"corrupt packet index entry: {len(raw)} bytes is not a whole number of frames")
    return np.frombuffer(raw, FRAME_DTYPE)


def read_frames(path: str, frames: Frames) -> list[bytes]:
    """The captured bytes of each frame of ``path``; ``PacketsUnavailable`` when the file is gone or
    shorter than the index says (rotated away, moved, cut)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise PacketsUnavailable(f"capture file {path} cannot be read: {exc.strerror}") from exc
    try:
        out = []
        for offset, caplen in zip(frames["offset"].tolist(), frames["caplen"].tolist(), strict=True):
            data = os.pread(fd, caplen, offset)
            if len(data) != caplen:
                raise PacketsUnavailable(f"capture file {path} ends before the packet at offset {offset}: "
                                         "it was cut or rewritten since it was indexed")  # fmt: skip
            out.append(data)
        return out
    finally:
        os.close(fd)


@dataclass(slots=True)
class _Run:
    """The frames of one (point, flow, link type) so far."""

    parts: list[Frames]


class PacketIndexer:
    """Collects where every flow's packets lie in one capture file (see the module docstring).

    ``point``: the name every packet's flow is attributed to (None: each row's own point name).
    """

    def __init__(self, file: str | os.PathLike[str], host: str = "", point: str | None = None) -> None:
        self.file = os.path.abspath(os.fspath(file))
        self.host = host
        self.point = point
        self._runs: dict[tuple[str, int, int], _Run] = {}

    def add(self, raw: RawBlock, block: PacketBlock, row_frames: npt.NDArray[np.int64] | None = None) -> None:
        """Index the metered rows of ``block``, decoded from ``raw``; ``row_frames[r]`` is the frame of
        row ``r`` (None: one row per frame, ``Decoder.row_frames``)."""
        rows = np.flatnonzero(block.flow_id != 0)
        if not len(rows):
            return
        frame = rows if row_frames is None else row_frames[rows]
        linktypes = np.array([i.linktype for i in raw.interfaces], np.int64)[raw.iface[frame].astype(np.int64)]
        records = np.empty(len(rows), FRAME_DTYPE)
        records["offset"] = raw.file_offset + raw.offset[frame]
        records["caplen"] = raw.caplen[frame]
        records["origlen"] = raw.origlen[frame]
        records["ts_ns"] = raw.ts_ns[frame]
        fids, points = block.flow_id[rows], block.point[rows].astype(np.int64)
        order = np.lexsort((rows, linktypes, fids, points))  # stable within a flow: capture order
        keys = np.stack([points[order], fids[order].astype(np.int64), linktypes[order]], axis=1)
        cuts = np.flatnonzero(np.any(keys[1:] != keys[:-1], axis=1)) + 1
        for part, first in zip(np.split(order, cuts), np.r_[0, cuts].tolist(), strict=True):
            pid, fid, linktype = keys[first].tolist()
            name = self.point if self.point is not None else block.point_names[pid]
            key = (name, fid & 0xFFFF_FFFF_FFFF_FFFF, linktype)
            run = self._runs.get(key)
            if run is None:
                run = self._runs[key] = _Run([])
            run.parts.append(records[part])

    def __len__(self) -> int:
        return len(self._runs)

    def records(self) -> list[PacketIndex]:
        """One record per point, flow and link type, in order of first packet."""
        out = []
        for (point, fid, linktype), run in self._runs.items():
            frames = np.concatenate(run.parts)
            out.append(PacketIndex(
                point=point, flow_id=fid, host=self.host, file=self.file, linktype=linktype,
                start_ns=int(frames["ts_ns"][0]), end_ns=int(frames["ts_ns"][-1]), pkts=len(frames),
                frames=pack_frames(frames),
            ))  # fmt: skip
        out.sort(key=lambda r: (r.start_ns, r.point, r.flow_id))
        return out

    def batch(self) -> Batch:
        return Batch.from_records(PacketIndex, self.records())


def frames_of(rows: Sequence[PacketIndex]) -> list[tuple[PacketIndex, Frames]]:
    """Each index row with its unpacked frames."""
    return [(row, unpack_frames(row.frames)) for row in rows]
