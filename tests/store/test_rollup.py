"""The per-minute rollups (``store/rollup.py``) the topology graphs are read from, on both stores: the
service map and the capture-point topology from ``edges_1m``/``links_1m`` equal the build from every
trace of the window read whole (counts exactly, latency percentiles within the histograms' relative
accuracy), on the lab sample ``hopscope demo`` stores and on a generated store; window edges at whole
minutes; an empty window; a replayed write; traces written before their spans, or by another writer."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import networkx as nx
import numpy as np
import pytest

from hopscope.correlate.offline import Analysis, analyze_points, plan_points
from hopscope.paths import lab_samples
from hopscope.records import Batch, Span, Trace
from hopscope.store import SqlStore, store_from_url
from hopscope.store.rollup import (
    MINUTE_NS,
    RELATIVE_ACCURACY,
    Accumulator,
    SpanRow,
    TraceRow,
    bucket_keys,
    bucket_value,
    group_percentiles,
    hist_encode,
    hist_merge,
    hist_percentiles,
)
from hopscope.topology.inventory import EMPTY, Inventory, from_data
from hopscope.topology.source import (
    load_point_topology,
    load_point_topology_of_traces,
    load_service_map,
    load_service_map_of_traces,
)
from tests.topology.paths import INVENTORY, T0, lab_trace

ALL = 10**6  # a limit above every trace of these stores: the reference build reads them all
NS_MAX = 2**63 - 1
LATENCIES = ("latency_p50_us", "latency_p90_us", "latency_p99_us")
LINK_LATENCIES = tuple(f"{d}_p{q}_us" for d in ("req", "resp") for q in (50, 90, 99))


# --- histograms -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 2, 3, 7, 99, 1000, 1001, 65_535, 10**6, 123_456_789, 10**12, -1, -500, -(10**9)])
def test_a_value_reads_back_within_the_relative_accuracy(value: int) -> None:
    read = bucket_value(int(bucket_keys([value])[0]))
    assert abs(read - value) <= RELATIVE_ACCURACY * abs(value) + 1e-9 and (read > 0) == (value > 0)


def test_zero_is_its_own_bucket() -> None:
    assert bucket_keys([0]).tolist() == [0] and bucket_value(0) == 0.0
    assert hist_encode([]) == ([], []) and hist_percentiles({}, (50,)) == {"p50": None}


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1000, 20_000])
def test_percentiles_of_a_histogram_are_numpys_within_the_accuracy(n: int) -> None:
    values = np.random.default_rng(n).lognormal(7, 2, n).astype(np.int64)
    hist: Any = {}
    for key, count in zip(*np.unique(bucket_keys(values), return_counts=True), strict=True):
        hist[int(key)] = int(count)
    found = hist_percentiles(hist, (0, 50, 90, 99, 100))
    for q in (0, 50, 90, 99, 100):
        exact = float(np.percentile(values, q))
        assert abs(found[f"p{q}"] - exact) <= RELATIVE_ACCURACY * exact + 1, (q, found, exact)  # type: ignore[operator]


def test_histograms_added_by_group_give_the_percentiles_of_their_sum() -> None:
    """What the graphs read: many summed histograms (as the server and chDB return them), each added
    to its group's; a group with no entries, or only zero counts, has no percentiles."""
    rng = random.Random(7)
    groups = [rng.randrange(5) for _ in range(60)] + [6]
    summed: list[Any] = []
    for i, _ in enumerate(groups):
        values = [rng.choice([0, -40, rng.randrange(1, 10**7)]) for _ in range(rng.randrange(0, 30))]
        hist = Counter(bucket_keys(values).tolist())
        keys = sorted(hist)
        counts = [0 if i == len(groups) - 1 else hist[k] for k in keys]
        summed.append({"1": keys, "2": counts} if i % 2 else (keys, counts))
    qs = (0, 50, 90, 99, 100)
    found = group_percentiles(summed, groups, 7, qs)
    for group in range(7):
        whole: Counter[int] = Counter()
        for value, g in zip(summed, groups, strict=True):
            if g == group:
                keys, counts = (value["1"], value["2"]) if isinstance(value, dict) else value
                whole.update(dict(zip(keys, counts, strict=True)))
        assert found[group] == hist_percentiles(whole, qs), group
    assert found[5] == found[6] == {f"p{q}": None for q in qs}
    assert group_percentiles([], [], 2, (50,)) == [{"p50": None}] * 2


