"""The correlator on the lab's committed captures, against the lab's ground-truth manifest.

samples/lab/ holds one capture per point of a real path (client pods, node A before and after
NAT, hypervisor tap, switch mirror, node B, server pods' envoy inbound leg and loopback
envoy-to-app leg), with delay injected at node B's ingress, and manifest.json with what the
traffic generator sent and received. Each manifest request must come out as exactly one trace with
every hop in path order; the upstream leg must carry the request id envoy used for *that* request;
the link after the delayer must show the injected delay.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict
from typing import Any

import numpy as np
import pytest

from hopscope.correlate import Correlator, StitchResult
from hopscope.correlate.report import link_latencies, traces_json
from hopscope.records import Batch

LAB = os.path.join(os.path.dirname(__file__), "..", "..", "samples", "lab")
MANIFEST = os.path.join(LAB, "manifest.json")
CLIENT_SIDE = ("nodeA-pre-nat", "nodeA-post-nat", "hv-tap", "switch-mirror", "nodeB")

pytestmark = pytest.mark.skipif(not os.path.isfile(MANIFEST), reason="no lab samples committed")


@dataclasses.dataclass
class Lab:
    manifest: dict[str, Any]
    requests: Batch
    flows: Batch


@pytest.fixture(scope="module")
def lab() -> Lab:
    from hopscope.correlate.capture import read_point

    with open(MANIFEST, encoding="utf-8") as fh:
        manifest = json.load(fh)
    got = [read_point(os.path.join(LAB, cp["file"]), cp["name"], cp["kind"], cp["host"])
           for cp in manifest["capture_points"]]
    return Lab(manifest, Batch.concat([g.requests for g in got]), Batch.concat([g.flows for g in got]))


@pytest.fixture(scope="module")
def result(lab: Lab) -> StitchResult:
    return Correlator().stitch(lab.requests, lab.flows, version_ns=1)


def _xrid_of(lab: Lab) -> dict[tuple[str, int], str]:
    cols = lab.requests.columns
    ids = np.asarray(cols["request_id"]).tolist()
    return {(p, i): x for p, i, x in zip(cols["point"], ids, cols["x_request_id"], strict=True)}


def _match(lab: Lab, result: StitchResult) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each manifest HTTP request that reached a server, with the trace that starts on its socket."""
    by_socket: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in traces_json(result)["traces"]:
        if t["kind"] == "l7" and t["request"]["l7_proto"] == "http":
            first = t["hops"][0]
            by_socket[f"{first['point']}|{first['orig_h']}:{first['orig_p']}"].append(t)
    pairs = []
    for r in lab.manifest["requests"]:
        if r["type"] != "http" or r["status"] is None:
            continue
        cands = by_socket.get(f"{r['client']}-pod|{r['local']}", [])
        best = min(cands, key=lambda t: abs(t["start_ns"] - r["sent_ns"]), default=None)
        pairs.append((r, best))
    return pairs


def _expected_points(r: dict[str, Any]) -> list[str]:
    return [f"{r['client']}-pod", *CLIENT_SIDE, f"{r['server']}-pod", f"{r['server']}-app"]


def test_every_request_is_stitched_across_every_hop(lab: Lab, result: StitchResult) -> None:
    pairs = _match(lab, result)
    assert pairs, "the manifest lists no answered HTTP request"
    complete = [r for r, t in pairs if t is not None and [h["point"] for h in t["hops"]] == _expected_points(r)]
    recall = len(complete) / len(pairs)
    print(f"\nlab recall: {len(complete)}/{len(pairs)} = {recall:.4f}")
    assert recall >= 0.999


def test_no_link_joins_different_requests(lab: Lab, result: StitchResult) -> None:
    """Precision: the upstream leg of each trace is the one envoy sent for this very request."""
    xrid = _xrid_of(lab)
    pairs = [(r, t) for r, t in _match(lab, result) if t is not None]
    traces_used = [t["trace_id"] for _, t in pairs]
    assert len(set(traces_used)) == len(traces_used), "two requests matched one trace"
    correct = 0
    for r, t in pairs:
        app = [h for h in t["hops"] if h["point"].endswith("-app")]
        if len(app) == 1 and xrid[(app[0]["point"], app[0]["request_id"])] == r["upstream_request_id"] \
                and t["request"]["status"] == r["status"]:
            correct += 1
    precision = correct / len(pairs)
    print(f"\nlab precision: {correct}/{len(pairs)} = {precision:.4f}")
    assert precision == 1.0
    # paths are unique per request: no hop record appears in two traces
    seen = [(h["point"], h["request_id"]) for t in traces_json(result)["traces"] for h in t["hops"]
            if t["kind"] == "l7"]
    assert len(seen) == len(set(seen))


