"""Capture readers on literal bytes: pcap (µs/ns, both byte orders), pcapng (interfaces, if_tsresol,
names), and the damage they report or step over."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from hopscope.errors import CaptureError
from hopscope.probes.readers import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, RawBlock, open_capture

FRAME_A = bytes(range(60))
FRAME_B = b"\xaa" * 42


def pcap_bytes(endian: str, nanos: bool, frames: list[tuple[int, int, bytes]], linktype: int = 1) -> bytes:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for sec, frac, data in frames:
        out += struct.pack(endian + "IIII", sec, frac, len(data), len(data)) + data
    return out


def read_all(path: Path, chunk_bytes: int = 1 << 16) -> list[RawBlock]:
    return list(open_capture(path, chunk_bytes).blocks())


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize(("nanos", "frac", "expect_ns"), [(False, 250_000, 250_000_000), (True, 7, 7)])
def test_pcap_magics(tmp_path: Path, endian: str, nanos: bool, frac: int, expect_ns: int) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(pcap_bytes(endian, nanos, [(1_700_000_000, frac, FRAME_A), (1_700_000_001, 0, FRAME_B)]))
    (block,) = read_all(path)
    assert block.count == 2
    assert block.ts_ns.tolist() == [1_700_000_000 * 10**9 + expect_ns, 1_700_000_001 * 10**9]
    assert block.frame(0) == FRAME_A and block.frame(1) == FRAME_B
    assert block.interfaces[0].linktype == LINKTYPE_ETHERNET


def test_pcap_records_split_across_chunks(tmp_path: Path) -> None:
    frames = [(1, i, bytes([i % 256]) * (100 + i)) for i in range(2000)]
    path = tmp_path / "many.pcap"
    path.write_bytes(pcap_bytes("<", False, frames))
    blocks = read_all(path, chunk_bytes=1 << 16)
    assert len(blocks) > 3
    got = [b.frame(i) for b in blocks for i in range(b.count)]
    assert got == [f[2] for f in frames]


@pytest.mark.parametrize("damage", [False, True])
def test_pcap_chunk_of_small_records_same_on_both_walks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: bool
) -> None:
    """A 1 MB chunk of 36-byte records holds more than the C walk's first columns take (records of
    64 bytes): it goes on in bigger ones and gives what the Python walk gives, damage included."""
    data = pcap_bytes("<", False, []) + b"".join(
        struct.pack("<IIII", 1_700_000_000 + i // 1000, i % 1000, 20, 20) + bytes([i % 256]) * 20 for i in range(60_000)
    )
    if damage:  # an absurd caplen in record 40,000, past the first columns: reading resumes after it
        at = 24 + 36 * 40_000 + 8
        data = data[:at] + struct.pack("<I", 1 << 30) + data[at + 4 :]
    path = tmp_path / "small.pcap"
    path.write_bytes(data)
    walks = []
    for native in ("1", "0"):
        monkeypatch.setenv("HOPSCOPE_NATIVE", native)
        reader = open_capture(path, chunk_bytes=1 << 20)
        blocks = list(reader.blocks())
        walks.append(([(b.offset + b.file_offset).tolist() for b in blocks], [b.ts_ns.tolist() for b in blocks],
                      [b.caplen.tolist() for b in blocks], reader.stats.frames, reader.stats.damage))  # fmt: skip
    assert walks[0] == walks[1]
    assert walks[0][3] == (59_999 if damage else 60_000)  # the damaged record stepped over
    assert max(len(offsets) for offsets in walks[0][0]) > (1 << 20) // 64 + 4096  # past the first columns


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


def pcapng_bytes() -> bytes:
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb0 = _block(1, struct.pack("<HHI", 1, 0, 0) + _option(2, b"eth0") + _option(9, b"\x09") + _option(0, b""))
    idb1 = _block(1, struct.pack("<HHI", 276, 0, 0) + _option(2, b"any") + _option(9, b"\x83") + _option(0, b""))
    nsb = _block(4, b"\x00\x00\x00\x00")  # a name resolution block: skipped and counted

    def epb(iface: int, ts: int, data: bytes) -> bytes:
        pad = b"\x00" * (-len(data) % 4)
        return _block(6, struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data + pad)

    spb = _block(3, struct.pack("<I", len(FRAME_B)) + FRAME_B + b"\x00" * (-len(FRAME_B) % 4))
    return shb + idb0 + idb1 + nsb + epb(0, 1_700_000_000_123_456_789, FRAME_A) + epb(1, 8 * 5, FRAME_B) + spb


def test_pcapng_chunk_of_small_blocks_same_on_both_walks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 MB chunk of 36-byte packet blocks holds more than the C walk's first columns take: it goes
    on in bigger ones and gives what the Python walk gives."""
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = _block(1, struct.pack("<HHI", 1, 0, 0))
    epbs = b"".join(_block(6, struct.pack("<IIIII", 0, 0, k, 4, 4) + bytes([k % 256]) * 4) for k in range(60_000))
    path = tmp_path / "small.pcapng"
    path.write_bytes(shb + idb + epbs)
    walks = []
    for native in ("1", "0"):
        monkeypatch.setenv("HOPSCOPE_NATIVE", native)
        blocks = list(open_capture(path, chunk_bytes=1 << 20).blocks())
        walks.append([((b.offset + b.file_offset).tolist(), b.ts_ns.tolist(), b.caplen.tolist()) for b in blocks])
    assert walks[0] == walks[1]
    assert sum(len(offsets) for offsets, _, _ in walks[0]) == 60_000
    assert max(len(offsets) for offsets, _, _ in walks[0]) > (1 << 20) // 64 + 4096  # past the first columns


