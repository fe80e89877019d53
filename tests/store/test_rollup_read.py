"""How a rollup read's histograms become flat arrays (``Hists``): from the server's rows as Python
pairs and from chDB's Arrow struct of two lists, sliced or in several chunks, alike."""

from __future__ import annotations

from itertools import pairwise

import pyarrow as pa
import pytest

from hopscope.store.rollup import Hists, RollupRows

PAIRS = [([1, 2], [7, 8]), ([3], [9]), ([], []), ([-4, 5, 6], [1, 2, 3])]


def _struct(pairs: list[tuple[list[int], list[int]]]) -> pa.StructArray:
    keys = pa.array([k for k, _ in pairs], pa.list_(pa.int32()))
    counts = pa.array([c for _, c in pairs], pa.list_(pa.uint64()))
    return pa.StructArray.from_arrays([keys, counts], names=["1", "2"])


def _entries(h: Hists) -> list[tuple[list[int], list[int]]]:
    b = h.bounds.tolist()
    return [(h.keys[x:y].tolist(), h.counts[x:y].tolist()) for x, y in pairwise(b)]


@pytest.mark.parametrize("cut", ["whole", "sliced", "chunks"])
def test_arrow_histograms_read_as_the_pairs_are(cut: str) -> None:
    struct = _struct(PAIRS)
    column = {"whole": struct, "sliced": struct.slice(1), "chunks": pa.chunked_array([struct[:1], struct[1:]])}[cut]
    want = PAIRS[1:] if cut == "sliced" else PAIRS
    assert _entries(Hists.from_arrow(column)) == _entries(Hists.from_pairs(want)) == want
    assert _entries(Hists.from_pairs([{"1": k, "2": c} for k, c in want])) == want  # chDB's structs as dicts


def test_entries_of_some_rows_in_their_order() -> None:
    keys, counts, at = Hists.from_pairs(PAIRS).take([3, 0, 2])
    assert (keys.tolist(), counts.tolist(), at.tolist()) == ([-4, 5, 6, 1, 2], [1, 2, 3, 7, 8], [0, 0, 0, 1, 1])


def test_keys_and_counts_of_other_lengths_are_an_error() -> None:
    bad = pa.StructArray.from_arrays(
        [pa.array([[1, 2]], pa.list_(pa.int32())), pa.array([[7]], pa.list_(pa.uint64()))], names=["1", "2"]
    )
    with pytest.raises(ValueError, match="different lengths"):
        Hists.from_arrow(bad)


def test_rows_of_no_answer() -> None:
    rows = RollupRows.from_columns(None, ("text", "int", "float", "hist"))
    assert len(rows) == 0 and rows.rows() == []
    assert len(rows.columns[3]) == 0
