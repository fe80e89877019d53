"""Records and batches: column introspection, conversions, slicing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hopscope.records import RECORD_TYPES, Batch, ColumnType, FlowRecord, Record, RequestRecord


def sample(record_type: type[Record], i: int) -> Record:
    """A record whose every field holds a distinct, non-default value (edge values included)."""
    values = {}
    for n, col in enumerate(record_type.columns()):
        if col.type.is_text:
            values[col.name] = f"{col.name}-{i}-é\u2603"
        elif col.type is ColumnType.F32:
            values[col.name] = 0.5 + i
        else:
            top = {"u1": 2**8, "<u2": 2**16, "<u4": 2**32, "<u8": 2**64, "<i8": 2**63}[col.type.dtype]
            values[col.name] = (top - 1 - n - i) if col.type is not ColumnType.I64 else -(n + i)
    return record_type(**values)


@pytest.mark.parametrize("record_type", RECORD_TYPES)
def test_every_field_documented_and_typed(record_type: type[Record]) -> None:
    for f in dataclasses.fields(record_type):  # type: ignore[arg-type]
        assert isinstance(f.metadata["type"], ColumnType), f.name
        assert len(f.metadata["doc"]) > 5, f.name


@pytest.mark.parametrize("record_type", RECORD_TYPES)
def test_batch_round_trip(record_type: type[Record]) -> None:
    records = [sample(record_type, i) for i in range(5)]
    batch = Batch.from_records(record_type, records)
    assert list(batch.records()) == records
    assert list(batch.slice(1, 3).records()) == records[1:3]
    assert list(batch.take(np.array([4, 0])).records()) == [records[4], records[0]]
    assert list(Batch.concat([batch, batch.slice(0, 1)]).records()) == [*records, records[0]]


def test_missing_columns_get_defaults() -> None:
    batch = Batch(FlowRecord, {"orig_h": ["10.0.0.1"], "orig_p": np.array([80])}, 1)
    (record,) = batch.records()
    assert record == FlowRecord(orig_h="10.0.0.1", orig_p=80)


def test_wrong_length_column_is_refused() -> None:
    with pytest.raises(ValueError, match="orig_p has 2 values"):
        Batch(RequestRecord, {"orig_p": np.array([1, 2])}, 1)
