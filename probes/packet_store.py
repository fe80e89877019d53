"""A bounded rolling packet store per capture point on disk, indexed by flow (as Arkime's capture
nodes keep theirs), for live probes and agents.

Layout: one directory per point under the store's directory (``point_dir``: the point name made safe
for a file name, plus a hash of it). In it, the packets in *segments*: ordinary pcap files
(nanosecond timestamps, the point's link type) named ``seg-<first packet ns>.pcap``, and
``index.sqlite``: a ``packet_index`` table with the columns of ``hopscope.records.PacketIndex`` (one
row per segment, flow and link type) and a ``segments`` table (file, times, bytes, packets).
Every packet that decoded into a metered flow is written (frames the meter does not see, such as
ARP, are not); a frame carrying a tunnel is written once and indexed under each of its flows.

A segment is closed when it reaches ``segment_bytes`` (checked per block written, so it may pass it
by up to one block) or when its first packet is ``segment_s`` old, and a new one opened. Limits,
checked after every block and by ``maintain`` (the probe calls it every publish interval): the
point's segments together at most ``max_bytes``, and none whose last packet is older than
``max_age_s``; beyond either, whole segments are dropped, oldest first, their index rows with them,
and counted (``PacketStoreStats``: segments, packets and bytes dropped), never the segment being
written. A packet that cannot be written (disk full) is counted in ``write_errors`` and the capture
goes on. The index rows of the segment being written are brought up to date by ``flush`` (every
publish interval), so its packets are findable within about a second.

Readers (``PacketStoreIndex``, for the API and ``hopscope pcap``) open ``index.sqlite`` read-only;
SQLite's write-ahead log lets them read while the probe writes. A reader can find a row whose
segment was dropped a moment later: reading it then fails as for any missing capture file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np
import numpy.typing as npt

from hopscope.errors import ConfigError
from hopscope.probes.packet_index import FRAME_DTYPE, Frames, group_rows, linktypes_of, pack_frames
from hopscope.probes.packets import PacketBlock
from hopscope.probes.readers import RawBlock
from hopscope.records import PacketIndex

log = logging.getLogger(__name__)

_PCAP_NS_HEADER: Final = struct.Struct("<IHHiIII")
_PCAP_NS_MAGIC: Final = 0xA1B23C4D
_SNAPLEN: Final = 262144
_U64: Final = 1 << 64
INDEX_FILE: Final = "index.sqlite"

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS segments (file TEXT PRIMARY KEY, start_ns INTEGER, end_ns INTEGER, "
    "bytes INTEGER, pkts INTEGER)",
    "CREATE TABLE IF NOT EXISTS packet_index (file TEXT, flow_id INTEGER, linktype INTEGER, point TEXT, "
    "host TEXT, start_ns INTEGER, end_ns INTEGER, pkts INTEGER, frames TEXT, PRIMARY KEY (file, flow_id, linktype))",
    "CREATE INDEX IF NOT EXISTS packet_index_flow ON packet_index (flow_id)",
)


@dataclass(frozen=True, slots=True)
class PacketStoreSettings:
    """Where and how much: the limits hold per capture point."""

    directory: str
    max_bytes: int = 1 << 30  # all segments of a point together
    max_age_s: float = 3600.0  # a segment whose last packet is older is dropped
    segment_bytes: int = 64 << 20  # a segment is closed at this size
    segment_s: float = 60.0  # ... or when its first packet is this old

    def __post_init__(self) -> None:
        if not self.directory:
            raise ConfigError("the packet store needs a directory")
        if min(self.max_bytes, self.segment_bytes) < 1 or min(self.max_age_s, self.segment_s) <= 0:
            raise ConfigError("packet store limits must be positive")
        if self.segment_bytes > self.max_bytes:
            raise ConfigError(f"packet store segment_bytes ({self.segment_bytes}) must not exceed max_bytes "
                              f"({self.max_bytes}): the segment being written is never dropped")  # fmt: skip


@dataclass(slots=True)
class PacketStoreStats:
    """What a packet store wrote and dropped (the agent's health reports them per point)."""

    packets: int = 0  # written
    bytes: int = 0  # written, record headers included
    segments: int = 0  # opened
    dropped_segments: int = 0  # dropped to keep within max_bytes / max_age_s, oldest first
    dropped_packets: int = 0
    dropped_bytes: int = 0
    write_errors: int = 0  # packets not stored because writing failed (disk full, ...)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def add(self, other: PacketStoreStats) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


def point_dir(directory: str | os.PathLike[str], point: str) -> Path:
    """The directory of ``point``'s segments: its name made safe for a file name, and a hash of it so
    that two names made alike stay apart."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", point).strip("._")[:80] or "point"
    digest = hashlib.blake2b(point.encode(), digest_size=4).hexdigest()
    return Path(directory) / f"{safe}-{digest}"


def _signed(flow_id: int) -> int:
    """A u64 flow id as SQLite's signed 64-bit INTEGER."""
    return flow_id - _U64 if flow_id >= 1 << 63 else flow_id


@dataclass(slots=True)
class _Segment:
    path: Path
    linktype: int
    start_ns: int
    fh: BinaryIO  # the open file
    size: int = 0
    pkts: int = 0
    end_ns: int = 0
    runs: dict[int, list[Frames]] = field(default_factory=dict)  # flow id -> its frames in this segment
    pending: list[tuple[npt.NDArray[np.uint64], Frames]] = field(default_factory=list)  # not yet in the index


class PointPacketStore:
    """One capture point's segments and index (see the module docstring)."""

    def __init__(self, settings: PacketStoreSettings, point: str, host: str = "") -> None:
        self.settings = settings
        self.point = point
        self.host = host
        self.dir = point_dir(settings.directory, point)
        self.stats = PacketStoreStats()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.dir / INDEX_FILE, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"packet store of point {point}: cannot use {self.dir}: {exc}") from exc
        self.db.execute("PRAGMA journal_mode=WAL")
        for statement in _SCHEMA:
            self.db.execute(statement)
        self._segment: _Segment | None = None
        self._latest_ns = 0

    # --- writing --------------------------------------------------------------------------------

    def add(self, raw: RawBlock, frames: npt.NDArray[np.int64], flow_ids: npt.NDArray[np.uint64]) -> None:
        """Write frames ``frames`` of ``raw`` (one entry per flow they belong to) and index them."""
        if not len(frames):
            return
        unique = np.unique(frames)
        linktypes = linktypes_of(raw, unique)
        for linktype in np.unique(linktypes).tolist():
            self._write(raw, unique[linktypes == linktype], linktype, frames, flow_ids)
        self._enforce()

    def _write(self, raw: RawBlock, picked: npt.NDArray[np.int64], linktype: int,
               frames: npt.NDArray[np.int64], flow_ids: npt.NDArray[np.uint64]) -> None:  # fmt: skip
        """Append ``picked`` (ascending frame numbers of one link type) to the segment; remember which
        flows they belong to (grouped by flow at the next ``flush``)."""
        segment = self._segment_for(linktype, int(raw.ts_ns[picked[0]]))
        if segment is None:
            self.stats.write_errors += len(picked)
            return
        data, records = pcap_records(raw, picked, segment.size)
        try:
            segment.fh.write(data)
        except OSError as exc:
            log.warning("packet store of %s: writing %s failed: %s", self.point, segment.path, exc)
            self.stats.write_errors += len(picked)
            self._close_segment()
            return
        segment.size += len(data)
        segment.pkts += len(picked)
        segment.end_ns = max(segment.end_ns, int(records["ts_ns"].max()))
        self._latest_ns = max(self._latest_ns, segment.end_ns)
        self.stats.packets += len(picked)
        self.stats.bytes += len(data)
        at = np.minimum(np.searchsorted(picked, frames), len(picked) - 1)
        mine = picked[at] == frames  # the (frame, flow) pairs of this link type
        segment.pending.append((flow_ids[mine].astype(np.uint64), records[at[mine]]))

    def _segment_for(self, linktype: int, ts_ns: int) -> _Segment | None:
        """The segment to write to, a new one when the current is full, old or of another link type."""
        s, current = self.settings, self._segment
        if current is not None and (
            current.linktype != linktype or current.size >= s.segment_bytes
            or ts_ns - current.start_ns >= s.segment_s * 1e9
        ):  # fmt: skip
            self._close_segment()
            current = None
        if current is None:
            path = self.dir / f"seg-{ts_ns}.pcap"
            try:
                fh = path.open("ab")
                if fh.tell() == 0:
                    fh.write(_PCAP_NS_HEADER.pack(_PCAP_NS_MAGIC, 2, 4, 0, 0, _SNAPLEN, linktype))
            except OSError as exc:
                log.warning("packet store of %s: cannot open %s: %s", self.point, path, exc)
                return None
            current = self._segment = _Segment(path, linktype, ts_ns, fh, size=fh.tell())
            self.db.execute("INSERT OR REPLACE INTO segments VALUES (?, ?, ?, ?, ?)", (str(path), ts_ns, ts_ns, 0, 0))
            self.stats.segments += 1
        return current

    def flush(self) -> None:
        """Bring the index rows of the segment being written up to date."""
        segment = self._segment
        if segment is None or not segment.pending:
            return
        try:
            segment.fh.flush()
        except OSError as exc:
            log.warning("packet store of %s: flushing %s failed: %s", self.point, segment.path, exc)
        fids = np.concatenate([f for f, _ in segment.pending])
        records = np.concatenate([r for _, r in segment.pending])
        segment.pending.clear()
        rows = []
        for group in group_rows(fids):
            fid = int(fids[group[0]])
            runs = segment.runs.setdefault(fid, [])
            runs.append(records[group])
            frames = np.concatenate(runs) if len(runs) > 1 else runs[0]
            segment.runs[fid] = [frames]
            times = frames["ts_ns"]
            rows.append((str(segment.path), _signed(fid), segment.linktype, self.point, self.host,
                         int(times[0]), int(times[-1]), len(frames), pack_frames(frames)))  # fmt: skip
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO packet_index VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self.db.execute("UPDATE segments SET end_ns = ?, bytes = ?, pkts = ? WHERE file = ?",
                            (segment.end_ns, segment.size, segment.pkts, str(segment.path)))  # fmt: skip

    def _close_segment(self) -> None:
        segment = self._segment
        if segment is None:
            return
        self.flush()
        try:
            segment.fh.close()
        except OSError as exc:
            log.warning("packet store of %s: closing %s failed: %s", self.point, segment.path, exc)
        self._segment = None

    # --- limits ---------------------------------------------------------------------------------

    def maintain(self, now_ns: int | None = None) -> None:
        """Flush the index and apply the limits; age is measured from ``now_ns`` (default: the newest
        packet written)."""
        self.flush()
        self._enforce(now_ns)

    def _enforce(self, now_ns: int | None = None) -> None:
        s = self.settings
        now = max(now_ns or 0, self._latest_ns)
        current = str(self._segment.path) if self._segment is not None else ""
        closed = self.db.execute("SELECT file, end_ns, bytes, pkts FROM segments ORDER BY start_ns").fetchall()
        total = sum(int(b) for _, _, b, _ in closed) + (self._segment.size if self._segment is not None else 0)
        total -= sum(int(b) for f, _, b, _ in closed if f == current)  # its row lags; its size is current
        for file, end_ns, size, pkts in closed:
            if file == current:
                continue
            too_old = now - int(end_ns) > s.max_age_s * 1e9
            if total <= s.max_bytes and not too_old:
                continue
            self._drop(file, int(size), int(pkts))
            total -= int(size)

    def _drop(self, file: str, size: int, pkts: int) -> None:
        try:
            os.unlink(file)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("packet store of %s: cannot drop %s: %s", self.point, file, exc)
            return
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM packet_index WHERE file = ?", (file,))
            self.db.execute("DELETE FROM segments WHERE file = ?", (file,))
        self.stats.dropped_segments += 1
        self.stats.dropped_packets += pkts
        self.stats.dropped_bytes += size
        log.info("packet store of %s: dropped %s (%d packets, %d bytes)", self.point, file, pkts, size)

    def close(self) -> None:
        self._close_segment()
        self._enforce()
        self.db.close()


