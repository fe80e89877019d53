"""Topology graphs (networkx ``DiGraph``) built from stitched traces, their spans, and L4 flows.

Three graphs:

- ``service_map``: nodes are entities (pods, Services, nodes from the ``Inventory``; addresses it
  does not know become ``ip:<addr>``); a directed edge client entity -> server entity per pair seen,
  with the requests (traces) that crossed it: ``requests``, ``errors``, ``error_rate``,
  ``rate_per_s`` over the window (see ``service_map``), ``latency_p50_us``/``p90``/``p99`` of the duration
  as seen at the edge's client side, ``protocols``; with L4 flows also ``flows``, ``flow_errors``,
  ``flow_bytes`` and ``rtt_p50_us``. A request sent to a Service's ClusterIP and DNAT'd to a pod
  makes two edges: client -> Service (the trace's duration) and Service -> pod (the duration at the
  first hop that saw the pod's address).
- ``trace_path``: one trace's hops: nodes are capture points (``host``, ``hop_kind``, ``side``,
  ``hop_index``, ``seen_as``), an edge previous hop -> hop carries ``req_link_us``,
  ``resp_link_us``, ``lost_pkts``, ``link_reason``, ``link_confidence``.
- ``point_topology``: every trace's hop path folded into one graph of capture points: which point
  follows which, in how many traces (``traces``), with ``req_p50_us``/``p90``/``p99`` and
  ``resp_p50_us``/... per link, ``lost_pkts``, ``loss_traces``, ``reasons`` (link reason -> count)
  and ``min_confidence``. DeepFlow's open edition has no such path topology.

Every node gets ``layer``: its column in a left-to-right drawing (longest path from a source; the
members of a cycle share a column). ``to_node_link`` exports a graph as node-link JSON.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np

from hopscope.records import FlowRecord, Span, Trace
from hopscope.store.rollup import Hists, RollupRows, flat_percentiles
from hopscope.topology.inventory import EMPTY, Entity, Inventory

#: close_type values of an L4 flow that count as an error on a service map edge.
FLOW_ERROR_CLOSE_TYPES = frozenset({"server_rst", "server_syn_miss", "client_ack_miss"})
PERCENTILES = (50, 90, 99)


def percentiles(values: Sequence[int] | Sequence[float]) -> dict[str, int | None]:
    """``{"p50": .., "p90": .., "p99": ..}`` (linear interpolation, rounded; None when empty)."""
    if not values:
        return {f"p{q}": None for q in PERCENTILES}
    found = np.percentile(np.asarray(values, dtype=np.float64), PERCENTILES)
    return {f"p{q}": round(float(v)) for q, v in zip(PERCENTILES, found, strict=True)}


@functools.lru_cache(maxsize=1 << 16)  # one parse per address: the correlator's metrics call it per span
def is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def hop_order(spans: Iterable[Span]) -> list[Span]:
    return sorted(spans, key=lambda s: (s.hop_index, s.request_first_ns, s.span_id))


def assign_layers(graph: nx.DiGraph) -> None:
    """Set ``layer`` on every node: longest path from a source, cycles collapsed to one column."""
    condensed = nx.condensation(graph)
    layer: dict[int, int] = {}
    for comp in nx.topological_sort(condensed):
        layer[comp] = max((layer[p] + 1 for p in condensed.predecessors(comp)), default=0)
    for comp, members in condensed.nodes(data="members"):
        for node in members:
            graph.nodes[node]["layer"] = layer[comp]


# --- service map --------------------------------------------------------------------------------


Percentiles = dict[str, int | None]


def _latency(values: Sequence[int], from_rollup: Percentiles | None) -> Percentiles:
    """Percentiles of exact values when there are any, else those of the rollup's histograms (within
    1 %) when the graph was built from it."""
    return percentiles(values) if values or from_rollup is None else from_rollup


@dataclass(slots=True)
class _EdgeStats:
    """What one service map edge accumulates before it becomes edge attributes: exact durations (a
    build from traces) or a histogram of them (a build from the per-minute rollup)."""

    durations_us: list[int] = field(default_factory=list)
    duration_pcts: Percentiles | None = None  # from the rollup's histograms
    requests: int = 0
    errors: int = 0
    protocols: Counter[str] = field(default_factory=Counter)
    flows: int = 0
    flow_errors: int = 0
    flow_bytes: int = 0
    rtts_us: list[int] = field(default_factory=list)

    def attrs(self, window_s: float) -> dict[str, Any]:
        n = self.requests
        lat = _latency(self.durations_us, self.duration_pcts)
        rate = round(n / window_s, 3) if window_s > 0 else None
        out: dict[str, Any] = {
            "requests": n,
            "errors": self.errors,
            "error_rate": round(self.errors / n, 4) if n else 0.0,
            "rate_per_s": rate,
            "requests_per_s": rate,
            "latency_p50_us": lat["p50"],
            "latency_p90_us": lat["p90"],
            "latency_p99_us": lat["p99"],
            "p50_ms": None if lat["p50"] is None else round(lat["p50"] / 1000, 3),
            "p99_ms": None if lat["p99"] is None else round(lat["p99"] / 1000, 3),
            "protocols": sorted(self.protocols),
        }
        if self.flows:
            out.update(
                flows=self.flows, flow_errors=self.flow_errors, flow_bytes=self.flow_bytes,
                rtt_p50_us=percentiles(self.rtts_us)["p50"],
            )  # fmt: skip
        return out


def _server_side_us(spans: Sequence[Span], addr: str, fallback_us: int) -> int:
    """Request-to-response duration at the first hop that saw ``addr`` as the server."""
    for s in spans:
        if s.resp_h == addr and s.response_last_ns > s.request_first_ns:
            return (s.response_last_ns - s.request_first_ns) // 1000
    return fallback_us


def entity_chain(
    inventory: Inventory, client: str, first: str, final: str, entity_of: Callable[[str], Entity] | None = None
) -> list[tuple[Entity, str]]:
    """The entities a request passes, with the address each was seen at: the client's, then the first
    and the final server address's when each is another entity than the one before ([] without a
    client address). ``entity_of``: the inventory's lookup, or a cache of it."""
    if not client:
        return []
    entity_of = entity_of or inventory.entity_of
    chain = [(entity_of(client), client)]
    for addr in (first, final):
        entity = entity_of(addr)
        if addr and entity != chain[-1][0]:
            chain.append((entity, addr))
    return chain


