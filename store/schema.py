"""Table layout and DDL, generated from the record types in ``hopscope.records``.

Every record field becomes a column of the ClickHouse type its ``Column`` metadata names; nothing
here repeats a field list. What this module adds per table is the storage layout (``TableSpec``):
the time column that drives partitioning and range filters, the sort key, the engine's version
column, and which columns get dictionary encoding or a skip index on servers that have them.

Every table gets ``event_time DateTime('UTC') MATERIALIZED toDateTime(intDiv(<time>_ns, 1e9))``, so
old and new servers partition the same rows the same way (``PARTITION BY toYYYYMMDD(event_time)``)
while the record keeps its UInt64 nanoseconds. All tables are ReplacingMergeTree: probes and
correlators deliver at least once, and rows with the same sort key (deterministic ids) collapse to
the one with the highest version; readers use ``FINAL``. Rows only collapse within a partition,
i.e. a replayed row must carry the same time, which deterministic re-processing guarantees.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from hopscope.errors import ConfigError
from hopscope.records import Column, ColumnType, FlowRecord, PacketIndex, Record, RequestRecord, Span, Trace
from hopscope.store.features import ServerFeatures

#: The partitioning column every table gets (not a record field: computed by the server on insert).
EVENT_TIME = "event_time"

#: Text columns with few distinct values: LowCardinality(String) where the server has it.
LOW_CARDINALITY: frozenset[str] = frozenset(
    {"point", "host", "iface", "hop_kind", "l7_proto", "conn_state", "close_type", "method", "side",
     "kind", "link_reason", "service"}
)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def quote_identifier(name: str) -> str:
    """Backquote a database, table or column name after checking it is a plain identifier."""
    if not _IDENTIFIER.fullmatch(name):
        raise ConfigError(f"invalid identifier {name!r} (letters, digits and _ only)")
    return f"`{name}`"


@dataclass(frozen=True, slots=True)
class TableSpec:
    """Storage layout of one record type's table."""

    record_type: type[Record]
    time_column: str  # UInt64 ns column: event_time is derived from it, time ranges filter on it
    order_by: tuple[str, ...]  # sort key = dedup key of ReplacingMergeTree
    version_column: str | None  # ReplacingMergeTree(version): the highest wins; None: the last insert
    bloom_columns: tuple[str, ...] = ()  # bloom_filter skip indexes (join keys looked up by value)
    minmax_columns: tuple[str, ...] = ()  # minmax skip indexes (range filters not on the sort key)
    #: Rows per primary-key mark; None: the server's default (8192). Smaller for tables read by key
    #: (a trace lookup decompresses one granule of each column per part holding the trace).
    index_granularity: int | None = None

    @property
    def name(self) -> str:
        return self.record_type.TABLE

    def columns(self) -> tuple[Column, ...]:
        return self.record_type.columns()

    def column(self, name: str) -> Column:
        for col in self.columns():
            if col.name == name:
                return col
        raise ConfigError(f"table {self.name} has no column {name!r}")


def rollup_specs() -> tuple[TableSpec, ...]:
    """The per-minute rollups of ``store/rollup.py``: a writer's running sum per minute and key (its
    segment), each write of it replacing the one before (the highest version wins)."""
    from hopscope.store.rollup import EdgeMinute, LinkMinute

    return (
        TableSpec(EdgeMinute, "minute_ns",
                  ("minute_ns", "resolution_s", "client_h", "first_h", "final_h", "l7_proto", "segment"), "version"),
        TableSpec(LinkMinute, "minute_ns",
                  ("minute_ns", "resolution_s", "prev_point", "point", "link_reason", "segment"), "version"),
    )


#: The tables, by name. Sort keys are the keys the API filters on; the dedup key is the same.
TABLES: Mapping[str, TableSpec] = {
    spec.name: spec
    for spec in (
        # Interim reports of a flow share (point, start_ns, flow_id): the newest (largest end_ns) wins.
        TableSpec(FlowRecord, "start_ns", ("point", "start_ns", "flow_id"), "end_ns",
                  bloom_columns=("syn_seq", "community_id")),
        TableSpec(RequestRecord, "req_first_ns", ("point", "req_first_ns", "request_id"), None,
                  bloom_columns=("syn_seq", "req_tcp_seq", "x_request_id", "traceparent")),
        TableSpec(Span, "request_first_ns", ("trace_id", "span_id"), "version", index_granularity=1024),
        TableSpec(Trace, "start_ns", ("trace_id",), "version",
                  bloom_columns=("x_request_id",), minmax_columns=("start_ns", "duration_us"), index_granularity=1024),
        # Looked up by (point, flow_id); the same file indexed again replaces its rows.
        TableSpec(PacketIndex, "start_ns", ("point", "flow_id", "start_ns", "file", "linktype"), None),
        *rollup_specs(),
    )
}


