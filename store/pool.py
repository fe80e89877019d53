"""A small pool of store connections: each lent to one thread at a time, made when first needed.

clickhouse-driver's ``Client`` carries one query at a time and is not thread-safe; chDB connections to
the one directory of a process run their queries in parallel, but one connection serves one query at
a time. So both backends keep at most ``size`` connections and lend each to one caller at a time; a
caller beyond ``size`` waits for one to come back. A connection whose caller failed is not reused.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from hopscope.errors import ConfigError

C = TypeVar("C")


class PoolClosedError(ConfigError):
    """The store was closed; its connections are gone."""


class ConnectionPool(Generic[C]):
    """At most ``size`` connections made by ``connect``, lent one caller at a time."""

    def __init__(
        self, connect: Callable[[], C], disconnect: Callable[[C], None], size: int, first: C | None = None
    ) -> None:
        if size < 1:
            raise ConfigError(f"a connection pool needs at least one connection, not {size}")
        self.size = size
        self._connect = connect
        self._disconnect = disconnect
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[C] = [] if first is None else [first]
        self._closed = False

    @contextmanager
    def lease(self) -> Iterator[C]:
        """One connection for the caller alone until the block ends."""
        with self._slots:
            conn = self._take()
            try:
                yield conn
            except BaseException:
                # A failed query may leave a connection half-way (a chDB connection answers the next
                # query with the rest of the failed one): it goes, a new one is made when needed.
                self._disconnect(conn)
                raise
            with self._lock:
                if self._closed:
                    self._disconnect(conn)
                else:
                    self._idle.append(conn)

    def _take(self) -> C:
        with self._lock:
            if self._closed:
                raise PoolClosedError("the store is closed")
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def close(self) -> None:
        """Disconnect the idle connections now, the lent ones when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            self._disconnect(conn)

    @property
    def closed(self) -> bool:
        return self._closed
