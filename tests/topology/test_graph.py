"""The topology graphs on traces built by hand: service map, one trace's hop path, capture-point topology."""

from __future__ import annotations

import json

import networkx as nx
import pytest

from hopscope.records import FlowRecord, Span, Trace
from hopscope.topology.graph import (
    assign_layers,
    percentiles,
    point_topology,
    service_map,
    to_dot,
    to_node_link,
    trace_path,
)
from hopscope.topology.inventory import from_data
from tests.topology.paths import CLIENT1, CLIENT2, INVENTORY, SERVER1, SNAT, T0, WEB_VIP, flow, lab_trace

INV = from_data(INVENTORY)
C1, C2, WEB = "pod:default/client1", "pod:default/client2", "service:default/web"
S1, S2 = "pod:default/server1", "pod:default/server2"


def _traces(*made: tuple[Trace, list[Span]]) -> tuple[list[Trace], dict[str, list[Span]]]:
    return [t for t, _ in made], {t.trace_id: spans for t, spans in made}


def _service_fixture() -> tuple[list[Trace], dict[str, list[Span]]]:
    return _traces(
        lab_trace(1, 1, 1, duration_us=1000),
        lab_trace(2, 1, 1, duration_us=2000, error=1),
        lab_trace(3, 1, 1, duration_us=3000),
        lab_trace(4, 2, 2, duration_us=4000),
    )


@pytest.mark.parametrize(
    ("p", "values", "expected"),
    [
        ("p50", [], None),
        ("p50", [7], 7),
        ("p99", [7], 7),
        ("p50", [1000, 2000, 3000], 2000),
        ("p90", [1000, 2000, 3000], 2800),
        ("p99", [1000, 2000, 3000], 2980),
        ("p90", [10, 10, 30], 26),
    ],
)
def test_percentiles(p: str, values: list[int], expected: int | None) -> None:
    assert percentiles(values)[p] == expected


def test_service_map_with_inventory() -> None:
    traces, spans = _service_fixture()
    g = service_map(traces, spans, INV)
    assert set(g.edges) == {(C1, WEB), (WEB, S1), (C2, WEB), (WEB, S2)}
    e = g.edges[C1, WEB]
    assert (e["requests"], e["errors"], e["error_rate"]) == (3, 1, 0.3333)
    assert (e["latency_p50_us"], e["latency_p90_us"], e["latency_p99_us"]) == (2000, 2800, 2980)
    assert e["protocols"] == ["http"]
    # the window runs from the first start (T0 + 1 ms) to the last end (T0 + 4 ms + 4 ms): 7 ms
    assert g.graph["window_s"] == pytest.approx(0.007)
    assert e["rate_per_s"] == pytest.approx(3 / 0.007, rel=1e-3)
    # Service -> pod: the duration at the first hop that saw the pod's address (after DNAT, hop 2:
    # its request passed 20 us after the start and its response 2 us before the end)
    assert g.edges[WEB, S1]["latency_p50_us"] == 2000 - 22
    assert g.edges[WEB, S1]["errors"] == 1 and g.edges[WEB, S2]["requests"] == 1
    assert [g.nodes[n]["layer"] for n in (C1, C2, WEB, S1, S2)] == [0, 0, 1, 2, 2]
    assert g.nodes[S1]["services"] == ["web"] and g.nodes[WEB]["kind"] == "service"
    assert g.nodes[C1]["node"] == "nodeA" and g.nodes[C1]["label"] == "client1"


def test_service_map_without_inventory_uses_addresses_and_skips_loopback() -> None:
    traces, spans = _service_fixture()
    g = service_map(traces, spans)
    assert (f"ip:{CLIENT1}", f"ip:{WEB_VIP}") in g.edges
    assert (f"ip:{WEB_VIP}", f"ip:{SERVER1}") in g.edges
    assert not any("127.0.0.1" in n for n in g.nodes)  # envoy -> app on loopback is inside the pod
    assert all(g.nodes[n]["kind"] == "ip" for n in g.nodes)