def test_histograms_merge_by_adding_counts() -> None:
    a, b = [0, 5, 5, 1000, -3], [5, 70_000, 1000]
    merged: Counter[int] = Counter()
    hist_merge(merged, *hist_encode(a))
    hist_merge(merged, *hist_encode(b))
    whole: Counter[int] = Counter()
    hist_merge(whole, *hist_encode(a + b))
    assert merged == whole and sum(whole.values()) == 8


# --- the rows of some traces ------------------------------------------------------------------------


def _span(trace: str, span: str, parent: str, hop: int, point: str, resp_h: str, req_ns: int, **kw: Any) -> SpanRow:
    fields: dict[str, Any] = dict(
        trace_id=trace, span_id=span, parent_span_id=parent, hop_index=hop, point=point, host=f"h-{point}",
        hop_kind="node", side="client", orig_h="10.0.0.1", resp_h=resp_h, request_first_ns=req_ns,
        response_first_ns=0, response_last_ns=0, req_link_us=0, resp_link_us=0, link_reason="r", link_confidence=1.0,
        lost_pkts=0,
    )  # fmt: skip
    fields.update(kw)
    return SpanRow(**fields)


def _key(value: int) -> int:
    return int(bucket_keys([value])[0])


def test_the_rows_of_traces_added_together() -> None:
    """Spans in any order are put in hop order (hop, request time, span id); a span written twice
    counts once (its last copy); a parent named further back links to that span; the final address
    is the last that is not loopback; the server-side duration is the first hop's that saw it as server;
    a trace without spans counts from its own fields, one without a client address is no edge."""
    t0 = 5 * MINUTE_NS
    a = [
        _span("A", "s3", "s1", 2, "c", "10.0.0.3", t0 + 30, response_first_ns=t0 + 40, response_last_ns=t0 + 7_030,
              req_link_us=900, resp_link_us=800, link_reason="nat", link_confidence=0.5),
        _span("A", "s2", "s1", 1, "b", "127.0.0.1", t0 + 20, lost_pkts=9),
        _span("A", "s1", "", 0, "a", "10.0.0.2", t0 + 10, host="first-copy"),
        _span("A", "s2", "s1", 1, "b", "127.0.0.1", t0 + 20, lost_pkts=2, req_link_us=50),
    ]  # fmt: skip
    d = [_span("D", "x2", "", 0, "q", "10.0.0.5", t0 + 1), _span("D", "x1", "", 0, "p", "10.0.0.5", t0 + 1)]
    pairs = [
        (TraceRow("A", t0 + 10, 20_000, 1, "http", "10.0.0.1", "10.0.0.3"), a),
        (TraceRow("B", t0 + 5, 100, 0, "http", "", "10.0.0.4"), []),
        (TraceRow("C", t0 + MINUTE_NS, 300, 0, "", "10.0.0.9", "10.0.0.4"), []),
        (TraceRow("D", t0 + 2, 10, 0, "http", "10.0.0.1", "10.0.0.5"), d),
    ]
    acc = Accumulator()
    acc.add(pairs[:2])
    acc.add(pairs[2:])
    edges = {k: (v.count, v.errors, dict(v.first), dict(v.second)) for k, v in acc.edges.items()}
    assert edges == {
        (t0, "10.0.0.1", "10.0.0.2", "10.0.0.3", "http"): (1, 1, {_key(20_000): 1}, {_key(7): 1}),
        (t0 + MINUTE_NS, "10.0.0.9", "10.0.0.4", "10.0.0.4", ""): (1, 0, {_key(300): 1}, {_key(300): 1}),
        (t0, "10.0.0.1", "10.0.0.5", "10.0.0.5", "http"): (1, 0, {_key(10): 1}, {_key(10): 1}),
    }
    links = {k: (v.count, v.lost_pkts, v.loss_traces, v.min_confidence, dict(v.first), dict(v.second), v.attrs)
             for k, v in acc.links.items()}  # fmt: skip
    none = ("", "", "")
    assert links == {
        (t0, "", "", ""): (2, 0, 0, 1.0, {}, {}, none),
        (t0, "", "a", ""): (1, 0, 0, 1.0, {}, {}, ("first-copy", "node", "client")),
        (t0, "", "b", ""): (1, 0, 0, 1.0, {}, {}, ("h-b", "node", "client")),
        (t0, "", "c", ""): (1, 0, 0, 1.0, {}, {}, ("h-c", "node", "client")),
        (t0, "a", "b", "r"): (1, 2, 1, 1.0, {_key(50): 1}, {}, none),
        (t0, "a", "c", "nat"): (1, 0, 0, 0.5, {_key(900): 1}, {_key(800): 1}, none),
        (t0, "", "p", ""): (1, 0, 0, 1.0, {}, {}, ("h-p", "node", "client")),
        (t0, "", "q", ""): (1, 0, 0, 1.0, {}, {}, ("h-q", "node", "client")),
        (t0, "p", "q", "r"): (1, 0, 0, 1.0, {_key(0): 1}, {}, none),
    }
    assert set(acc.segments) == {t0, t0 + MINUTE_NS}


