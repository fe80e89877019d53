"""``ClusterStore``: the store on a ClickHouse cluster (``clickhouse://host:port/db?cluster=NAME``).

The cluster is the one the server at ``host:port`` names in its ``remote_servers`` config
(``system.clusters``). On every server of it, ``ensure_schema`` creates:

- the shard-local tables ``<table>_local`` (``flows_local``, ...): the single-server DDL of
  ``store/schema.py`` with its engine; ``ReplicatedReplacingMergeTree`` under
  ``/clickhouse/tables/{shard}/hopscope/<db>/<table>`` with replica ``{replica}`` (the servers'
  ``macros``) when the servers have a coordination service (ZooKeeper), else ``ReplacingMergeTree``;
- a ``Distributed`` table under each record table's own name (``flows``, ...) over those, so every
  read query of ``store/base.py`` runs unchanged and reads every shard.

The statements run once with ``ON CLUSTER`` when the servers have ZooKeeper (distributed DDL), else on
each server in turn. Either way every server must answer: a missing one is named, and nothing is
half-created behind the caller's back (the statements are idempotent: run ``store init`` again).

Sharding keys (``SHARDING_KEYS``) keep what is read together on one shard: a trace's spans and its
trace row by ``cityHash64(trace_id)``, so a lookup and the dedup of ``LIMIT 1 BY``/``FINAL`` see one
shard's rows; flows and requests by ``flow_id`` (already a 64-bit hash), so every interim report of
a flow meets the others on one shard (``FINAL`` dedups within a shard only) and the requests a flow
carried sit beside it.

Writes go through the Distributed tables of the server the URL names. The server routes each row by
the sharding key and sends it asynchronously (``insert_distributed_sync=0``): a block for a shard that
is down waits in that server's on-disk queue and is delivered when the shard is back, so nothing is
lost and the writer is never blocked by one shard. Reads set ``skip_unavailable_shards=1``: with a
shard down they answer with the shards that are up, and ``missing_shards()`` says which are not.
When the URL's server itself is unreachable, statements go to the next server of the cluster that
answers (every server has the Distributed tables).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from hopscope.errors import ConfigError, UnavailableError
from hopscope.records import Batch
from hopscope.store.base import DEFAULT_DATABASE, DEFAULT_POOL_SIZE, QueryError, SqlStore
from hopscope.store.features import ServerFeatures
from hopscope.store.query import BoundQuery
from hopscope.store.rollup import ROLLUP_TYPES
from hopscope.store.schema import (
    EVENT_TIME,
    TABLES,
    TableSpec,
    add_column_sql,
    column_type,
    create_table_sql,
    quote_identifier,
)

if TYPE_CHECKING:
    from hopscope.store.server import ServerStore

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Suffix of the shard-local tables; the Distributed tables keep the record tables' names.
LOCAL_SUFFIX = "_local"

#: Sharding key of each Distributed table (an integer expression of the row): see the module docstring.
#: A table not listed here is sharded by ``sharding_key``'s rule.
SHARDING_KEYS: dict[str, str] = {
    "flows": "flow_id",
    "requests": "flow_id",
    "spans": "cityHash64(trace_id)",
    "traces": "cityHash64(trace_id)",
    "packet_index": "flow_id",  # a flow's packet positions beside the flow
    # Every write of a rollup row's running sum lands on one shard, where FINAL keeps the newest.
    "edges_1m": "segment",
    "links_1m": "segment",
}

#: Settings of every query through the cluster: reads answer with the shards that are up, and an
#: ``IN (SELECT ...)`` over another Distributed table (a trace search on its spans) reads that table's
#: local part on each shard: traces and spans are both sharded by trace id, so a trace's spans sit on
#: its shard (the server's default, ``deny``, refuses such a query).
CLUSTER_SETTINGS: dict[str, Any] = {"skip_unavailable_shards": 1, "distributed_product_mode": "local"}

#: How long ON CLUSTER DDL waits for every server (the server's default is 180 s).
DDL_TIMEOUT_S = 60

#: How long a server-reachability answer is reused (``missing_shards`` is asked once per API answer).
STATUS_TTL_S = 1.0


def local_table(name: str) -> str:
    """The shard-local table behind the Distributed table ``name``."""
    return f"{name}{LOCAL_SUFFIX}"


def sharding_key(spec: TableSpec) -> str:
    """The table's key in ``SHARDING_KEYS``; else by ``trace_id`` when it has one (a trace's rows
    together), else by ``flow_id`` (a flow's rows together); a table with neither is refused."""
    key = SHARDING_KEYS.get(spec.name)
    if key is not None:
        return key
    names = {c.name for c in spec.columns()}
    if "trace_id" in names:
        return "cityHash64(trace_id)"
    if "flow_id" in names:
        return "flow_id"
    raise ConfigError(f"table {spec.name} has no sharding key for a cluster (add it to store/cluster.py SHARDING_KEYS)")


def replication_path(database: str, table: str) -> str:
    """The ZooKeeper path of a replicated local table; ``{shard}`` is the server's macro."""
    return f"/clickhouse/tables/{{shard}}/hopscope/{database}/{table}"


def distributed_table_sql(
    database: str, spec: TableSpec, cluster: str, features: ServerFeatures, on_cluster: bool
) -> str:
    """CREATE TABLE for the Distributed table over ``<table>_local``: the record columns with the
    local table's types (no codecs), and ``event_time`` as an ALIAS of the same expression the local
    table materializes, so range filters on it work and an INSERT does not send it (a local table
    refuses values for its MATERIALIZED column)."""
    cols = [
        f"{quote_identifier(c.name)} {column_type(spec, c, features).split(' CODEC(')[0]}"
        for c in spec.columns()
    ]
    time_col = quote_identifier(spec.time_column)
    cols.append(f"{quote_identifier(EVENT_TIME)} DateTime('UTC') ALIAS toDateTime(intDiv({time_col}, 1000000000))")
    on = f" ON CLUSTER {quote_identifier(cluster)}" if on_cluster else ""
    body = ",\n    ".join(cols)
    db = quote_identifier(database)
    return (
        f"CREATE TABLE IF NOT EXISTS {db}.{quote_identifier(spec.name)}{on} (\n    {body}\n)\n"
        f"ENGINE = Distributed({quote_identifier(cluster)}, {db}, "
        f"{quote_identifier(local_table(spec.name))}, {sharding_key(spec)})"
    )


@dataclass(frozen=True, slots=True)
class Replica:
    """One server of the cluster, as ``system.clusters`` lists it."""

    shard: int  # shard_num, from 1
    replica: int  # replica_num within the shard, from 1
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def describe(self) -> str:
        return f"shard {self.shard} replica {self.replica} at {self.address}"


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """Which servers of the cluster answer a TCP connect now."""

    replicas: tuple[Replica, ...]
    down: frozenset[Replica]

    @property
    def missing_shards(self) -> list[int]:
        """Shards none of whose replicas answer: their rows are absent from reads."""
        shards = sorted({r.shard for r in self.replicas})
        return [s for s in shards if all(r in self.down for r in self.replicas if r.shard == s)]

    @property
    def replicas_down(self) -> list[Replica]:
        """Servers that do not answer, of shards another replica still serves."""
        missing = set(self.missing_shards)
        return [r for r in self.replicas if r in self.down and r.shard not in missing]

    def as_dict(self) -> dict[str, Any]:
        return {
            "shards": len({r.shard for r in self.replicas}),
            "missing_shards": [
                {"shard": s, "replicas": [r.address for r in self.replicas if r.shard == s]}
                for s in self.missing_shards
            ],
            "replicas_down": [{"shard": r.shard, "replica": r.replica, "address": r.address}
                              for r in self.replicas_down],
        }  # fmt: skip


class ClusterStore(SqlStore):
    """The store on a ClickHouse cluster: local tables on every shard, Distributed tables over them."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9000,
        database: str = DEFAULT_DATABASE,
        cluster: str = "hopscope",
        ttl_days: int | None = None,
        *,
        read_only: bool = False,
        pool_size: int = DEFAULT_POOL_SIZE,
        query_timeout_s: float | None = None,
        connect_timeout_s: float = 3.0,
        on_cluster: bool | None = None,
    ) -> None:
        """``on_cluster``: run the DDL with ON CLUSTER (True), on each server in turn (False), or ON
        CLUSTER exactly when the servers have ZooKeeper (None)."""
        super().__init__(database, ttl_days, read_only)
        quote_identifier(cluster)  # fail early on a bad name
        self.cluster = cluster
        self.host, self.port = host, port
        self._pool_size = pool_size
        self._query_timeout_s = query_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._on_cluster = on_cluster
        self._lock = threading.Lock()
        self._nodes: dict[tuple[str, int], ServerStore] = {}
        self._entry: tuple[str, int] = (host, port)  # the server statements go to now
        self._replicas: tuple[Replica, ...] | None = None
        self._status: tuple[float, ClusterStatus] | None = None
        self._closed = False

    @property
    def url(self) -> str:
        return f"clickhouse://{self.host}:{self.port}/{self.database}?cluster={self.cluster}"

    # --- servers ---------------------------------------------------------------------------------

    def _node(self, host: str, port: int) -> ServerStore:
        """The connection pool to one server of the cluster (created on first use)."""
        from hopscope.store.server import ServerStore

        with self._lock:
            if self._closed:
                raise QueryError(f"ClickHouse store {self.url} is closed")
            node = self._nodes.get((host, port))
            if node is None:
                node = ServerStore(
                    host, port, self.database, self.ttl_days, connect_timeout_s=self._connect_timeout_s,
                    read_only=self.read_only, pool_size=self._pool_size, query_timeout_s=self._query_timeout_s,
                    settings=CLUSTER_SETTINGS,
                )  # fmt: skip
                self._nodes[(host, port)] = node
            return node

    def _via_entry(self, run: Callable[[ServerStore], T]) -> T:
        """Run on the current entry server; when it is unreachable, on the next server of the cluster
        that answers (each has the Distributed tables), which then stays the entry."""
        entry = self._entry
        try:
            return run(self._node(*entry))
        except UnavailableError as first:
            if self._replicas is None:
                raise
            for replica in self._replicas:
                candidate = (replica.host, replica.port)
                if candidate == entry or not self._reachable(replica):
                    continue
                log.warning("%s:%s unreachable; cluster %s now through %s", *entry, self.cluster, replica.address)
                self._entry = candidate
                return run(self._node(*candidate))
            raise UnavailableError(f"no server of cluster {self.cluster} answers ({first})") from first

    def replicas(self) -> tuple[Replica, ...]:
        """Every server of the cluster, from ``system.clusters`` of the entry server (read once)."""
        if self._replicas is None:
            rows = self._node(*self._entry)._select(
                BoundQuery(
                    "SELECT shard_num, replica_num, host_name, port FROM system.clusters"
                    " WHERE cluster = {c:String} ORDER BY shard_num, replica_num",
                    {"c": self.cluster},
                )
            )
            if not rows:
                raise ConfigError(
                    f"the server at {self.host}:{self.port} has no cluster {self.cluster!r} in its remote_servers"
                    " config (SELECT DISTINCT cluster FROM system.clusters lists the ones it has)"
                )
            self._replicas = tuple(Replica(int(s), int(r), str(h), int(p)) for s, r, h, p in rows)
        return self._replicas

    def _reachable(self, replica: Replica) -> bool:
        try:
            socket.create_connection((replica.host, replica.port), timeout=min(self._connect_timeout_s, 1.0)).close()
        except OSError:
            return False
        return True

    def status(self) -> ClusterStatus:
        """Which servers answer now (reused for ``STATUS_TTL_S``)."""
        now = time.monotonic()
        cached = self._status
        if cached is not None and now - cached[0] < STATUS_TTL_S:
            return cached[1]
        replicas = self.replicas()
        status = ClusterStatus(replicas, frozenset(r for r in replicas if not self._reachable(r)))
        self._status = (now, status)
        return status

    def missing_shards(self) -> list[int]:
        """Shards with no server answering: reads now lack their rows (the API says so in a header)."""
        return self.status().missing_shards

    def has_coordination(self) -> bool:
        """Whether the entry server has ZooKeeper configured (replicated tables, ON CLUSTER DDL): its
        ``system.zookeeper`` table exists exactly then, whether or not ZooKeeper answers now."""
        rows = self._select(BoundQuery(
            "SELECT count() FROM system.tables WHERE database = 'system' AND name = 'zookeeper'", {}))
        return bool(rows[0][0])

    def _require_coordination(self) -> None:
        """ZooKeeper answers the entry server, else ``UnavailableError`` (replicated DDL would hang)."""
        probe = BoundQuery("SELECT count() FROM system.zookeeper WHERE path = '/'", {})
        try:
            self._select(probe)
        except QueryError as exc:
            raise UnavailableError(
                f"cluster {self.cluster} has ZooKeeper configured but it does not answer ({exc}); "
                "start it, then run this again"
            ) from exc

    # --- backend primitives ------------------------------------------------------------------------

    def _command(self, sql: str) -> None:
        self._via_entry(lambda n: n._command(sql))

    def _select(self, query: BoundQuery) -> list[tuple[Any, ...]]:
        return self._via_entry(lambda n: n._select(query))

    def _insert_columns(self, table: str, batch: Batch) -> None:
        self._via_entry(lambda n: n._insert_columns(table, batch))

    def _server_version(self) -> str:
        return self._via_entry(lambda n: n._server_version())

    def close(self) -> None:
        self.close_rollups()
        self.close_lookups()
        with self._lock:
            self._closed = True
            nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            node.close()

    # --- schema ----------------------------------------------------------------------------------

    def _require_all(self, action: str) -> tuple[Replica, ...]:
        replicas = self.replicas()
        down = [r for r in replicas if not self._reachable(r)]
        if down:
            raise UnavailableError(
                f"{action} needs every server of cluster {self.cluster}; unreachable: "
                + ", ".join(r.describe() for r in down)
                + " (start it, then run this again)"
            )
        return replicas

    def ensure_schema(self) -> None:
        """Create the database, the local tables on every shard and the Distributed tables, and add
        record fields a table lacks; every server must answer. Rollup histograms still text are
        refused, as on one server."""
        self._ensure_tables()
        self._refuse_text_histograms()

    def convert_histograms(self) -> list[str]:
        """On a cluster the rollup tables whose histograms are still text are dropped (their local and
        Distributed tables) and made again: ``hopscope store init`` then counts the stored traces into
        them (``backfill``: both tables empty). Returns the tables dropped."""
        self._ensure_tables()
        text = list(self._text_histograms())
        if text:
            text = [t.TABLE for t in ROLLUP_TYPES]  # the backfill fills both tables, only when both are empty
            statements = [f"DROP TABLE IF EXISTS {quote_identifier(self.database)}.{quote_identifier(name)}"
                          for table in text for name in (table, local_table(table))]  # fmt: skip
            if self._uses_on_cluster():
                on = f" ON CLUSTER {quote_identifier(self.cluster)}"
                self._run_on_cluster(sql + on for sql in statements)
            else:
                for replica in self._require_all("converting the rollup tables"):
                    for sql in statements:
                        self._node(replica.host, replica.port)._command(sql)
            self._ensure_tables()
        return text

    def _uses_on_cluster(self) -> bool:
        replicated = self.has_coordination()
        return replicated if self._on_cluster is None else self._on_cluster

    def _ensure_tables(self) -> None:
        if self.read_only:
            raise ConfigError(f"store {self.url} is open read-only: its schema cannot be created here")
        replicas = self._require_all("creating the schema")
        features = self.features
        for line in self.degradations():
            log.info("cluster %s, ClickHouse %s: schema degraded: %s", self.cluster, features.version, line)
        replicated = self.has_coordination()
        if replicated:
            self._require_coordination()
        on_cluster = replicated if self._on_cluster is None else self._on_cluster
        if on_cluster and not replicated:
            raise ConfigError(f"ON CLUSTER DDL on cluster {self.cluster} needs ZooKeeper in the servers' config")
        if on_cluster:
            self._run_on_cluster(self._schema_statements(features, replicated, on_cluster=True))
            # Columns a table lacks (a record field added since): once, ON CLUSTER, from the entry's view.
            existing = self._columns(self._node(*self._entry))
            self._run_on_cluster(self._column_statements(features, existing, on_cluster=True))
            return
        for replica in replicas:
            node = self._node(replica.host, replica.port)
            for sql in self._schema_statements(features, replicated, on_cluster=False):
                node._command(sql)
            for sql in self._column_statements(features, self._columns(node), on_cluster=False):
                node._command(sql)

    def schema_sql(self) -> list[str]:
        """The statements ``ensure_schema`` runs on an empty cluster (``hopscope store ddl``): once with
        ON CLUSTER when the servers have ZooKeeper, else on each server."""
        replicated = self.has_coordination()
        on_cluster = replicated if self._on_cluster is None else self._on_cluster
        return self._schema_statements(self.features, replicated, on_cluster=on_cluster)

    def describe(self) -> list[str]:
        """Lines for ``hopscope store status``: the cluster's servers and which of them answer."""
        status = self.status()
        shards = sorted({r.shard for r in status.replicas})
        kind = "replicated (ZooKeeper)" if self.has_coordination() else "not replicated (no ZooKeeper)"
        lines = [f"cluster {self.cluster}: {len(shards)} shards, {len(status.replicas)} servers, {kind}"]
        for replica in status.replicas:
            lines.append(f"  {replica.describe()}: {'DOWN' if replica in status.down else 'up'}")
        if status.missing_shards:
            lines.append(f"  missing shards (reads lack their rows): {', '.join(map(str, status.missing_shards))}")
        return lines

    def _schema_statements(self, features: ServerFeatures, replicated: bool, *, on_cluster: bool) -> list[str]:
        """CREATE DATABASE, then per table the local table and the Distributed table over it."""
        db = quote_identifier(self.database)
        cluster = self.cluster if on_cluster else None
        on = f" ON CLUSTER {quote_identifier(self.cluster)}" if on_cluster else ""
        statements = [f"CREATE DATABASE IF NOT EXISTS {db}{on}"]
        for spec in TABLES.values():
            local = local_table(spec.name)
            path = replication_path(self.database, spec.name) if replicated else None
            statements.append(
                create_table_sql(self.database, spec, features, self.ttl_days, table=local,
                                 on_cluster=cluster, replication_path=path)
            )  # fmt: skip
            statements.append(distributed_table_sql(self.database, spec, self.cluster, features, on_cluster))
        return statements

    def _column_statements(
        self, features: ServerFeatures, existing: dict[str, set[str]], *, on_cluster: bool
    ) -> Iterable[str]:
        """ALTER TABLE ADD COLUMN for each record column a local or Distributed table lacks."""
        cluster = self.cluster if on_cluster else None
        for spec in TABLES.values():
            for table in (local_table(spec.name), spec.name):
                have = existing.get(table, set())
                for col in spec.columns():
                    if col.name not in have:
                        log.info("adding column %s.%s on cluster %s", table, col.name, self.cluster)
                        yield add_column_sql(self.database, spec, col, features, table=table, on_cluster=cluster)

    def _columns(self, node: ServerStore) -> dict[str, set[str]]:
        columns: dict[str, set[str]] = {}
        for table, name in node._select(
            BoundQuery("SELECT table, name FROM system.columns WHERE database = {db:String}", {"db": self.database})
        ):
            columns.setdefault(str(table), set()).add(str(name))
        return columns

    def _run_on_cluster(self, statements: Iterable[str]) -> None:
        settings = {"distributed_ddl_task_timeout": DDL_TIMEOUT_S}
        for sql in statements:
            self._via_entry(lambda n: n._execute(sql, settings=settings))  # noqa: B023 (run at once)

    def check_schema(self) -> None:
        """The single-server checks on the entry server, after learning the cluster's servers (so a
        reader can go on through another one when the entry server stops)."""
        self.replicas()
        super().check_schema()

    def drop_schema(self) -> None:
        """Drop the database on every server of the cluster (every server must answer)."""
        if self.read_only:
            raise ConfigError(f"store {self.url} is open read-only: it cannot be dropped here")
        for replica in self._require_all("dropping the schema"):
            node = self._node(replica.host, replica.port)
            try:
                node._command(f"DROP DATABASE IF EXISTS {quote_identifier(self.database)}")
            except QueryError as exc:
                # 18.16 leaves a Distributed table's (empty) queue directories behind and then fails to
                # remove the database directory, after the database and its tables are gone.
                if "Directory not empty" not in str(exc) or self._database_exists(node):
                    raise
                log.info("%s: database %s dropped, its directory kept (%s)", replica.address, self.database, exc)

    def _database_exists(self, node: ServerStore) -> bool:
        rows = node._select(
            BoundQuery("SELECT count() FROM system.databases WHERE name = {db:String}", {"db": self.database})
        )
        return bool(rows[0][0])

    # --- per-shard reads (placement checks, tests) -----------------------------------------------

    def shard_rows(self, replica: Replica, table: str, column: str) -> list[Any]:
        """The values of one column of a local table on one server (placement checks)."""
        spec = TABLES.get(table)
        if spec is None:
            raise ConfigError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
        col = spec.column(column).name
        rows = self._node(replica.host, replica.port)._select(
            BoundQuery(
                f"SELECT {quote_identifier(col)} FROM {quote_identifier(self.database)}."
                f"{quote_identifier(local_table(spec.name))}",
                {},
            )
        )
        return [r[0] for r in rows]
