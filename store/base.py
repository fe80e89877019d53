"""The store interface, and the behaviour both backends share (schema, queries, typed rows).

A backend supplies four primitives: run a statement, run a bound SELECT and return tuples, insert a
columnar batch, and report the server version. Everything else (DDL generated from the record schema
for the detected server features, schema evolution, the read queries, dedup with FINAL, typed rows)
is here, so the ClickHouse server and chDB run the same SQL.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from hopscope.errors import ConfigError, HopscopeError
from hopscope.records import Batch, FlowRecord, PacketIndex, RequestRecord, Span, Trace
from hopscope.store.features import ServerFeatures
from hopscope.store.query import (
    BoundQuery,
    Filters,
    _Params,
    count_rows,
    newest_rows,
    rows_to_records,
    select_latest,
    select_lookup,
    select_range,
    select_where,
    time_range_conditions,
)
from hopscope.store.rollup import (
    ROLLUP_SOURCES,
    ROLLUP_TYPES,
    RollupRows,
    RollupWriter,
    minutes_kinds,
    minutes_sql,
    rollup_range_sql,
    text_histogram_columns,
)
from hopscope.store.schema import (
    TABLES,
    add_column_sql,
    create_table_sql,
    quote_identifier,
    table_spec,
)

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "hopscope"
DEFAULT_LIMIT = 1000
#: Connections a store keeps at most, each used by one thread at a time (``store/pool.py``).
DEFAULT_POOL_SIZE = 4


class QueryError(HopscopeError):
    """The store rejected a statement (the message carries the server's first line)."""


class QueryTimeoutError(QueryError):
    """A query ran past the store's per-query time limit (ClickHouse's ``max_execution_time``)."""


class StoreMissingError(ConfigError):
    """A store opened for reading lacks its database, a table or a column (``store init`` makes them)."""


@runtime_checkable
class Store(Protocol):
    """What the correlator, the API and the CLI use; ``ServerStore`` and ``EmbeddedStore`` implement it."""

    @property
    def url(self) -> str: ...

    @property
    def features(self) -> ServerFeatures: ...

    def ensure_schema(self) -> None: ...

    def check_schema(self) -> None: ...

    def degradations(self) -> list[str]: ...

    def insert(self, table: str, batch: Batch) -> int: ...

    def query_flows(
        self, start_ns: int, end_ns: int, filters: Filters | None = None, limit: int = DEFAULT_LIMIT
    ) -> list[FlowRecord]: ...

    def query_requests(
        self, start_ns: int, end_ns: int, filters: Filters | None = None, limit: int = DEFAULT_LIMIT
    ) -> list[RequestRecord]: ...

    def query_spans(
        self, start_ns: int, end_ns: int, filters: Filters | None = None, limit: int = DEFAULT_LIMIT
    ) -> list[Span]: ...

    def query_traces(
        self,
        start_ns: int,
        end_ns: int,
        filters: Filters | None = None,
        limit: int = DEFAULT_LIMIT,
        order: str = "time",
        offset: int = 0,
    ) -> list[Trace]: ...

    def get_trace(self, trace_id: str) -> tuple[Trace | None, list[Span]]: ...

    def query_packet_index(
        self, start_ns: int, end_ns: int, filters: Filters | None = None, limit: int = DEFAULT_LIMIT
    ) -> list[PacketIndex]: ...

    def packet_index(self, point: str, flow_ids: Sequence[int]) -> list[PacketIndex]: ...

    def count(self, table: str) -> int: ...

    def rollup_minutes(
        self, table: str, start_ns: int, end_ns: int, resolution_s: int = 60, blocks: tuple[int, int] | None = None
    ) -> RollupRows: ...

    def rollup_bounds(self, table: str, start_ns: int, end_ns: int) -> tuple[int, int] | None: ...

    def drop_schema(self) -> None: ...

    def close(self) -> None: ...


class SqlStore(abc.ABC):
    """Shared implementation of ``Store`` over four backend primitives."""

    def __init__(
        self, database: str = DEFAULT_DATABASE, ttl_days: int | None = None, read_only: bool = False
    ) -> None:
        quote_identifier(database)  # fail early on a bad name
        self.database = database
        self.ttl_days = ttl_days
        #: Opened for reading: the backend refuses DDL and inserts (ClickHouse's readonly=2).
        self.read_only = read_only
        self._features: ServerFeatures | None = None
        self._degradations_logged = False
        self._rollups: RollupWriter | None = None
        self._lookup_executor: ThreadPoolExecutor | None = None  # get_trace's second read
        self._lookup_lock = threading.Lock()

    # --- backend primitives ------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def url(self) -> str: ...

    @abc.abstractmethod
    def _command(self, sql: str) -> None:
        """Run one statement that returns no rows (DDL)."""

    @abc.abstractmethod
    def _select(self, query: BoundQuery) -> list[tuple[Any, ...]]:
        """Run a bound SELECT; rows as tuples in the order of its columns."""

    def _select_columns(self, query: BoundQuery) -> Sequence[Any] | None:
        """Run a bound SELECT; its columns (None: no rows). Here the rows transposed; chDB answers
        with its Arrow columns."""
        rows = self._select(query)
        return list(zip(*rows, strict=True)) if rows else None

    @abc.abstractmethod
    def _insert_columns(self, table: str, batch: Batch) -> None:
        """Insert every record column of the batch into the (allow-listed) table."""

    @abc.abstractmethod
    def _server_version(self) -> str: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    # --- schema --------------------------------------------------------------------------------

    @property
    def features(self) -> ServerFeatures:
        if self._features is None:
            self._features = ServerFeatures.from_version(self._server_version())
        return self._features

    def degradations(self) -> list[str]:
        """What the schema does differently on this server because a feature is missing."""
        lines = self.features.degradations()
        if self.ttl_days is not None and not self.features.ttl:
            lines.append(f"ttl: ttl_days={self.ttl_days} requested but ignored")
        return lines

    def ensure_schema(self) -> None:
        """Create the database and tables if missing, and add record fields a table lacks. A store whose
        rollup histograms are still text is refused (``StoreMissingError``: ``convert_histograms``,
        which ``hopscope store init`` runs, converts them)."""
        self._ensure_tables()
        self._refuse_text_histograms()

    def _ensure_tables(self) -> None:
        if self.read_only:
            raise ConfigError(f"store {self.url} is open read-only: its schema cannot be created here")
        features = self.features
        degradations = self.degradations()
        if degradations and not self._degradations_logged:
            log.warning(
                "ClickHouse %s at %s, schema degraded: %s",
                features.version,
                self.url,
                "; ".join(degradations),
            )
            self._degradations_logged = True
        self._command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(self.database)}")
        for spec in TABLES.values():
            self._command(create_table_sql(self.database, spec, features, self.ttl_days))
            existing = self._existing_columns(spec.name)
            for col in spec.columns():
                if col.name not in existing:
                    log.info("adding column %s.%s", spec.name, col.name)
                    self._command(add_column_sql(self.database, spec, col, features))

    def _text_histograms(self) -> dict[str, list[str]]:
        """Per rollup table, the histogram columns it still holds as text (a store made before they
        were arrays)."""
        found = {}
        for record_type in ROLLUP_TYPES:
            columns = text_histogram_columns(record_type, self._column_types(record_type.TABLE))
            if columns:
                found[record_type.TABLE] = columns
        return found

    def _refuse_text_histograms(self) -> None:
        text = self._text_histograms()
        if text:
            raise StoreMissingError(
                f"store {self.url}: the histograms of {', '.join(text)} are text, from an older hopscope"
                f" (convert them with: hopscope store init --store {self.url})"
            )

    def convert_histograms(self) -> list[str]:
        """Create what ``ensure_schema`` creates, then convert the rollup tables whose histograms are
        still text into tables with array columns, every row kept (a copy with the texts cast, then the
        two swapped by ``RENAME``; rows another writer inserts during the copy are lost, so writers
        are stopped first). Returns the tables converted."""
        self._ensure_tables()
        text = self._text_histograms()
        db = quote_identifier(self.database)
        for table, columns in text.items():
            spec, name = table_spec(table), quote_identifier(table)
            old, new = quote_identifier(f"{table}_text"), quote_identifier(f"{table}_arrays")
            names = [c.name for c in spec.columns()]
            values = [
                f"CAST({quote_identifier(n)} AS {spec.column(n).type.clickhouse})" if n in columns
                else quote_identifier(n) for n in names
            ]  # fmt: skip
            self._command(f"DROP TABLE IF EXISTS {db}.{new}")
            self._command(create_table_sql(self.database, spec, self.features, self.ttl_days, table=f"{table}_arrays"))
            self._command(
                f"INSERT INTO {db}.{new} ({', '.join(map(quote_identifier, names))})"
                f" SELECT {', '.join(values)} FROM {db}.{name}"
            )
            self._command(f"RENAME TABLE {db}.{name} TO {db}.{old}, {db}.{new} TO {db}.{name}")
            self._command(f"DROP TABLE {db}.{old}")
            log.info("store %s: histograms of %s converted from text to arrays", self.url, table)
        return list(text)

    def check_schema(self) -> None:
        """What a reader needs: the database, every table, every record column; else
        ``StoreMissingError`` naming what is missing and the command that creates it."""
        init = f"hopscope store init --store {self.url}"
        databases = self._select(
            BoundQuery("SELECT name FROM system.databases WHERE name = {db:String}", {"db": self.database})
        )
        if not databases:
            raise StoreMissingError(f"database {self.database} does not exist (create it with: {init})")
        columns: dict[str, set[str]] = {}
        for table, name in self._select(
            BoundQuery("SELECT table, name FROM system.columns WHERE database = {db:String}", {"db": self.database})
        ):
            columns.setdefault(str(table), set()).add(str(name))
        missing = [t for t in TABLES if t not in columns]
        if missing:
            raise StoreMissingError(
                f"database {self.database} has no table {', '.join(missing)} (create it with: {init})"
            )
        for spec in TABLES.values():
            lacking = [c.name for c in spec.columns() if c.name not in columns[spec.name]]
            if lacking:
                raise StoreMissingError(
                    f"table {self.database}.{spec.name} lacks column {', '.join(lacking)} (add it with: {init})"
                )
        self._refuse_text_histograms()

    def _column_types(self, table: str) -> dict[str, str]:
        rows = self._select(
            BoundQuery(
                "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                {"db": self.database, "t": table},
            )
        )
        return {str(name): str(ctype) for name, ctype in rows}

    def _existing_columns(self, table: str) -> set[str]:
        rows = self._select(
            BoundQuery(
                "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                {"db": self.database, "t": table},
            )
        )
        return {str(r[0]) for r in rows}

    def drop_schema(self) -> None:
        """Drop the database and everything in it (tests, ``hopscope store reset``)."""
        if self.read_only:
            raise ConfigError(f"store {self.url} is open read-only: it cannot be dropped here")
        self._command(f"DROP DATABASE IF EXISTS {quote_identifier(self.database)}")
        if self._rollups is not None:  # rows pending for the dropped tables are dropped with them
            self._rollups.discard()

    # --- writes and reads ----------------------------------------------------------------------

    def insert(self, table: str, batch: Batch) -> int:
        """Insert a batch into its table; returns the number of rows sent."""
        spec = table_spec(table)
        if batch.record_type is not spec.record_type:
            raise QueryError(f"a batch of {batch.record_type.__name__} cannot go into table {table}")
        if len(batch) == 0:
            return 0
        known = self.rollups.known_traces(batch) if spec.name == "traces" else frozenset()
        self._insert_columns(spec.name, batch)
        if spec.name in ROLLUP_SOURCES:
            self.rollups.written(spec.name, batch, known)
        return len(batch)

    @property
    def rollups(self) -> RollupWriter:
        """What turns the traces and spans inserted here into ``edges_1m``/``links_1m`` rows."""
        if self._rollups is None:
            self._rollups = RollupWriter(self.insert, self._stored_spans, self._stored_traces)
        return self._rollups

    def close_rollups(self) -> None:
        """Write the rollup rows still pending (backends call it first thing in ``close``)."""
        if self._rollups is None:
            return
        try:
            self._rollups.close()
        except HopscopeError as exc:  # closing goes on: the traces are stored, only their rollup is lost
            log.error("store %s: pending rollup rows not written: %s", self.url, exc)

    def _stored_traces(self, trace_ids: Sequence[str]) -> set[str]:
        spec = table_spec("traces")
        params = _Params()
        sql = (
            f"SELECT DISTINCT trace_id FROM {quote_identifier(self.database)}.{quote_identifier(spec.name)}"
            f" WHERE trace_id IN ({', '.join(params.bind(spec.column('trace_id'), t) for t in trace_ids)})"
        )
        return {str(r[0]) for r in self._select(BoundQuery(sql, params.values))}

    def _stored_spans(self, trace_ids: Sequence[str]) -> list[Span]:
        query = select_latest(self.database, table_spec("spans"), {"trace_id": list(trace_ids)}, ["trace_id"])
        return rows_to_records(Span, self._select(query))

    def rollup_minutes(
        self, table: str, start_ns: int, end_ns: int, resolution_s: int = 60, blocks: tuple[int, int] | None = None
    ) -> RollupRows:
        """The rows of a rollup table (``store/rollup.py``) of one resolution (60: minutes; ``BLOCK_S``)
        starting in [start_ns, end_ns), grouped by the table's key, as columns: key columns, then
        ``minutes_sql``'s aggregates. ``blocks`` (first, last): the block rows of [first, last) in place of those
        minutes' rows, added up with the other minutes' in the same query (``rollup_range_sql``)."""
        if self._rollups is not None:  # this writer's own rows are read back
            self._rollups.flush()
        spec = table_spec(table)
        keys, aggregates = minutes_sql(spec.name)
        params = _Params()
        conditions = time_range_conditions(spec, start_ns, end_ns, params)
        conditions.append(rollup_range_sql(spec, resolution_s, blocks, params.bind))
        group = ", ".join(quote_identifier(k) for k in keys)
        sql = (
            f"SELECT {group}, {', '.join(aggregates)}"
            f" FROM {quote_identifier(self.database)}.{quote_identifier(spec.name)} FINAL"
            f" PREWHERE {' AND '.join(conditions)} GROUP BY {group} ORDER BY {group}"
        )
        return RollupRows.from_columns(self._select_columns(BoundQuery(sql, params.values)), minutes_kinds(spec.name))

    def rollup_bounds(self, table: str, start_ns: int, end_ns: int) -> tuple[int, int] | None:
        """The first and the last minute with rows of a rollup table in [start_ns, end_ns) (None: none)."""
        if self._rollups is not None:
            self._rollups.flush()
        spec = table_spec(table)
        params = _Params()
        conditions = time_range_conditions(spec, start_ns, end_ns, params)
        sql = (
            f"SELECT min(minute_ns), max(minute_ns), count() FROM {quote_identifier(self.database)}."
            f"{quote_identifier(spec.name)} WHERE {' AND '.join(conditions)} AND resolution_s = 60"
        )
        first, last, rows = self._select(BoundQuery(sql, params.values))[0]
        return (int(first), int(last)) if int(rows) else None

    def _range(
        self, table: str, start_ns: int, end_ns: int, filters: Filters | None, limit: int, order: str = "time",
        offset: int = 0,
    ) -> list[Any]:
        spec = table_spec(table)
        query = select_range(self.database, spec, start_ns, end_ns, filters, limit, order, offset)
        return rows_to_records(spec.record_type, self._select(query))

    def query_flows(
        self, start_ns: int, end_ns: int, filters: Filters | None = None, limit: int = DEFAULT_LIMIT
    ) -> list[FlowRecord]:
        """Flows that started in [start_ns, end_ns), newest report of each, oldest first."""
        return self._range("flows", start_ns, end_ns, filters, limit)

    def query_requests(
        self, start_ns: int, end_ns: int, filters: Filters | None = None, limit: int = DEFAULT_LIMIT
    ) -> list[RequestRecord]:
        """Requests whose first byte passed in [start_ns, end_ns), oldest first."""
        return self._range("requests", start_ns, end_ns, filters, limit)

    def query_spans(
        self, start_ns: int, end_ns: int, filters: Filters | None = None, limit: int = DEFAULT_LIMIT
    ) -> list[Span]:
        """Spans whose request passed their hop in [start_ns, end_ns), oldest first."""
        return self._range("spans", start_ns, end_ns, filters, limit)

    def query_traces(
        self,
        start_ns: int,
        end_ns: int,
        filters: Filters | None = None,
        limit: int = DEFAULT_LIMIT,
        order: str = "time",
        offset: int = 0,
    ) -> list[Trace]:
        """Traces that started in [start_ns, end_ns), latest version of each, oldest first (or in one of
        ``hopscope.store.query.ORDERS``: ``time_desc``, ``slowest``), the first ``offset`` skipped."""
        return self._range("traces", start_ns, end_ns, filters, limit, order, offset)

    def query_packet_index(
        self, start_ns: int, end_ns: int, filters: Filters | None = None, limit: int = DEFAULT_LIMIT
    ) -> list[PacketIndex]:
        """Packet index rows whose first packet is in [start_ns, end_ns), oldest first."""
        return self._range("packet_index", start_ns, end_ns, filters, limit)

    def packet_index(self, point: str, flow_ids: Sequence[int]) -> list[PacketIndex]:
        """Where the packets of these flows at ``point`` lie, oldest first ([] when none were indexed)."""
        if not flow_ids:
            return []
        spec = table_spec("packet_index")
        query = select_where(self.database, spec, {"point": point, "flow_id": list(flow_ids)}, ["start_ns", "file"])
        return rows_to_records(PacketIndex, self._select(query))

    def get_trace(self, trace_id: str) -> tuple[Trace | None, list[Span]]:
        """One trace and its spans in hop order (``None`` and [] when unknown).

        The trace's row is read on a helper thread while this one reads the spans, each on a connection
        of its own: the lookup waits for the slower read instead of both."""
        traces_spec, spans_spec = table_spec("traces"), table_spec("spans")
        key = {"trace_id": trace_id}
        trace_query, span_query = (select_lookup(self.database, s, key) for s in (traces_spec, spans_spec))
        pending = self._lookup_threads().submit(self._select, trace_query)
        try:
            span_rows = self._select(span_query)
        finally:
            trace_rows = pending.result()  # never left running on a connection when the spans failed
        traces: Sequence[Trace] = rows_to_records(Trace, newest_rows(traces_spec, trace_rows, ["trace_id"]))
        spans = rows_to_records(Span, newest_rows(spans_spec, span_rows, ["hop_index", "span_id"]))
        return (traces[0] if traces else None), spans

    def _lookup_threads(self) -> ThreadPoolExecutor:
        with self._lookup_lock:
            if self._lookup_executor is None:
                self._lookup_executor = ThreadPoolExecutor(DEFAULT_POOL_SIZE, thread_name_prefix="store-lookup")
            return self._lookup_executor

    def close_lookups(self) -> None:
        """Stop the lookup helper threads (backends call it in ``close``)."""
        with self._lookup_lock:
            executor, self._lookup_executor = self._lookup_executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def count(self, table: str) -> int:
        """Rows in a table after dedup."""
        rows = self._select(count_rows(self.database, table_spec(table)))
        return int(rows[0][0])