# --- the graphs from the rollups against the graphs from every trace ---------------------------------


def _within(found: int | None, exact: int | None) -> bool:
    """A percentile from histograms against the exact one: documented accuracy, plus rounding."""
    if exact is None or found is None:
        return found is exact
    return abs(found - exact) <= RELATIVE_ACCURACY * abs(exact) + 1


def _same_graph(rollup: nx.DiGraph, exact: nx.DiGraph, latencies: tuple[str, ...], ignore: set[str]) -> None:
    assert dict(rollup.nodes(data=True)) == dict(exact.nodes(data=True))
    assert set(rollup.edges) == set(exact.edges)
    for u, v, want in exact.edges(data=True):
        got = rollup.edges[u, v]
        for key in set(want) - set(latencies) - ignore:
            assert got[key] == want[key], (u, v, key, got[key], want[key])
        for key in latencies:
            assert _within(got[key], want[key]), (u, v, key, got[key], want[key])


def check_window(store: SqlStore, start_ns: int, end_ns: int, inventory: Inventory = EMPTY) -> nx.DiGraph:
    """The rollup graphs of the window equal the builds from every trace of its whole minutes."""
    services = load_service_map(store, start_ns, end_ns, ALL, inventory)
    start, end = services.graph["start_ns"], services.graph["end_ns"]
    # bounded ends are rounded out to whole minutes; open ones end at the first and last minute stored
    assert (start <= start_ns or start_ns == 0) and (end >= end_ns or end_ns == NS_MAX)
    assert start % MINUTE_NS == end % MINUTE_NS == 0
    exact = load_service_map_of_traces(store, start, end, ALL, inventory)
    # ms figures are the us figures rounded; the minutes' rate is checked against the exact count
    _same_graph(services, exact, LATENCIES, {"p50_ms", "p99_ms"})
    assert services.graph["traces"] == exact.graph["traces"]
    points = load_point_topology(store, start_ns, end_ns)
    exact_points = load_point_topology_of_traces(store, start, end, ALL)
    _same_graph(points, exact_points, LINK_LATENCIES, set())
    assert points.graph["traces"] == exact_points.graph["traces"]
    return services


@pytest.fixture(scope="module")
def analysis() -> Analysis:
    manifest = str(lab_samples() / "manifest.json")
    return analyze_points(plan_points(manifest=manifest), manifest=manifest)


def _store_all(store: SqlStore, analysis: Analysis) -> None:
    store.ensure_schema()
    for table, batch in analysis.tables().items():
        if len(batch):
            store.insert(table, batch)


