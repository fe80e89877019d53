"""The fragment reassembler: completion in any order, overlaps, limits."""

from __future__ import annotations

import pytest

from hopscope.probes.fragments import Reassembler

KEY = (0, 0, 4, 1, 2, 17, 99)
DATA = bytes(range(256)) * 8  # 2,048 bytes


def pieces(size: int) -> list[tuple[int, bool, bytes]]:
    return [(off, off + size < len(DATA), DATA[off : off + size]) for off in range(0, len(DATA), size)]


@pytest.mark.parametrize("order", ["in order", "reversed", "last first"])
def test_completes_at_the_fragment_that_fills_the_last_hole(order: str) -> None:
    parts = pieces(512)
    parts = {"in order": parts, "reversed": parts[::-1], "last first": [parts[-1], *parts[:-1]]}[order]
    r = Reassembler()
    results = [r.add(KEY, off, more, data) for off, more, data in parts]
    assert results[:-1] == [None] * (len(parts) - 1)
    assert results[-1] == DATA
    assert r.pending == 0


def test_overlaps_keep_the_first_copy_and_duplicates_do_not_complete_twice() -> None:
    r = Reassembler()
    assert r.add(KEY, 0, True, b"a" * 16) is None
    assert r.add(KEY, 8, True, b"b" * 16) is None
    assert r.add(KEY, 24, False, b"c" * 8) == b"a" * 16 + b"b" * 8 + b"c" * 8
    assert r.add(KEY, 24, False, b"c" * 8) is None  # a late duplicate starts a datagram that never completes
    assert r.pending == 1


def test_datagrams_with_other_keys_do_not_mix() -> None:
    r = Reassembler()
    other = (1, *KEY[1:])  # another capture interface
    assert r.add(KEY, 0, True, b"x" * 8) is None
    assert r.add(other, 8, False, b"y" * 8) is None
    assert r.add(KEY, 8, False, b"z" * 8) == b"x" * 8 + b"z" * 8


def test_limits_evict_the_oldest_and_oversized_fragments_are_refused() -> None:
    r = Reassembler(max_datagrams=2)
    for ident in range(3):
        assert r.add((*KEY[:-1], ident), 0, True, b"p" * 8) is None
    assert (r.pending, r.evicted) == (2, 1)
    assert r.add((*KEY[:-1], 0), 8, False, b"q" * 8) is None  # its first half was evicted
    assert r.add(KEY, 65528, False, b"r" * 16) is None
    assert r.oversized == 1
    small = Reassembler(max_bytes=100)
    small.add(KEY, 0, True, b"s" * 80)
    small.add((*KEY[:-1], 7), 0, True, b"t" * 80)
    assert (small.pending, small.evicted) == (1, 1)