def entity_hops(trace: Trace, spans: Sequence[Span], inventory: Inventory) -> list[tuple[Entity, Entity, int]]:
    """The service map edges one trace crosses: (client entity, server entity, duration_us)."""
    if spans:
        client_addr, first_dst = spans[0].orig_h, spans[0].resp_h
        final = [s.resp_h for s in spans if s.resp_h and not is_loopback(s.resp_h)]
        final_dst = final[-1] if final else first_dst
    else:
        client_addr, first_dst, final_dst = trace.client_h, trace.server_h, trace.server_h
    chain = entity_chain(inventory, client_addr, first_dst, final_dst)
    hops = []
    for i in range(1, len(chain)):
        duration = trace.duration_us if i == 1 else _server_side_us(spans, chain[i][1], trace.duration_us)
        hops.append((chain[i - 1][0], chain[i][0], duration))
    return hops


def _add_entity(graph: nx.DiGraph, entity: Entity, inventory: Inventory) -> None:
    if entity.id in graph:
        return
    services = [s.label for s in inventory.services_of(entity)] if entity.kind == "pod" else []
    graph.add_node(
        entity.id, kind=entity.kind, name=entity.name, namespace=entity.namespace, label=entity.label,
        node=entity.node, services=services,
    )  # fmt: skip


def _window(traces: Sequence[Trace]) -> tuple[int, int]:
    if not traces:
        return 0, 0
    return min(t.start_ns for t in traces), max(max(t.end_ns, t.start_ns) for t in traces)


def first_observations(
    flows: Iterable[FlowRecord], spans_by_trace: Mapping[str, Sequence[Span]] | None = None
) -> list[FlowRecord]:
    """One record per connection: flows sharing the NAT-invariant (syn_seq, synack_seq) are one
    connection seen at several points; the earliest-starting observation (nearest the client) stands
    for it. Observations a trace placed after its first hop are dropped (this is how a UDP flow seen
    behind NAT is recognized); other flows without a SYN stand for themselves (per point and flow_id)."""
    later = {(s.point, s.flow_id) for ss in (spans_by_trace or {}).values() for s in ss if s.hop_index > 0}
    best: dict[tuple[Any, ...], FlowRecord] = {}
    for f in flows:
        if (f.point, f.flow_id) in later:
            continue
        key: tuple[Any, ...] = ("seq", f.syn_seq, f.synack_seq) if f.syn_seq else ("flow", f.point, f.flow_id)
        seen = best.get(key)
        if seen is None or (f.start_ns, f.point) < (seen.start_ns, seen.point):
            best[key] = f
    return list(best.values())


