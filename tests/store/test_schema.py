"""DDL generation, server features, URL parsing and query building: no server needed."""

from __future__ import annotations

import pytest

from hopscope.errors import ConfigError
from hopscope.records import RECORD_TYPES, ColumnType, FlowRecord
from hopscope.store import store_from_url
from hopscope.store.features import FEATURE_SINCE, ServerFeatures
from hopscope.store.query import newest_rows, select_lookup, select_range, to_pyformat
from hopscope.store.rollup import ROLLUP_TYPES
from hopscope.store.schema import TABLES, create_table_sql, quote_identifier, schema_sql, table_spec

OLD = ServerFeatures.from_version("18.16.1")
NEW = ServerFeatures.from_version("26.9.2.1")


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("18.16.1", set()),
        ("19.3.4.1", {"low_cardinality", "codecs", "ipv4_type"}),
        ("20.1.2", set(FEATURE_SINCE)),
        ("26.9.2.1", set(FEATURE_SINCE)),
    ],
)
def test_features_from_version(version: str, expected: set[str]) -> None:
    features = ServerFeatures.from_version(version)
    assert {name for name in FEATURE_SINCE if getattr(features, name)} == expected
    assert len(features.degradations()) == len(FEATURE_SINCE) - len(expected)


@pytest.mark.parametrize("version", ["", "unknown", "v18"])
def test_features_reject_garbage(version: str) -> None:
    with pytest.raises(ConfigError):
        ServerFeatures.from_version(version)


@pytest.mark.parametrize("table", list(TABLES))
def test_ddl_has_every_record_field(table: str) -> None:
    spec = table_spec(table)
    for features in (OLD, NEW):
        ddl = create_table_sql("hopscope", spec, features, ttl_days=7)
        for col in spec.columns():
            assert f"`{col.name}` {col.type.clickhouse}" in ddl or f"`{col.name}` LowCardinality" in ddl
        assert "ReplacingMergeTree" in ddl
        assert "PARTITION BY toYYYYMMDD(`event_time`)" in ddl


def test_old_server_gets_plain_ddl() -> None:
    for statement in schema_sql("hopscope", OLD, ttl_days=7):
        for feature_word in ("LowCardinality", "TTL", "CODEC", "INDEX", "DateTime64", "IPv4"):
            assert feature_word not in statement


def test_new_server_gets_features() -> None:
    ddl = create_table_sql("hopscope", table_spec("flows"), NEW, ttl_days=7)
    assert "`point` LowCardinality(String)" in ddl
    assert "`start_ns` UInt64 CODEC(Delta, ZSTD(1))" in ddl
    assert "INDEX bf_syn_seq `syn_seq` TYPE bloom_filter" in ddl
    assert ddl.endswith("TTL `event_time` + toIntervalDay(7)")
    assert "TTL" not in create_table_sql("hopscope", table_spec("flows"), NEW, ttl_days=None)


def test_record_types_all_have_tables() -> None:
    assert {t.TABLE for t in (*RECORD_TYPES, *ROLLUP_TYPES)} == set(TABLES)
    assert all(table_spec(t.TABLE).record_type is t for t in (*RECORD_TYPES, *ROLLUP_TYPES))


@pytest.mark.parametrize("name", ["flows; DROP TABLE x", "a`b", "", "1abc", "x" * 65, "flows\n"])
def test_identifiers_are_checked(name: str) -> None:
    with pytest.raises(ConfigError):
        quote_identifier(name)


@pytest.mark.parametrize("table", ["flowz", "system.tables", "flows; --"])
def test_unknown_tables_are_refused(table: str) -> None:
    with pytest.raises(ConfigError):
        table_spec(table)


@pytest.mark.parametrize(
    "filters",
    [
        {"no_such_column": 1},
        {"point; DROP TABLE flows": "x"},
        {"proto": "6"},  # text for a number column
        {"proto": 256},  # out of UInt8
        {"proto": True},  # bool is not an int here
        {"point": 5},  # number for a text column
        {"syn_seq": -1},
        {"proto__like": 6},  # operator not in the allow-list
        {"proto__gte": [1, 2]},  # a list only with = or !=
        {"proto": []},
    ],
)
def test_bad_filters_fail_when_built(filters: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        select_range("hopscope", table_spec("flows"), 0, 1, filters, 10)  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [0, -1, 10**7, True])
def test_bad_limits(limit: int) -> None:
    with pytest.raises(ConfigError):
        select_range("hopscope", table_spec("flows"), 0, 1, None, limit)