def pcap_records(raw: RawBlock, frames: npt.NDArray[np.int64], at: int) -> tuple[bytes, Frames]:
    """``frames`` of ``raw`` as pcap records (16-byte header, nanosecond time, then the captured bytes)
    to be written at file offset ``at``, and where each frame's bytes land (``FRAME_DTYPE``). The
    headers are built at once; the bytes are joined slice by slice (a gather through index arrays
    costs more: eight bytes of index per byte moved)."""
    caplen = raw.caplen[frames].astype(np.int64)
    size = 16 + caplen
    starts = np.cumsum(size) - size  # each record's offset in the output
    ts = raw.ts_ns[frames].astype(np.int64)
    header = np.empty((len(frames), 4), "<u4")
    header[:, 0], header[:, 1] = ts // 1_000_000_000, ts % 1_000_000_000
    header[:, 2], header[:, 3] = caplen, raw.origlen[frames]
    heads, view = header.tobytes(), raw.buf.data  # a memoryview of the block's bytes
    parts: list[bytes | memoryview] = []
    for k, (start, length) in enumerate(zip(raw.offset[frames].tolist(), caplen.tolist(), strict=True)):
        parts += (heads[16 * k : 16 * k + 16], view[start : start + length])
    records = np.empty(len(frames), FRAME_DTYPE)
    records["offset"] = at + starts + 16
    records["caplen"], records["origlen"], records["ts_ns"] = caplen, raw.origlen[frames], ts
    return b"".join(parts), records