def service_map(
    traces: Sequence[Trace],
    spans_by_trace: Mapping[str, Sequence[Span]],
    inventory: Inventory = EMPTY,
    flows: Sequence[FlowRecord] = (),
    window: tuple[int, int] | None = None,
) -> nx.DiGraph:
    """The service map of ``traces`` (and of ``flows`` when given); see the module docstring.

    ``rate_per_s`` is over ``window`` (start_ns, end_ns) when given, else over the time the traces
    cover (first start to last end); None when that is empty."""
    stats: dict[tuple[str, str], _EdgeStats] = {}
    graph = nx.DiGraph()
    for t in traces:
        for client, server, duration_us in entity_hops(t, hop_order(spans_by_trace.get(t.trace_id, ())), inventory):
            _add_entity(graph, client, inventory)
            _add_entity(graph, server, inventory)
            edge = stats.setdefault((client.id, server.id), _EdgeStats())
            edge.durations_us.append(duration_us)
            edge.requests += 1
            edge.errors += bool(t.error)
            edge.protocols[t.l7_proto or "tcp"] += 1
    _add_flows(graph, stats, first_observations(flows, spans_by_trace), inventory)
    start_ns, end_ns = window or _window(traces)
    _finish_service_map(graph, stats, start_ns, end_ns, traces=len(traces), flows=len(flows))
    return graph


def _add_flows(
    graph: nx.DiGraph, stats: dict[tuple[str, str], _EdgeStats], flows: Iterable[FlowRecord], inventory: Inventory
) -> None:
    for f in flows:
        client, server = inventory.entity_of(f.orig_h), inventory.entity_of(f.resp_h)
        if client == server:
            continue
        _add_entity(graph, client, inventory)
        _add_entity(graph, server, inventory)
        edge = stats.setdefault((client.id, server.id), _EdgeStats())
        edge.flows += 1
        edge.flow_errors += f.close_type in FLOW_ERROR_CLOSE_TYPES
        edge.flow_bytes += f.orig_bytes + f.resp_bytes
        if f.rtt_server_us:
            edge.rtts_us.append(f.rtt_server_us)


def _finish_service_map(
    graph: nx.DiGraph, stats: Mapping[tuple[str, str], _EdgeStats], start_ns: int, end_ns: int, **counts: Any
) -> None:
    window_s = (end_ns - start_ns) / 1e9
    for (u, v), edge in stats.items():
        graph.add_edge(u, v, **edge.attrs(window_s))
    graph.graph.update(kind="service_map", **counts, start_ns=start_ns, end_ns=end_ns, window_s=round(window_s, 6))
    assign_layers(graph)


