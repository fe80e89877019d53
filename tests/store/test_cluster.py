"""The store on a ClickHouse cluster (``clickhouse://host:port/db?cluster=NAME``), on the real cluster of
deploy/clickhouse-cluster/start.sh: two shards (ch1, ch2), and with ``--replicas`` ZooKeeper and a second
replica of shard 1 (ch3).

The correlator's store path writes the lab sample's traces through the cluster URL; the API reads them
back; each trace's rows sit on one shard. Servers are stopped and started again with the deploy scripts:
with a shard down the API answers from the other and names the missing shard, and rows written meanwhile
arrive once it is back (Distributed's on-disk queue); with a replica down reads and writes go on.

Distributed inserts are delivered asynchronously: tests wait (up to ``DELIVERY_S``) until the rows are
there, and fail naming what never arrived.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hopscope.api.app import create_app
from hopscope.api.shards import MISSING_SHARDS_HEADER
from hopscope.correlate.offline import Analysis, analyze_points, plan_points, store_tables
from hopscope.errors import ConfigError, UnavailableError
from hopscope.records import Batch, Span, Trace
from hopscope.store import open_for_reading, store_from_url
from hopscope.store.cluster import (
    TABLES,
    ClusterStore,
    Replica,
    distributed_table_sql,
    local_table,
    sharding_key,
)
from hopscope.store.features import ServerFeatures
from hopscope.store.query import BoundQuery

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "clickhouse-cluster"
SAMPLES = ROOT / "samples" / "lab"
DELIVERY_S = 90.0  # Distributed retries a returned shard with a growing pause
SERVER_OF_PORT = {9101: "ch1", 9102: "ch2", 9103: "ch3"}  # deploy/clickhouse-cluster/start.sh's servers

cluster_only = pytest.mark.clickhouse_cluster


def _db() -> str:
    return f"hs_cluster_{uuid.uuid4().hex[:10]}"


def _wait_for(what: str, done: Callable[[], bool]) -> None:
    """Wait until ``done()``; fail naming ``what`` if it never is."""
    deadline = time.monotonic() + DELIVERY_S
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not there after {DELIVERY_S:.0f} s")
        time.sleep(0.2)


def _settle(done: Callable[[], bool]) -> None:
    """Wait until ``done()``, at most ``DELIVERY_S``; the assertion after it says what differs."""
    deadline = time.monotonic() + DELIVERY_S
    while not done() and time.monotonic() < deadline:
        time.sleep(0.2)


def _links(points: Any) -> dict[tuple[str, str], int]:
    """A point topology's traces per link."""
    return {e: points.edges[e]["traces"] for e in points.edges}


def _server(name: str, action: str) -> None:
    """Stop or start one server of the cluster with the deploy scripts."""
    args = [str(DEPLOY / "stop.sh"), name] if action == "stop" else [str(DEPLOY / "start.sh"), "--node", name]
    subprocess.run(["bash", *args], check=True, capture_output=True, timeout=120)


def _server_name(replica: Replica) -> str:
    name = SERVER_OF_PORT.get(replica.port)
    if name is None:
        pytest.skip(f"{replica.address} is not a server of deploy/clickhouse-cluster: it cannot be stopped here")
    return name


def _synthetic(n: int, t0: int) -> tuple[list[Trace], list[Span]]:
    """``n`` traces of two spans each, with fresh ids."""
    traces, spans = [], []
    for i in range(n):
        tid = uuid.uuid4().hex
        traces.append(Trace(trace_id=tid, kind="l7", start_ns=t0 + i, end_ns=t0 + i + 1000, duration_us=1,
                            method="GET", path=f"/w{i}", status=200, hop_count=2, version=1))
        spans += [Span(trace_id=tid, span_id=f"{i:015x}{h}", hop_index=h, point=f"p{h}",
                       request_first_ns=t0 + i + h, version=1) for h in range(2)]
    return traces, spans  # fmt: skip


# --- DDL, without a server -----------------------------------------------------------------------


