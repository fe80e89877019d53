"""The read queries both stores run: one SQL text with typed placeholders, values always bound.

Queries are written with ClickHouse's ``{name:Type}`` placeholders (chDB binds them in the engine);
``to_pyformat`` turns them into clickhouse-driver's ``%(name)s`` for the 18.16 server, which has no
server-side parameters (the driver escapes each value as a literal of its Python type). Values are
checked against the column's type before they are bound: text columns take ``str``, integer columns
take ``int`` within the type's range. Table and column names come from the record schema only.

Filters are a mapping ``{"column": value}`` (equality), ``{"column": [v1, v2]}`` (IN), or the same
keys with an operator suffix: ``column__ne``, ``column__gt``, ``column__gte``, ``column__lt``,
``column__lte``; on text columns also ``column__contains`` (substring) and ``column__items`` (the value's
comma-separated items appear one after another in the column's comma-separated list: ``points``).
``a|b`` as the column matches when either column does (``orig_h|resp_h``). On traces, ``spans.column``
matches traces with at least one span for which the condition holds (a hop kind, an address seen at any
hop). A key may end in ``#tag`` (ignored) so one column can carry several conditions. Bad filters raise
``ConfigError`` when the query is built, before any I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hopscope.errors import ConfigError
from hopscope.records import Column, ColumnType, Record
from hopscope.store.schema import EVENT_TIME, TableSpec, quote_identifier

FilterValue = int | str | Sequence[int] | Sequence[str]
Filters = Mapping[str, FilterValue]
ParamValue = int | str

#: Filter operator suffix -> SQL operator (the allow-list).
OPERATORS: Mapping[str, str] = {
    "eq": "=", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "contains": "contains", "items": "items",
}  # fmt: skip
#: Tables whose rows a traces filter can look into (``spans.hop_kind``): table -> the column joining them.
JOINED: Mapping[str, Mapping[str, str]] = {"traces": {"spans": "trace_id"}}
#: Orders ``select_range`` knows: name -> (column, descending) pairs, then the table's own order.
ORDERS: Mapping[str, tuple[tuple[str, bool], ...]] = {
    "time": (),
    "time_desc": (("", True),),  # "": the table's time column
    "slowest": (("duration_us", True),),
}
MAX_OFFSET = 10_000_000

MAX_LIMIT = 1_000_000
MAX_IN_VALUES = 1000

_INT_RANGE: Mapping[ColumnType, tuple[int, int]] = {
    ColumnType.U8: (0, 2**8 - 1),
    ColumnType.U16: (0, 2**16 - 1),
    ColumnType.U32: (0, 2**32 - 1),
    ColumnType.U64: (0, 2**64 - 1),
    ColumnType.I64: (-(2**63), 2**63 - 1),
}

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):[A-Za-z0-9_()]+\}")


@dataclass(frozen=True, slots=True)
class BoundQuery:
    """A SELECT with ``{name:Type}`` placeholders, its values, and the record type of its rows."""

    sql: str
    params: dict[str, ParamValue]
    record_type: type[Record] | None = None  # None: the rows are not records (counts, ...)


def to_pyformat(sql: str) -> str:
    """``{name:Type}`` -> ``%(name)s`` for clickhouse-driver's client-side binding (``%`` doubled)."""
    return _PLACEHOLDER.sub(r"%(\1)s", sql.replace("%", "%%"))


def check_value(col: Column, value: object) -> ParamValue:
    """The value if it fits the column's type, else ``ConfigError`` naming column and value."""
    if col.type is ColumnType.STR:
        if isinstance(value, str):
            return value
    elif col.type in _INT_RANGE:
        low, high = _INT_RANGE[col.type]
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
    else:
        raise ConfigError(f"column {col.name} ({col.type.clickhouse}) cannot be filtered on")
    raise ConfigError(f"filter value {value!r} does not fit column {col.name} ({col.type.clickhouse})")


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ConfigError(f"limit must be an integer in 1..{MAX_LIMIT}, got {limit!r}")
    return limit


class _Params:
    """Collects bound values under generated names p0, p1, ..."""

    def __init__(self) -> None:
        self.values: dict[str, ParamValue] = {}

    def bind(self, col: Column, value: object) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = check_value(col, value)
        return f"{{{name}:{col.type.clickhouse}}}"


def _column_condition(spec: TableSpec, name: str, op: str, value: object, params: _Params) -> str:
    sql_op = OPERATORS[op]
    col = spec.column(name)
    ident = quote_identifier(col.name)
    if sql_op in ("contains", "items"):
        if col.type is not ColumnType.STR or not isinstance(value, str):
            raise ConfigError(f"filter {name}__{op} needs a text column and a text value")
        if sql_op == "contains":
            return f"position({ident}, {params.bind(col, value)}) > 0"
        return f"position(concat(',', {ident}, ','), concat(',', {params.bind(col, value)}, ',')) > 0"
    if isinstance(value, list | tuple | set | frozenset):
        values = list(value)
        if sql_op not in ("=", "!=") or not 1 <= len(values) <= MAX_IN_VALUES:
            raise ConfigError(f"filter {name}__{op}: a list needs = or != and 1..{MAX_IN_VALUES} values")
        placeholders = ", ".join(params.bind(col, v) for v in values)
        return f"{ident} {'IN' if sql_op == '=' else 'NOT IN'} ({placeholders})"
    return f"{ident} {sql_op} {params.bind(col, value)}"