def _lab_inventory(analysis: Analysis) -> Inventory:
    """The lab sample's client addresses as two pods and its server addresses as one Service."""
    traces = list(analysis.tables()["traces"].records())
    clients = sorted({t.client_h for t in traces if isinstance(t, Trace)})
    servers = sorted({t.server_h for t in traces if isinstance(t, Trace)} - set(clients))
    pods = [{"name": f"c{i % 2}", "ip": addr, "labels": {"app": f"c{i % 2}"}} for i, addr in enumerate(clients)]
    return from_data({"pods": pods, "services": [{"name": "web", "cluster_ip": servers[0], "ports": [80]}]})


def test_the_demo_store(store: SqlStore, analysis: Analysis) -> None:
    _store_all(store, analysis)
    services = check_window(store, 0, NS_MAX)
    assert services.graph["traces"] == len(analysis.tables()["traces"]) and services.number_of_edges() > 0
    check_window(store, 0, NS_MAX, _lab_inventory(analysis))


def generated(n: int, minutes: int, seed: int) -> tuple[list[Trace], list[Span]]:
    """``n`` lab-path traces over ``minutes`` minutes from T0: random ends, durations, link latencies,
    errors, loss and protocol."""
    rng = random.Random(seed)
    traces: list[Trace] = []
    spans: list[Span] = []
    for i in range(n):
        trace, trace_spans = lab_trace(
            i + 1, rng.randint(1, 2), rng.randint(1, 2), duration_us=int(rng.lognormvariate(7, 1.5)) + 1,
            req_link_us=rng.choice([0, 3, 40, 2500]), error=int(rng.random() < 0.1),
            lost_on=rng.choice(["", "", "", "hv-tap", "nodeB"]), start_ns=T0 + rng.randrange(minutes * MINUTE_NS),
        )  # fmt: skip
        traces.append(dataclasses.replace(trace, l7_proto=rng.choice(["http", "http", "dns", ""])))
        spans += trace_spans
    return traces, spans


@pytest.fixture
def gen_store(store: SqlStore) -> Iterator[tuple[SqlStore, list[Trace]]]:
    traces, spans = generated(600, 25, seed=7)
    store.ensure_schema()
    for i in range(0, len(traces), 250):  # the correlator's order: a pass's spans, then its traces
        chunk = traces[i : i + 250]
        ids = {t.trace_id for t in chunk}
        store.insert("spans", Batch.from_records(Span, [s for s in spans if s.trace_id in ids]))
        store.insert("traces", Batch.from_records(Trace, chunk))
    yield store, traces


def test_a_generated_store(gen_store: tuple[SqlStore, list[Trace]]) -> None:
    store, traces = gen_store
    inventory = from_data(INVENTORY)
    assert check_window(store, 0, NS_MAX, inventory).graph["traces"] == len(traces)
    check_window(store, T0 + MINUTE_NS, T0 + 3 * MINUTE_NS, inventory)
    check_window(store, T0 + MINUTE_NS + 1, T0 + 3 * MINUTE_NS - 1)  # answers for the whole minutes
    # minutes before a ten-minute block, the block's own rows, minutes after it
    check_window(store, T0 + 7 * MINUTE_NS + 1, T0 + 23 * MINUTE_NS - 1, inventory)
    check_window(store, T0 + 10 * MINUTE_NS, T0 + 20 * MINUTE_NS)


@pytest.mark.parametrize("group", [250, 97])
def test_a_write_replayed_counts_once(gen_store: tuple[SqlStore, list[Trace]], group: int) -> None:
    """Traces the store holds already are not counted again when written again (a replay, analyze
    run twice), whether in the same groups or others: a fresh store object remembers nothing."""
    store, traces = gen_store
    again = store_from_url(store.url)
    try:
        for i in range(0, len(traces), group):
            chunk = traces[i : i + group]
            ids = [t.trace_id for t in chunk]
            stored = store.query_spans(0, NS_MAX, {"trace_id": ids}, len(ids) * 8)
            again.insert("spans", Batch.from_records(Span, stored))
            again.insert("traces", Batch.from_records(Trace, chunk))
    finally:
        again.close()
    assert check_window(store, 0, NS_MAX).graph["traces"] == len(traces)