def test_every_table_has_a_sharding_key_that_keeps_its_rows_together() -> None:
    assert sharding_key(TABLES["spans"]) == sharding_key(TABLES["traces"]) == "cityHash64(trace_id)"
    assert sharding_key(TABLES["flows"]) == sharding_key(TABLES["requests"]) == "flow_id"
    for spec in TABLES.values():
        sql = distributed_table_sql("db", spec, "c1", ServerFeatures.from_version("18.16.1"), on_cluster=False)
        assert f"Distributed(`c1`, `db`, `{local_table(spec.name)}`, {sharding_key(spec)})" in sql, sql
        # event_time is an ALIAS: an INSERT through the Distributed table must not send it.
        assert "`event_time` DateTime('UTC') ALIAS" in sql


def test_cluster_url() -> None:
    store = store_from_url("clickhouse://10.0.0.1:9001/obs?cluster=east&ttl_days=3")
    assert isinstance(store, ClusterStore)
    assert (store.cluster, store.database, store.ttl_days) == ("east", "obs", 3)
    assert store.url == "clickhouse://10.0.0.1:9001/obs?cluster=east"
    store.close()
    with pytest.raises(ConfigError, match="invalid identifier"):
        store_from_url("clickhouse://10.0.0.1:9001/obs?cluster=a;drop")


def test_a_cluster_no_server_of_which_answers_is_503_with_the_shards_unknown() -> None:
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = store_from_url(f"clickhouse://127.0.0.1:{port}/obs?cluster=east")
    with TestClient(create_app(store, close_store=True), base_url="http://127.0.0.1") as client:
        r = client.get("/api/v1/traces")
        assert r.status_code == 503, r.text
        assert f"127.0.0.1:{port}" in r.json()["error"]["message"]
        assert r.headers[MISSING_SHARDS_HEADER] == "unknown"


# --- on the cluster ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def analysis() -> Analysis:
    manifest = str(SAMPLES / "manifest.json")
    return analyze_points(plan_points(manifest=manifest), None, manifest)


@pytest.fixture(scope="module")
def loaded(analysis: Analysis) -> Iterator[str]:
    """A database the correlator's store path filled with the lab sample's tables, all delivered (the
    outage tests add traces of their own to it)."""
    with _loaded_database(analysis) as url:
        yield url


@contextlib.contextmanager
def _loaded_database(analysis: Analysis) -> Iterator[str]:
    """A new database filled with the lab sample's tables through the cluster, all delivered; dropped after."""
    from tests.conftest import CLICKHOUSE_CLUSTER_URL, require_service

    require_service("ClickHouse-cluster", CLICKHOUSE_CLUSTER_URL.split("//", 1)[1].split("/", 1)[0])
    url = CLICKHOUSE_CLUSTER_URL.replace("/DB?", f"/{_db()}?")
    tables = analysis.tables()
    store_tables(url, tables)
    store = store_from_url(url)
    try:
        for table, batch in tables.items():
            rows = len(batch)
            _wait_for(f"{rows} rows of {table}", lambda: store.count(table) == rows)  # noqa: B023 (waited for here)
        yield url
    finally:
        store.drop_schema()
        store.close()


@pytest.fixture
def cluster_store(loaded: str) -> Iterator[ClusterStore]:
    store = store_from_url(loaded)
    assert isinstance(store, ClusterStore)
    yield store
    store.close()


def _client(url: str) -> TestClient:
    return TestClient(create_app(open_for_reading(url), close_store=True), base_url="http://127.0.0.1")


def _shard_of_traces(store: ClusterStore) -> dict[str, set[int]]:
    """trace id -> shards whose local spans and traces tables hold a row of it (first replicas)."""
    placed: dict[str, set[int]] = {}
    for replica in store.replicas():
        if replica.replica != 1:
            continue
        for table in ("spans", "traces"):
            for tid in store.shard_rows(replica, table, "trace_id"):
                placed.setdefault(tid, set()).add(replica.shard)
    return placed


