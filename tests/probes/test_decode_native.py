"""The compiled read + decode kernel (probes/csrc/decode.c) against its reference twins in Python/numpy.

Every test runs the same input through the reference path (``HOPSCOPE_NATIVE=0`` when the reader or
decoder is constructed) and the kernel, and asserts identical output: every RawBlock column, the read
counters and errors, every PacketBlock column, the skip counters and the slow-path count. Inputs: the
lab captures, literal pcap/pcapng files, crafted packets of every kind on every link type cut at every
length, and hypothesis-mutated frames and files.
"""

from __future__ import annotations

import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from hopscope.errors import CaptureError
from hopscope.probes import readers
from hopscope.probes.decode import Decoder, PointResolver
from hopscope.probes.packets import COLUMN_NAMES, PacketBlock
from hopscope.probes.readers import PAD_BYTES, RawBlock, ReadStats, open_capture
from tests.probes import encap_frames as E
from tests.probes.test_fuzz import BASE_FRAMES, FILES, M, mutate, raw_block
from tests.probes.test_readers import pcapng_bytes

pytest.importorskip("hopscope.probes._decode", reason="the C kernel is not built (python setup.py build_ext)")

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "samples").rglob("*.pcap"))
RAW_FIELDS = ("offset", "caplen", "origlen", "ts_ns", "iface")
#: Link header (for an IPv4 payload) of every link type the decoder knows, plus one it does not.
LINK_HEADERS = {
    1: b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00",
    113: b"\x00" * 14 + b"\x08\x00",
    276: b"\x08\x00\x00\x00" + struct.pack(">I", 7) + b"\x00" * 12,  # ifindex 7
    101: b"",
    12: b"",
    228: b"",
    229: b"",
    0: struct.pack("<I", 2),
    108: struct.pack(">I", 2),
    147: b"\x00" * 4,  # LINKTYPE_USER0: not decoded
    9: b"\xff\x03\x00\x21",  # PPP, HDLC framing, IPv4
    50: b"\xff\x03\x00\x21",  # PPP in HDLC framing, IPv4
    105: E.dot11(IP())[:32],  # 802.11 data, LLC/SNAP, IPv4
    127: E.radiotap(IP())[:44],
}
_FRAGMENTED_VXLAN = fragment(IP(src="192.0.2.1", dst="192.0.2.2", id=4) / UDP(sport=9, dport=4789) / VXLAN()
                             / Ether(**M) / IP() / UDP() / (b"f" * 900), fragsize=400)  # fmt: skip
EXTRA_FRAMES = [
    bytes(p)
    for p in (
        Ether(**M) / IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=1, dport=2, seq=7, flags="SA") / b"abc",
        Ether(**M) / IPv6() / UDP(sport=53, dport=4789) / b"not vxlan",
        Ether(**M) / IPv6() / ICMPv6EchoRequest() / b"ping6",
        Ether(**M) / IP(flags="MF", frag=0) / UDP() / b"first fragment",
        Ether(**M) / IP(frag=3) / b"later fragment",
        Ether(**M) / IP(proto=50) / b"esp payload",
        Ether(**M) / IP(len=0) / TCP(dataofs=4) / b"bad offset",
        Ether(**M) / IP(len=30) / TCP() / b"ip length shorter than TCP",
        Ether(**M) / IP(ihl=4) / TCP(),
        Ether(**M) / IP(version=5) / UDP(),
        Ether(**M) / IP() / ICMP(type=3, code=1) / IP() / UDP(),
        Ether(**M) / Dot1Q(vlan=9) / IPv6() / UDP(dport=6081) / b"g",
        Ether(**M) / ARP(),
        Ether(src=M["src"], dst=M["dst"], type=0x88A8) / (b"\x00\x05\x08\x00" + bytes(IP() / UDP())),
        *(Ether(**M) / part for part in _FRAGMENTED_VXLAN),
        *(Ether(**M) / part for part in reversed(_FRAGMENTED_VXLAN)),
        Ether(**M) / IP() / UDP(sport=5000, dport=53) / (b"\x00\x01" + bytes(60)),  # passes Teredo's first checks only
        Ether(**M) / IP() / UDP(sport=5000, dport=53) / (b"\x60\x00" + bytes(60)),  # IPv6-looking, no Teredo prefix
        Ether(**M) / IP() / UDP(sport=5000, dport=53) / (b"\x60\x05" + bytes(60)),  # the fast path keeps it
        Ether(**M) / IP() / UDP(sport=5000, dport=53) / b"\x41\x52\x11",  # AYIYA by content, too short
        Ether(**M) / IP() / UDP(sport=4789, dport=40000) / VXLAN() / Ether(**M) / IP() / UDP(),  # tunnel port as source
        Ether(**M) / IP() / UDP(sport=2123, dport=2123) / (b"\x32\x10\x00\x04" + bytes(8)),  # GTP-C: no packet inside
        Ether(src=M["src"], dst=M["dst"], type=0x8848) / (b"\x00\x01\x01\x40" + bytes(IP() / UDP())),  # MPLS mcast
        Ether(src=M["src"], dst=M["dst"], type=0x8926) / (b"\x00" * 4 + b"\x08\x00" + bytes(IP() / UDP())),
    )
]