def _filter_condition(
    spec: TableSpec, key: str, value: object, params: _Params, database: str = "", since_ns: int | None = None
) -> str:
    key = key.partition("#")[0]
    names, _, op = key.partition("__")
    op = op or "eq"
    if op not in OPERATORS:
        raise ConfigError(f"unknown filter operator {op!r} in {key!r}; operators: {', '.join(OPERATORS)}")
    table, dot, names = names.rpartition(".")
    if dot:
        from hopscope.store.schema import table_spec

        join = JOINED.get(spec.name, {}).get(table)
        if join is None or not database:
            raise ConfigError(f"filter {key!r}: {spec.name} rows cannot be filtered on {table!r}")
        inner = table_spec(table)
        conditions = [_filter_condition(inner, f"{names}__{op}", value, params)]
        if since_ns is not None:  # a trace's spans start no earlier than the trace
            time_col = inner.column(inner.time_column)
            conditions.append(f"{quote_identifier(time_col.name)} >= {params.bind(time_col, since_ns)}")
        ident = quote_identifier(join)
        return (
            f"{ident} IN (SELECT {ident} FROM {quote_identifier(database)}.{quote_identifier(inner.name)}"
            f" WHERE {' AND '.join(conditions)})"
        )
    alternatives = [_column_condition(spec, name, op, value, params) for name in names.split("|")]
    return alternatives[0] if len(alternatives) == 1 else f"({' OR '.join(alternatives)})"


def time_range_conditions(spec: TableSpec, start_ns: int, end_ns: int, params: _Params) -> list[str]:
    """``start_ns <= time < end_ns`` on the table's time column, plus the same range on event_time
    (the partition key), so the server skips whole partitions."""
    col = spec.column(spec.time_column)
    start, end = params.bind(col, start_ns), params.bind(col, end_ns)
    ident, event_time = quote_identifier(col.name), quote_identifier(EVENT_TIME)
    return [
        f"{ident} >= {start}",
        f"{ident} < {end}",
        f"{event_time} >= toDateTime(intDiv({start}, 1000000000))",
        # DateTime ends in 2106: clamp, or a far end (2**63 - 1 ns) wraps around and matches nothing.
        f"{event_time} <= toDateTime(least(intDiv({end}, 1000000000), 4294967295))",
    ]


def select_columns(spec: TableSpec) -> str:
    return ", ".join(quote_identifier(c.name) for c in spec.columns())


def select_range(
    database: str,
    spec: TableSpec,
    start_ns: int,
    end_ns: int,
    filters: Filters | None,
    limit: int,
    order: str = "time",
    offset: int = 0,
) -> BoundQuery:
    """Rows whose time column is in [start_ns, end_ns), deduplicated (FINAL), oldest first (or in one
    of ``ORDERS``), ``offset`` rows skipped."""
    params = _Params()
    conditions = time_range_conditions(spec, start_ns, end_ns, params)
    conditions += [_filter_condition(spec, k, v, params, database, start_ns) for k, v in (filters or {}).items()]
    if order not in ORDERS:
        raise ConfigError(f"unknown order {order!r}; orders: {', '.join(ORDERS)}")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise ConfigError(f"offset must be an integer in 0..{MAX_OFFSET}, got {offset!r}")
    first = [(spec.column(c or spec.time_column).name, desc) for c, desc in ORDERS[order]]
    rest = [(c, order == "time_desc") for c in (spec.time_column, *spec.order_by) if c and c not in dict(first)]
    terms = ", ".join(f"{quote_identifier(c)}{' DESC' if d else ''}" for c, d in (*first, *rest))
    sql = (
        f"SELECT {select_columns(spec)} FROM {quote_identifier(database)}.{quote_identifier(spec.name)} FINAL"
        f" WHERE {' AND '.join(conditions)} ORDER BY {terms}"
        f" LIMIT {f'{offset}, ' if offset else ''}{check_limit(limit)}"
    )
    return BoundQuery(sql, params.values, spec.record_type)