def test_pcapng_interfaces_names_and_resolution(tmp_path: Path) -> None:
    path = tmp_path / "x.pcapng"
    path.write_bytes(pcapng_bytes())
    reader = open_capture(path)
    (block,) = list(reader.blocks())
    assert [(i.name, i.linktype, i.tsresol) for i in block.interfaces] == [
        ("eth0", LINKTYPE_ETHERNET, 10**9), ("any", LINKTYPE_LINUX_SLL2, 8),
    ]  # fmt: skip
    assert block.iface.tolist() == [0, 1, 0]
    assert block.ts_ns.tolist()[:2] == [1_700_000_000_123_456_789, 5_000_000_000]
    assert block.frame(0) == FRAME_A and block.frame(1) == FRAME_B and block.frame(2) == FRAME_B
    assert reader.stats.skipped_blocks == {"pcapng_block_0x4": 1}


def test_pcapng_big_endian_section(tmp_path: Path) -> None:
    def blk(btype: int, body: bytes) -> bytes:
        return struct.pack(">II", btype, 12 + len(body)) + body + struct.pack(">I", 12 + len(body))

    data = blk(0x0A0D0D0A, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1)) + blk(1, struct.pack(">HHI", 1, 0, 0))
    data += blk(6, struct.pack(">IIIII", 0, 0, 1_000_000, 60, 60) + FRAME_A)
    path = tmp_path / "be.pcapng"
    path.write_bytes(data)
    (block,) = read_all(path)
    assert block.frame(0) == FRAME_A and block.ts_ns.tolist() == [1_000_000_000]


@pytest.mark.parametrize(
    ("content", "offset"),
    [(b"", 0), (b"\x00\x01\x02\x03" * 8, 0), (b"GIF89a" + b"\x00" * 40, 0), (b"\xd4\xc3\xb2\xa1\x02\x00", 6)],
)
def test_unreadable_files_name_file_and_offset(tmp_path: Path, content: bytes, offset: int) -> None:
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    with pytest.raises(CaptureError) as err:
        read_all(path)
    assert str(path) in str(err.value) and f"offset {offset}" in str(err.value)


def test_missing_file_is_a_capture_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="cannot open"):
        open_capture(tmp_path / "nope.pcap")