def service_map_from_rollup(
    rows: RollupRows,
    window: tuple[int, int],
    inventory: Inventory = EMPTY,
    flows: Sequence[FlowRecord] = (),
    later_spans: Sequence[Span] = (),
) -> nx.DiGraph:
    """The service map of every trace of ``window`` from ``edges_1m`` rows (``Store.rollup_minutes``):
    the same edges and counts as ``service_map`` over those traces, latency percentiles within the
    histograms' 1 %. ``flows``: L4 flows to add, ``later_spans`` the spans that placed some of them
    after a trace's first hop (``first_observations``).

    Built with numpy: each distinct address is mapped to its entity once, each row's entity chain
    (``entity_chain``) becomes at most two hops, and the hops are grouped into edges in the order the
    rows first reach them (as a row-by-row build would add them)."""
    client_h, first_h, final_h, l7_proto, n, errors, duration, server = rows.columns[:8]
    stats: dict[tuple[str, str], _EdgeStats] = {}
    graph = nx.DiGraph()
    hops = _chain_hops(inventory, client_h, first_h, final_h)
    if hops is not None:
        row, hop, u, v, entities = hops
        ids: dict[str, int] = {}  # an edge is a pair of entity ids, as in ``service_map``
        id_of = np.fromiter((ids.setdefault(e.id, len(ids)) for e in entities), dtype=np.int64, count=len(entities))
        edge_codes = id_of[u] * len(ids) + id_of[v]
        _, first_at, edge_of = np.unique(edge_codes, return_index=True, return_inverse=True)
        order = np.argsort(first_at, kind="stable")  # edges in the order the hops first reach them
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        edge_of = rank[edge_of.reshape(-1)]
        n_edges = len(first_at)
        requests = np.zeros(n_edges, dtype=np.int64)
        np.add.at(requests, edge_of, n[row])
        errs = np.zeros(n_edges, dtype=np.int64)
        np.add.at(errs, edge_of, errors[row])
        protos = [p or "tcp" for p in l7_proto]
        proto_seen: list[dict[str, int]] = [{} for _ in range(n_edges)]
        for e, r, count in zip(edge_of.tolist(), row.tolist(), n[row].tolist(), strict=True):
            seen = proto_seen[e]
            seen[protos[r]] = seen.get(protos[r], 0) + count
        keys_d, counts_d, at_d = duration.take(row[hop == 1])
        keys_s, counts_s, at_s = server.take(row[hop == 2])
        pcts = flat_percentiles(
            np.concatenate((keys_d, keys_s)), np.concatenate((counts_d, counts_s)),
            np.concatenate((edge_of[hop == 1][at_d], edge_of[hop == 2][at_s])), n_edges, PERCENTILES,
        )  # fmt: skip
        first_hop = first_at[order]  # each edge's first hop: its entities are the ones the nodes get
        for e, (a, b) in enumerate(zip(u[first_hop].tolist(), v[first_hop].tolist(), strict=True)):
            client, server_entity = entities[a], entities[b]
            _add_entity(graph, client, inventory)
            _add_entity(graph, server_entity, inventory)
            edge = stats[(client.id, server_entity.id)] = _EdgeStats()
            edge.requests, edge.errors = int(requests[e]), int(errs[e])
            edge.protocols.update(proto_seen[e])
            edge.duration_pcts = pcts[e]
    _add_flows(graph, stats, first_observations(flows, {"": later_spans}), inventory)
    _finish_service_map(graph, stats, *window, traces=int(n.sum()), flows=len(flows), resolution_s=60)
    return graph


def _chain_hops(
    inventory: Inventory, client_h: Sequence[str], first_h: Sequence[str], final_h: Sequence[str]
) -> tuple[np.ndarray[Any, Any], ...] | None:
    """The service map hops of rows of address chains, as ``entity_chain`` makes them: arrays of the
    row, the hop's number in its chain (1: the first, whose latency is the trace's duration; 2: the
    second, whose latency is the server side's), the client and the server entity's index, and the
    entities (a list); None when there are none."""
    if not len(client_h):
        return None
    import pandas as pd  # here: the CLI's start does not pay for it

    codes, addrs = pd.factorize(np.concatenate([np.asarray(c, dtype=object) for c in (client_h, first_h, final_h)]))
    entity_index: dict[Entity, int] = {}
    of_addr = np.fromiter((entity_index.setdefault(inventory.entity_of(a), len(entity_index)) for a in addrs),
                          dtype=np.int64, count=len(addrs))  # fmt: skip
    empty = np.fromiter((not a for a in addrs), dtype=bool, count=len(addrs))
    m = len(client_h)
    c, f, z = (of_addr[codes[i * m : (i + 1) * m]] for i in range(3))
    no_client, no_first, no_final = (empty[codes[i * m : (i + 1) * m]] for i in range(3))
    hop1 = ~no_client & ~no_first & (f != c)
    prev = np.where(hop1, f, c)
    hop2 = ~no_client & ~no_final & (z != prev)
    rows = np.arange(m)
    # per row its hops in chain order: position 2 * row (+1 for the second)
    row = np.concatenate((rows[hop1], rows[hop2]))
    position = np.concatenate((2 * rows[hop1], 2 * rows[hop2] + 1))
    number = np.concatenate((np.ones(int(hop1.sum()), dtype=np.int64), np.where(hop1[hop2], 2, 1)))
    u = np.concatenate((c[hop1], prev[hop2]))
    v = np.concatenate((f[hop1], z[hop2]))
    order = np.argsort(position, kind="stable")
    if not len(order):
        return None
    return row[order], number[order], u[order], v[order], list(entity_index)  # type: ignore[return-value]


# --- hop paths ------------------------------------------------------------------------------------


def _node_ids(spans: Sequence[Span]) -> list[str]:
    """Graph node id per span: the point name, with ``#hop_index`` when a point repeats."""
    counts = Counter(s.point for s in spans)
    return [s.point if counts[s.point] == 1 else f"{s.point}#{s.hop_index}" for s in spans]