def decoders(monkeypatch: pytest.MonkeyPatch) -> tuple[Decoder, Decoder]:
    """A decoder constructed on the reference path and one with the kernel."""
    monkeypatch.setenv("HOPSCOPE_NATIVE", "0")
    reference = Decoder("x")
    monkeypatch.setenv("HOPSCOPE_NATIVE", "1")
    native = Decoder("x")
    assert reference._kernel is None and native._kernel is not None
    return reference, native


def assert_same_raw(a: RawBlock, b: RawBlock) -> None:
    assert (a.file_offset, a.interfaces) == (b.file_offset, b.interfaces)
    end = int((a.offset + a.caplen).max()) if a.count else 0  # a mapped window may be longer than a buffer
    assert len(b.buf) >= end + PAD_BYTES and np.array_equal(a.buf[:end], b.buf[:end])
    for name in RAW_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


def assert_same_block(a: PacketBlock, b: PacketBlock) -> None:
    assert (a.count, a.tunnels, a.point_names, a.point_ifaces) == (b.count, b.tunnels, b.point_names, b.point_ifaces)
    for name in COLUMN_NAMES:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        diff = np.flatnonzero(x != y)
        assert len(diff) == 0, f"column {name} differs in rows {diff[:10].tolist()}: {x[diff[:3]]} vs {y[diff[:3]]}"


def assert_same_decoders(a: Decoder, b: Decoder) -> None:
    assert list(a.skips.items()) == list(b.skips.items())
    assert a.slow_packets == b.slow_packets
    assert a.added_rows == b.added_rows


@dataclass
class Run:
    """Everything the reader and decoder produced for one file, or the error they raised."""

    error: str
    blocks: list[tuple[RawBlock, PacketBlock]]
    stats: ReadStats
    decoder: Decoder


def read_and_decode(path: Path, chunk_bytes: int, resolve: PointResolver | None, map_file: bool = True) -> Run:
    reader = open_capture(path, chunk_bytes, map_file)
    run = Run("", [], reader.stats, Decoder(path.stem, resolve))
    try:
        for raw in reader.blocks():
            run.blocks.append((raw, run.decoder.decode(raw)))
    except CaptureError as exc:
        run.error = str(exc)
    return run


