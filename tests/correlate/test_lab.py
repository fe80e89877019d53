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
from hopscope.correlate.evaluate import Evaluation, evaluate, match_requests
from hopscope.correlate.report import link_latencies, traces_json
from hopscope.correlate.settings import ClockDomain, CorrelateSettings
from hopscope.records import Batch

LAB = os.path.join(os.path.dirname(__file__), "..", "..", "samples", "lab")
MANIFEST = os.path.join(LAB, "manifest.json")

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


@pytest.fixture(scope="module")
def evaluation(lab: Lab, result: StitchResult) -> Evaluation:
    return evaluate(lab.manifest, result, lab.requests)


def test_every_request_is_stitched_across_every_hop(evaluation: Evaluation) -> None:
    assert evaluation.requests > 0, "the manifest lists no answered HTTP request"
    print(f"\nlab recall: {evaluation.recalled}/{evaluation.requests} = {evaluation.recall:.4f}")
    assert evaluation.recall >= 0.999


def test_no_link_joins_different_requests(evaluation: Evaluation) -> None:
    """Precision: the upstream leg of each trace is the one envoy sent for this very request."""
    print(f"\nlab precision: {evaluation.precise}/{evaluation.matched} = {evaluation.precision:.4f}")
    assert evaluation.matched == evaluation.requests
    assert evaluation.precision == 1.0
    assert evaluation.duplicate_traces == 0 and evaluation.shared_hops == 0


def test_proxy_links_carry_their_reason(lab: Lab, result: StitchResult) -> None:
    reasons = defaultdict(set)
    for r, t in match_requests(lab.manifest, traces_json(result)):
        assert t is not None
        app = next(h for h in t["hops"] if h["point"].endswith("-app"))
        reasons[r["sent_request_id"]].add((app["link_reason"], app["link_confidence"] >= 0.9))
    assert reasons[True] == {("proxy:x-request-id", True)}
    assert reasons[False] == {("proxy:nested", False)}


def test_injected_delay_is_measured_on_its_link(evaluation: Evaluation) -> None:
    assert evaluation.delays and all(d.measured_us for d in evaluation.delays)
    for d in evaluation.delays:
        assert d.within == len(d.measured_us), (d.link, d.errors_us)


def test_loss_is_attributed_to_impaired_links_only(evaluation: Evaluation) -> None:
    assert set(evaluation.lossy_links) <= set(evaluation.impaired_loss_links)
    if evaluation.impaired_loss_links:
        assert evaluation.lossy_links, "loss was injected but attributed nowhere"


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


#: These tests shift one capture file, not a whole host: every point is its own clock domain.
BY_POINT = CorrelateSettings(clock_domain=ClockDomain.POINT)


@pytest.mark.parametrize("shifts_us", [{"nodeA-post-nat": 3_000, "switch-mirror": -2_000}, {"hv-tap": 700}])
def test_shifted_capture_clocks_are_corrected(lab: Lab, result: StitchResult, shifts_us: dict[str, int]) -> None:
    req, flows = lab.requests, lab.flows
    for point, us in shifts_us.items():
        req, flows = _shift(req, point, us * 1000), _shift(flows, point, us * 1000)
    shifted = Correlator(BY_POINT).stitch(req, flows, version_ns=1)
    for point, us in shifts_us.items():
        assert abs(shifted.clock_offsets_us.get(point, 0) - us) <= 50, shifted.clock_offsets_us
    a, b = link_latencies(result), link_latencies(shifted)
    assert a.keys() == b.keys()
    for link in a:
        assert abs(float(np.median(a[link][0])) - float(np.median(b[link][0]))) <= 50, link
    assert len(shifted.traces) == len(result.traces)


@pytest.mark.parametrize("shift_us", [3_000, -2_000])
def test_shifted_loopback_capture_behind_the_proxy_is_corrected(lab: Lab, result: StitchResult,
                                                                 shift_us: int) -> None:
    """The envoy-to-app captures (lo) share no connection with any other point: only the proxy links
    bound their clocks (the upstream exchange nests in the downstream one)."""
    req, flows = lab.requests, lab.flows
    for point in ("server1-app", "server2-app"):
        req, flows = _shift(req, point, shift_us * 1000), _shift(flows, point, shift_us * 1000)
    shifted = Correlator(BY_POINT).stitch(req, flows, version_ns=1)
    for point in ("server1-app", "server2-app"):
        assert abs(shifted.clock_offsets_us.get(point, 0) - shift_us) <= 150, shifted.clock_offsets_us
    assert len(shifted.traces) == len(result.traces)
    a, b = link_latencies(result), link_latencies(shifted)
    for link in ("server1-pod>server1-app", "server2-pod>server2-app"):
        assert abs(float(np.median(a[link][0])) - float(np.median(b[link][0]))) <= 150, link
    assert evaluate(lab.manifest, shifted, req).precision == 1.0