def test_rates_over_a_given_window() -> None:
    traces, spans = _service_fixture()
    g = service_map(traces, spans, INV, window=(T0, T0 + 2_000_000_000))
    assert g.graph["window_s"] == 2.0
    assert g.edges[C1, WEB]["rate_per_s"] == 1.5 and g.edges[C2, WEB]["rate_per_s"] == 0.5
    instant = Trace(trace_id="c" * 32, kind="l7", start_ns=T0, end_ns=T0, client_h=CLIENT1, server_h=SERVER1)
    assert service_map([instant], {}, INV).edges[C1, S1]["rate_per_s"] is None


def test_trace_without_addresses_adds_nothing() -> None:
    assert service_map([Trace(trace_id="d" * 32, kind="l4", start_ns=T0)], {}, INV).number_of_edges() == 0


def test_trace_without_spans_uses_its_endpoints() -> None:
    t = Trace(trace_id="a" * 32, kind="l4", start_ns=T0, end_ns=T0 + 5_000, duration_us=5, client_h=CLIENT2,
              server_h=SERVER1, error=1, version=1)  # fmt: skip
    g = service_map([t], {}, INV)
    assert list(g.edges(data="errors")) == [(C2, S1, 1)]
    assert g.edges[C2, S1]["protocols"] == ["tcp"]


def test_l4_flows_count_each_connection_once() -> None:
    trace, spans = lab_trace(1)
    later_udp = spans[3]  # an observation the trace placed at hop 3 must not count again
    flows = [
        flow("client1-pod", CLIENT1, WEB_VIP, T0, 7, orig_bytes=100, resp_bytes=900, rtt_server_us=300),
        flow("nodeA-post-nat", SNAT, SERVER1, T0 + 10, 7, orig_bytes=100, resp_bytes=900, rtt_server_us=280),
        flow("client2-pod", CLIENT2, WEB_VIP, T0 + 5, 9, close_type="server_rst", rtt_server_us=100),
        FlowRecord(point=later_udp.point, flow_id=later_udp.flow_id, start_ns=T0 + 20, proto=17, orig_h=SNAT,
                   resp_h=SERVER1, orig_bytes=50),
    ]  # fmt: skip
    g = service_map([trace], {trace.trace_id: spans}, INV, flows)
    e = g.edges[C1, WEB]
    assert (e["flows"], e["flow_bytes"], e["flow_errors"], e["rtt_p50_us"]) == (1, 1000, 0, 300)
    assert (e["requests"], g.edges[C2, WEB]["requests"]) == (1, 0)
    assert g.edges[C2, WEB]["flow_errors"] == 1
    assert "flows" not in g.edges[WEB, S1]
    assert ("node:nodeA", S1) not in g.edges  # the UDP flow behind the NAT was recognized as a later hop


def test_trace_path_of_the_lab_path() -> None:
    trace, spans = lab_trace(5, lost_on="hv-tap")
    g = trace_path(trace, list(reversed(spans)))  # hop order comes from hop_index
    assert list(nx.topological_sort(g)) == [s.point for s in spans]
    assert [g.nodes[s.point]["layer"] for s in spans] == list(range(8))
    assert g.nodes["nodeA-post-nat"]["seen_as"] == f"{SNAT}:50005 > {SERVER1}:80"
    link = g.edges["nodeB", "server1-pod"]
    assert (link["req_link_us"], link["resp_link_us"], link["slowest"]) == (500, 250, True)
    assert g.edges["nodeA-post-nat", "hv-tap"]["lost_pkts"] == 1
    assert g.edges["server1-pod", "server1-app"]["link_reason"] == "proxy:x-request-id"
    assert sum(1 for *_, slow in g.edges(data="slowest") if slow) == 1
    assert g.graph["trace_id"] == trace.trace_id


