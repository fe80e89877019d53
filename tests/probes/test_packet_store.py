"""The rolling packet store: what it keeps reads back byte for byte, its segments are pcap files tshark
reads, and its size and age limits drop whole segments, oldest first, counted.

The blocks are a lab capture's frames, a few at a time, decoded; each packet's flow id is a hash of
its address and port pair (the store needs flow membership, not the meter's ids)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hopscope.errors import ConfigError
from hopscope.paths import lab_samples
from hopscope.probes.agent_config import parse_config
from hopscope.probes.decode import Decoder
from hopscope.probes.packet_index import PacketsUnavailable, read_frames, unpack_frames
from hopscope.probes.packet_store import (
    INDEX_FILE,
    PacketStore,
    PacketStoreIndex,
    PacketStoreSettings,
    point_dir,
)
from hopscope.probes.packets import PacketBlock
from hopscope.probes.readers import RawBlock, open_capture

SAMPLE = lab_samples() / "hv-tap.pcap"
POINT = "hv/root/tap0"  # a name that is not a file name


def _flow_id(block: PacketBlock, r: int) -> int:
    ends = sorted([(block.src_str(r), int(block.sport[r])), (block.dst_str(r), int(block.dport[r]))])
    digest = hashlib.blake2b(repr((int(block.proto[r]), ends)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") | 1


def blocks(frames_per_block: int) -> Iterator[tuple[RawBlock, PacketBlock]]:
    """The sample's frames in raw blocks of ``frames_per_block``, decoded, flow ids filled."""
    decoder = Decoder(POINT)
    for raw in open_capture(SAMPLE).blocks():
        for start in range(0, raw.count, frames_per_block):
            part = slice(start, start + frames_per_block)
            sub = RawBlock(raw.buf, raw.offset[part], raw.caplen[part], raw.origlen[part], raw.ts_ns[part],
                           raw.iface[part], raw.interfaces, raw.file_offset)  # fmt: skip
            block = decoder.decode(sub)
            for r in np.flatnonzero(block.ok).tolist():
                block.flow_id[r] = _flow_id(block, r)
            yield sub, block


def original_frames() -> dict[int, list[bytes]]:
    """Each flow's frames in capture order, from the sample itself."""
    out: dict[int, list[bytes]] = {}
    for raw, block in blocks(1000):
        for r in np.flatnonzero(block.flow_id != 0).tolist():
            out.setdefault(int(block.flow_id[r]), []).append(raw.frame(r))
    return out


def run_store(settings: PacketStoreSettings, frames_per_block: int) -> tuple[PacketStore, dict[str, int]]:
    """Every block into a store; returns it (closed) and the largest size each segment file reached."""
    store = PacketStore(settings, host="hv")
    sizes: dict[str, int] = {}
    for raw, block in blocks(frames_per_block):
        store.add(raw, block)
        for seg in point_dir(settings.directory, POINT).glob("seg-*.pcap"):
            sizes[seg.name] = max(sizes.get(seg.name, 0), seg.stat().st_size)
    store.close()
    return store, sizes


def stored_frames(directory: Path, flow_ids: list[int]) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for row in PacketStoreIndex(directory).packet_index(POINT, flow_ids):
        assert row.point == POINT and row.host == "hv"
        out.setdefault(row.flow_id, []).extend(read_frames(row.file, unpack_frames(row.frames)))
    return out