def select_where(database: str, spec: TableSpec, filters: Filters, order_by: Sequence[str]) -> BoundQuery:
    """Rows matching the filters (no time range), deduplicated (FINAL), in the given column order."""
    if not filters:
        raise ConfigError(f"select on {spec.name} without a time range needs at least one filter")
    params = _Params()
    conditions = [_filter_condition(spec, k, v, params) for k, v in filters.items()]
    order = ", ".join(quote_identifier(spec.column(c).name) for c in order_by)
    sql = (
        f"SELECT {select_columns(spec)} FROM {quote_identifier(database)}.{quote_identifier(spec.name)} FINAL"
        f" WHERE {' AND '.join(conditions)} ORDER BY {order}"
    )
    return BoundQuery(sql, params.values, spec.record_type)


def select_latest(database: str, spec: TableSpec, filters: Filters, order_by: Sequence[str]) -> BoundQuery:
    """Rows matching the filters, the newest version of each dedup key, in the given column order.

    The many-keys twin of ``select_where``: ``FINAL`` merges every part of the partitions it touches,
    while ``ORDER BY version DESC LIMIT 1 BY <dedup key>`` only sorts the rows that match. The filters
    go in ``PREWHERE`` (see ``select_lookup``). Tables without a version column keep ``FINAL`` (their
    last insert wins, which LIMIT BY cannot see).
    """
    if spec.version_column is None:
        return select_where(database, spec, filters, order_by)
    if not filters:
        raise ConfigError(f"select on {spec.name} without a time range needs at least one filter")
    params = _Params()
    conditions = [_filter_condition(spec, k, v, params) for k, v in filters.items()]
    key = ", ".join(quote_identifier(c) for c in spec.order_by)
    order = ", ".join(quote_identifier(spec.column(c).name) for c in order_by)
    inner = (
        f"SELECT {select_columns(spec)} FROM {quote_identifier(database)}.{quote_identifier(spec.name)}"
        f" PREWHERE {' AND '.join(conditions)}"
        f" ORDER BY {quote_identifier(spec.version_column)} DESC LIMIT 1 BY {key}"
    )
    return BoundQuery(f"SELECT {select_columns(spec)} FROM ({inner}) ORDER BY {order}", params.values, spec.record_type)


def select_lookup(database: str, spec: TableSpec, filters: Filters) -> BoundQuery:
    """Every stored version of the few rows matching the filters (one trace's), for ``newest_rows``.

    A point lookup touches one granule per part; what costs is per part and column read and per step
    of the query, so this is the plainest read there is (bench/trace_lookup.py; figures in
    docs/DESIGN.md):
    - ``PREWHERE``: a part reads its candidate granule of the filtered columns first, the others only
      where a row matched (18.16 does not move a condition on a sort-key column there by itself, and
      read every column of every part's candidate granule: twice the server's CPU per lookup);
    - ``max_threads = 1``: a reader per core for a granule per part costs more than it saves;
    - no ``LIMIT 1 BY`` in a subquery and no ``ORDER BY``: a few rows are deduplicated and ordered
      faster in Python than by two more sorting steps over every column (a third of chDB's CPU).
    """
    if spec.version_column is None:
        raise ConfigError(f"table {spec.name} has no version column: its lookups need FINAL")
    if not filters:
        raise ConfigError(f"a lookup on {spec.name} needs at least one filter")
    params = _Params()
    conditions = [_filter_condition(spec, k, v, params) for k, v in filters.items()]
    sql = (
        f"SELECT {select_columns(spec)} FROM {quote_identifier(database)}.{quote_identifier(spec.name)}"
        f" PREWHERE {' AND '.join(conditions)} SETTINGS max_threads = 1"
    )
    return BoundQuery(sql, params.values, spec.record_type)


def newest_rows(spec: TableSpec, rows: Sequence[Sequence[Any]], order_by: Sequence[str]) -> list[Sequence[Any]]:
    """Of rows in schema column order (``select_lookup``'s), the one with the highest version per dedup
    key (the first read among equal versions), sorted by the ``order_by`` columns."""
    if spec.version_column is None:
        raise ConfigError(f"table {spec.name} has no version column: its rows cannot be deduplicated here")
    names = [c.name for c in spec.columns()]
    key_at = [names.index(c) for c in spec.order_by]
    version_at = names.index(spec.version_column)
    order_at = [names.index(spec.column(c).name) for c in order_by]
    newest: dict[tuple[Any, ...], Sequence[Any]] = {}
    for row in rows:
        key = tuple(row[i] for i in key_at)
        held = newest.get(key)
        if held is None or row[version_at] > held[version_at]:
            newest[key] = row
    return sorted(newest.values(), key=lambda row: tuple(row[i] for i in order_at))


def count_rows(database: str, spec: TableSpec, final: bool = True) -> BoundQuery:
    """Number of rows (after dedup when ``final``)."""
    table = f"{quote_identifier(database)}.{quote_identifier(spec.name)}"
    return BoundQuery(f"SELECT count() FROM {table}{' FINAL' if final else ''}", {})


def rows_to_records(record_type: type[Record], rows: Sequence[Sequence[Any]]) -> list[Any]:
    """Tuples in schema column order -> record instances."""
    return [record_type(*row) for row in rows]