def test_proxy_links_carry_their_reason(lab: Lab, result: StitchResult) -> None:
    reasons = defaultdict(set)
    for r, t in _match(lab, result):
        assert t is not None
        app = next(h for h in t["hops"] if h["point"].endswith("-app"))
        reasons[r["sent_request_id"]].add((app["link_reason"], app["link_confidence"] >= 0.9))
    assert reasons[True] == {("proxy:x-request-id", True)}
    assert reasons[False] == {("proxy:nested", False)}


def test_injected_delay_is_measured_on_its_link(lab: Lab, result: StitchResult) -> None:
    overhead_us = lab.manifest["delayer_overhead"]["overhead_us"]
    links = link_latencies(result)
    checked = 0
    for imp in lab.manifest["impairments"]:
        if not imp["delay_ms"] or imp["flow_direction"] != "client->server":
            continue
        want_us = imp["delay_ms"] * 1000
        for up in imp["between"]["upstream"]:
            for down in imp["between"]["downstream"]:
                req_us = links.get(f"{up}>{down}", ([], [], 0))[0]
                for got in req_us:
                    assert abs(got - overhead_us - want_us) <= max(100, 0.05 * want_us), (up, down, got)
                checked += len(req_us)
    assert checked > 0


def test_loss_is_attributed_to_impaired_links_only(lab: Lab, result: StitchResult) -> None:
    impaired = {f"{u}>{d}" for imp in lab.manifest["impairments"] if imp["loss"]
                for u in imp["between"]["upstream"] for d in imp["between"]["downstream"]}
    lossy = {k for k, v in link_latencies(result).items() if v[2]}
    assert lossy <= impaired
    if impaired:
        assert lossy, "loss was injected but attributed nowhere"


def test_dns_refused_and_5xx_are_present(lab: Lab, result: StitchResult) -> None:
    traces = traces_json(result)["traces"]
    dns = {(t["request"]["dns_qname"].rstrip("."), t["hops"][0]["point"]): t for t in traces
           if t["request"]["l7_proto"] == "dns"}
    for q in lab.manifest["dns"]:
        t = dns.get((q["name"], f"{q['client']}-pod"))
        assert t is not None, q
        assert t["error"] == int(q["rcode"] != 0)
    refused = [r for r in lab.manifest["requests"] if r["error"] == "refused"]
    l4_failed = [t for t in traces if t["kind"] == "l4" and t["error"]]
    assert len(l4_failed) >= len(refused)
    want_5xx = sum(1 for r in lab.manifest["requests"] if (r["status"] or 0) >= 500)
    assert sum(1 for t in traces if t["request"]["status"] >= 500 and t["error"]) == want_5xx


def _shift(batch: Batch, point: str, delta_ns: int) -> Batch:
    cols = dict(batch.columns)
    at = np.asarray([p == point for p in cols["point"]])
    for name in [c.name for c in batch.record_type.columns() if c.name.endswith("_ns")]:
        v = np.asarray(cols[name]).astype(np.int64)
        cols[name] = np.where(at & (v != 0), v + delta_ns, v).astype(np.uint64)
    return Batch(batch.record_type, cols, len(batch))


@pytest.mark.parametrize("shifts_us", [{"nodeA-post-nat": 3_000, "switch-mirror": -2_000}, {"hv-tap": 700}])
def test_shifted_capture_clocks_are_corrected(lab: Lab, result: StitchResult, shifts_us: dict[str, int]) -> None:
    req, flows = lab.requests, lab.flows
    for point, us in shifts_us.items():
        req, flows = _shift(req, point, us * 1000), _shift(flows, point, us * 1000)
    shifted = Correlator().stitch(req, flows, version_ns=1)
    for point, us in shifts_us.items():
        assert abs(shifted.clock_offsets_us.get(point, 0) - us) <= 50, shifted.clock_offsets_us
    a, b = link_latencies(result), link_latencies(shifted)
    assert a.keys() == b.keys()
    for link in a:
        assert abs(float(np.median(a[link][0])) - float(np.median(b[link][0]))) <= 50, link
    assert len(shifted.traces) == len(result.traces)
