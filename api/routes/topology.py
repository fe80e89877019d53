"""Topology graphs as node-link JSON: ``GET /api/v1/topology/services`` (service map),
``GET /api/v1/topology/points`` (capture-point topology) and ``GET /api/v1/topology/traces/{trace_id}``
(one trace's hop path). The inventory (IP -> pod, Service, node) is handed to ``create_app`` and
lives on ``app.state``; without one, entities are bare addresses (``ip:<addr>``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel

from hopscope.api.auth import TRACES_READ_SCOPE
from hopscope.api.deps import HEAVY, StoreDep, TimeRangeDep
from hopscope.api.errors import COMMON_RESPONSES, NOT_FOUND
from hopscope.api.models import wide_as_strings
from hopscope.api.routes.traces import TRACE_ID
from hopscope.topology.graph import to_node_link
from hopscope.topology.inventory import EMPTY, Inventory
from hopscope.topology.source import load_point_topology, load_service_map, load_trace_path


def node_link_json(graph: dict[str, Any]) -> dict[str, Any]:
    """Node-link JSON with ids and ns times as strings (``hopscope.api.models``' rule)."""
    return {
        **graph,
        "graph": wide_as_strings(graph["graph"]),
        "nodes": [wide_as_strings(n) for n in graph["nodes"]],
        "links": [wide_as_strings(link) for link in graph["links"]],
    }


router = APIRouter(
    prefix="/api/v1/topology", tags=["topology"], responses=COMMON_RESPONSES, dependencies=[TRACES_READ_SCOPE]
)


def get_inventory(request: Request) -> Inventory:
    inventory: Inventory | None = getattr(request.app.state, "inventory", None)
    return inventory or EMPTY


InventoryDep = Annotated[Inventory, Depends(get_inventory)]


class GraphOut(BaseModel):
    """networkx node-link JSON: ``nodes`` carry ``id`` and ``layer``; ``links`` ``source``/``target``."""

    directed: bool
    multigraph: bool
    graph: dict[str, Any]
    nodes: list[dict[str, Any]]
    links: list[dict[str, Any]]


@router.get("/services", response_model=GraphOut, dependencies=[HEAVY])
def service_map(
    store: StoreDep,
    window: TimeRangeDep,
    inventory: InventoryDep,
    flows: Annotated[bool, Query(description="add L4 flows (connections, bytes, handshake RTT)")] = False,
) -> dict[str, Any]:
    """The service map of every trace that started in the whole minutes covering ``[start_ns, end_ns)``
    (the ``edges_1m`` rollup; ``graph.start_ns``/``end_ns`` say which minutes), with ``requests``,
    ``errors``, ``error_rate``, ``requests_per_s``, latency percentiles (``p50_ms``, ``p99_ms``, and
    ``latency_p50_us``/``p90``/``p99``, within 1 %) per edge; ``flows`` adds the first ``limit`` L4 flows."""
    graph = load_service_map(store, window.start_ns, window.end_ns, window.limit, inventory, flows)
    return node_link_json(to_node_link(graph))


@router.get("/points", response_model=GraphOut, dependencies=[HEAVY])
def point_topology(store: StoreDep, window: TimeRangeDep) -> dict[str, Any]:
    """Capture points of every trace that started in the whole minutes covering the window (the
    ``links_1m`` rollup): which follows which, per-link stats (latency percentiles within 1 %)."""
    return node_link_json(to_node_link(load_point_topology(store, window.start_ns, window.end_ns, window.limit)))


@router.get("/traces/{trace_id}", response_model=GraphOut, responses=NOT_FOUND)
def trace_path(
    store: StoreDep,
    trace_id: Annotated[str, Path(pattern=TRACE_ID.pattern, description="32 lower-case hex digits")],
) -> dict[str, Any]:
    """One trace's hop path: capture points in hop order, per-link latency, loss and link reason."""
    graph = load_trace_path(store, trace_id)
    if graph is None:
        raise HTTPException(404, f"no trace {trace_id}")
    return node_link_json(to_node_link(graph))


class EntityOut(BaseModel):
    id: str
    kind: str
    label: str
    addresses: list[str]


class InventoryOut(BaseModel):
    entities: list[EntityOut]


@router.get("/inventory", response_model=InventoryOut)
def inventory_entities(inventory: InventoryDep) -> InventoryOut:
    """The pods, Services and nodes of the server's inventory with their addresses (the search's
    ``entity`` filter takes these ids); empty without an inventory."""
    addrs: dict[str, list[str]] = {}
    for addr, entity in inventory.by_ip.items():
        addrs.setdefault(entity.id, []).append(addr)
    return InventoryOut(entities=[
        EntityOut(id=e.id, kind=e.kind, label=e.label, addresses=sorted(addrs.get(e.id, [])))
        for e in sorted(inventory.entities, key=lambda e: (e.kind, e.id))
    ])  # fmt: skip
