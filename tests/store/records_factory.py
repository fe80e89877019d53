"""Records for the store tests with a distinct, type-exact value in every field."""

from __future__ import annotations

from typing import Any

from hopscope.records import ColumnType, Record
from hopscope.store.schema import table_spec

#: 2023-11-14T22:13:20Z in ns: the time column of row i is BASE_NS + i.
BASE_NS = 1_700_000_000_000_000_000

_MAX: dict[ColumnType, int] = {
    ColumnType.U8: 2**8 - 1,
    ColumnType.U16: 2**16 - 1,
    ColumnType.U32: 2**32 - 1,
    ColumnType.U64: 2**64 - 1,
    ColumnType.I64: 2**63 - 1,
}


def field_value(ctype: ColumnType, column_index: int, row: int) -> Any:
    """Row 0: small distinct values; row 1: the type's extremes and awkward text."""
    if ctype is ColumnType.STR:
        return f"c{column_index}-r{row}" if row == 0 else f"c{column_index} 'q' \\ \"ü\" 日本\t{{p0:String}} %s"
    if ctype is ColumnType.F32:
        return 0.25 * (column_index + 1) if row == 0 else -1.5e3
    if ctype is ColumnType.I64:
        return -(column_index + 1) if row == 0 else -(2**63)
    if row == 0:
        return (column_index * 7 + 1) % _MAX[ctype]
    return _MAX[ctype] - column_index


def make_record(record_type: type[Record], row: int, **overrides: Any) -> Any:
    """A record of ``record_type`` whose time column is BASE_NS + row."""
    spec = table_spec(record_type.TABLE)
    values = {c.name: field_value(c.type, i, row) for i, c in enumerate(record_type.columns())}
    values[spec.time_column] = BASE_NS + row
    values.update(overrides)
    return record_type(**values)
