"""The TPACKET_V3 block walk: the C kernel ``_ring.gather`` against its reference twin ``gather_reference``.

Rings are built here byte by byte the way the kernel lays them out (block descriptor, then frames each
with a tpacket3_hdr, a sockaddr_ll and the frame at tp_mac), from real scapy frames, for an Ethernet
socket and a cooked one (``iface="any"``: SLL2 headers written in front of the network header). Both
walks must give identical RawBlock columns and buffers, also on rings hypothesis mutates at random
(hostile header fields must stop a block's walk, never read or write outside it). The walk on a live
ring is compared in tests/probes/test_live.py.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from hopscope.probes import kernels
from hopscope.probes.live import gather_reference
from hopscope.probes.readers import PAD_BYTES

_ring = kernels.load("_ring")
pytestmark = pytest.mark.skipif(_ring is None, reason="the _ring kernel is not built (setup.py build_ext)")

BLOCK = 4096
MAC_RAW, NET_COOKED = 82, 96  # where the kernel puts the frame (SOCK_RAW) and network header (SOCK_DGRAM)
FRAMES = [
    bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000 + i, dport=80, flags="S")) for i in range(5)
] + [
    bytes(Ether() / IP(src="10.0.0.3", dst="10.0.0.53") / UDP(sport=5353, dport=53) / DNS(qd=DNSQR(qname="a.b"))),
    bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=80, flags="PA") / (b"x" * 700)),
]


def build_ring(blocks: list[list[bytes]], cooked: bool, block_bytes: int = BLOCK) -> bytearray:
    """A TPACKET_V3 ring holding ``blocks`` (frames per block), laid out as the kernel does."""
    ring = bytearray(block_bytes * len(blocks))
    for b, frames in enumerate(blocks):
        base, pos = b * block_bytes, 48
        struct.pack_into("=6I", ring, base, 1, 0, 1, len(frames), pos, 0)
        for i, frame in enumerate(frames):
            data = frame[14:] if cooked else frame
            start = NET_COOKED if cooked else MAC_RAW
            step = (start + len(data) + 15) & ~15
            nxt = 0 if i == len(frames) - 1 else step
            mac, net = (NET_COOKED, NET_COOKED) if cooked else (MAC_RAW, MAC_RAW + 14)
            struct.pack_into("=6I2H", ring, base + pos, nxt, 1_700_000_000 + i, 1000 * i + b, len(data),
                             len(data) + 4, 1, mac, net)  # fmt: skip
            # sockaddr_ll: family, protocol (big-endian), ifindex, hatype, pkttype, halen, address
            struct.pack_into("=H2sIHBB8s", ring, base + pos + 48, 17, frame[12:14], 3 + i, 1, 0, 6, frame[6:12])
            ring[base + pos + start : base + pos + start + len(data)] = data
            pos += step
        struct.pack_into("=I", ring, base + 20, pos)
    return ring


Walk = Callable[..., tuple[int, int]]


def walk(
    fn: Walk, ring: bytearray, ready: list[int], cooked: bool, block_bytes: int = BLOCK, in_place: bool = False
) -> tuple:
    """Run one walk as PacketRing._gather does, on a copy of ``ring``; returns (count, bad, buf, columns),
    ``buf`` being the output buffer or, in place, the ring after the walk."""
    ring = bytearray(ring)
    words = memoryview(bytes(ring)).cast("I")
    total = sum(min(words[i * block_bytes // 4 + 3], block_bytes // 4) for i in ready)
    buf = np.full(len(ready) * block_bytes + PAD_BYTES, 0xAA, np.uint8)  # the walk must write every byte
    cols = [np.zeros(total, np.int64), np.zeros(total, np.int64), np.zeros(total, np.uint32)]
    cols.append(np.zeros(total, np.uint32))
    count, bad = fn(ring, block_bytes, ready, None if in_place else buf, *cols, cooked)
    return count, bad, np.frombuffer(ring, np.uint8).copy() if in_place else buf, [c[:count] for c in cols]


def assert_same(ring: bytearray, ready: list[int], cooked: bool, in_place: bool = False) -> tuple:
    assert _ring is not None
    native = walk(_ring.gather, ring, ready, cooked, in_place=in_place)
    reference = walk(gather_reference, ring, ready, cooked, in_place=in_place)
    assert native[:2] == reference[:2]
    assert np.array_equal(native[2], reference[2])
    for a, b in zip(native[3], reference[3], strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    return native


@pytest.mark.parametrize("cooked", [False, True])
def test_walk_gives_every_frame_with_its_columns(cooked: bool) -> None:
    blocks = [FRAMES[:4], FRAMES[4:], FRAMES[::-1]]
    ring = build_ring(blocks, cooked)
    count, bad, buf, (offset, ts_ns, caplen, origlen) = assert_same(ring, [2, 0, 1], cooked)
    expected = blocks[2] + blocks[0] + blocks[1]
    assert (count, bad) == (len(expected), 0)
    sll2 = 20 if cooked else 0
    for i, frame in enumerate(expected):
        got = buf[offset[i] : offset[i] + caplen[i]].tobytes()
        if cooked:  # SLL2: protocol, reserved, ifindex (big-endian), hatype, pkttype, halen, address
            assert got[20:] == frame[14:] and got[:2] == frame[12:14] and got[2:4] == b"\0\0"
            assert got[12:18] == frame[6:12] and got[10:12] == b"\x00\x06"
        else:
            assert got == frame
        assert origlen[i] == caplen[i] + 4 and caplen[i] == len(frame) - (14 if cooked else 0) + sll2
    assert ts_ns[0] == 1_700_000_000 * 10**9 + 2 and list(buf[-PAD_BYTES:]) == [0] * PAD_BYTES


@pytest.mark.parametrize("cooked", [False, True])
def test_walk_in_place_gives_the_frames_where_the_copy_has_them(cooked: bool) -> None:
    """out=None: no copy, offsets count from the first block; the same frames as the copying walk."""
    blocks = [FRAMES[:4], FRAMES[4:], FRAMES[::-1]]
    ring = build_ring(blocks, cooked)
    count, bad, after, cols = assert_same(ring, [1, 2], cooked, in_place=True)
    copied = walk(gather_reference, ring, [1, 2], cooked)
    assert (count, bad) == (len(blocks[1]) + len(blocks[2]), 0) and (count, bad) == copied[:2]
    for got, want in zip(cols, copied[3], strict=True):
        assert np.array_equal(got, want)
    frames_at = after[BLOCK:]  # the ring from block 1 on
    for i in range(count):
        start, length = int(cols[0][i]), int(cols[2][i])
        assert frames_at[start : start + length].tobytes() == copied[2][start : start + length].tobytes()


@pytest.mark.parametrize("cooked", [False, True])
@pytest.mark.parametrize(
    ("where", "value", "frames"),
    [
        (48 + 0, 2, 1),  # tp_next_offset not a multiple of 4: the frames after it are dropped
        (48 + 0, 0, 1),  # tp_next_offset 0 before the last frame
        (48 + 0, 1 << 30, 1),  # next frame far outside the block
        (48 + 12, 1 << 31, 0),  # snaplen past the block's end
        (48 + 24, 0, 0),  # tp_mac / tp_net inside the frame header
        (12, 10**9, 4),  # num_pkts absurd: the chain ends at the block's end
        (16, BLOCK - 8, 0),  # first frame too close to the block's end for its header
        (16, 4, 0),  # first frame inside the block descriptor
    ],
)
def test_hostile_headers_stop_the_block_walk(cooked: bool, where: int, value: int, frames: int) -> None:
    ring = build_ring([FRAMES[:4], FRAMES[4:]], cooked)
    size = "=H" if where in (48 + 24,) else "=I"
    struct.pack_into(size, ring, where, value)
    if where == 48 + 24:
        struct.pack_into("=H", ring, where + 2, value)
    count, bad, *_ = assert_same(ring, [0, 1], cooked)
    assert (count, bad) == assert_same(ring, [0, 1], cooked, in_place=True)[:2]
    assert bad == 1
    if where == 12 and value == 10**9:  # the four real frames, then garbage headers fail the checks
        assert count >= frames + len(FRAMES[4:])
    else:
        assert count == frames + len(FRAMES[4:])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cooked=st.booleans(),
    smashes=st.lists(st.tuples(st.integers(0, 2 * BLOCK - 1), st.integers(0, 255)), min_size=1, max_size=12),
    words=st.lists(st.tuples(st.integers(0, 2 * BLOCK // 4 - 1), st.integers(0, 2**32 - 1)), max_size=4),
    in_place=st.booleans(),
)
def test_mutated_rings_give_the_same_result_both_ways(
    cooked: bool, smashes: list[tuple[int, int]], words: list[tuple[int, int]], in_place: bool
) -> None:
    ring = build_ring([FRAMES[:4], FRAMES[3:]], cooked)
    for at, byte in smashes:
        ring[at] = byte
    for at, word in words:
        struct.pack_into("=I", ring, 4 * at, word)
    assert_same(ring, [0, 1] if in_place else [1, 0], cooked, in_place)


def test_bad_arguments_raise() -> None:
    assert _ring is not None
    ring = build_ring([FRAMES], False)
    cols = [np.zeros(8, np.int64), np.zeros(8, np.int64), np.zeros(8, np.uint32), np.zeros(8, np.uint32)]
    with pytest.raises(IndexError):
        _ring.gather(ring, BLOCK, [1], np.zeros(BLOCK, np.uint8), *cols, False)
    with pytest.raises(ValueError, match="too small"):
        _ring.gather(ring, BLOCK, [0], np.zeros(BLOCK - 1, np.uint8), *cols, False)
    with pytest.raises(ValueError, match="whole number"):
        _ring.gather(ring, BLOCK - 4, [0], np.zeros(BLOCK, np.uint8), *cols, False)
    with pytest.raises(BufferError):
        _ring.gather(ring, BLOCK, [0], bytes(BLOCK), *cols, False)  # read-only output
    with pytest.raises(ValueError, match="consecutive"):
        _ring.gather(build_ring([FRAMES, FRAMES, FRAMES], False), BLOCK, [0, 2], None, *cols, False)