@cluster_only
@pytest.mark.parametrize("how", ["cli", "per_server"])
def test_store_init_creates_local_and_distributed_tables_on_every_server(clickhouse_cluster: str, how: str) -> None:
    url = clickhouse_cluster.replace("/DB?", f"/{_db()}?")
    store = store_from_url(url)
    assert isinstance(store, ClusterStore)
    try:
        if how == "cli":  # ON CLUSTER when the servers have ZooKeeper
            run = subprocess.run([str(ROOT / ".venv/bin/hopscope"), "store", "init", "--store", url],
                                 capture_output=True, text=True, timeout=300)  # fmt: skip
            assert run.returncode == 0, run.stderr
            status = subprocess.run([str(ROOT / ".venv/bin/hopscope"), "store", "status", "--store", url],
                                    capture_output=True, text=True, timeout=120)  # fmt: skip
            assert status.returncode == 0, status.stderr
            assert "cluster hopscope: 2 shards" in status.stdout, status.stdout
        else:
            ClusterStore(store.host, store.port, store.database, store.cluster, on_cluster=False).ensure_schema()
        replicated = store.has_coordination()
        for replica in store.replicas():
            rows = store._node(replica.host, replica.port)._select(BoundQuery(
                "SELECT name, engine FROM system.tables WHERE database = {db:String}", {"db": store.database}))
            engines = {str(n): str(e) for n, e in rows}
            for name in TABLES:
                assert engines.get(name) == "Distributed", (replica, engines)
                want = "ReplicatedReplacingMergeTree" if replicated else "ReplacingMergeTree"
                assert engines.get(local_table(name)) == want, (replica, engines)  # fmt: skip
        store.check_schema()
    finally:
        store.drop_schema()
        store.close()


@cluster_only
def test_an_unknown_cluster_is_named(clickhouse_cluster: str) -> None:
    store = store_from_url(clickhouse_cluster.replace("cluster=hopscope", "cluster=nowhere"))
    with pytest.raises(ConfigError, match="no cluster 'nowhere'"):
        store.ensure_schema()
    store.close()


@cluster_only
def test_correlator_writes_through_the_cluster_and_the_api_reads_every_trace(
    analysis: Analysis, loaded: str, cluster_store: ClusterStore
) -> None:
    tables = analysis.tables()
    want = set(tables["traces"].columns["trace_id"])
    with _client(loaded) as client:
        r = client.get("/api/v1/traces", params={"limit": 1000})
        assert r.status_code == 200, r.text
        assert MISSING_SHARDS_HEADER not in r.headers
        assert {t["trace_id"] for t in r.json()["traces"]} == set(want)
        spans_by_trace: dict[str, int] = {}
        for tid in tables["spans"].columns["trace_id"]:
            spans_by_trace[tid] = spans_by_trace.get(tid, 0) + 1
        for tid in list(want)[:10]:
            body = client.get(f"/api/v1/traces/{tid}").json()
            assert body["trace"]["trace_id"] == tid
            assert len(body["spans"]) == spans_by_trace[tid]
        health = client.get("/healthz").json()
        assert health["cluster"]["shards"] == 2 and health["cluster"]["missing_shards"] == []


@cluster_only
def test_a_search_on_the_traces_spans_reads_each_shards_own_spans(analysis: Analysis, loaded: str) -> None:
    """A filter on the spans of a trace (hop kind, an address) is an ``IN (SELECT ...)`` over a second
    Distributed table: the cluster answers it shard by shard, with every matching trace."""
    tables = analysis.tables()
    spans = tables["spans"].columns
    want = {tid for tid, kind in zip(spans["trace_id"], spans["hop_kind"], strict=True) if kind == "proxy"}
    assert want, "the lab sample has proxy hops"
    with _client(loaded) as client:
        r = client.get("/api/v1/traces", params={"limit": 1000, "hop_kind": "proxy"})
        assert r.status_code == 200, r.text
        assert {t["trace_id"] for t in r.json()["traces"]} == want


