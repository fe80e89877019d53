"""hopscope.store: where flows, requests, spans and traces are kept.

One interface (``Store``), two backends running the same SQL: ``ServerStore`` on a ClickHouse server
(clickhouse-driver, native protocol) and ``EmbeddedStore`` on chDB in a directory. The DDL is
generated from ``hopscope.records`` for the features the server has (``ServerFeatures``); on old
servers the degradations are explicit (``Store.degradations()``, logged by ``ensure_schema``).

    store = store_from_url("clickhouse://127.0.0.1:9000/hopscope")   # or "chdb:///var/lib/hopscope"
    store.ensure_schema()
    store.insert("flows", batch)
    flows = store.query_flows(start_ns, end_ns, {"point": "node1-eth0", "proto": 6}, limit=100)

Heavy imports (clickhouse-driver, chDB, pyarrow) load only when that backend is opened.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

from hopscope.errors import ConfigError
from hopscope.store.base import (
    DEFAULT_DATABASE,
    DEFAULT_POOL_SIZE,
    QueryError,
    QueryTimeoutError,
    SqlStore,
    Store,
    StoreMissingError,
)
from hopscope.store.features import ServerFeatures

__all__ = ["DEFAULT_DATABASE", "QueryError", "ServerFeatures", "SqlStore", "Store", "store_from_url"]

__all__ += ["DEFAULT_URL", "QueryTimeoutError", "StoreMissingError", "default_url", "open_for_reading"]


def default_url() -> str:
    """$HOPSCOPE_STORE, else chDB in ``var_dir()/chdb`` ($HOPSCOPE_VAR, or the checkout's var/)."""
    from hopscope.paths import var_dir

    explicit = os.environ.get("HOPSCOPE_STORE")
    if explicit:
        return explicit
    return f"chdb://{var_dir() / 'chdb'}"


#: The store the commands use when given no --store (read once, when hopscope.store is imported).
DEFAULT_URL = default_url()


def _ttl_days(query: dict[str, list[str]], url: str) -> int | None:
    values = query.get("ttl_days")
    if not values:
        return None
    try:
        days = int(values[-1])
    except ValueError as exc:
        raise ConfigError(f"ttl_days in {url!r} must be a whole number of days") from exc
    if days < 1:
        raise ConfigError(f"ttl_days in {url!r} must be at least 1")
    return days


def store_from_url(
    url: str, *, read_only: bool = False, pool_size: int = DEFAULT_POOL_SIZE, query_timeout_s: float | None = None
) -> SqlStore:
    """Open a store: ``clickhouse://host:port/database[?ttl_days=N][&cluster=NAME]`` or
    ``chdb:///absolute/dir[?database=name&ttl_days=N]``. Nothing is created until ``ensure_schema``.
    ``cluster=NAME``: the cluster of that name in the server's ``remote_servers`` (``store/cluster.py``).
    ``read_only``: the backend refuses DDL and inserts, and a chDB directory must exist already.
    ``pool_size``: most connections, one per thread at a time; ``query_timeout_s``: the engine ends a
    query that runs longer (``QueryTimeoutError``)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    ttl_days = _ttl_days(query, url)
    if parts.scheme == "clickhouse":
        from hopscope.store.server import ServerStore

        database = parts.path.strip("/") or DEFAULT_DATABASE
        try:
            port = parts.port or 9000
        except ValueError as exc:
            raise ConfigError(f"bad port in {url!r}") from exc
        if "cluster" in query:  # local tables on every shard, Distributed tables over them
            from hopscope.store.cluster import ClusterStore

            return ClusterStore(
                parts.hostname or "127.0.0.1", port, database, query["cluster"][-1], ttl_days,
                read_only=read_only, pool_size=pool_size, query_timeout_s=query_timeout_s,
            )  # fmt: skip
        return ServerStore(
            parts.hostname or "127.0.0.1", port, database, ttl_days,
            read_only=read_only, pool_size=pool_size, query_timeout_s=query_timeout_s,
        )  # fmt: skip
    if parts.scheme == "chdb":
        from hopscope.store.embedded import EmbeddedStore

        path = (parts.netloc + parts.path) if parts.netloc else parts.path
        if not path:
            raise ConfigError(f"chdb URL {url!r} names no directory (chdb:///path/to/dir)")
        database = query.get("database", [DEFAULT_DATABASE])[-1]
        return EmbeddedStore(
            path, database, ttl_days, read_only=read_only, pool_size=pool_size, query_timeout_s=query_timeout_s
        )
    raise ConfigError(f"unknown store URL {url!r}: use clickhouse://host:port/db or chdb:///path/to/dir")


def open_for_reading(
    url: str, *, pool_size: int = DEFAULT_POOL_SIZE, query_timeout_s: float | None = None
) -> SqlStore:
    """A store for readers (``serve``, ``topology``): opened read-only, its schema checked; a missing
    database, table or column is ``StoreMissingError`` naming ``hopscope store init``."""
    store = store_from_url(url, read_only=True, pool_size=pool_size, query_timeout_s=query_timeout_s)
    try:
        store.check_schema()
    except BaseException:
        store.close()
        raise
    return store