def test_traces_before_their_spans_and_spans_from_another_writer(store: SqlStore) -> None:
    traces, spans = generated(40, 1, seed=3)
    store.ensure_schema()
    first, second = traces[:20], traces[20:]
    # ingest's order may put a batch of traces before its spans: they wait for them
    store.insert("traces", Batch.from_records(Trace, first))
    assert load_service_map(store, 0, NS_MAX, ALL).graph["traces"] == 0
    store.insert("spans", Batch.from_records(Span, [s for s in spans if s.trace_id <= first[-1].trace_id]))
    # spans written by another writer are read back from the store when their traces come
    other = store_from_url(store.url)
    try:
        other.insert("spans", Batch.from_records(Span, [s for s in spans if s.trace_id > first[-1].trace_id]))
    finally:
        other.close()
    store.insert("traces", Batch.from_records(Trace, second))
    assert check_window(store, 0, NS_MAX).graph["traces"] == 40


def test_window_edges_are_whole_minutes(store: SqlStore) -> None:
    made = [lab_trace(1, start_ns=T0), lab_trace(2, start_ns=T0 + MINUTE_NS - 1), lab_trace(3, start_ns=T0 + MINUTE_NS)]
    store.ensure_schema()
    store.insert("spans", Batch.from_records(Span, [s for _, ss in made for s in ss]))
    store.insert("traces", Batch.from_records(Trace, [t for t, _ in made]))
    for (start, end), traces in {
        (T0, T0 + MINUTE_NS): 2,  # the trace at the next minute's first ns is the next minute's
        (T0 + MINUTE_NS - 1, T0 + MINUTE_NS): 2,  # one ns of a minute answers for the minute
        (T0 + MINUTE_NS, T0 + MINUTE_NS + 1): 1,
        (T0 - MINUTE_NS, T0): 0,
        (0, NS_MAX): 3,
    }.items():
        services = check_window(store, start, end)
        assert services.graph["traces"] == traces, (start, end)
    whole = load_service_map(store, 0, NS_MAX, ALL).graph
    assert (whole["start_ns"], whole["end_ns"]) == (T0, T0 + 2 * MINUTE_NS)


def test_an_empty_window(store: SqlStore) -> None:
    store.ensure_schema()
    services = load_service_map(store, T0, T0 + 60 * MINUTE_NS, ALL)
    points = load_point_topology(store, 0, NS_MAX)
    assert services.number_of_nodes() == points.number_of_nodes() == 0
    assert services.graph["traces"] == points.graph["traces"] == 0
    assert (services.graph["start_ns"], services.graph["end_ns"]) == (T0, T0 + 60 * MINUTE_NS)


def test_store_init_counts_the_traces_of_an_older_store_once(
    store: SqlStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store from before the rollups (its rollup tables missing) gets its stored traces counted by
    ``hopscope store init``, chunk by chunk in start order; a second init counts nothing again."""
    from hopscope.cli import main
    from hopscope.store.rollup import backfill

    traces, spans = generated(300, 12, seed=5)
    writer = store_from_url(store.url)
    writer.ensure_schema()
    writer.insert("spans", Batch.from_records(Span, spans))
    writer.insert("traces", Batch.from_records(Trace, traces))
    writer.close()
    for table in ("edges_1m", "links_1m"):
        store._command(f"DROP TABLE {store.database}.{table}")
    store.ensure_schema()
    assert load_service_map(store, 0, NS_MAX, ALL).graph["traces"] == 0
    assert backfill(store, chunk=37) == len(traces)
    assert check_window(store, 0, NS_MAX).graph["traces"] == len(traces)
    assert main(["store", "init", "--store", store.url]) == 0
    assert "rollups:" not in capsys.readouterr().out
    for table in ("edges_1m", "links_1m"):
        store._command(f"DROP TABLE {store.database}.{table}")
    assert main(["store", "init", "--store", store.url]) == 0
    assert f"rollups: {len(traces)} stored traces counted" in capsys.readouterr().out
    assert check_window(store, 0, NS_MAX).graph["traces"] == len(traces)