@cluster_only
def test_one_trace_lives_on_one_shard_and_one_flow_with_its_requests(loaded: str, cluster_store: ClusterStore) -> None:
    placed = _shard_of_traces(cluster_store)
    assert placed, "no trace rows on any shard"
    split = {tid: shards for tid, shards in placed.items() if len(shards) != 1}
    assert not split, f"traces with rows on several shards: {split}"
    assert {s for shards in placed.values() for s in shards} == {1, 2}, "every trace on one shard: not sharded"
    flows: dict[int, int] = {}
    for replica in cluster_store.replicas():
        if replica.replica == 1:
            for fid in cluster_store.shard_rows(replica, "flows", "flow_id"):
                assert flows.setdefault(fid, replica.shard) == replica.shard, f"flow {fid} on two shards"
    for replica in cluster_store.replicas():
        if replica.replica == 1:
            for fid in cluster_store.shard_rows(replica, "requests", "flow_id"):
                assert flows.get(fid, replica.shard) == replica.shard, f"request of flow {fid} away from its flow"


@cluster_only
def test_a_shard_down_the_api_answers_with_the_rest_and_names_it_and_writes_arrive_later(
    loaded: str, cluster_store: ClusterStore
) -> None:
    placed = _shard_of_traces(cluster_store)
    shard2 = [r for r in cluster_store.replicas() if r.shard == 2]
    assert len(shard2) == 1, "shard 2 has one server in deploy/clickhouse-cluster"
    server = _server_name(shard2[0])
    on1 = {tid for tid, shards in placed.items() if shards == {1}}
    on2 = {tid for tid, shards in placed.items() if shards == {2}}
    before = cluster_store.count("traces")
    spans_before = cluster_store.count("spans")
    traces, spans = _synthetic(40, 1_800_000_000_000_000_000)
    _server(server, "stop")
    try:
        with _client(loaded) as client:
            r = client.get("/api/v1/traces", params={"limit": 1000})
            assert r.status_code == 200, r.text
            assert r.headers[MISSING_SHARDS_HEADER] == "2"
            assert {t["trace_id"] for t in r.json()["traces"]} == on1
            found = client.get(f"/api/v1/traces/{next(iter(on1))}")
            assert found.status_code == 200 and found.headers[MISSING_SHARDS_HEADER] == "2"
            lost = client.get(f"/api/v1/traces/{next(iter(on2))}")
            assert lost.status_code == 404 and lost.headers[MISSING_SHARDS_HEADER] == "2"
            missing = client.get("/healthz").json()["cluster"]["missing_shards"]
            assert missing == [{"shard": 2, "replicas": [shard2[0].address]}]
        # Writes go on: shard 2's rows wait in the entry server's queue.
        assert cluster_store.insert("traces", Batch.from_records(Trace, traces)) == len(traces)
        assert cluster_store.insert("spans", Batch.from_records(Span, spans)) == len(spans)
        with pytest.raises(UnavailableError, match=f"shard 2 replica 1 at {shard2[0].address}"):
            cluster_store.ensure_schema()
    finally:
        _server(server, "start")
    # Each Distributed table drains its own queue: the traces may arrive before their spans.
    _wait_for(f"{len(traces)} traces written while shard 2 was down",
              lambda: cluster_store.count("traces") == before + len(traces))  # fmt: skip
    _wait_for(f"{len(spans)} spans written while shard 2 was down",
              lambda: cluster_store.count("spans") == spans_before + len(spans))  # fmt: skip
    new = {t.trace_id for t in traces}
    new_placed = _shard_of_traces(cluster_store)
    assert {s for tid in new for s in new_placed[tid]} == {1, 2}, "the new traces were not spread over both shards"
    with _client(loaded) as client:
        r = client.get("/api/v1/traces", params={"limit": 1000})
        assert MISSING_SHARDS_HEADER not in r.headers
        assert new <= {t["trace_id"] for t in r.json()["traces"]}
        tid = next(t for t in new if new_placed[t] == {2})
        assert len(client.get(f"/api/v1/traces/{tid}").json()["spans"]) == 2


