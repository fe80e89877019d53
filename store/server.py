"""``ServerStore``: a ClickHouse server over the native protocol (clickhouse-driver).

Inserts are columnar (``INSERT ... VALUES`` with ``columnar=True`` and ``use_numpy``: the batch's
numpy arrays go to the wire without a per-value Python loop). Reads bind every value client-side
with the driver's escaping (``%(name)s``), since the Debian server (18.16) has no server-side
query parameters. A server that cannot be reached raises ``UnavailableError`` naming host:port.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import numpy as np
from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from hopscope.errors import UnavailableError
from hopscope.records import Batch
from hopscope.store.base import DEFAULT_DATABASE, QueryError, SqlStore
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
    ) -> None:
        super().__init__(database, ttl_days, read_only)
        self.host = host
        self.port = port
        self._connect_timeout_s = connect_timeout_s
        # One native connection, which carries one query at a time: callers on several threads
        # (the API's worker pool) take turns.
        self._lock = threading.Lock()
        # Connects lazily on the first statement; no database selected, so ensure_schema can create it.
        self._client = Client(
            host=host,
            port=port,
            connect_timeout=connect_timeout_s,
            send_receive_timeout=timeout_s,
            sync_request_timeout=timeout_s,
            client_name="hopscope",
            # readonly=2: the server refuses DDL and writes, per-query settings still apply.
            settings={"readonly": 2} if read_only else {},
        )

    @property
    def url(self) -> str:
        return f"clickhouse://{self.host}:{self.port}/{self.database}"

    def _check_reachable(self) -> None:
        """A TCP connect before the driver's first connect: the driver would log a traceback first."""
        if self._client.connection.connected:
            return
        try:
            socket.create_connection((self.host, self.port), timeout=self._connect_timeout_s).close()
        except OSError as exc:
            raise UnavailableError(
                f"ClickHouse server at {self.host}:{self.port} is unreachable ({_first_line(exc)})"
            ) from exc

    def _execute(self, sql: str, params: Any = None, **kwargs: Any) -> Any:
        with self._lock:
            return self._execute_locked(sql, params, **kwargs)

    def _execute_locked(self, sql: str, params: Any = None, **kwargs: Any) -> Any:
        self._check_reachable()
        try:
            return self._client.execute(sql, params, **kwargs)
        except _NETWORK_ERRORS as exc:
            self._client.disconnect()
            raise UnavailableError(
                f"ClickHouse server at {self.host}:{self.port} is unreachable ({_first_line(exc)})"
            ) from exc
        except ch_errors.Error as exc:
            raise QueryError(f"ClickHouse server at {self.host}:{self.port}: {_first_line(exc)}") from exc

    def _command(self, sql: str) -> None:
        self._execute(sql)

    def _select(self, query: BoundQuery) -> list[tuple[Any, ...]]:
        rows = self._execute(to_pyformat(query.sql), query.params)
        return [tuple(r) for r in rows]

    def _insert_columns(self, table: str, batch: Batch) -> None:
        names = [c.name for c in batch.record_type.columns()]
        # use_numpy: number columns go out as their arrays; text columns as object arrays.
        data = [
            np.asarray(col, dtype=object) if isinstance(col, list) else col
            for col in (batch.columns[n] for n in names)
        ]
        columns = ", ".join(quote_identifier(n) for n in names)
        sql = f"INSERT INTO {quote_identifier(self.database)}.{quote_identifier(table)} ({columns}) VALUES"
        self._execute(sql, data, columnar=True, settings={"use_numpy": True})

    def _server_version(self) -> str:
        rows = self._execute("SELECT version()")
        return str(rows[0][0])

    def close(self) -> None:
        with self._lock:
            self._client.disconnect()
