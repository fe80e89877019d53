"""``hopscope store init|status|ddl|reset``: create, inspect or drop the store's tables."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from hopscope.store import DEFAULT_URL, store_from_url
from hopscope.store.base import SqlStore
from hopscope.store.cluster import ClusterStore
from hopscope.store.schema import TABLES, schema_sql


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, (_, help_text) in ACTIONS.items():
        action = actions.add_parser(name, help=help_text, description=help_text)
        action.add_argument("--store", default=DEFAULT_URL, metavar="URL", help=f"store URL (default {DEFAULT_URL})")


def run(args: argparse.Namespace) -> int:
    store = store_from_url(args.store)
    try:
        ACTIONS[args.action][0](store)
    finally:
        store.close()
    return 0


def _init(store: SqlStore) -> None:
    from hopscope.store.rollup import backfill

    converted = store.convert_histograms()  # a store from before the histograms were arrays
    print(f"store {store.url}: ClickHouse {store.features.version}, tables {', '.join(TABLES)} ready")
    if converted:
        done = "dropped and made again" if isinstance(store, ClusterStore) else "converted in place"
        print(f"  rollups: the text histograms of {', '.join(converted)} {done} (now arrays)")
    counted = backfill(store)  # a store from before the rollups: its traces go into them once
    if counted:
        print(f"  rollups: {counted:,} stored traces counted into edges_1m and links_1m")
    if isinstance(store, ClusterStore):
        print("\n".join(store.describe()))
    for line in store.degradations():
        print(f"  degraded: {line}")


def _status(store: SqlStore) -> None:
    print(f"store {store.url}: ClickHouse {store.features.version}")
    for line in store.degradations():
        print(f"  degraded: {line}")
    if isinstance(store, ClusterStore):
        print("\n".join(store.describe()))
    store.check_schema()
    for table in TABLES:
        print(f"  {table:<10} {store.count(table):>12,} rows")


def _reset(store: SqlStore) -> None:
    store.drop_schema()
    print(f"store {store.url}: database {store.database} dropped")


def _ddl(store: SqlStore) -> None:
    statements = (
        store.schema_sql() if isinstance(store, ClusterStore)
        else schema_sql(store.database, store.features, store.ttl_days)
    )  # fmt: skip
    for statement in statements:
        print(statement + ";\n")


#: action -> (what it does to an open store, help line)
ACTIONS: dict[str, tuple[Callable[[SqlStore], None], str]] = {
    "init": (_init, "create the database and tables (idempotent), print degradations"),
    "status": (_status, "server version, features, degradations and row counts"),
    "reset": (_reset, "drop the database and everything in it"),
    "ddl": (_ddl, "print the DDL this server would get"),
}
