"""Readers open the store read-only: nothing is created, a missing database, table or column is one
error naming ``hopscope store init``, and the backend itself refuses DDL and inserts."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from hopscope.cli import main
from hopscope.errors import ConfigError
from hopscope.records import Batch, Trace
from hopscope.store import QueryError, SqlStore, StoreMissingError, open_for_reading
from hopscope.store.base import BoundQuery
from tests.conftest import require_service
from tests.store.conftest import CLICKHOUSE_HOST, CLICKHOUSE_PORT


def test_missing_database_is_an_error_and_stays_missing(store: SqlStore) -> None:
    with pytest.raises(StoreMissingError) as caught:
        open_for_reading(store.url)
    assert str(caught.value) == (
        f"database {store.database} does not exist (create it with: hopscope store init --store {store.url})"
    )
    exists = BoundQuery("SELECT name FROM system.databases WHERE name = {db:String}", {"db": store.database})
    assert store._select(exists) == []


def test_missing_table_and_column(store: SqlStore) -> None:
    store.ensure_schema()
    db = store.database
    store._command(f"DROP TABLE `{db}`.`spans`")
    with pytest.raises(StoreMissingError, match=f"database {db} has no table spans .create it with: hopscope store"):
        open_for_reading(store.url)
    store.ensure_schema()
    store._command(f"ALTER TABLE `{db}`.`traces` DROP COLUMN `slowest_link_us`")
    with pytest.raises(StoreMissingError, match=f"table {db}.traces lacks column slowest_link_us .add it with"):
        open_for_reading(store.url)


def test_read_only_store_refuses_writes(ready_store: SqlStore) -> None:
    reader = open_for_reading(ready_store.url)
    try:
        assert reader.url == ready_store.url
        assert reader.query_traces(0, 2**63 - 1) == []
        with pytest.raises(ConfigError, match="read-only"):
            reader.ensure_schema()
        with pytest.raises(ConfigError, match="read-only"):
            reader.drop_schema()
        with pytest.raises(QueryError, match=r"(?i)readonly"):
            reader.insert("traces", Batch.from_records(Trace, [Trace(trace_id="a" * 32, start_ns=1, version=1)]))
        with pytest.raises(QueryError, match=r"(?i)readonly"):
            reader._command(f"CREATE DATABASE `{ready_store.database}_x`")
    finally:
        reader.close()
    assert ready_store.count("traces") == 0


def test_missing_chdb_directory_is_not_created(tmp_path: Path) -> None:
    where = tmp_path / "nothing-here"
    with pytest.raises(StoreMissingError, match=r"chDB directory .*nothing-here does not exist .create it with"):
        open_for_reading(f"chdb://{where}")
    assert not where.exists()


@pytest.mark.clickhouse
def test_serve_and_topology_on_a_missing_server_database(capsys: pytest.CaptureFixture[str]) -> None:
    require_service("ClickHouse", f"{CLICKHOUSE_HOST}:{CLICKHOUSE_PORT}")
    url = f"clickhouse://{CLICKHOUSE_HOST}:{CLICKHOUSE_PORT}/hs_typo_{uuid.uuid4().hex[:8]}"
    for command in (["serve", "--port", "1"], ["topology"], ["store", "status"]):
        assert main([*command, "--store", url]) == 2, command
        err = capsys.readouterr().err
        assert err.startswith("hopscope: error: database hs_typo_") and "hopscope store init --store" in err
    assert main(["store", "init", "--store", url]) == 0
    try:
        assert main(["topology", "--store", url]) == 0
    finally:
        assert main(["store", "reset", "--store", url]) == 0