def compare_file(monkeypatch: pytest.MonkeyPatch, path: Path, chunk_bytes: int = 1 << 16,
                 resolve: PointResolver | None = None, map_file: bool = True) -> int:  # fmt: skip
    """Assert the reference and native read + decode of ``path`` agree; return the frames compared.
    ``map_file``: whether the native reader maps pcap files (the reference always reads them)."""
    monkeypatch.setenv("HOPSCOPE_NATIVE", "0")
    ref = read_and_decode(path, chunk_bytes, resolve)
    monkeypatch.setenv("HOPSCOPE_NATIVE", "1")
    nat = read_and_decode(path, chunk_bytes, resolve, map_file)
    assert ref.decoder._kernel is None and nat.decoder._kernel is not None
    assert ref.error == nat.error
    assert len(ref.blocks) == len(nat.blocks)
    for (raw_a, pb_a), (raw_b, pb_b) in zip(ref.blocks, nat.blocks, strict=True):
        assert_same_raw(raw_a, raw_b)
        assert_same_block(pb_a, pb_b)
    assert ref.stats == nat.stats
    assert_same_decoders(ref.decoder, nat.decoder)
    return sum(raw.count for raw, _ in ref.blocks)


def compare_frames(monkeypatch: pytest.MonkeyPatch, frames: list[bytes], linktype: int) -> PacketBlock:
    raw = raw_block(frames, linktype)
    ref, nat = decoders(monkeypatch)
    a, b = ref.decode(raw), nat.decode(raw)
    assert_same_block(a, b)
    assert_same_decoders(ref, nat)
    return b


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_lab_captures(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    assert compare_file(monkeypatch, path) > 50


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nanos", [False, True])
@pytest.mark.parametrize("map_file", [True, False])
def test_pcap_split_records_both_orders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endian: str,
                                        nanos: bool, map_file: bool) -> None:  # fmt: skip
    frames = [bytes(range(256)) * (1 + i % 7) for i in range(1500)]
    out = struct.pack(endian + "IHHiIII", 0xA1B23C4D if nanos else 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i, f in enumerate(frames):
        out += struct.pack(endian + "IIII", 1_700_000_000 + i, i * 997, len(f), len(f) + i % 3) + f
    path = tmp_path / "split.pcap"
    path.write_bytes(out[:-5])  # the last record is cut: truncated_tail
    assert compare_file(monkeypatch, path, map_file=map_file) == 1499


def test_pcap_records_longer_than_a_window(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Mapped windows grow like the read loop's carried chunks when a record does not fit one."""
    sizes = [60, 150_000, 60, 70_000, 1500, 300_000, *([1500] * 200), 200_000, 60]
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 1 << 20, 1)
    for i, size in enumerate(sizes):
        frame = bytes(EXTRA_FRAMES[0]) + bytes(size)
        out += struct.pack("<IIII", i, 0, len(frame), len(frame)) + frame
    path = tmp_path / "jumbo.pcap"
    path.write_bytes(out)
    assert compare_file(monkeypatch, path) == len(sizes)
    monkeypatch.setenv("HOPSCOPE_NATIVE", "1")
    writeable = [raw.buf.flags.writeable for raw in open_capture(path, 1 << 16).blocks()]
    assert False in writeable and True in writeable  # mapped windows, then the tail read into buffers


def test_pcapng_interfaces_and_points(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "x.pcapng"
    path.write_bytes(pcapng_bytes() + pcapng_bytes()[28:] * 3)  # more sections' worth of blocks
    assert compare_file(monkeypatch, path, resolve=lambda idx, name, ifindex: f"{name}:{ifindex}") == 12


@pytest.mark.parametrize("map_file", [True, False])
def test_pcapng_many_blocks_across_chunks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, map_file: bool) -> None:
    data = pcapng_bytes()
    head = 28  # the section header block, then two interface blocks
    for _ in range(2):
        head += struct.unpack_from("<I", data, head + 4)[0]
    packets = data[head:]  # a name resolution block and three packet blocks
    path = tmp_path / "many.pcapng"
    path.write_bytes(data[:head] + packets * 700 + data + packets * 300)  # a second section in the middle
    assert compare_file(monkeypatch, path, map_file=map_file) == 3 * 1001
    writeable = {raw.buf.flags.writeable for raw in open_capture(path, 1 << 16, map_file).blocks()}
    assert writeable == ({False, True} if map_file else {True})  # mapped windows, then the tail read


def _pcapng_section(endian: str, body_blocks: list[tuple[int, bytes]]) -> bytes:
    def blk(btype: int, body: bytes) -> bytes:
        body += b"\x00" * (-len(body) % 4)
        return struct.pack(endian + "II", btype, 12 + len(body)) + body + struct.pack(endian + "I", 12 + len(body))

    out = blk(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    return out + b"".join(blk(t, b) for t, b in body_blocks)


def _pcapng_blocks(endian: str, damage: str) -> list[tuple[int, bytes]]:
    """An IDB, then EPB, SPB, PB and EPB blocks 50 times, with one kind of damage."""
    frame = EXTRA_FRAMES[0]
    tsresol = b"\x86" if damage == "tsresol" else b"\x06"  # 2**6 or 10**6 units per second
    idb = struct.pack(endian + "HHI", 1, 0, 40 if damage == "spb_snaplen" else 0)
    idb += struct.pack(endian + "HH", 9, 1) + tsresol + b"\x00" * 3
    iface = 5 if damage == "undeclared_epb" else 0
    caplen = 4000 if damage == "epb_caplen" else len(frame)
    epb = struct.pack(endian + "IIIII", iface, 1, 123_456_789, caplen, len(frame)) + frame
    pb_iface = struct.pack(endian + "HH", 3 if damage == "undeclared_pb" else 0, 0)
    pb = pb_iface + struct.pack(endian + "IIII", 0, 99, len(frame), len(frame)) + frame
    spb = struct.pack(endian + "I", len(frame)) + frame
    return [(1, idb)] + [(6, epb), (3, spb), (2, pb), (6, epb[:12] if damage == "short_epb" else epb)] * 50


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize(
    "damage", ["none", "undeclared_epb", "undeclared_pb", "epb_caplen", "short_epb", "spb_snaplen", "tsresol"]
)
def test_pcapng_block_kinds_and_damage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endian: str,
                                       damage: str) -> None:  # fmt: skip
    """EPB, SPB and (obsolete) PB in both byte orders, then a section in the other byte order; each damage
    gives the same error, or the same blocks."""
    other = "<" if endian == ">" else ">"
    path = tmp_path / "kinds.pcapng"
    path.write_bytes(
        _pcapng_section(endian, _pcapng_blocks(endian, damage)) + _pcapng_section(other, _pcapng_blocks(other, "none"))
    )
    frames = compare_file(monkeypatch, path)
    # a damaged packet block is skipped, every other one kept: of the first section's 50 times EPB, SPB,
    # PB, EPB, the bad EPBs (100) or the bad PB or short EPB (50) are missing
    kept = {"undeclared_epb": 300, "undeclared_pb": 350, "epb_caplen": 300, "short_epb": 350}
    assert frames == kept.get(damage, 400)


@pytest.mark.parametrize("kind", sorted(FILES))
def test_damaged_files_same_error_or_same_blocks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str) -> None:
    data = FILES[kind]
    cases = [data[:cut] for cut in range(0, len(data), 7)]
    bad_len = bytearray(data)
    bad_len[24 + 8 if kind == "pcap" else 28 + 4 : 24 + 12 if kind == "pcap" else 28 + 8] = b"\xff\xff\xff\x7f"
    cases.append(bytes(bad_len))
    for n, case in enumerate(cases):
        path = tmp_path / f"{n}.{kind}"
        path.write_bytes(case)
        try:
            compare_file(monkeypatch, path)
        except CaptureError:  # raised when opening: the same code opens both
            continue


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(FILES)), seed=st.integers(0, 2**32 - 1), flips=st.integers(1, 40))
def test_mutated_files(monkeypatch: pytest.MonkeyPatch, kind: str, seed: int, flips: int) -> None:
    rng = np.random.default_rng(seed)
    data = bytearray(FILES[kind])
    for pos in rng.integers(0, len(data), flips).tolist():
        data[pos] = int(rng.integers(0, 256))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"f.{kind}"
        path.write_bytes(bytes(data))
        try:
            compare_file(monkeypatch, path)
        except CaptureError:
            return


