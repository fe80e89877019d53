"""Reading what the topology graphs are built from: traces of a window, their spans, and L4 flows."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import networkx as nx

from hopscope.records import FlowRecord, Span, Trace
from hopscope.store import Store
from hopscope.store.rollup import BLOCK_NS, MINUTE_NS, RollupRows, minutes_kinds, snap_window
from hopscope.topology.graph import (
    hop_order,
    point_topology,
    point_topology_from_rollup,
    service_map,
    service_map_from_rollup,
    trace_path,
)
from hopscope.topology.inventory import EMPTY, Inventory

#: Most trace ids in one ``trace_id IN (...)`` span query (the store's IN limit).
TRACE_IDS_PER_QUERY = 1000
#: Most spans read per trace (a path longer than this is cut).
MAX_HOPS = 64
#: Spans are looked for this far around the traces' window (clock correction moves hop times).
SPAN_SLACK_NS = 60 * 1_000_000_000
NS_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class TraceSet:
    """Traces of one window with their spans in hop order (``spans_by_trace`` keyed by trace_id)."""

    traces: list[Trace]
    spans_by_trace: dict[str, list[Span]]


def fetch_traces(store: Store, start_ns: int, end_ns: int, limit: int) -> TraceSet:
    """The first ``limit`` traces that started in [start_ns, end_ns), and all their spans."""
    traces = store.query_traces(start_ns, end_ns, None, limit)
    spans: dict[str, list[Span]] = defaultdict(list)
    if traces:
        lo = max(0, min(t.start_ns for t in traces) - SPAN_SLACK_NS)
        hi = min(NS_MAX, max(max(t.end_ns, t.start_ns) for t in traces) + SPAN_SLACK_NS)
        ids = [t.trace_id for t in traces]
        for i in range(0, len(ids), TRACE_IDS_PER_QUERY):
            chunk = ids[i : i + TRACE_IDS_PER_QUERY]
            for s in store.query_spans(lo, hi, {"trace_id": chunk}, len(chunk) * MAX_HOPS):
                spans[s.trace_id].append(s)
    return TraceSet(traces, {tid: hop_order(ss) for tid, ss in spans.items()})


def fetch_flows(store: Store, start_ns: int, end_ns: int, limit: int) -> list[FlowRecord]:
    return store.query_flows(start_ns, end_ns, None, limit)


def rollup_window(store: Store, start_ns: int, end_ns: int, table: str) -> tuple[RollupRows, tuple[int, int]]:
    """The rows of a rollup table for the whole minutes covering the window (an open end: up to the
    first or last minute with rows), and those minutes' bounds. Whole blocks of ``BLOCK_S`` inside
    the window are read from the block rows, the minutes before and after from the minute rows, in
    one query: a row per key."""
    start, end = snap_window(start_ns, end_ns)
    if start == 0 or end >= NS_MAX - MINUTE_NS:
        bounds = store.rollup_bounds(table, start, end)
        if bounds is None:
            none = RollupRows.from_columns(None, minutes_kinds(table))
            return none, (start, start if end >= NS_MAX - MINUTE_NS else end)
        start = start or bounds[0]
        end = end if end < NS_MAX - MINUTE_NS else bounds[1] + MINUTE_NS
    first_block, last_block = -(-start // BLOCK_NS) * BLOCK_NS, end // BLOCK_NS * BLOCK_NS
    blocks = (first_block, last_block) if first_block < last_block else None
    return store.rollup_minutes(table, start, end, blocks=blocks), (start, end)


def load_service_map(
    store: Store,
    start_ns: int,
    end_ns: int,
    limit: int,
    inventory: Inventory = EMPTY,
    with_flows: bool = False,
) -> nx.DiGraph:
    """The service map of every trace that started in the whole minutes covering [start_ns, end_ns),
    from the ``edges_1m`` rollup; with ``with_flows`` also the first ``limit`` L4 flows of the window.
    Rates are per second of those minutes."""
    rows, window = rollup_window(store, start_ns, end_ns, "edges_1m")
    flows = fetch_flows(store, start_ns, end_ns, limit) if with_flows else []
    later: list[Span] = []
    if flows:
        lo = max(0, min(f.start_ns for f in flows) - SPAN_SLACK_NS)
        hi = min(NS_MAX, max(f.end_ns for f in flows) + SPAN_SLACK_NS)
        ids = sorted({f.flow_id for f in flows})
        for i in range(0, len(ids), TRACE_IDS_PER_QUERY):
            chunk = ids[i : i + TRACE_IDS_PER_QUERY]
            later += store.query_spans(lo, hi, {"flow_id": chunk, "hop_index__gt": 0}, len(chunk) * MAX_HOPS)
    return service_map_from_rollup(rows, window, inventory, flows, later)


def load_service_map_of_traces(
    store: Store, start_ns: int, end_ns: int, limit: int, inventory: Inventory = EMPTY, with_flows: bool = False
) -> nx.DiGraph:
    """The service map built from the first ``limit`` traces of the window read whole (the build
    before the rollup; the reference its figures are checked against)."""
    ts = fetch_traces(store, start_ns, end_ns, limit)
    flows = fetch_flows(store, start_ns, end_ns, limit) if with_flows else []
    bounded = (start_ns, end_ns) if start_ns > 0 and end_ns < NS_MAX else None
    return service_map(ts.traces, ts.spans_by_trace, inventory, flows, bounded)


def load_point_topology(store: Store, start_ns: int, end_ns: int, limit: int = 0) -> nx.DiGraph:
    """The capture-point topology of every trace that started in the whole minutes covering the
    window, from the ``links_1m`` rollup (``limit`` is not used: kept for callers)."""
    rows, window = rollup_window(store, start_ns, end_ns, "links_1m")
    return point_topology_from_rollup(rows, window)


def load_point_topology_of_traces(store: Store, start_ns: int, end_ns: int, limit: int) -> nx.DiGraph:
    """The capture-point topology of the first ``limit`` traces of the window read whole."""
    return point_topology(fetch_traces(store, start_ns, end_ns, limit).spans_by_trace)


def load_trace_path(store: Store, trace_id: str) -> nx.DiGraph | None:
    """One trace's hop path, or None when the store has no such trace."""
    trace, spans = store.get_trace(trace_id)
    if trace is None:
        return None
    return trace_path(trace, spans)