def test_values_never_enter_the_sql_text() -> None:
    nasty = "x' OR 1=1 -- {p1:String} %(p0)s"
    query = select_range("hopscope", table_spec("flows"), 0, 10, {"point": nasty, "proto": [6, 17]}, 5)
    assert nasty not in query.sql
    assert query.params == {"p0": 0, "p1": 10, "p2": nasty, "p3": 6, "p4": 17}
    assert query.record_type is FlowRecord
    assert "`proto` IN ({p3:UInt8}, {p4:UInt8})" in query.sql
    pyformat = to_pyformat(query.sql)
    assert "%(p2)s" in pyformat and "{p" not in pyformat


def test_pyformat_escapes_percent() -> None:
    assert to_pyformat("SELECT '100%' WHERE a = {p0:String}") == "SELECT '100%%' WHERE a = %(p0)s"


def test_store_urls(tmp_path: object) -> None:
    from hopscope.store.server import ServerStore

    server = store_from_url("clickhouse://10.1.2.3:9123/obs?ttl_days=3")
    assert isinstance(server, ServerStore)
    assert (server.host, server.port, server.database, server.ttl_days) == ("10.1.2.3", 9123, "obs", 3)
    assert store_from_url("clickhouse://127.0.0.1").url == "clickhouse://127.0.0.1:9000/hopscope"
    server.close()


@pytest.mark.parametrize(
    "url",
    ["mysql://x/y", "chdb://", "clickhouse://h:1/db?ttl_days=zero", "clickhouse://h:1/db?ttl_days=0",
     "clickhouse://h:1/bad-name", "clickhouse://h:99999/db"],
)
def test_bad_store_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        store_from_url(url)


def test_text_columns_are_the_only_low_cardinality_candidates() -> None:
    from hopscope.store.schema import LOW_CARDINALITY

    for spec in TABLES.values():
        for col in spec.columns():
            if col.name in LOW_CARDINALITY:
                assert col.type is ColumnType.STR, col.name


@pytest.mark.parametrize("table", ["spans", "traces"])
def test_tables_read_by_trace_id_have_small_granules(table: str) -> None:
    """A trace lookup decompresses one granule per column and part: 1024 rows, not the default 8192."""
    for features in (ServerFeatures.from_version("18.16.1"), NEW):
        assert create_table_sql("hopscope", table_spec(table), features, None).endswith(
            "\nSETTINGS index_granularity = 1024"
        )
    assert "SETTINGS" not in create_table_sql("hopscope", table_spec("flows"), NEW, None)


def test_newest_rows_keeps_the_highest_version_of_each_key_in_order() -> None:
    spec = table_spec("spans")
    names = [c.name for c in spec.columns()]

    def row(span_id: str, hop: int, version: int) -> tuple[object, ...]:
        values = {"trace_id": "t", "span_id": span_id, "hop_index": hop, "version": version}
        return tuple(values.get(n, 0) for n in names)

    rows = [row("b", 1, 1), row("a", 0, 2), row("b", 1, 3), row("a", 0, 1), row("c", 2, 1)]
    assert newest_rows(spec, rows, ["hop_index", "span_id"]) == [row("a", 0, 2), row("b", 1, 3), row("c", 2, 1)]
    assert newest_rows(spec, [], ["hop_index"]) == []


def test_lookups_need_a_version_column_and_a_filter() -> None:
    """A table whose last insert wins (no version column) cannot be deduplicated after reading."""
    with pytest.raises(ConfigError, match="no version column"):
        select_lookup("hopscope", table_spec("requests"), {"request_id": 1})
    with pytest.raises(ConfigError, match="no version column"):
        newest_rows(table_spec("requests"), [], ["request_id"])
    with pytest.raises(ConfigError, match="at least one filter"):
        select_lookup("hopscope", table_spec("spans"), {})
    query = select_lookup("hopscope", table_spec("spans"), {"trace_id": "t"})
    assert " PREWHERE `trace_id` = {p0:String} SETTINGS max_threads = 1" in query.sql
    assert query.params == {"p0": "t"}
