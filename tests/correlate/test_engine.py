"""The stitching engine on constructed records (table-driven) and on the synthetic path."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pytest

from hopscope.correlate import CorrelateSettings, Correlator, StitchResult
from hopscope.correlate.settings import ClockDomain, ClockMode
from hopscope.correlate.synthetic import HOP_STRIDE, Scenario, generate
from hopscope.records import Batch, FlowRecord, RequestRecord

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
US = 1_000
_IDS = itertools.count(1)


def req(point: str, t_req_us: int, t_resp_us: int, **fields: Any) -> RequestRecord:
    """A request observation at ``point``; times in µs after T0 (0: none)."""
    base: dict[str, Any] = dict(
        point=point, host=fields.pop("host", point), hop_kind=fields.pop("kind", "node"), iface="eth0",
        l7_proto="http", proto=6, method="GET", path="/x", http_host="svc", status=200,
        syn_seq=1000, synack_seq=5000, req_tcp_seq=1001, resp_tcp_seq=5001, req_payload_hash=77,
        request_id=next(_IDS), req_first_ns=T0 + t_req_us * US, resp_first_ns=T0 + t_resp_us * US if t_resp_us else 0,
    )
    base["req_last_ns"] = base["req_first_ns"] + 10 * US
    base["resp_last_ns"] = base["resp_first_ns"] + 10 * US if t_resp_us else 0
    base.update(fields)
    return RequestRecord(**base)


def stitch(records: list[RequestRecord], flows: list[FlowRecord] | None = None, **settings: Any) -> StitchResult:
    r = Batch.from_records(RequestRecord, records)
    f = Batch.from_records(FlowRecord, flows) if flows else None
    return Correlator(CorrelateSettings(**settings)).stitch(r, f, version_ns=1)


def traces_by_points(res: StitchResult) -> list[list[str]]:
    return sorted(p.split(",") for p in res.traces.columns["points"])


def spans_of(res: StitchResult) -> list[dict[str, Any]]:
    return [dataclasses.asdict(s) for s in res.spans.records()]  # type: ignore[call-overload]


# --- hop stitching across NAT ---------------------------------------------------------------

def test_nat_path_is_one_trace_in_path_order_with_latencies() -> None:
    records = [  # shuffled on purpose; addresses rewritten by NAT after node-pre
        req("switch", 300, 900, kind="switch", orig_h="192.168.0.1", resp_h="10.2.0.7"),
        req("pod", 0, 1300, kind="pod", orig_h="10.1.0.5", resp_h="10.96.0.10"),
        req("node-post", 120, 1100, kind="nat", host="node-a", orig_h="192.168.0.1", resp_h="10.2.0.7"),
        req("node-pre", 100, 1150, kind="nat", host="node-a", orig_h="10.1.0.5", resp_h="10.96.0.10"),
    ]
    res = stitch(records)
    assert traces_by_points(res) == [["pod", "node-pre", "node-post", "switch"]]
    spans = spans_of(res)
    assert [s["req_link_us"] for s in spans] == [0, 100, 20, 180]
    assert [s["resp_link_us"] for s in spans] == [0, 150, 50, 200]
    assert [s["link_reason"] for s in spans] == ["origin"] + ["l7:req_tcp_seq"] * 3
    assert all(s["link_confidence"] == 1.0 for s in spans)
    assert spans[0]["parent_span_id"] == "" and spans[1]["parent_span_id"] == spans[0]["span_id"]


@pytest.mark.parametrize(
    ("case", "second", "expected_traces"),
    [
        # same client ISN and request seq, different server ISN: two unrelated connections
        ("syn collision, synack differs", dict(synack_seq=9999, resp_tcp_seq=10000), 2),
        # everything equal but 20 s apart: outside the window
        ("same anchors, far apart", dict(req_first_ns=T0 + 20_000 * MS, resp_first_ns=T0 + 20_001 * MS), 2),
        # everything equal except the request payload
        ("payload hash differs", dict(req_payload_hash=78), 2),
        # response seq differs (same syn and synack: a second request in the same window)
        ("resp seq differs", dict(resp_tcp_seq=7777), 2),
    ],
)
def test_seq_collisions_do_not_merge(case: str, second: dict[str, Any], expected_traces: int) -> None:
    a = [req("p1", 0, 500), req("p2", 50, 450)]
    b_fields = dict(second)
    b = [req("p1", 10, 510, **b_fields), req("p2", 60, 460, **b_fields)]
    res = stitch(a + b)
    assert len(res.traces) == expected_traces, case
    if expected_traces == 2:
        assert traces_by_points(res) == [["p1", "p2"], ["p1", "p2"]]
        # each trace holds the request ids of one connection only
        by_trace: dict[str, set[int]] = defaultdict(set)
        for s in spans_of(res):
            by_trace[s["trace_id"]].add(s["request_id"])
        assert sorted(len(v) for v in by_trace.values()) == [2, 2]


def test_point_without_handshake_still_joins() -> None:
    """A capture that started after the handshake knows no syn_seq: the request seqs still match."""
    res = stitch([req("p1", 0, 500), req("p2", 50, 450, syn_seq=0, synack_seq=0)])
    assert traces_by_points(res) == [["p1", "p2"]]
    assert 0.8 < spans_of(res)[1]["link_confidence"] < 1.0


def test_keep_alive_requests_are_separate_traces() -> None:
    records = []
    for i in range(5):  # five requests on one connection: same syn_seq, consecutive seqs
        seqs = dict(req_tcp_seq=1001 + 100 * i, resp_tcp_seq=5001 + 400 * i, req_payload_hash=100 + i)
        t = 1000 * i
        records += [req("a", t, t + 500, request_id=10 + i, **seqs), req("b", t + 40, t + 460,
                                                                        request_id=20 + i, **seqs)]
    res = stitch(records)
    assert len(res.traces) == 5
    pairs = Counter(tuple(sorted(s["request_id"] for s in spans_of(res) if s["trace_id"] == t))
                    for t in res.traces.columns["trace_id"])
    assert set(pairs) == {(10 + i, 20 + i) for i in range(5)}


def test_same_point_twice_splits() -> None:
    """Two observations at one hop cannot be one request: the nearest in time joins."""
    records = [req("a", 0, 500, request_id=1), req("a", 5, 505, request_id=2),
               req("b", 40, 460, request_id=3), req("b", 46, 466, request_id=4)]
    res = stitch(records)
    groups = sorted(tuple(sorted(s["request_id"] for s in spans_of(res) if s["trace_id"] == t))
                    for t in res.traces.columns["trace_id"])
    assert groups == [(1, 3), (2, 4)]


# --- proxies -----------------------------------------------------------------------------------

def _proxy_records(in_id: str, out_id: str, n: int = 1, gap_us: int = 0) -> list[RequestRecord]:
    """n concurrent requests: client -> envoy (leg 1) and envoy -> app (leg 2, another connection)."""
    out = []
    for i in range(n):
        t = i * gap_us
        leg1 = dict(syn_seq=100 + i, synack_seq=200 + i, req_tcp_seq=101 + i, resp_tcp_seq=201 + i,
                    x_request_id=in_id.format(i=i))
        leg2 = dict(syn_seq=900 + i, synack_seq=800 + i, req_tcp_seq=901 + i, resp_tcp_seq=801 + i,
                    x_request_id=out_id.format(i=i), host="node-b", kind="proxy")
        out += [
            req("client", t, t + 5000, kind="pod", request_id=1000 + i, **leg1),
            req("envoy-in", t + 100, t + 4900, kind="proxy", host="node-b", request_id=2000 + i, **leg1),
            req("envoy-out", t + 300, t + 4500, request_id=3000 + i, **leg2),
            req("app", t + 320, t + 4480, request_id=4000 + i, **{**leg2, "kind": "pod"}),
        ]
    return out


@pytest.mark.parametrize(
    ("in_id", "out_id", "reason", "min_conf", "max_conf"),
    [
        ("rid-{i}", "rid-{i}", "proxy:x-request-id", 0.99, 0.99),  # client sent the id
        ("", "gen-{i}", "proxy:nested", 0.5, 0.8),  # envoy generated it: upstream leg only
        ("", "", "proxy:nested", 0.5, 0.8),  # no id at all
    ],
)
def test_proxy_legs_are_linked(in_id: str, out_id: str, reason: str, min_conf: float, max_conf: float) -> None:
    res = stitch(_proxy_records(in_id, out_id))
    assert traces_by_points(res) == [["client", "envoy-in", "envoy-out", "app"]]
    link = spans_of(res)[2]
    assert link["link_reason"] == reason
    assert min_conf - 1e-6 <= link["link_confidence"] <= max_conf + 1e-6
    assert link["side"] == "server" and link["req_link_us"] == 200 and link["resp_link_us"] == 400


def test_nested_proxy_links_one_to_one_with_concurrent_requests() -> None:
    res = stitch(_proxy_records("", "gen-{i}", n=3, gap_us=50))
    assert len(res.traces) == 3
    for t in res.traces.columns["trace_id"]:
        ids = sorted(s["request_id"] % 1000 for s in spans_of(res) if s["trace_id"] == t)
        assert len(set(ids)) == 1, ids  # one request's four legs, never mixed
    reasons = [s["link_reason"] for s in spans_of(res) if s["point"] == "envoy-out"]
    assert reasons == ["proxy:nested"] * 3


def test_proxy_not_linked_across_different_statuses() -> None:
    """Each point its own clock: the two legs share no clock group, so nothing but the request's
    own fields can tie them, and a different status keeps them apart (Host and path may differ
    across a proxy: tests/correlate/test_proxy.py)."""
    records = _proxy_records("", "")
    records = [dataclasses.replace(r, status=404) if r.point in ("envoy-out", "app") else r
               for r in records]
    res = stitch(records, clock_domain=ClockDomain.POINT)
    assert traces_by_points(res) == [["client", "envoy-in"], ["envoy-out", "app"]]


def test_same_x_request_id_on_sequential_retries_stays_separate() -> None:
    first = _proxy_records("rid", "rid")
    retry = [dataclasses.replace(r, req_first_ns=r.req_first_ns + 50 * MS, resp_first_ns=r.resp_first_ns + 50 * MS,
                                 req_tcp_seq=r.req_tcp_seq + 7, resp_tcp_seq=r.resp_tcp_seq + 7,
                                 request_id=r.request_id + 1) for r in first]
    res = stitch(first + retry)
    assert traces_by_points(res) == [["client", "envoy-in", "envoy-out", "app"]] * 2


# --- clocks ----------------------------------------------------------------------------------

def _shifted(sc: Scenario) -> StitchResult:
    """The scenarios shift single capture points, not whole hosts: each point is its own clock."""
    syn = generate(sc)
    return Correlator(CorrelateSettings(clock_domain=ClockDomain.POINT)).stitch(syn.requests, syn.flows, version_ns=1)


@pytest.mark.parametrize("shifts", [{"switch": 5_000}, {"node-b": -40_000, "hypervisor": 700}, {}])
def test_clock_offsets_are_estimated_and_corrected(shifts: dict[str, int]) -> None:
    base = _shifted(Scenario(requests=200))
    res = _shifted(Scenario(requests=200, clock_shift_us=shifts))
    for point, shift in shifts.items():
        assert abs(res.clock_offsets_us.get(point, 0) - shift) <= 20, res.clock_offsets_us
    assert set(res.clock_offsets_us) <= set(shifts)
    a, b = spans_of(base), spans_of(res)
    assert [s["point"] for s in a] == [s["point"] for s in b]
    for x, y in zip(a, b, strict=True):
        assert abs(x["req_link_us"] - y["req_link_us"]) <= 20
        assert abs(x["resp_link_us"] - y["resp_link_us"]) <= 20


def test_clock_mode_none_keeps_the_shift() -> None:
    syn = generate(Scenario(requests=50, clock_shift_us={"switch": 5_000}))
    res = Correlator(CorrelateSettings(clock_mode=ClockMode.NONE)).stitch(syn.requests, syn.flows)
    links = [s["req_link_us"] for s in spans_of(res) if s["point"] == "switch"]
    assert min(links) > 5_000  # uncorrected: the shift shows up as delay
    assert res.clock_offsets_us == {}


# --- loss ------------------------------------------------------------------------------------

@pytest.mark.parametrize("lossy_point", ["switch", "node-a-post", "app"])
def test_loss_is_pinned_to_the_link(lossy_point: str) -> None:
    syn = generate(Scenario(requests=300, loss_into={lossy_point: 0.1}, seed=3))
    res = Correlator().stitch(syn.requests, syn.flows, version_ns=1)
    expected = Counter(link for link in syn.loss_link if link)
    got = Counter(link for link in res.traces.columns["loss_link"] if link)
    assert expected and got == expected
    assert sum(res.traces.columns["lost_pkts"].tolist()) == sum(expected.values())  # type: ignore[union-attr]


# --- whole synthetic path ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["client", "generated", "none"])
def test_synthetic_path_precision_and_recall(mode: str) -> None:
    syn = generate(Scenario(requests=2000, per_connection=5, request_id_mode=mode, status_5xx_every=10,
                            conn_spacing_us=1000))
    res = Correlator().stitch(syn.requests, syn.flows, version_ns=1)
    rid = res.spans.columns["request_id"]
    request_of = (np.asarray(rid) // HOP_STRIDE).tolist()
    by_trace: dict[str, set[int]] = defaultdict(set)
    for t, r in zip(res.spans.columns["trace_id"], request_of, strict=True):
        by_trace[t].add(r)
    wrong = {t for t, v in by_trace.items() if len(v) > 1}
    if mode == "client":
        assert not wrong  # precision: never two requests in one trace
        full = [p for p in res.traces.columns["points"] if p.split(",") == syn.expected_points]
        assert len(full) == 2000  # recall: every request stitched across every hop, in path order
    else:
        # without a client id, requests reaching the proxy within its jitter are ambiguous: the
        # nested link may swap them, but then it must say so with the ambiguous confidence
        assert len(wrong) <= 0.01 * len(by_trace)
        conf = dict(zip(res.traces.columns["trace_id"], res.traces.columns["min_confidence"].tolist(),  # type: ignore[union-attr]
                        strict=True))
        assert all(conf[t] <= 0.6 + 1e-6 for t in wrong)
        assert Counter(res.traces.columns["hop_count"].tolist()) == {9: 2000}  # type: ignore[union-attr]
    assert sum(res.traces.columns["error"].tolist()) == 200  # type: ignore[union-attr]


def test_ids_are_deterministic_and_independent_of_input_order() -> None:
    syn = generate(Scenario(requests=300))
    a = Correlator().stitch(syn.requests, syn.flows)
    perm = np.random.default_rng(1).permutation(len(syn.requests))
    b = Correlator().stitch(syn.requests.take(perm), syn.flows)
    assert sorted(a.traces.columns["trace_id"]) == sorted(b.traces.columns["trace_id"])
    assert sorted(a.spans.columns["span_id"]) == sorted(b.spans.columns["span_id"])
    assert len(set(a.spans.columns["span_id"])) == len(a.spans)


# --- L4 and DNS ------------------------------------------------------------------------------------

def flow(point: str, start_us: int, **fields: Any) -> FlowRecord:
    base: dict[str, Any] = dict(point=point, host=point, hop_kind="node", iface="eth0", proto=6,
                                flow_id=abs(hash(point)) % 1000, start_ns=T0 + start_us * US,
                                end_ns=T0 + (start_us + 9000) * US, syn_seq=4242, synack_seq=2424,
                                conn_state="SF", final=1)
    base.update(fields)
    return FlowRecord(**base)


def test_connection_without_l7_gets_an_l4_trace() -> None:
    flows = [flow("b", 30, rtt_server_us=140), flow("a", 0, rtt_server_us=200),
             flow("c", 60, rtt_server_us=80, orig_retrans_pkts=0), flow("x", 0, syn_seq=55, synack_seq=66)]
    res = stitch([req("a", 0, 500), req("b", 40, 460)], flows)
    kinds = Counter(res.traces.columns["kind"])
    assert kinds == {"l7": 1, "l4": 2}
    l4 = [s for s in spans_of(res) if s["trace_id"] in {t for t, k in zip(res.traces.columns["trace_id"],
                                                                            res.traces.columns["kind"],
                                                                            strict=True) if k == "l4"}]
    assert [s["point"] for s in l4 if s["point"] != "x"] == ["a", "b", "c"]
    assert {s["link_reason"] for s in l4 if s["hop_index"] > 0} == {"nat:syn_seq"}


def test_rst_connection_without_response_is_an_error() -> None:
    flows = [flow("a", 0, flow_id=7, close_type="server_rst", conn_state="RSTR", syn_seq=1000,
                  synack_seq=5000)]
    res = stitch([req("a", 0, 0, flow_id=7, status=0)], flows)
    assert res.traces.columns["error"].tolist() == [1]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("second", "expected"),
    [(dict(), 1), (dict(dns_qname="other.example."), 2), (dict(dns_id=99), 2)],
)
def test_dns_is_matched_by_id_name_and_type(second: dict[str, Any], expected: int) -> None:
    dns = dict(l7_proto="dns", proto=17, syn_seq=0, synack_seq=0, req_tcp_seq=0, resp_tcp_seq=0,
               dns_id=4711, dns_qname="shop.example.", dns_qtype=1, method="", path="", status=0)
    res = stitch([req("a", 0, 300, **dns), req("b", 20, 280, **{**dns, **second})])
    assert len(res.traces) == expected
    if expected == 1:
        assert spans_of(res)[1]["link_reason"] == "l7:dns_id"
        assert res.traces.columns["error"].tolist() == [0]  # type: ignore[union-attr]


def test_unknown_setting_values_are_rejected() -> None:
    from hopscope.errors import ConfigError
    with pytest.raises(ConfigError):
        CorrelateSettings(network_delay_us=0)


def test_one_capture_point_on_two_interfaces_gives_two_hops() -> None:
    """An ``-i any`` capture at a NAT node sees the request before and after DNAT on two interfaces."""
    res = stitch([req("pod", 0, 1000, kind="pod"), req("node", 100, 900, iface="cni0", kind="nat"),
                  req("node", 110, 880, iface="eth0", kind="nat", orig_h="192.168.0.1")])
    assert traces_by_points(res) == [["pod", "node:cni0", "node:eth0"]]


def test_proxy_retry_upstream_is_a_branch_of_one_trace() -> None:
    """Envoy retried upstream: two upstream legs nest in one downstream exchange, both in its trace."""
    leg1 = dict(syn_seq=100, synack_seq=200, req_tcp_seq=101, resp_tcp_seq=201, x_request_id="rid")
    up1 = dict(syn_seq=900, synack_seq=800, req_tcp_seq=901, resp_tcp_seq=801, x_request_id="rid",
               host="node-b", status=503)
    up2 = dict(syn_seq=700, synack_seq=600, req_tcp_seq=701, resp_tcp_seq=601, x_request_id="rid",
               host="node-b")
    records = [
        req("client", 0, 9000, kind="pod", **leg1),
        req("envoy-in", 100, 8900, kind="proxy", host="node-b", **leg1),
        req("envoy-out", 300, 2000, kind="proxy", **up1), req("app", 320, 1980, kind="pod", **up1),
        req("envoy-out", 2500, 8500, kind="proxy", **up2), req("app", 2520, 8480, kind="pod", **up2),
    ]
    res = stitch(records)
    assert traces_by_points(res) == [["client", "envoy-in", "envoy-out", "app", "envoy-out", "app"]]
    spans = spans_of(res)
    assert spans[4]["parent_span_id"] == spans[1]["span_id"]  # the retry hangs off the inbound leg
    assert [s["link_reason"] for s in spans] == ["origin", "l7:req_tcp_seq", "proxy:x-request-id", "l7:req_tcp_seq",
                                                  "proxy:x-request-id", "l7:req_tcp_seq"]


@pytest.mark.parametrize("swap_status", [False, True])
def test_nested_proxy_out_of_order_resolved_by_response_end_or_status(swap_status: bool) -> None:
    """Seen in the lab: envoy forwarded the later of two concurrent requests first. Turnaround alone
    cannot tell (every matching adds up to the same total); the last byte of a response (or its
    status) must come from upstream before the proxy's answer ends."""
    def leg(i: int, syn: int, point: str, kind: str, t: int, t_resp: int, t_end: int, status: int) -> RequestRecord:
        seqs = dict(syn_seq=syn, synack_seq=syn + 1, req_tcp_seq=syn + 1, resp_tcp_seq=syn + 2)
        r = req(point, t, t_resp, kind=kind, host="server2", request_id=100 * i + syn % 100, status=status, **seqs)
        return dataclasses.replace(r, resp_last_ns=T0 + t_end * US)

    status_a, status_b = (500, 200) if swap_status else (200, 200)
    end_a = 43_300 if not swap_status else 1_300
    records = [
        leg(1, 1000, "pod", "pod", 0, 1_070, 1_070, status_b),  # B arrives first, answered early
        leg(2, 2000, "pod", "pod", 115, 1_340, end_a + 160, status_a),  # A arrives second, long response
        leg(2, 3000, "app", "proxy", 444, 711, end_a, status_a),  # envoy forwards A first ...
        leg(1, 4000, "app", "proxy", 803, 910, 925, status_b),  # ... and B second
    ]
    res = stitch(records)
    groups = sorted(tuple(sorted(s["request_id"] // 100 for s in spans_of(res) if s["trace_id"] == t))
                    for t in res.traces.columns["trace_id"])
    assert groups == [(1, 1), (2, 2)]
