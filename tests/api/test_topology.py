"""The topology routes on both stores (ClickHouse server and chDB), with and without an inventory."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from hopscope.api.app import create_app
from hopscope.records import Batch, FlowRecord, Span, Trace
from hopscope.store import SqlStore
from hopscope.topology.inventory import from_data
from tests.topology.paths import CLIENT1, INVENTORY, T0, WEB_VIP, flow, lab_trace

NS_MAX = 2**63 - 1


def _seed(store: SqlStore) -> list[Trace]:
    made = [lab_trace(1, 1, 1), lab_trace(2, 2, 2, error=1), lab_trace(3, 1, 2, lost_on="hv-tap")]
    store.insert("traces", Batch.from_records(Trace, [t for t, _ in made]))
    store.insert("spans", Batch.from_records(Span, [s for _, spans in made for s in spans]))
    store.insert("flows", Batch.from_records(FlowRecord, [flow("client1-pod", CLIENT1, WEB_VIP, T0 + 1, 77)]))
    return [t for t, _ in made]


@pytest.fixture
def inv_client(store: SqlStore) -> TestClient:
    return TestClient(create_app(store, inventory=from_data(INVENTORY)), base_url="http://127.0.0.1")


def _links(body: dict[str, object]) -> dict[tuple[str, str], dict[str, object]]:
    return {(e["source"], e["target"]): e for e in body["links"]}  # type: ignore[attr-defined, index, misc]


def test_service_map_with_inventory(inv_client: TestClient, store: SqlStore) -> None:
    _seed(store)
    r = inv_client.get("/api/v1/topology/services")
    assert r.status_code == 200, r.text
    body = r.json()
    links = _links(body)
    assert set(links) == {
        ("pod:default/client1", "service:default/web"), ("pod:default/client2", "service:default/web"),
        ("service:default/web", "pod:default/server1"), ("service:default/web", "pod:default/server2"),
    }  # fmt: skip
    assert links["service:default/web", "pod:default/server2"]["requests"] == 2
    assert links["pod:default/client2", "service:default/web"]["errors"] == 1
    assert "flows" not in links["pod:default/client1", "service:default/web"]
    nodes = {n["id"]: n for n in body["nodes"]}
    assert nodes["service:default/web"]["layer"] == 1 and nodes["pod:default/server1"]["services"] == ["web"]
    # the window's whole minutes are answered for, rates per second of them
    second = inv_client.get("/api/v1/topology/services", params={"start_ns": T0, "end_ns": T0 + 10**9}).json()
    assert (second["graph"]["start_ns"], second["graph"]["end_ns"]) == (str(T0), str(T0 + 60 * 10**9))
    edge = _links(second)["service:default/web", "pod:default/server2"]
    assert edge["rate_per_s"] == edge["requests_per_s"] == round(2 / 60, 3)
    assert edge["p50_ms"] == round(edge["latency_p50_us"] / 1000, 3) and edge["error_rate"] == 0.5
    with_flows = _links(inv_client.get("/api/v1/topology/services", params={"flows": "true"}).json())
    assert with_flows["pod:default/client1", "service:default/web"]["flows"] == 1


def test_service_map_without_inventory(client: TestClient, store: SqlStore) -> None:
    _seed(store)
    body = client.get("/api/v1/topology/services").json()
    assert all(n["kind"] == "ip" for n in body["nodes"])
    assert (f"ip:{CLIENT1}", f"ip:{WEB_VIP}") in _links(body)


def test_point_topology_and_window(client: TestClient, store: SqlStore) -> None:
    _seed(store)
    body = client.get("/api/v1/topology/points").json()
    assert body["graph"]["traces"] == 3
    links = _links(body)
    assert links["nodeA-post-nat", "hv-tap"]["lost_pkts"] == 1
    assert links["nodeB", "server2-pod"]["traces"] == 2
    assert {n["id"]: n["layer"] for n in body["nodes"]}["server2-app"] == 7
    # every trace of the window's whole minutes: limit does not sample, a window inside the minute
    # the traces started in answers for that minute, the minutes before and after have none
    for params in ({"limit": 1}, {"start_ns": T0 + 2_500_000, "end_ns": T0 + 2_600_000}):
        assert client.get("/api/v1/topology/points", params=params).json()["graph"]["traces"] == 3
    for params in ({"end_ns": T0}, {"start_ns": T0 + 60 * 10**9}):
        empty = client.get("/api/v1/topology/points", params=params).json()
        assert empty["nodes"] == [] and empty["links"] == [] and empty["graph"]["traces"] == 0


def test_trace_path(client: TestClient, store: SqlStore) -> None:
    traces = _seed(store)
    r = client.get(f"/api/v1/topology/traces/{traces[2].trace_id}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [n["id"] for n in body["nodes"]][:3] == ["client1-pod", "nodeA-pre-nat", "nodeA-post-nat"]
    links = _links(body)
    assert links["nodeA-post-nat", "hv-tap"]["lost_pkts"] == 1
    assert links["nodeB", "server2-pod"]["slowest"] is True
    assert body["graph"]["trace_id"] == traces[2].trace_id
    assert client.get(f"/api/v1/topology/traces/{'e' * 32}").status_code == 404


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("services", {"start_ns": -1}),
        ("services", {"start_ns": 5, "end_ns": 5}),
        ("services", {"end_ns": NS_MAX + 1}),
        ("services", {"limit": 0}),
        ("services", {"limit": 10_001}),
        ("services", {"limit": "1; DROP TABLE traces"}),
        ("services", {"flows": "maybe"}),
        ("points", {"start_ns": "' OR 1=1 --"}),
        ("points", {"end_ns": 1, "start_ns": 2}),
        ("points", {"limit": -5}),
    ],
)
def test_hostile_params_are_refused(client: TestClient, store: SqlStore, path: str, params: dict[str, object]) -> None:
    _seed(store)
    r = client.get(f"/api/v1/topology/{path}", params=params)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("bad", ["xyz", "A" * 32, "0" * 33, "' OR 1=1 --", "%27%20OR%201%3D1", "../../etc/passwd"])
def test_hostile_trace_ids(client: TestClient, store: SqlStore, bad: str) -> None:
    _seed(store)
    assert client.get(f"/api/v1/topology/traces/{bad}").status_code in (404, 422)
    assert store.count("traces") == 3  # still there


def test_inventory_and_the_traces_of_an_edge(inv_client: TestClient, client: TestClient, store: SqlStore) -> None:
    """The UI lists the inventory for its entity filter, and a service map edge's traces are the search
    for both its ends: each edge's request count is what that search finds."""
    _seed(store)
    entities = {e["id"]: e for e in inv_client.get("/api/v1/topology/inventory").json()["entities"]}
    assert entities["service:default/web"]["addresses"] == [WEB_VIP]
    assert entities["pod:default/client1"] == {"id": "pod:default/client1", "kind": "pod", "label": "client1",
                                               "addresses": [CLIENT1]}  # fmt: skip
    assert client.get("/api/v1/topology/inventory").json() == {"entities": []}
    for (source, target), edge in _links(inv_client.get("/api/v1/topology/services").json()).items():
        found = inv_client.get("/api/v1/traces", params={"entity": [source, target]}).json()
        assert found["count"] == edge["requests"], (source, target)