def table_spec(name: str) -> TableSpec:
    """The spec of a table by name; the allow-list for table identifiers."""
    spec = TABLES.get(name)
    if spec is None:
        raise ConfigError(f"unknown table {name!r}; tables: {', '.join(TABLES)}")
    return spec


def column_type(spec: TableSpec, col: Column, features: ServerFeatures) -> str:
    """The ClickHouse type (and codec) of one record column on this server."""
    ctype = col.type.clickhouse
    if col.type is ColumnType.STR and col.name in LOW_CARDINALITY and features.low_cardinality:
        ctype = f"LowCardinality({ctype})"
    if col.name == spec.time_column and features.codecs:
        ctype += " CODEC(Delta, ZSTD(1))"
    return ctype


def event_time_definition(spec: TableSpec) -> str:
    time_col = quote_identifier(spec.time_column)
    expression = f"toDateTime(intDiv({time_col}, 1000000000))"
    return f"{quote_identifier(EVENT_TIME)} DateTime('UTC') MATERIALIZED {expression}"


def create_table_sql(
    database: str, spec: TableSpec, features: ServerFeatures, ttl_days: int | None,
    *, table: str | None = None, on_cluster: str | None = None, replication_path: str | None = None,
) -> str:  # fmt: skip
    """CREATE TABLE IF NOT EXISTS for one table on a server with these features.

    For a cluster (``store/cluster.py``): ``table`` names the shard-local table (default: the spec's
    name), ``on_cluster`` adds ``ON CLUSTER``, ``replication_path`` makes the engine
    ``ReplicatedReplacingMergeTree(path, '{replica}', ...)``."""
    lines = [f"{quote_identifier(c.name)} {column_type(spec, c, features)}" for c in spec.columns()]
    lines.append(event_time_definition(spec))
    if features.skip_indexes:
        lines += [f"INDEX bf_{c} {quote_identifier(c)} TYPE bloom_filter GRANULARITY 4"
                  for c in spec.bloom_columns]
        lines += [f"INDEX mm_{c} {quote_identifier(c)} TYPE minmax GRANULARITY 4"
                  for c in spec.minmax_columns]
    version = quote_identifier(spec.version_column) if spec.version_column else ""
    engine = f"ReplacingMergeTree({version})"
    if replication_path is not None:
        args = ", ".join(a for a in (_sql_string(replication_path), "'{replica}'", version) if a)
        engine = f"ReplicatedReplacingMergeTree({args})"
    body = ",\n    ".join(lines)
    name = f"{quote_identifier(database)}.{quote_identifier(table or spec.name)}"
    cluster = f" ON CLUSTER {quote_identifier(on_cluster)}" if on_cluster else ""
    sql = (
        f"CREATE TABLE IF NOT EXISTS {name}{cluster} (\n    {body}\n)\n"
        f"ENGINE = {engine}\n"
        f"PARTITION BY toYYYYMMDD({quote_identifier(EVENT_TIME)})\n"
        f"ORDER BY ({', '.join(quote_identifier(c) for c in spec.order_by)})"
    )
    if ttl_days is not None and features.ttl:
        sql += f"\nTTL {quote_identifier(EVENT_TIME)} + toIntervalDay({int(ttl_days)})"
    if spec.index_granularity is not None:
        sql += f"\nSETTINGS index_granularity = {int(spec.index_granularity)}"
    return sql


def add_column_sql(
    database: str, spec: TableSpec, col: Column, features: ServerFeatures,
    *, table: str | None = None, on_cluster: str | None = None,
) -> str:  # fmt: skip
    """ALTER TABLE ADD COLUMN for a record field added after the table was created (18.16 has no
    ADD COLUMN IF NOT EXISTS: callers add only the columns system.columns lacks). ``table`` and
    ``on_cluster`` as for ``create_table_sql``."""
    name = f"{quote_identifier(database)}.{quote_identifier(table or spec.name)}"
    cluster = f" ON CLUSTER {quote_identifier(on_cluster)}" if on_cluster else ""
    return f"ALTER TABLE {name}{cluster} ADD COLUMN {quote_identifier(col.name)} {column_type(spec, col, features)}"


def _sql_string(text: str) -> str:
    """A single-quoted SQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def schema_sql(database: str, features: ServerFeatures, ttl_days: int | None = None) -> list[str]:
    """Every statement ``ensure_schema`` runs on an empty server, in order."""
    return [f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}"] + [
        create_table_sql(database, spec, features, ttl_days) for spec in TABLES.values()
    ]
