"""StreamReassembler alone: stream bytes come out in order whatever the segments did."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hopscope.probes.l7.reassembly import DATA, FIN, GAP, SEQ_MOD, Event, StreamReassembler


def _stream(events: list[Event], start: int = 0) -> tuple[bytes, list[tuple[int, int]], bool]:
    """The delivered bytes, gaps and FIN of ``events``, checking that they are contiguous from ``start``."""
    data, gaps, fin = bytearray(), [], False
    expected = start
    for kind, offset, _, value in events:
        assert offset == expected or kind == FIN
        if kind == DATA:
            assert isinstance(value, bytes)
            data += value
            expected += len(value)
        elif kind == GAP:
            assert isinstance(value, int)
            gaps.append((offset, value))
            expected += value
        elif kind == FIN:
            fin = True
    return bytes(data), gaps, fin


@pytest.mark.parametrize("isn", [0, 1000, SEQ_MOD - 1, SEQ_MOD - 3000])
def test_in_order_across_the_wrap(isn: int) -> None:
    r = StreamReassembler()
    r.syn(isn)
    events = []
    for i in range(10):
        events += r.segment(i, (isn + 1 + i * 500) % SEQ_MOD, bytes([i]) * 500)
    events += r.segment(10, (isn + 1 + 5000) % SEQ_MOD, b"", fin=True)
    data, gaps, fin = _stream(events)
    assert data == b"".join(bytes([i]) * 500 for i in range(10)) and gaps == [] and fin
    assert r.seq_of(0) == (isn + 1) % SEQ_MOD and r.seq_of(5000) == (isn + 5001) % SEQ_MOD


@pytest.mark.parametrize(
    ("segments", "retrans", "ooo"),
    [
        ([(0, b"abc"), (0, b"abc")], [(0, 3)], 0),  # exact duplicate
        ([(0, b"abc"), (1, b"bcde")], [(1, 3)], 0),  # overlap: "de" is new
        ([(3, b"def"), (0, b"abc")], [], 1),  # out of order
        ([(3, b"def"), (3, b"def"), (0, b"abc")], [(3, 6)], 1),  # duplicate while waiting
    ],
)
def test_retransmissions_and_out_of_order_are_recorded(
    segments: list[tuple[int, bytes]], retrans: list[tuple[int, int]], ooo: int
) -> None:
    r = StreamReassembler()
    r.syn(99)
    events = [e for off, data in segments for e in r.segment(0, 100 + off, data)]
    assert _stream(events)[0] == b"abcdef"[: max(off + len(d) for off, d in segments)]
    assert (r.retrans_ranges, r.ooo_segments) == (retrans, ooo)


def test_hole_given_up_when_acked_or_flushed() -> None:
    r = StreamReassembler()
    r.syn(0)
    assert r.segment(0, 1, b"aaaa") and r.segment(1, 9, b"cccc") == []
    assert r.acked(8, 2) == []  # the peer has not passed the hole's end: keep waiting
    data, gaps, _ = _stream(r.acked(13, 3), start=4)
    assert (data, gaps, r.gap_bytes) == (b"cccc", [(4, 4)], 4)
    r2 = StreamReassembler()
    r2.segment(0, 500, b"xx")  # mid-stream start: base is the first seq seen
    r2.segment(1, 510, b"yy", fin=True)
    assert _stream(r2.flush(2), start=2) == (b"yy", [(2, 8)], True)


def test_pending_bound_gives_up_the_oldest_hole() -> None:
    r = StreamReassembler(max_pending_segments=3)
    r.syn(0)
    events = [e for i in range(1, 6) for e in r.segment(i, 1 + 10 * i, b"z" * 10)]
    data, gaps, _ = _stream(events)
    assert gaps == [(0, 10)] and data == b"z" * 50  # 4 waiting > 3: the hole goes, then all flows


@settings(max_examples=200, deadline=None)
@given(
    payload=st.binary(min_size=1, max_size=2000),
    cuts=st.lists(st.integers(1, 1999), max_size=20),
    isn=st.integers(0, SEQ_MOD - 1),
    rnd=st.randoms(use_true_random=False),
)
def test_any_order_and_overlapping_copies_give_the_stream_back(
    payload: bytes, cuts: list[int], isn: int, rnd: random.Random
) -> None:
    bounds = sorted({0, len(payload), *(c for c in cuts if c < len(payload))})
    segments = [(lo, payload[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
    copies = segments + [s for s in segments if rnd.random() < 0.3]
    rnd.shuffle(copies)
    r = StreamReassembler()
    r.syn(isn)
    events = [e for i, (off, data) in enumerate(copies) for e in r.segment(i, (isn + 1 + off) % SEQ_MOD, data)]
    data, gaps, _ = _stream(events + r.flush(len(copies)))
    assert (data, gaps) == (payload, [])