def _links(spans: Sequence[Span]) -> list[tuple[int, int]]:
    """(previous, this) span index pairs: by parent_span_id, else the previous span in hop order."""
    index = {s.span_id: i for i, s in enumerate(spans)}
    links = []
    for i, s in enumerate(spans):
        parent = index.get(s.parent_span_id, i - 1) if s.parent_span_id else i - 1
        if parent >= 0 and parent != i:
            links.append((parent, i))
    return links


def trace_path(trace: Trace | None, spans: Sequence[Span]) -> nx.DiGraph:
    """One trace's hop path: capture points in hop order, each link with its latency and loss."""
    spans = hop_order(spans)
    ids = _node_ids(spans)
    graph = nx.DiGraph()
    for node_id, s in zip(ids, spans, strict=True):
        graph.add_node(
            node_id, point=s.point, host=s.host, hop_kind=s.hop_kind, side=s.side, hop_index=s.hop_index,
            seen_as=f"{s.orig_h}:{s.orig_p} > {s.resp_h}:{s.resp_p}", request_first_ns=s.request_first_ns,
            response_last_ns=s.response_last_ns, retrans_pkts=s.retrans_pkts,
        )  # fmt: skip
    slowest = trace.slowest_link if trace else ""
    for a, b in _links(spans):
        s = spans[b]
        graph.add_edge(
            ids[a], ids[b], req_link_us=s.req_link_us, resp_link_us=s.resp_link_us, lost_pkts=s.lost_pkts,
            link_reason=s.link_reason, link_confidence=round(float(s.link_confidence), 4),
            slowest=f"{spans[a].point}>{s.point}" == slowest,
        )  # fmt: skip
    if trace is not None:
        graph.graph.update(
            kind="trace_path", trace_id=trace.trace_id, trace_kind=trace.kind, duration_us=trace.duration_us,
            error=trace.error, lost_pkts=trace.lost_pkts, loss_link=trace.loss_link, slowest_link=slowest,
        )  # fmt: skip
    assign_layers(graph)
    return graph


@dataclass(slots=True)
class _LinkStats:
    """One point topology link: exact latencies (a build from traces) or histograms (from the rollup)."""

    req_us: list[int] = field(default_factory=list)
    resp_us: list[int] = field(default_factory=list)
    req_pcts: Percentiles | None = None  # from the rollup's histograms
    resp_pcts: Percentiles | None = None
    traces: int = 0
    lost_pkts: int = 0
    loss_traces: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    min_confidence: float = 1.0

    def add(self, s: Span) -> None:
        self.req_us.append(s.req_link_us)
        if s.response_first_ns:
            self.resp_us.append(s.resp_link_us)
        self.traces += 1
        self.lost_pkts += s.lost_pkts
        self.loss_traces += s.lost_pkts > 0
        self.reasons[s.link_reason] += 1
        self.min_confidence = min(self.min_confidence, float(s.link_confidence))

    def attrs(self) -> dict[str, Any]:
        req, resp = _latency(self.req_us, self.req_pcts), _latency(self.resp_us, self.resp_pcts)
        out: dict[str, Any] = {"traces": self.traces}
        out.update({f"req_{k}_us": v for k, v in req.items()})
        out.update({f"resp_{k}_us": v for k, v in resp.items()})
        out.update(lost_pkts=self.lost_pkts, loss_traces=self.loss_traces, reasons=dict(self.reasons),
                   min_confidence=round(self.min_confidence, 4))  # fmt: skip
        return out


def point_topology(spans_by_trace: Mapping[str, Sequence[Span]]) -> nx.DiGraph:
    """Capture points of many traces: which point follows which, with per-link statistics."""
    graph = nx.DiGraph()
    links: dict[tuple[str, str], _LinkStats] = {}
    seen: Counter[str] = Counter()
    for trace_spans in spans_by_trace.values():
        spans = hop_order(trace_spans)
        for s in spans:
            if s.point not in graph:
                graph.add_node(s.point, host=s.host, hop_kind=s.hop_kind, side=s.side)
        for point in {s.point for s in spans}:
            seen[point] += 1
        for a, b in _links(spans):
            if spans[a].point != spans[b].point:
                links.setdefault((spans[a].point, spans[b].point), _LinkStats()).add(spans[b])
    for point, n in seen.items():
        graph.nodes[point]["traces"] = n
    return _finish_points(graph, links, len(spans_by_trace))


