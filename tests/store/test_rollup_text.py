"""Stores made when the rollups' histograms were texts in array syntax (``"[3,17]"``): writers and
readers refuse them with the command that converts them, and ``hopscope store init`` converts them
in place on both stores, every row kept, so the graphs read afterwards are the ones read before; on
a cluster it makes the two tables again and counts the stored traces into them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from hopscope.records import Batch, Span, Trace
from hopscope.store import SqlStore, open_for_reading, store_from_url
from hopscope.store.base import StoreMissingError
from hopscope.store.cluster import ClusterStore, local_table
from hopscope.store.query import BoundQuery
from hopscope.store.rollup import ROLLUP_TYPES
from hopscope.store.schema import create_table_sql, quote_identifier, table_spec
from hopscope.topology.graph import to_node_link
from hopscope.topology.source import load_point_topology, load_service_map
from tests.store.test_rollup import ALL, NS_MAX, check_window, generated


def _as_text_store(store: SqlStore) -> None:
    """Turn the rollup tables into the older layout: the same rows, histogram columns as text."""
    db = quote_identifier(store.database)
    for record_type in ROLLUP_TYPES:
        spec = table_spec(record_type.TABLE)
        name, old = quote_identifier(spec.name), quote_identifier(f"{spec.name}_older")
        ddl = create_table_sql(store.database, spec, store.features, None, table=f"{spec.name}_older")
        store._command(ddl.replace("Array(Int32)", "String").replace("Array(UInt64)", "String"))
        values = [f"toString({quote_identifier(c.name)})" if c.type.is_array else quote_identifier(c.name)
                  for c in spec.columns()]  # fmt: skip
        store._command(f"INSERT INTO {db}.{old} SELECT {', '.join(values)} FROM {db}.{name}")
        store._command(f"DROP TABLE {db}.{name}")
        store._command(f"RENAME TABLE {db}.{old} TO {db}.{name}")


def _graphs(store: SqlStore) -> list[object]:
    return [to_node_link(load_service_map(store, 0, NS_MAX, ALL)), to_node_link(load_point_topology(store, 0, NS_MAX))]


def test_a_store_with_text_histograms_is_refused_then_converted_by_store_init(
    store: SqlStore, capsys: pytest.CaptureFixture[str]
) -> None:
    from hopscope.cli import main

    traces, spans = generated(200, 12, seed=11)
    store.ensure_schema()
    store.insert("spans", Batch.from_records(Span, spans))
    store.insert("traces", Batch.from_records(Trace, traces))
    store.rollups.flush(close_all=True)
    before = _graphs(store)
    _as_text_store(store)
    rows = store.count("edges_1m"), store.count("links_1m")
    query = BoundQuery(f"SELECT duration_keys FROM {quote_identifier(store.database)}.edges_1m LIMIT 1", {})
    text = store._select(query)[0][0]
    assert isinstance(text, str) and text.startswith("[")  # the older layout: text in array syntax

    with pytest.raises(StoreMissingError, match=r"edges_1m, links_1m are text.*hopscope store init"):
        store.ensure_schema()  # a writer: nothing written in the old layout
    with pytest.raises(StoreMissingError, match="hopscope store init"):
        open_for_reading(store.url)  # a reader: no answer from the old layout

    assert main(["store", "init", "--store", store.url]) == 0
    assert "text histograms of edges_1m, links_1m converted in place" in capsys.readouterr().out
    assert (store.count("edges_1m"), store.count("links_1m")) == rows
    assert _graphs(store) == before
    check_window(store, 0, NS_MAX)  # and both still equal the builds from every trace
    store.ensure_schema()
    assert store.convert_histograms() == []  # converted once: a second init has nothing to do
    assert main(["store", "init", "--store", store.url]) == 0
    assert "converted" not in capsys.readouterr().out


def _as_text_cluster(store: ClusterStore) -> None:
    """The older layout on a cluster: both rollup tables (local and Distributed) made again with text
    histogram columns (empty: the cluster's conversion counts the stored traces into them again)."""
    db = quote_identifier(store.database)
    names = [n for t in ROLLUP_TYPES for n in (t.TABLE, local_table(t.TABLE))]
    drops = [f"DROP TABLE IF EXISTS {db}.{quote_identifier(n)}" for n in names]
    on = store._uses_on_cluster()
    creates = [
        sql.replace("Array(Int32)", "String").replace("Array(UInt64)", "String")
        for sql in store._schema_statements(store.features, store.has_coordination(), on_cluster=on)
        if any(f"{db}.{quote_identifier(n)}" in sql for n in names)
    ]  # fmt: skip
    if on:
        store._run_on_cluster([f"{sql} ON CLUSTER {quote_identifier(store.cluster)}" for sql in drops] + creates)
    else:
        for replica in store.replicas():
            for sql in drops + creates:
                store._node(replica.host, replica.port)._command(sql)


@pytest.mark.clickhouse_cluster
def test_a_cluster_with_text_histograms_gets_its_rollups_counted_again_by_store_init(
    clickhouse_cluster: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a cluster ``store init`` drops the rollup tables whose histograms are text, makes them
    again with arrays and counts the stored traces into them: the graphs equal the builds from every
    trace again."""
    from hopscope.cli import main

    url = clickhouse_cluster.replace("DB", f"hs_text_{uuid.uuid4().hex[:10]}")
    store = store_from_url(url)
    assert isinstance(store, ClusterStore)
    traces, spans = generated(150, 6, seed=13)
    try:
        store.ensure_schema()
        store.insert("spans", Batch.from_records(Span, spans))
        store.insert("traces", Batch.from_records(Trace, traces))
        store.rollups.flush(close_all=True)
        _wait(lambda: (store.count("traces"), store.count("spans")) == (len(traces), len(spans)))
        _as_text_cluster(store)
        with pytest.raises(StoreMissingError, match="hopscope store init"):
            store.ensure_schema()
        assert main(["store", "init", "--store", url]) == 0
        out = capsys.readouterr().out
        assert "text histograms of edges_1m, links_1m dropped and made again" in out
        assert f"rollups: {len(traces)} stored traces counted" in out
        _wait(lambda: load_service_map(store, 0, NS_MAX, ALL).graph["traces"] == len(traces))
        _wait(lambda: load_point_topology(store, 0, NS_MAX).graph["traces"] == len(traces))
        # every link row delivered (the links' Distributed table routes its rows apart from the edges')
        _wait(lambda: _settled(store))
        check_window(store, 0, NS_MAX)
    finally:
        store.drop_schema()
        store.close()


def _settled(store: SqlStore) -> bool:
    from tests.store.test_rollup import load_point_topology_of_traces

    points, exact = load_point_topology(store, 0, NS_MAX), load_point_topology_of_traces(store, 0, NS_MAX, ALL)
    return {e: points.edges[e]["traces"] for e in points.edges} == {e: exact.edges[e]["traces"] for e in exact.edges}


def _wait(done: Callable[[], bool], seconds: float = 90.0) -> None:
    """Wait for the cluster's asynchronous delivery until ``done()``; fail if it never is."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"not delivered after {seconds:.0f} s")
        time.sleep(0.2)
