"""``ServerStore``: a ClickHouse server over the native protocol (clickhouse-driver).

Inserts are columnar (``INSERT ... VALUES`` with ``columnar=True`` and ``use_numpy``: the batch's
numpy arrays go to the wire without a per-value Python loop). Reads bind every value client-side
with the driver's escaping (``%(name)s``), since the Debian server (18.16) has no server-side
query parameters. A server that cannot be reached raises ``UnavailableError`` naming host:port; a query
that runs past ``query_timeout_s`` (the server's ``max_execution_time``) raises ``QueryTimeoutError``.
Callers on several threads each borrow one of up to ``pool_size`` connections (``store/pool.py``).
"""

from __future__ import annotations

import socket
from typing import Any

import numpy as np
from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from hopscope.errors import UnavailableError
from hopscope.records import Batch
from hopscope.store.base import DEFAULT_DATABASE, DEFAULT_POOL_SIZE, QueryError, QueryTimeoutError, SqlStore
from hopscope.store.pool import ConnectionPool, PoolClosedError
from hopscope.store.query import BoundQuery, to_pyformat
from hopscope.store.schema import quote_identifier

#: Errors of the driver and the OS that mean "the server is not there", not "the query is wrong".
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    ch_errors.NetworkError,
    ch_errors.SocketTimeoutError,
    EOFError,
    ConnectionError,
    socket.timeout,
)


#: The server's error code for a query that ran past max_execution_time.
_TIMEOUT_EXCEEDED = 159


def _first_line(exc: BaseException) -> str:
    """The server's message without its stack trace (18.16 puts "Code: N." on a line of its own)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Code:") and lines[0].endswith("."):
        return f"{lines[0]} {lines[1].removesuffix(' Stack trace:')}"
    return lines[0] if lines else type(exc).__name__


class ServerStore(SqlStore):
    """The store on a ClickHouse server (``clickhouse://host:port/database``)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9000,
        database: str = DEFAULT_DATABASE,
        ttl_days: int | None = None,
        connect_timeout_s: float = 3.0,
        timeout_s: float = 60.0,
        read_only: bool = False,
        pool_size: int = DEFAULT_POOL_SIZE,
        query_timeout_s: float | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """``settings``: ClickHouse settings for every query of this store's connections."""
        super().__init__(database, ttl_days, read_only)
        self.host = host
        self.port = port
        self._connect_timeout_s = connect_timeout_s
        # readonly=2: the server refuses DDL and writes, per-query settings still apply.
        # max_execution_time: the server ends a query that runs longer (TIMEOUT_EXCEEDED).
        self._settings: dict[str, Any] = {**(settings or {}), **({"readonly": 2} if read_only else {})}
        if query_timeout_s is not None:
            self._settings["max_execution_time"] = max(1, round(query_timeout_s))
            timeout_s = max(timeout_s, query_timeout_s + 5)  # the server's own limit ends it first
        self._timeout_s = timeout_s
        # A native connection carries one query at a time: the API's worker threads each borrow one.
        self._pool: ConnectionPool[Client] = ConnectionPool(self._new_client, Client.disconnect, pool_size)

    def _new_client(self) -> Client:
        """A client that connects on its first statement (no database selected, so ensure_schema can
        create it)."""
        return Client(
            host=self.host,
            port=self.port,
            connect_timeout=self._connect_timeout_s,
            send_receive_timeout=self._timeout_s,
            sync_request_timeout=self._timeout_s,
            client_name="hopscope",
            settings=dict(self._settings),
        )

    @property
    def url(self) -> str:
        return f"clickhouse://{self.host}:{self.port}/{self.database}"

    def _check_reachable(self, client: Client) -> None:
        """A TCP connect before the driver's first connect: the driver would log a traceback first."""
        if client.connection.connected:
            return
        try:
            socket.create_connection((self.host, self.port), timeout=self._connect_timeout_s).close()
        except OSError as exc:
            raise UnavailableError(
                f"ClickHouse server at {self.host}:{self.port} is unreachable ({_first_line(exc)})"
            ) from exc

    def _execute(self, sql: str, params: Any = None, **kwargs: Any) -> Any:
        try:
            with self._pool.lease() as client:
                return self._execute_on(client, sql, params, **kwargs)
        except PoolClosedError as exc:
            raise QueryError(f"ClickHouse store {self.url} is closed") from exc

    def _execute_on(self, client: Client, sql: str, params: Any = None, **kwargs: Any) -> Any:
        self._check_reachable(client)
        try:
            return client.execute(sql, params, **kwargs)
        except _NETWORK_ERRORS as exc:
            client.disconnect()
            raise UnavailableError(
                f"ClickHouse server at {self.host}:{self.port} is unreachable ({_first_line(exc)})"
            ) from exc
        except ch_errors.ServerException as exc:
            error = QueryTimeoutError if exc.code == _TIMEOUT_EXCEEDED else QueryError
            raise error(f"ClickHouse server at {self.host}:{self.port}: {_first_line(exc)}") from exc
        except ch_errors.Error as exc:
            raise QueryError(f"ClickHouse server at {self.host}:{self.port}: {_first_line(exc)}") from exc

    def _command(self, sql: str) -> None:
        self._execute(sql)

    def _select(self, query: BoundQuery) -> list[tuple[Any, ...]]:
        rows = self._execute(to_pyformat(query.sql), query.params)
        return [tuple(r) for r in rows]

    def _insert_columns(self, table: str, batch: Batch) -> None:
        cols = batch.record_type.columns()
        names = [c.name for c in cols]
        columns = ", ".join(quote_identifier(n) for n in names)
        sql = f"INSERT INTO {quote_identifier(self.database)}.{quote_identifier(table)} ({columns}) VALUES"
        if any(c.type.is_array for c in cols):  # the driver's numpy columns have no arrays: lists
            lists = [v.tolist() if isinstance(v, np.ndarray) else v for v in (batch.columns[n] for n in names)]
            self._execute(sql, lists, columnar=True)
            return
        # use_numpy: number columns go out as their arrays; text columns as object arrays.
        data = [
            np.asarray(col, dtype=object) if isinstance(col, list) else col
            for col in (batch.columns[n] for n in names)
        ]
        self._execute(sql, data, columnar=True, settings={"use_numpy": True})

    def _server_version(self) -> str:
        rows = self._execute("SELECT version()")
        return str(rows[0][0])

    def close(self) -> None:
        self.close_rollups()
        self.close_lookups()
        self._pool.close()