@cluster_only
def test_a_replica_down_reads_and_writes_go_on(loaded: str, cluster_store: ClusterStore) -> None:
    shard1 = [r for r in cluster_store.replicas() if r.shard == 1]
    if len(shard1) < 2 or not cluster_store.has_coordination():
        message = "needs two replicas of shard 1 under ZooKeeper: deploy/clickhouse-cluster/start.sh --replicas"
        if os.environ.get("HOPSCOPE_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    # Stop the server the URL names: the store goes on through another server of the cluster too.
    entry = next(r for r in shard1 if (r.host, r.port) == (cluster_store.host, cluster_store.port))
    other = next(r for r in shard1 if r != entry)
    server = _server_name(entry)
    all_traces = set(_shard_of_traces(cluster_store))
    before = cluster_store.count("traces")
    traces, spans = _synthetic(40, 1_900_000_000_000_000_000)
    reader = open_for_reading(loaded)
    _server(server, "stop")
    try:
        app = create_app(reader, close_store=True)
        with TestClient(app, base_url="http://127.0.0.1") as client:
            r = client.get("/api/v1/traces", params={"limit": 1000})
            assert r.status_code == 200, r.text
            assert MISSING_SHARDS_HEADER not in r.headers
            assert {t["trace_id"] for t in r.json()["traces"]} == all_traces
            down = client.get("/healthz").json()["cluster"]["replicas_down"]
            assert down == [{"shard": 1, "replica": entry.replica, "address": entry.address}]
        assert cluster_store.insert("traces", Batch.from_records(Trace, traces)) == len(traces)
        assert cluster_store.insert("spans", Batch.from_records(Span, spans)) == len(spans)
        _wait_for("traces written with a replica down", lambda: cluster_store.count("traces") == before + len(traces))
    finally:
        _server(server, "start")
    # The replica that was down catches up from the other one.
    new = {t.trace_id for t in traces}
    on_shard1 = {tid for tid in cluster_store.shard_rows(other, "traces", "trace_id") if tid in new}
    assert on_shard1, "no new trace went to shard 1"
    _wait_for("the returned replica's copy of the new traces",
              lambda: on_shard1 <= set(cluster_store.shard_rows(entry, "traces", "trace_id")))  # fmt: skip


@cluster_only
def test_the_rollups_through_the_cluster_count_every_trace_once(analysis: Analysis) -> None:
    """The per-minute rollups go through Distributed tables sharded by segment: the service map and
    the point topology read through the cluster equal the builds from every trace, and the lab sample
    stored a second time is not counted again (in a database of its own: the outage tests write
    traces of their own into the shared one)."""
    with _loaded_database(analysis) as loaded:
        cluster_store = store_from_url(loaded)
        assert isinstance(cluster_store, ClusterStore)
        try:
            _check_rollups(loaded, cluster_store, analysis)
        finally:
            cluster_store.close()


def _check_rollups(loaded: str, cluster_store: ClusterStore, analysis: Analysis) -> None:
    from hopscope.topology.source import (
        load_point_topology,
        load_point_topology_of_traces,
        load_service_map,
        load_service_map_of_traces,
    )

    traces = len(analysis.tables()["traces"])
    _wait_for("the rollup rows", lambda: load_service_map(cluster_store, 0, 2**63 - 1, 1).graph["traces"] == traces)
    services = load_service_map(cluster_store, 0, 2**63 - 1, 1)
    window = (services.graph["start_ns"], services.graph["end_ns"])
    exact = load_service_map_of_traces(cluster_store, *window, 10_000)
    exact_points = load_point_topology_of_traces(cluster_store, *window, 10_000)
    requests = {e: services.edges[e]["requests"] for e in services.edges}
    assert requests == {e: exact.edges[e]["requests"] for e in exact.edges}
    # The point topology's rollup is a Distributed table of its own (its link rows and its trace count
    # on shards of their own): its rows arrive apart from the service map's. Wait for them, then compare.
    want = ({e: exact_points.edges[e]["traces"] for e in exact_points.edges}, traces)

    def point_rollup() -> tuple[dict[tuple[str, str], int], int]:
        points = load_point_topology(cluster_store, 0, 2**63 - 1)
        return _links(points), points.graph["traces"]

    _settle(lambda: point_rollup() == want)
    assert point_rollup() == want
    assert exact_points.graph["traces"] == traces
    store_tables(loaded, analysis.tables())  # a replay: every trace is held already
    time.sleep(1)  # the Distributed tables deliver asynchronously
    assert load_service_map(cluster_store, 0, 2**63 - 1, 1).graph["traces"] == traces