class PacketStore:
    """The rolling stores of every point one probe captures (``--iface any`` has one per interface)."""

    def __init__(self, settings: PacketStoreSettings, host: str = "") -> None:
        self.settings = settings
        self.host = host
        self.points: dict[str, PointPacketStore] = {}
        try:  # a directory that cannot be made is an error at start, not in the capture loop
            Path(settings.directory).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"packet store: cannot use {settings.directory}: {exc.strerror or exc}") from exc

    def add(self, raw: RawBlock, block: PacketBlock, row_frames: npt.NDArray[np.int64] | None = None) -> None:
        """Write and index the frames of ``raw`` whose rows of ``block`` are in a metered flow
        (``row_frames``: ``Decoder.row_frames``)."""
        rows = np.flatnonzero(block.flow_id != 0)
        if not len(rows):
            return
        frames = rows if row_frames is None else row_frames[rows]
        points = block.point[rows]
        for pid in np.unique(points).tolist():
            sel = points == pid
            name = block.point_names[pid]
            store = self.points.get(name)
            if store is None:
                store = self.points[name] = PointPacketStore(self.settings, name, self.host)
            store.add(raw, frames[sel].astype(np.int64), block.flow_id[rows[sel]])

    def maintain(self, now_ns: int | None = None) -> None:
        for store in self.points.values():
            store.maintain(now_ns)

    def stats(self) -> PacketStoreStats:
        total = PacketStoreStats()
        for store in self.points.values():
            total.add(store.stats)
        return total

    def close(self) -> None:
        for store in self.points.values():
            store.close()


class PacketStoreIndex:
    """Reads the index of a packet store directory (another process may be writing it)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def packet_index(self, point: str, flow_ids: Sequence[int]) -> list[PacketIndex]:
        """The rows of these flows at ``point`` ([] when the store has no such point)."""
        path = point_dir(self.directory, point) / INDEX_FILE
        if not path.is_file() or not flow_ids:
            return []
        wanted = [_signed(f) for f in flow_ids]
        marks = ", ".join("?" * len(wanted))
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT point, flow_id, host, file, linktype, start_ns, end_ns, pkts, frames FROM packet_index "
                f"WHERE flow_id IN ({marks}) AND point = ? ORDER BY start_ns", (*wanted, point),
            ).fetchall()  # fmt: skip
        finally:
            db.close()
        return [PacketIndex(p, fid % _U64, h, f, lt, s, e, n, fr) for p, fid, h, f, lt, s, e, n, fr in rows]
