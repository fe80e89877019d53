"""``hopscope store init|status|reset``: create, inspect or drop the store's tables."""

from __future__ import annotations

import argparse
from typing import Any

from hopscope.store import DEFAULT_URL, store_from_url
from hopscope.store.schema import TABLES, schema_sql


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("store", help="create and inspect the store (ClickHouse server or chDB)")
    sub = parser.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    for name, func, help_text in (
        ("init", _init, "create the database and tables (idempotent), print degradations"),
        ("status", _status, "server version, features, degradations and row counts"),
        ("reset", _reset, "drop the database and everything in it"),
        ("ddl", _ddl, "print the DDL this server would get"),
    ):
        action = sub.add_parser(name, help=help_text)
        action.add_argument("--store", default=DEFAULT_URL, help=f"store URL (default {DEFAULT_URL})")
        action.set_defaults(func=func)


def _init(args: argparse.Namespace) -> int:
    store = store_from_url(args.store)
    try:
        store.ensure_schema()
        print(f"store {store.url}: ClickHouse {store.features.version}, tables {', '.join(TABLES)} ready")
        for line in store.degradations():
            print(f"  degraded: {line}")
    finally:
        store.close()
    return 0


def _status(args: argparse.Namespace) -> int:
    store = store_from_url(args.store)
    try:
        print(f"store {store.url}: ClickHouse {store.features.version}")
        for line in store.degradations():
            print(f"  degraded: {line}")
        store.ensure_schema()
        for table in TABLES:
            print(f"  {table:<10} {store.count(table):>12,} rows")
    finally:
        store.close()
    return 0


def _reset(args: argparse.Namespace) -> int:
    store = store_from_url(args.store)
    try:
        store.drop_schema()
        print(f"store {store.url}: database {store.database} dropped")
    finally:
        store.close()
    return 0


def _ddl(args: argparse.Namespace) -> int:
    store = store_from_url(args.store)
    try:
        for statement in schema_sql(store.database, store.features, store.ttl_days):
            print(statement + ";\n")
    finally:
        store.close()
    return 0