def test_absurd_record_length_keeps_the_records_before(tmp_path: Path) -> None:
    data = pcap_bytes("<", False, [(1, 0, FRAME_A)])
    data += struct.pack("<IIII", 2, 0, 0x7FFFFFFF, 0x7FFFFFFF) + b"junk"
    path = tmp_path / "absurd.pcap"
    path.write_bytes(data)
    reader = open_capture(path)
    assert [b.frame(0) for b in reader.blocks()] == [FRAME_A]
    assert reader.stats.damage is not None and reader.stats.damage.offset == 24 + 16 + len(FRAME_A)
    with pytest.raises(CaptureError, match=f"offset {24 + 16 + len(FRAME_A)}"):
        list(open_capture(path, strict=True).blocks())


def test_truncated_last_record_keeps_the_records_before(tmp_path: Path) -> None:
    data = pcap_bytes("<", False, [(1, 0, FRAME_A), (2, 0, FRAME_B)])
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[:-10])
    reader = open_capture(path)
    blocks = list(reader.blocks())
    assert sum(b.count for b in blocks) == 1 and blocks[0].frame(0) == FRAME_A
    assert reader.stats.truncated_tail == 16 + len(FRAME_B) - 10


def test_corrupt_pcapng_block_length(tmp_path: Path) -> None:
    data = pcapng_bytes()
    bad = data[:28] + struct.pack("<II", 6, 7) + data[36:]  # block total length 7 (not a multiple of 4)
    path = tmp_path / "bad.pcapng"
    path.write_bytes(bad)
    reader = open_capture(path)
    blocks = list(reader.blocks())  # the first interface is lost: reading resumes at the second one
    assert reader.stats.damage is not None and reader.stats.damage.offset == 28
    assert reader.stats.damage.resumed_at == 68 and [i.name for i in reader.interfaces] == ["any"]
    assert FRAME_B in [b.frame(i) for b in blocks for i in range(b.count)]
    with pytest.raises(CaptureError, match="corrupt pcapng block at offset 28"):
        list(open_capture(path, strict=True).blocks())


def test_pcapng_simple_packet_block_without_length_word_is_damage(tmp_path: Path) -> None:
    """A 12-byte SPB has no original-length word: damage, not a frame with caplen 2**32 - 4."""
    data = pcapng_bytes()
    path = tmp_path / "spb.pcapng"
    path.write_bytes(data + struct.pack("<III", 3, 12, 12))
    assert sum(b.count for b in read_all(path)) == 3
    with pytest.raises(CaptureError, match=f"block at offset {len(data)}: captured length exceeds the block"):
        list(open_capture(path, strict=True).blocks())


def test_pcapng_option_longer_than_its_block_stops_at_the_block_end(tmp_path: Path) -> None:
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = _block(1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HH", 2, 200) + b"eth0")
    epb = _block(6, struct.pack("<IIIII", 0, 0, 0, len(FRAME_A), len(FRAME_A)) + FRAME_A)
    path = tmp_path / "opt.pcapng"
    path.write_bytes(shb + idb + epb)
    reader = open_capture(path)
    (block,) = list(reader.blocks())
    assert [i.name for i in reader.interfaces] == ["eth0"] and block.frame(0) == FRAME_A


def test_pcapng_sections_of_both_byte_orders_in_one_chunk(tmp_path: Path) -> None:
    """Each packet block is read in its own section's byte order (``cat be.pcapng le.pcapng``)."""

    def section(e: str, ts: int) -> bytes:
        def blk(btype: int, body: bytes) -> bytes:
            return struct.pack(e + "II", btype, 12 + len(body)) + body + struct.pack(e + "I", 12 + len(body))

        epb = struct.pack(e + "IIIII", 0, 0, ts, len(FRAME_A), len(FRAME_A)) + FRAME_A
        return (
            blk(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))
            + blk(1, struct.pack(e + "HHI", 1, 0, 0))
            + blk(6, epb)
        )

    path = tmp_path / "mixed.pcapng"
    path.write_bytes(section(">", 1_000_000) + section("<", 2_000_000))
    (block,) = read_all(path)
    assert block.caplen.tolist() == [60, 60] and block.iface.tolist() == [0, 1]
    assert block.ts_ns.tolist() == [1_000_000_000, 2_000_000_000] and block.frame(0) == block.frame(1) == FRAME_A
