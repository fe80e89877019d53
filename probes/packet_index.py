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
from typing import Final

import numpy as np
import numpy.typing as npt

from hopscope.errors import HopscopeError
from hopscope.probes.packets import PacketBlock
from hopscope.probes.readers import RawBlock
from hopscope.records import Batch, PacketIndex

#: One packet of a ``PacketIndex.frames`` text (little-endian, 24 bytes; the text is their base64).
FRAME_DTYPE: Final = np.dtype([("offset", "<u8"), ("caplen", "<u4"), ("origlen", "<u4"), ("ts_ns", "<i8")])

Frames = npt.NDArray[np.void]


class PacketsUnavailable(HopscopeError):
    """The packets asked for are not where their index says (file gone or cut short), or never were
    indexed. The message says which and why."""


def pack_frames(frames: Frames) -> str:
    """``FRAME_DTYPE`` rows as the text of ``PacketIndex.frames``: their bytes in base64. Not compressed
    here: zlib costs about 65 us a call whatever the size (most flows have a few packets), and the
    store compresses the column anyway."""
    return base64.b64encode(np.ascontiguousarray(frames, FRAME_DTYPE).tobytes()).decode("ascii")


def unpack_frames(text: str) -> Frames:
    """Inverse of ``pack_frames``; a malformed text raises ``PacketsUnavailable``."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except ValueError as exc:
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


class PacketIndexer:
    """Collects where every flow's packets lie in one capture file (see the module docstring).

    ``point``: the name every packet's flow is attributed to (None: each row's own point name). Each
    block costs a few vectorised gathers; the grouping by flow happens once, in ``records``.
    """

    def __init__(self, file: str | os.PathLike[str], host: str = "", point: str | None = None) -> None:
        self.file = os.path.abspath(os.fspath(file))
        self.host = host
        self.point = point
        self._point_ids: dict[str, int] = {}
        self._parts: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64], npt.NDArray[np.int64], Frames]] = []

    def add(self, raw: RawBlock, block: PacketBlock, row_frames: npt.NDArray[np.int64] | None = None) -> None:
        """Index the metered rows of ``block``, decoded from ``raw``; ``row_frames[r]`` is the frame of
        row ``r`` (None: one row per frame, ``Decoder.row_frames``)."""
        rows = np.flatnonzero(block.flow_id != 0)
        if not len(rows):
            return
        frame = rows if row_frames is None else row_frames[rows]
        self._parts.append((self._points_of(block, rows), block.flow_id[rows].astype(np.uint64),
                            linktypes_of(raw, frame), frame_records(raw, frame)))  # fmt: skip

    def _points_of(self, block: PacketBlock, rows: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
        """The indexer's id of each row's point name."""
        if self.point is not None:
            return np.zeros(len(rows), np.int64)
        local = block.point[rows].astype(np.int64)
        table = np.zeros(len(block.point_names), np.int64)
        for pid in np.unique(local).tolist():
            table[pid] = self._point_ids.setdefault(block.point_names[pid], len(self._point_ids))
        return table[local]

    def records(self) -> list[PacketIndex]:
        """One record per point, flow and link type, in order of first packet."""
        if not self._parts:
            return []
        names = {i: n for n, i in self._point_ids.items()} if self.point is None else {0: self.point}
        points, fids, linktypes, frames = (np.concatenate(part) for part in zip(*self._parts, strict=True))
        order, starts, ends = group_bounds(points, fids, linktypes)
        ordered = np.ascontiguousarray(frames[order])
        times, data, size = ordered["ts_ns"], ordered.tobytes(), FRAME_DTYPE.itemsize
        firsts = order[starts]
        columns = zip(points[firsts].tolist(), fids[firsts].tolist(), linktypes[firsts].tolist(),
                      times[starts].tolist(), times[ends - 1].tolist(), starts.tolist(), ends.tolist(), strict=True)
        out = [
            PacketIndex(point=names[pid], flow_id=fid, host=self.host, file=self.file, linktype=linktype,
                        start_ns=first_ns, end_ns=last_ns, pkts=end - start,
                        frames=base64.b64encode(data[start * size : end * size]).decode("ascii"))
            for pid, fid, linktype, first_ns, last_ns, start, end in columns
        ]  # fmt: skip
        out.sort(key=lambda r: (r.start_ns, r.point, r.flow_id))
        return out

    def batch(self) -> Batch:
        return Batch.from_records(PacketIndex, self.records())


def linktypes_of(raw: RawBlock, frames: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The link type of each of ``frames``."""
    return np.array([i.linktype for i in raw.interfaces], np.int64)[raw.iface[frames].astype(np.int64)]


def frame_records(raw: RawBlock, frames: npt.NDArray[np.int64]) -> Frames:
    """``FRAME_DTYPE`` rows of ``frames`` of ``raw``: where they lie in its file."""
    records = np.empty(len(frames), FRAME_DTYPE)
    records["offset"] = raw.file_offset + raw.offset[frames]
    records["caplen"] = raw.caplen[frames]
    records["origlen"] = raw.origlen[frames]
    records["ts_ns"] = raw.ts_ns[frames]
    return records


def group_bounds(*keys: npt.NDArray[np.generic]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp],
                                                      npt.NDArray[np.intp]]:  # fmt: skip
    """Rows grouped by the distinct combinations of ``keys``: ``order`` puts the rows of each group
    together (each in row order, i.e. capture order); group ``g`` is ``order[starts[g]:ends[g]]``."""
    n = len(keys[0])
    order = np.lexsort((np.arange(n), *reversed(keys)))
    change = np.zeros(max(n - 1, 0), np.bool_)
    for key in keys:
        ranked = key[order]
        change |= ranked[1:] != ranked[:-1]
    starts = np.r_[0, np.flatnonzero(change) + 1].astype(np.intp)
    ends = np.r_[starts[1:], n].astype(np.intp)
    return order, starts, ends


def group_rows(*keys: npt.NDArray[np.generic]) -> list[npt.NDArray[np.intp]]:
    """The row indices of each distinct combination of ``keys``, each group in row order (capture
    order), groups in order of their first row."""
    order, starts, ends = group_bounds(*keys)
    groups = [order[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    groups.sort(key=lambda g: int(g[0]))
    return groups