def _finish_points(
    graph: nx.DiGraph, links: Mapping[tuple[str, str], _LinkStats], traces: int, **more: Any
) -> nx.DiGraph:
    for (u, v), link in links.items():
        graph.add_edge(u, v, **link.attrs())
    graph.graph.update(kind="point_topology", traces=traces, **more)
    assign_layers(graph)
    return graph


def point_topology_from_rollup(rows: RollupRows, window: tuple[int, int]) -> nx.DiGraph:
    """The capture-point topology of every trace of ``window`` from ``links_1m`` rows
    (``Store.rollup_minutes``): the same points, links and counts as ``point_topology`` over those
    traces' spans, latency percentiles within the histograms' 1 %."""
    graph = nx.DiGraph()
    links: dict[tuple[str, str], _LinkStats] = {}
    index: dict[tuple[str, str], int] = {}
    prevs, points, reasons, hosts, kinds, sides, n, lost, loss, conf, req, resp = rows.columns[:12]
    link_rows: list[int] = []  # the link rows, and each one's link index in ``links``
    link_of: list[int] = []
    traces = 0
    scalars = zip(prevs, points, reasons, hosts, kinds, sides, n.tolist(), lost.tolist(), loss.tolist(),
                  conf.tolist(), strict=True)  # fmt: skip
    for i, (prev, point, reason, host, hop_kind, side, count, lost_pkts, loss_traces, min_conf) in enumerate(scalars):
        if not prev and not point:
            traces += count
        elif not prev:  # a point's row (one per resolution read)
            before = graph.nodes[point]["traces"] if point in graph else 0
            graph.add_node(point, host=host, hop_kind=hop_kind, side=side, traces=before + count)
        else:
            link = links.setdefault((prev, point), _LinkStats())
            link.traces += count
            link.lost_pkts += lost_pkts
            link.loss_traces += loss_traces
            link.reasons[reason] += count
            link.min_confidence = min(link.min_confidence, float(min_conf))
            link_rows.append(i)
            link_of.append(index.setdefault((prev, point), len(index)))
    req_pcts, resp_pcts = (_row_percentiles(h, link_rows, link_of, len(links)) for h in (req, resp))
    for link, req_p, resp_p in zip(links.values(), req_pcts, resp_pcts, strict=True):
        link.req_pcts, link.resp_pcts = req_p, resp_p
    return _finish_points(graph, links, traces, start_ns=window[0], end_ns=window[1], resolution_s=60)


def _row_percentiles(hists: Hists, rows: Sequence[int], groups: Sequence[int], n_groups: int) -> list[Percentiles]:
    """The percentiles of ``n_groups`` histograms, each the sum of the histograms of the ``rows``
    whose ``groups`` entry is its index."""
    keys, counts, at = hists.take(np.asarray(rows, dtype=np.int64))
    return flat_percentiles(keys, counts, np.asarray(groups, dtype=np.int64)[at], n_groups, PERCENTILES)


# --- export -------------------------------------------------------------------------------------------


def to_node_link(graph: nx.DiGraph) -> dict[str, Any]:
    """Node-link JSON (networkx's layout, ``links`` key): nodes by (layer, id), links by endpoints."""
    nodes = sorted(graph.nodes(data=True), key=lambda n: (n[1].get("layer", 0), str(n[0])))
    links = sorted(graph.edges(data=True), key=lambda e: (str(e[0]), str(e[1])))
    return {
        "directed": True,
        "multigraph": False,
        "graph": dict(graph.graph),
        "nodes": [{"id": n, **attrs} for n, attrs in nodes],
        "links": [{"source": u, "target": v, **attrs} for u, v, attrs in links],
    }


def _dot_id(text: object) -> str:
    escaped = str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped + '"'


def to_dot(graph: nx.DiGraph, name: str, node_label: str, edge_label: str) -> str:
    """Graphviz DOT text, left to right; labels are ``str.format`` templates over the attributes (a
    newline in a label becomes DOT's ``\\n``)."""
    lines = [f"digraph {_dot_id(name)} {{", "  rankdir=LR;", "  node [shape=box];"]
    for n, attrs in graph.nodes(data=True):
        lines.append(f"  {_dot_id(n)} [label={_dot_id(node_label.format(id=n, **attrs))}];")
    for u, v, attrs in graph.edges(data=True):
        lines.append(f"  {_dot_id(u)} -> {_dot_id(v)} [label={_dot_id(edge_label.format(**attrs))}];")
    lines.append("}")
    return "\n".join(lines)