@pytest.mark.parametrize("linktype", sorted(LINK_HEADERS))
def test_every_frame_kind_cut_at_every_length(monkeypatch: pytest.MonkeyPatch, linktype: int) -> None:
    frames = []
    for frame in BASE_FRAMES + EXTRA_FRAMES:
        whole = LINK_HEADERS[linktype] + frame[14:] if linktype != 1 else frame
        frames += [whole[:cut] for cut in range(len(whole) + 1)]
    block = compare_frames(monkeypatch, frames, linktype)
    if linktype != 147:
        assert block.ok.sum() > len(BASE_FRAMES)  # the whole frames decode


def test_ipv6_over_null_and_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    v6 = bytes(IPv6() / UDP(sport=5, dport=6) / b"x")
    for linktype, head in ((0, 24), (0, 0x1C000000), (108, 30), (108, 10), (0, 7)):
        compare_frames(monkeypatch, [struct.pack("<I" if linktype == 0 else ">I", head) + v6], linktype)
    compare_frames(monkeypatch, [v6, bytes(IP() / TCP())], 229)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    rate=st.sampled_from([0.002, 0.02, 0.1]),
    linktype=st.sampled_from([1, 113, 276, 101, 0, 108, 9, 50, 105, 127]),
)
def test_mutated_frames(monkeypatch: pytest.MonkeyPatch, seed: int, rate: float, linktype: int) -> None:
    """40 examples x 1,000 mutated frames: 40,000 frames through both paths."""
    rng = np.random.default_rng(seed)
    kinds = BASE_FRAMES + EXTRA_FRAMES
    frames = []
    for _ in range(1000):
        base = kinds[int(rng.integers(0, len(kinds)))]
        base = LINK_HEADERS[linktype] + base[14:] if linktype != 1 else base
        frames.append(mutate(rng, base, rate) if rng.random() < 0.9 else base)
    compare_frames(monkeypatch, frames, linktype)