def test_what_the_store_keeps_reads_back_byte_for_byte(tmp_path: Path) -> None:
    store, sizes = run_store(PacketStoreSettings(str(tmp_path), segment_bytes=16 << 10), 7)
    originals = original_frames()
    assert stored_frames(tmp_path, list(originals)) == originals
    assert len(sizes) > 3  # several segments, flows spanning them
    stats = store.stats()
    assert stats.packets == sum(len(f) for f in originals.values()) and stats.dropped_packets == 0
    assert stats.segments == len(sizes)


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_segments_are_pcap_files_tshark_reads(tmp_path: Path) -> None:
    store, _ = run_store(PacketStoreSettings(str(tmp_path), segment_bytes=32 << 10), 10)
    counted = 0
    for seg in point_dir(tmp_path, POINT).glob("seg-*.pcap"):
        r = subprocess.run(["tshark", "-n", "-r", str(seg), "-T", "fields", "-e", "frame.number"],
                           capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        counted += len(r.stdout.split())
    assert counted == store.stats().packets


def test_the_size_limit_drops_whole_segments_oldest_first_and_counts_them(tmp_path: Path) -> None:
    settings = PacketStoreSettings(str(tmp_path), max_bytes=24 << 10, segment_bytes=8 << 10)
    store, sizes = run_store(settings, 4)
    kept = sorted(p.name for p in point_dir(tmp_path, POINT).glob("seg-*.pcap"))
    opened = sorted(sizes, key=lambda name: int(name[4:-5]))
    assert kept == sorted(opened[len(opened) - len(kept):])  # the newest survive
    dropped = opened[: len(opened) - len(kept)]
    stats = store.stats()
    assert len(dropped) >= 5 and stats.dropped_segments == len(dropped)
    assert stats.dropped_bytes == sum(sizes[name] for name in dropped)
    assert sum(sizes[name] for name in kept) <= settings.max_bytes
    # every packet is kept or counted as dropped, and the index names only what is kept
    originals = original_frames()
    kept_frames = stored_frames(tmp_path, list(originals))
    assert stats.packets - stats.dropped_packets == sum(len(f) for f in kept_frames.values())
    assert set(kept_frames) < set(originals)
    for fid, frames in kept_frames.items():  # a flow cut by a drop keeps its newest packets
        assert originals[fid][len(originals[fid]) - len(frames):] == frames


def test_the_age_limit_drops_segments_whose_last_packet_is_older(tmp_path: Path) -> None:
    settings = PacketStoreSettings(str(tmp_path), max_age_s=1.0, segment_bytes=16 << 10)
    store = PacketStore(settings)
    latest = 0
    for raw, block in blocks(50):
        store.add(raw, block)
        latest = max(latest, int(raw.ts_ns.max()))
    before = store.stats().dropped_segments
    store.maintain(latest + 3_000_000_000)  # three seconds after the last packet: all but the open one are old
    kept = list(point_dir(tmp_path, POINT).glob("seg-*.pcap"))
    assert len(kept) == 1  # the segment being written is never dropped
    stats = store.stats()
    assert stats.dropped_segments > before and stats.dropped_segments + 1 == stats.segments
    store.close()


def test_a_flow_is_findable_before_its_segment_closes(tmp_path: Path) -> None:
    store = PacketStore(PacketStoreSettings(str(tmp_path)))
    raw, block = next(blocks(20))
    store.add(raw, block)
    fid = int(block.flow_id[np.flatnonzero(block.flow_id)[0]])
    assert PacketStoreIndex(tmp_path).packet_index(POINT, [fid]) == []  # not flushed yet
    store.maintain()
    rows = PacketStoreIndex(tmp_path).packet_index(POINT, [fid])
    assert len(rows) == 1 and rows[0].pkts == int((block.flow_id == fid).sum())
    store.close()


def test_a_dropped_segment_is_unavailable_not_wrong(tmp_path: Path) -> None:
    store = PacketStore(PacketStoreSettings(str(tmp_path)))
    raw, block = next(blocks(20))
    store.add(raw, block)
    store.close()
    fid = int(block.flow_id[np.flatnonzero(block.flow_id)[0]])
    (row,) = PacketStoreIndex(tmp_path).packet_index(POINT, [fid])
    Path(row.file).unlink()  # dropped between the lookup and the read
    with pytest.raises(PacketsUnavailable, match="cannot be read"):
        read_frames(row.file, unpack_frames(row.frames))


def test_no_store_for_a_point_finds_nothing(tmp_path: Path) -> None:
    assert PacketStoreIndex(tmp_path).packet_index("elsewhere", [1, 2]) == []
    assert not (point_dir(tmp_path, "elsewhere") / INDEX_FILE).exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_bytes": 1 << 20, "segment_bytes": 2 << 20}, "must not exceed max_bytes"),
        ({"max_age_s": 0}, "must be positive"),
        ({"directory": ""}, "needs a directory"),
    ],
)
def test_settings_are_checked(tmp_path: Path, settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PacketStoreSettings(**{"directory": str(tmp_path), **settings})  # type: ignore[arg-type]


def test_an_unusable_directory_is_one_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match=re.escape(f"cannot use {tmp_path / 'file'}")):
        PacketStore(PacketStoreSettings(str(tmp_path / "file")))
    store = PacketStore(PacketStoreSettings(str(tmp_path)))
    point_dir(tmp_path, POINT).write_text("a file where the point's directory goes")
    raw, block = next(blocks(20))
    with pytest.raises(ConfigError, match="cannot use"):
        store.add(raw, block)


def test_the_agent_configuration_turns_the_store_on_with_its_limits() -> None:
    base = "schema: hopscope.agent/1\nkafka: {bootstrap: 'k:9092'}\n"
    assert parse_config(base).packets.enabled is False
    config = parse_config(base + "packets: {enabled: true, dir: /d, max_mb: 10, max_age_s: 60, segment_mb: 2}\n")
    assert (config.packets.enabled, config.packets.dir, config.packets.max_mb) == (True, "/d", 10)
    with pytest.raises(ConfigError, match="segment_mb"):
        parse_config(base + "packets: {enabled: true, max_mb: 10, segment_mb: 20}\n")
    with pytest.raises(ConfigError, match=r"packets\.max_mb: expected int"):
        parse_config(base + "packets: {max_mb: lots}\n")