def test_trace_path_repeated_points_and_parent_links() -> None:
    def span(i: int, point: str, parent: int | None) -> Span:
        return Span(trace_id="b" * 32, span_id=f"{i:016x}", parent_span_id="" if parent is None else f"{parent:016x}",
                    hop_index=i, point=point, req_link_us=i, version=1)  # fmt: skip

    # a hairpin through nodeA twice; hops 3 and 4 are both children of hop 2 (two nested proxy legs)
    spans = [span(0, "pod", None), span(1, "nodeA", 0), span(2, "proxy", 1), span(3, "nodeA", 2), span(4, "app", 2)]
    g = trace_path(None, spans)
    assert set(g.nodes) == {"pod", "nodeA#1", "proxy", "nodeA#3", "app"}
    assert set(g.edges) == {("pod", "nodeA#1"), ("nodeA#1", "proxy"), ("proxy", "nodeA#3"), ("proxy", "app")}
    assert g.nodes["nodeA#3"]["layer"] == g.nodes["app"]["layer"] == 3


def test_point_topology_folds_traces() -> None:
    _, spans = _traces(
        lab_trace(1, 1, 1),
        lab_trace(2, 1, 1, lost_on="hv-tap"),
        lab_trace(3, 2, 2, req_link_us=30),
    )
    g = point_topology(spans)
    assert g.graph["traces"] == 3
    assert g.number_of_nodes() == 11
    assert g.nodes["client1-pod"]["traces"] == 2 and g.nodes["nodeA-pre-nat"]["traces"] == 3
    assert g.nodes["hv-tap"]["hop_kind"] == "hypervisor" and g.nodes["switch-mirror"]["host"] == "probe"
    first = g.edges["client1-pod", "nodeA-pre-nat"]
    assert (first["traces"], first["req_p50_us"], first["resp_p50_us"]) == (2, 10, 5)
    tap = g.edges["nodeA-post-nat", "hv-tap"]
    assert (tap["traces"], tap["lost_pkts"], tap["loss_traces"]) == (3, 1, 1)
    assert (tap["req_p50_us"], tap["req_p90_us"], tap["req_p99_us"]) == (10, 26, 30)
    assert tap["reasons"] == {"l7:req_tcp_seq": 3}
    proxy = g.edges["server1-pod", "server1-app"]
    assert proxy["min_confidence"] == 0.9 and proxy["reasons"] == {"proxy:x-request-id": 2}
    layers = {n: g.nodes[n]["layer"] for n in g}
    assert layers["client2-pod"] == 0 and layers["nodeB"] == 5
    assert layers["server1-pod"] == layers["server2-pod"] == 6 and layers["server2-app"] == 7


def test_layers_with_a_cycle() -> None:
    g = nx.DiGraph([("a", "b"), ("b", "c"), ("c", "b"), ("c", "d")])
    assign_layers(g)
    assert {n: g.nodes[n]["layer"] for n in g} == {"a": 0, "b": 1, "c": 1, "d": 2}


def test_node_link_export_round_trips() -> None:
    traces, spans = _service_fixture()
    data = to_node_link(service_map(traces, spans, INV))
    text = json.dumps(data)  # plain JSON types only
    back = nx.node_link_graph(json.loads(text), edges="links")
    assert set(back.edges) == {(C1, WEB), (WEB, S1), (C2, WEB), (WEB, S2)}
    assert [n["layer"] for n in data["nodes"]] == sorted(n["layer"] for n in data["nodes"])
    assert back.edges[C1, WEB]["requests"] == 3


def test_dot_quotes_labels() -> None:
    g = nx.DiGraph()
    g.add_edge('a "quoted" \\ name', "b", n=1)
    dot = to_dot(g, "x", "{id}\nline", "{n} req")
    assert '"a \\"quoted\\" \\\\ name" -> "b" [label="1 req"];' in dot
    assert '[label="b\\nline"]' in dot
