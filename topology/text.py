"""The service map and the capture-point topology as text, JSON (node-link) or Graphviz dot.

In text, each graph is one header line and one line per link: ``services_text`` lists client > server
edges by request count with error counts, rates and latency percentiles; ``points_text`` lists
capture-point links in path order with per-direction link latencies, lost segments and the reasons
the correlator linked the hops.
"""

from __future__ import annotations

import networkx as nx


def _us(v: int | None) -> str:
    """A microsecond figure, ``-`` when there is none."""
    return "-" if v is None else str(v)


def services_text(graph: nx.DiGraph) -> list[str]:
    """The lines of a service map (``topology.graph.service_map``), busiest link first."""
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
    """The lines of a capture-point topology (``topology.graph.point_topology``), in path order."""
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


#: ``render`` formats: text (``services_text`` and ``points_text``), json (node-link), dot (Graphviz).
FORMATS = ("text", "json", "dot")


def render(services: nx.DiGraph, points: nx.DiGraph, fmt: str) -> str:
    """Both graphs in one of ``FORMATS``, ending in a newline."""
    from hopscope.topology.graph import to_dot, to_node_link

    if fmt == "json":
        import json

        return json.dumps({"services": to_node_link(services), "points": to_node_link(points)}, indent=1) + "\n"
    if fmt == "dot":
        dots: list[str] = [
            to_dot(services, "services", "{label}\n{kind}", "{requests} req, p50 {latency_p50_us} us"),
            to_dot(points, "points", "{id}\n{hop_kind} {host}", "p50 {req_p50_us}/{resp_p50_us} us"),
        ]
        return "\n".join(dots) + "\n"
    if fmt == "text":
        return "\n".join([*services_text(services), "", *points_text(points)]) + "\n"
    raise ValueError(f"topology format {fmt!r}: expected one of {', '.join(FORMATS)}")
