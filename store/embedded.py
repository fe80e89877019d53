"""``EmbeddedStore``: the ClickHouse engine in-process (chDB), persistent in a directory.

chDB 4.x opens one engine per process, bound to one directory (``chdb.connect(path)``); a second
store on another directory in the same process is refused until the first is closed (``ConfigError``).

Inserts send the batch as one Arrow IPC stream through chDB's streaming insert
(``send_insert("INSERT INTO t (...)", "ArrowStream")``). The alternative, a pyarrow table read in
place through the ``Python()`` table function, wins on a narrow table but loses at the batch sizes
the correlator sends (bench/store_insert.py times both; figures in docs/DESIGN.md). Reads bind every value in the engine
(``{name:Type}`` parameters) and come back as Arrow tables.

Several connections to the one directory run their queries in parallel (chDB releases the GIL), each
one query at a time: threads borrow one of up to ``pool_size`` (``store/pool.py``) rather than share
one behind a lock. A query that runs past ``query_timeout_s`` raises ``QueryTimeoutError``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import chdb
import pyarrow as pa

from hopscope.errors import ConfigError
from hopscope.records import Batch, ColumnType
from hopscope.store.base import (
    DEFAULT_DATABASE,
    DEFAULT_POOL_SIZE,
    QueryError,
    QueryTimeoutError,
    SqlStore,
    StoreMissingError,
)
from hopscope.store.pool import ConnectionPool, PoolClosedError
from hopscope.store.query import BoundQuery
from hopscope.store.schema import quote_identifier

_ARROW_TYPES: dict[ColumnType, pa.DataType] = {
    ColumnType.U8: pa.uint8(),
    ColumnType.U16: pa.uint16(),
    ColumnType.U32: pa.uint32(),
    ColumnType.U64: pa.uint64(),
    ColumnType.I64: pa.int64(),
    ColumnType.F32: pa.float32(),
    ColumnType.STR: pa.string(),
    ColumnType.I32_ARRAY: pa.list_(pa.int32()),
    ColumnType.U64_ARRAY: pa.list_(pa.uint64()),
}


def batch_to_arrow(batch: Batch) -> pa.Table:
    """A record batch as a pyarrow table with the schema's exact column types (numbers zero-copy)."""
    arrays = [pa.array(batch.columns[c.name], type=_ARROW_TYPES[c.type]) for c in batch.record_type.columns()]
    return pa.Table.from_arrays(arrays, names=[c.name for c in batch.record_type.columns()])


def arrow_stream(table: pa.Table) -> bytes:
    """A pyarrow table as Arrow IPC stream bytes (schema message, then the record batches)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


#: chDB parses a bound String value in the TabSeparated "escaped" text format, so a backslash,
#: tab or newline in the value must reach it escaped (else ``a\\'b`` would arrive as ``a'b``).
_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0",
                              "\b": "\\b", "\f": "\\f"})


def engine_params(params: dict[str, Any]) -> dict[str, Any]:
    """Bound values as chDB must receive them: text escaped for the TSV value parser, numbers as is."""
    return {k: v.translate(_TSV_ESCAPES) if isinstance(v, str) else v for k, v in params.items()}


def _disconnect(conn: Any) -> None:
    conn.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class EmbeddedStore(SqlStore):
    """The store in a chDB directory (``chdb:///path/to/dir``)."""

    def __init__(
        self,
        path: str,
        database: str = DEFAULT_DATABASE,
        ttl_days: int | None = None,
        read_only: bool = False,
        pool_size: int = DEFAULT_POOL_SIZE,
        query_timeout_s: float | None = None,
    ) -> None:
        super().__init__(database, ttl_days, read_only)
        self.path = os.path.abspath(path)
        if read_only and not os.path.isdir(self.path):
            raise StoreMissingError(
                f"chDB directory {self.path} does not exist (create it with: hopscope store init --store {self.url})"
            )
        os.makedirs(self.path, exist_ok=True)
        # Settings of each connection only: readonly=2, the engine refuses DDL and inserts;
        # max_execution_time, it ends a query that runs longer (TIMEOUT_EXCEEDED).
        settings = ["readonly=2"] if read_only else []
        if query_timeout_s is not None:
            settings.append(f"max_execution_time={max(1, round(query_timeout_s))}")
        self._target = self.path + ("?" + "&".join(settings) if settings else "")
        # Connections to the one directory run queries in parallel, one query per connection at a
        # time: the API's worker threads each borrow one. The first opens now, to fail early.
        self._pool: ConnectionPool[Any] = ConnectionPool(self._connect, _disconnect, pool_size, self._connect())

    @property
    def url(self) -> str:
        suffix = "" if self.database == DEFAULT_DATABASE else f"?database={self.database}"
        return f"chdb://{self.path}{suffix}"

    def _connect(self) -> Any:
        try:
            return chdb.connect(self._target)  # type: ignore[no-untyped-call]
        except RuntimeError as exc:
            raise ConfigError(
                f"cannot open chDB at {self.path}: {_first_line(exc)} (one chDB directory per process)"
            ) from exc

    @contextmanager
    def _connection(self, what: str = "") -> Iterator[Any]:
        """A connection for this thread alone; the engine's errors as ``QueryError``."""
        try:
            with self._pool.lease() as conn:
                yield conn
        except PoolClosedError as exc:
            raise QueryError(f"chDB store {self.path} is closed") from exc
        except (RuntimeError, chdb.ChdbError) as exc:
            error = QueryTimeoutError if "TIMEOUT_EXCEEDED" in str(exc) else QueryError
            raise error(f"chDB at {self.path}: {what}{_first_line(exc)}") from exc

    def _query(self, sql: str, fmt: str = "CSV", params: dict[str, Any] | None = None) -> Any:
        with self._connection() as conn:
            return conn.query(sql, fmt, params=params)

    def _command(self, sql: str) -> None:
        self._query(sql)

    def _select(self, query: BoundQuery) -> list[tuple[Any, ...]]:
        table = self._query(query.sql, "ArrowTable", params=engine_params(query.params) or None)
        if table is None or table.num_rows == 0:
            return []
        columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
        return list(zip(*columns, strict=True))

    def _select_columns(self, query: BoundQuery) -> list[Any] | None:
        """The Arrow columns of the answer as they are (no Python object per value)."""
        table = self._query(query.sql, "ArrowTable", params=engine_params(query.params) or None)
        if table is None or table.num_rows == 0:
            return None
        return [table.column(i) for i in range(table.num_columns)]

    def _insert_columns(self, table: str, batch: Batch) -> None:
        payload = arrow_stream(batch_to_arrow(batch))
        names = ", ".join(quote_identifier(c.name) for c in batch.record_type.columns())
        sql = f"INSERT INTO {quote_identifier(self.database)}.{quote_identifier(table)} ({names})"
        with self._connection(f"insert into {table}: ") as conn, conn.send_insert(sql, "ArrowStream") as inserter:
            inserter.append(payload)
            inserter.finish()

    def _server_version(self) -> str:
        rows = self._select(BoundQuery("SELECT version()", {}))
        return str(rows[0][0])

    def close(self) -> None:
        self.close_rollups()
        self.close_lookups()
        self._pool.close()
