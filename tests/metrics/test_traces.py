"""The service map's RED metrics per edge (``TraceMetrics``) against the service map itself and against
prometheus_client's own ``Histogram`` fed one duration at a time, on synthetic stitched traces."""

from __future__ import annotations

from collections import defaultdict

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hopscope.correlate.engine import Correlator
from hopscope.correlate.synthetic import Scenario, generate
from hopscope.metrics.traces import DURATION_BUCKETS_S, EDGE_LABELS, TraceMetrics
from hopscope.records import Batch, Span, Trace
from hopscope.topology.graph import entity_hops, hop_order, service_map
from hopscope.topology.inventory import EMPTY


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}  # fmt: skip


def test_red_per_edge_matches_the_service_map_and_a_plain_histogram() -> None:
    result = Correlator().stitch(*(lambda s: (s.requests, s.flows))(generate(Scenario(requests=600,
                                                                                      status_5xx_every=7))))
    traces = [t for t in result.traces.records() if isinstance(t, Trace)]
    spans: dict[str, list[Span]] = defaultdict(list)
    for s in result.spans.records():
        assert isinstance(s, Span)
        spans[s.trace_id].append(s)
    registry = CollectorRegistry()
    metrics = TraceMetrics(registry)
    half = len(traces) // 2  # two batches, as two stitch passes write them
    for part in (traces[:half], traces[half:]):
        ids = {t.trace_id for t in part}
        metrics.observe(Batch.from_records(Trace, part),
                        Batch.from_records(Span, [s for t in ids for s in spans[t]]))  # fmt: skip
    got = samples(registry)

    reference = CollectorRegistry()
    plain = Histogram("hopscope_service_request_duration_seconds", "", EDGE_LABELS, buckets=DURATION_BUCKETS_S,
                      registry=reference)  # fmt: skip
    for t in traces:
        for client, server, duration_us in entity_hops(t, hop_order(spans[t.trace_id]), EMPTY):
            plain.labels(client.label, client.kind, server.label, server.kind, t.l7_proto or "tcp").observe(
                duration_us / 1e6)
    want = {k: v for k, v in samples(reference).items() if not k[0].endswith("_created")}
    ours = {k: v for k, v in got.items() if k[0].startswith("hopscope_service_request_duration")}
    assert ours.keys() == want.keys() and len(want) > 20
    for key, value in want.items():  # buckets and counts exactly; sums up to float rounding
        assert ours[key] == (pytest.approx(value) if key[0].endswith("_sum") else value), key

    graph = service_map(traces, spans)
    assert graph.number_of_edges() >= 2
    for u, v, data in graph.edges(data=True):
        edge = {"client": graph.nodes[u]["label"], "server": graph.nodes[v]["label"]}
        found = [(labels, value) for (name, labels), value in got.items() if name == "hopscope_service_requests_total"
                 and edge.items() <= dict(labels).items()]  # fmt: skip
        assert sum(value for _, value in found) == data["requests"]
        errors = sum(value for (name, labels), value in got.items() if name == "hopscope_service_request_errors_total"
                     and edge.items() <= dict(labels).items())  # fmt: skip
        assert errors == data["errors"]
    assert sum(data["errors"] for _, _, data in graph.edges(data=True)) > 0
    assert got[("hopscope_correlate_trace_emit_delay_seconds_count", ())] == len(traces)