def test_frame_outside_the_buffer_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = raw_block([BASE_FRAMES[0]], 1)
    raw.caplen[0] = len(raw.buf) + 1
    monkeypatch.setenv("HOPSCOPE_NATIVE", "1")
    with pytest.raises(ValueError, match="outside the buffer"):
        Decoder("x").decode(raw)


def test_kernel_rejects_arguments_outside_its_buffers() -> None:
    from hopscope.probes import _decode

    buf = np.zeros(64, np.uint8)
    i64, u32 = np.zeros(8, np.int64), np.zeros(8, np.uint32)
    with pytest.raises(ValueError, match="out of range"):
        _decode.walk_pcap(buf, 65, 0, 0, False, 1000, 1 << 20, i64, u32, u32.copy(), i64.copy())
    with pytest.raises(ValueError, match="expected 8 items"):
        _decode.walk_pcap(buf, 64, 0, 0, False, 1000, 1 << 20, i64, u32[:4], u32, i64.copy())
    starts, one = np.array([60], np.int64), np.ones(1, np.uint8)
    outs = [np.zeros(1, np.int64) for _ in range(4)] + [np.zeros(1, np.uint64)]
    with pytest.raises(ValueError, match="outside the buffer"):
        _decode.pcapng_frames(buf, starts, one * 6, starts * 0, one, np.zeros(1, np.int64), *outs)


def test_mapped_windows_are_capped_while_blocks_are_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A caller keeping every block holds every mapping (each with a file descriptor): past the cap,
    chunks are read into buffers, and the blocks stay the same."""
    monkeypatch.setattr(readers, "MAX_MAPPED_WINDOWS", 3)
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i in range(3000):
        frame = EXTRA_FRAMES[i % len(EXTRA_FRAMES)] + bytes(i % 900)
        out += struct.pack("<IIII", i, 0, len(frame), len(frame)) + frame
    path = tmp_path / "kept.pcap"
    path.write_bytes(out)
    assert compare_file(monkeypatch, path) == 3000
    kept = list(open_capture(path, 1 << 16).blocks())
    assert len(kept) > 6 and sum(not raw.buf.flags.writeable for raw in kept) == 3
