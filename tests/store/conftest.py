"""Stores for the tests: the real ClickHouse server started by deploy/clickhouse/start.sh, and chDB
in a temporary directory. Each test gets its own database, dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from hopscope.store import SqlStore
from hopscope.store.embedded import EmbeddedStore
from hopscope.store.server import ServerStore
from tests.conftest import CLICKHOUSE_URL, require_service

_CLICKHOUSE = urlsplit(CLICKHOUSE_URL)
CLICKHOUSE_HOST = _CLICKHOUSE.hostname or "127.0.0.1"
CLICKHOUSE_PORT = _CLICKHOUSE.port or 9000


def _database_name() -> str:
    return f"hopscope_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # chDB runs one engine per process, bound to one directory: all tests share this one.
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def server_store() -> Iterator[ServerStore]:
    require_service("ClickHouse", f"{CLICKHOUSE_HOST}:{CLICKHOUSE_PORT}")
    store = ServerStore(CLICKHOUSE_HOST, CLICKHOUSE_PORT, _database_name())
    try:
        yield store
    finally:
        store.drop_schema()
        store.close()


@pytest.fixture
def embedded_store(chdb_dir: Path) -> Iterator[EmbeddedStore]:
    store = EmbeddedStore(str(chdb_dir), _database_name())
    try:
        yield store
    finally:
        store.drop_schema()
        store.close()


@pytest.fixture(params=[pytest.param("server", marks=pytest.mark.clickhouse), "embedded"])
def store(request: pytest.FixtureRequest) -> SqlStore:
    """Each test that takes ``store`` runs on both backends."""
    name = "server_store" if request.param == "server" else "embedded_store"
    result: SqlStore = request.getfixturevalue(name)
    return result


@pytest.fixture
def ready_store(store: SqlStore) -> SqlStore:
    store.ensure_schema()
    return store
