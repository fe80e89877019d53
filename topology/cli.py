"""``hopscope topology``: the service map and the capture-point topology of a store's traces."""

from __future__ import annotations

import argparse
import json
from typing import Any

import networkx as nx

from hopscope.store import DEFAULT_URL

NS_MAX = 2**63 - 1


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "topology", help="print the service map and the capture-point (path) topology of stored traces"
    )
    parser.add_argument("--store", default=DEFAULT_URL, help=f"store URL (default {DEFAULT_URL})")
    parser.add_argument("--inventory", help="YAML inventory or kubectl get pods,services,nodes -A -o json")
    parser.add_argument("--start-ns", type=int, default=0, help="window start, ns since the epoch")
    parser.add_argument("--end-ns", type=int, default=NS_MAX, help="window end (exclusive), ns")
    parser.add_argument("--limit", type=int, default=10_000, help="most traces (and flows) read")
    parser.add_argument("--flows", action="store_true", help="add L4 flows to the service map")
    parser.add_argument("--format", choices=("text", "json", "dot"), default="text")
    parser.set_defaults(func=run_topology)


def _us(v: int | None) -> str:
    return "-" if v is None else str(v)


def services_text(graph: nx.DiGraph) -> list[str]:
    g = graph.graph
    lines = [
        f"service map: {g['traces']} traces over {g['window_s']:.3f} s, {graph.number_of_nodes()} entities",
        f"  {'client':<28} {'server':<28} {'req':>5} {'err':>4} {'req/s':>8} {'p50/p90/p99 us':>22}  proto",
    ]
    for u, v, a in sorted(graph.edges(data=True), key=lambda e: (-e[2]["requests"], e[0], e[1])):
        lat = f"{_us(a['latency_p50_us'])}/{_us(a['latency_p90_us'])}/{_us(a['latency_p99_us'])}"
        label_u, label_v = graph.nodes[u]["label"], graph.nodes[v]["label"]
        rate = "-" if a["rate_per_s"] is None else f"{a['rate_per_s']:.2f}"
        lines.append(
            f"  {label_u:<28} {label_v:<28} {a['requests']:>5} {a['errors']:>4} {rate:>8}"
            f" {lat:>22}  {','.join(a['protocols'])}"
            + (f"  flows={a['flows']} bytes={a['flow_bytes']}" if "flows" in a else "")
        )
    return lines


def points_text(graph: nx.DiGraph) -> list[str]:
    lines = [
        f"capture-point topology: {graph.graph['traces']} traces, {graph.number_of_nodes()} points",
        f"  {'link':<36} {'traces':>6} {'req p50/p90/p99 us':>20} {'resp p50/p90/p99 us':>20} {'lost':>5}  reasons",
    ]
    layer = nx.get_node_attributes(graph, "layer")
    for u, v, a in sorted(graph.edges(data=True), key=lambda e: (layer[e[0]], e[0], e[1])):
        req = f"{_us(a['req_p50_us'])}/{_us(a['req_p90_us'])}/{_us(a['req_p99_us'])}"
        resp = f"{_us(a['resp_p50_us'])}/{_us(a['resp_p90_us'])}/{_us(a['resp_p99_us'])}"
        reasons = ",".join(f"{r}={n}" for r, n in sorted(a["reasons"].items()))
        lines.append(f"  {u + '>' + v:<36} {a['traces']:>6} {req:>20} {resp:>20} {a['lost_pkts']:>5}  {reasons}")
    return lines


def run_topology(args: argparse.Namespace) -> int:
    from hopscope.store import store_from_url
    from hopscope.topology.graph import to_dot, to_node_link
    from hopscope.topology.inventory import EMPTY, load_inventory
    from hopscope.topology.source import load_point_topology, load_service_map

    inventory = load_inventory(args.inventory) if args.inventory else EMPTY
    store = store_from_url(args.store)
    try:
        store.ensure_schema()
        services = load_service_map(store, args.start_ns, args.end_ns, args.limit, inventory, args.flows)
        points = load_point_topology(store, args.start_ns, args.end_ns, args.limit)
    finally:
        store.close()
    if args.format == "json":
        print(json.dumps({"services": to_node_link(services), "points": to_node_link(points)}, indent=1))
    elif args.format == "dot":
        print(to_dot(services, "services", "{label}\n{kind}", "{requests} req, p50 {latency_p50_us} us"))
        print(to_dot(points, "points", "{id}\n{hop_kind} {host}", "p50 {req_p50_us}/{resp_p50_us} us"))
    else:
        print("\n".join([*services_text(services), "", *points_text(points)]))
    return 0
