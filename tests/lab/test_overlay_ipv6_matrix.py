"""The overlay and dual-stack cells (root): one lab per cell, the server matrix's traffic plan with 5 ms
and 5% loss injected at node B's ingress, ``hopscope analyze --manifest`` scored against the run's
ground truth, the same bar as the sidecar matrices.

``vxlan``: pod traffic between the nodes crosses a VXLAN overlay (Linux vxlan devices, VNI 42). Node
A's underlay NIC (``nodeA-underlay``) sees the encapsulated frames and is a hop of every request's
path, stitched by the inner flow (its 5-tuple, TCP ISN and request bytes) as a plain point is. The
impairment queues the encapsulated frames on node B's underlay NIC: the delay lies on the underlay and
each dropped frame is known by the segment it carried.

``ipv6``: a dual-stack lab; half the web sessions go to the Service's IPv6 ClusterIP, through
ip6tables DNAT and masquerade on node A, to the server sidecars' IPv6 listeners; the rest over IPv4.
``ipv6-nginx`` and ``ipv6-haproxy``: the same behind the Debian sidecars (their IPv6 listen/bind).

Each cell must stitch >= 99.9% of the requests across every hop in order with no false link, measure
the injected delay within max(100 us, 5%) (the median over the link's requests), and pin every
dropped request segment to the impaired link, and only loss there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from hopscope.correlate.capture import read_point
from hopscope.correlate.evaluate import OVERLAY_POINT, expected_points
from hopscope.lab.lab import ImpairSpec
from hopscope.store import store_from_url
from tests.lab.conftest import DELAY_SITE
from tests.lab.matrix import (
    CELL_DELAY_MS,
    CELL_SETTINGS,
    MatrixCell,
    assert_delay_measured,
    assert_no_false_links,
    assert_stitched,
    run_cell,
)

pytestmark = pytest.mark.lab

#: cell name -> Lab keyword arguments
CELLS: dict[str, dict[str, Any]] = {
    "vxlan": {"overlay": "vxlan"},
    "ipv6": {"ipv6": True},
    "ipv6-nginx": {"ipv6": True, "sidecar": "nginx"},
    "ipv6-haproxy": {"ipv6": True, "sidecar": "haproxy"},
}
CELL_LOSS = 0.05
FOREVER = 2**63 - 1


@dataclass
class Cell(MatrixCell):
    name: str


@pytest.fixture(scope="module", params=list(CELLS))
def cell(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cell]:
    """One recorded run of the cell's lab, analysed with ``hopscope analyze --manifest`` into a chDB store."""
    name: str = request.param
    out = tmp_path_factory.mktemp(f"cell-{name}")
    manifest, analysis = run_cell(out, CELLS[name],
                                  [ImpairSpec(DELAY_SITE, delay_ms=CELL_DELAY_MS, loss=CELL_LOSS)], CELL_SETTINGS,
                                  seed=3, store_url=f"chdb://{out / 'chdb'}")
    c = Cell(manifest, analysis, out, name)
    ev = c.evaluation
    reasons = Counter(h["link_reason"] for t in c.l7_traces() for h in t["hops"])
    print(f"\ncell {name}: requests {ev['requests']} recall {ev['recall']} precision {ev['precision']} "
          f"delays {c.delay_summary()} drops pinned {ev['dropped_pinned']}/{ev['dropped_request_segments']} "
          f"lossy links {ev['lossy_links']} reasons {dict(reasons)}")
    yield c


def test_every_request_is_stitched_across_every_hop(cell: Cell) -> None:
    assert_stitched(cell, 50)


def test_no_false_links(cell: Cell) -> None:
    assert_no_false_links(cell)


def test_injected_delay_is_measured(cell: Cell) -> None:
    """The median latency of the delayed links within max(100 us, 5%) of the injected delay (single
    requests also carry the delayer's lateness under load: the lab's error, not the correlator's)."""
    assert_delay_measured(cell)


def test_injected_loss_is_pinned_to_its_link(cell: Cell) -> None:
    """Every request segment the delayer dropped shows as loss on the hop right after it, and no other
    link reports loss."""
    ev = cell.evaluation
    assert ev["dropped_request_segments"] > 0
    assert ev["dropped_pinned"] == ev["dropped_request_segments"], ev
    assert ev["lossy_links"] and set(ev["lossy_links"]) <= set(ev["impaired_loss_links"]), ev


@pytest.mark.parametrize("cell", ["vxlan"], indirect=True)
def test_overlay_hop_is_the_inner_flow(cell: Cell) -> None:
    """The encapsulated capture on node A's underlay NIC is a hop of every trace, between node A's
    overlay device and the hypervisor, with the inner addresses (the overlay's, after NAT); there each
    inner connection is one flow, whichever way its outer headers go; the delayer dropped VXLAN
    frames and named each by its inner segment."""
    assert cell.manifest["topology"]["overlay"] == "vxlan"
    for r in cell.answered:
        assert OVERLAY_POINT in expected_points(r, cell.manifest)
    hops = [h for t in cell.l7_traces() for h in t["hops"] if h["point"] == OVERLAY_POINT]
    assert len(hops) >= cell.evaluation["requests"]
    assert {h["orig_h"] for h in hops if h["resp_p"] == 80} == {"10.250.0.1"}
    flows = read_point(str(cell.out / "nodeA-underlay.pcap"), OVERLAY_POINT, "node", "nodeA").flows.columns
    inner = [(o, op, r, rp, p) for o, op, r, rp, p, tun in zip(flows["orig_h"], flows["orig_p"], flows["resp_h"],
                                                                flows["resp_p"], flows["proto"], flows["tunnel"],
                                                                strict=True) if tun.startswith("vxlan vni=42")]
    assert inner and len(inner) == len(set(inner))
    assert {o for o, *_ in inner} | {r for _, _, r, *_ in inner} <= {"10.250.0.1", "10.244.2.11", "10.244.2.12",
                                                                         "10.244.2.53"}
    (imp,) = cell.manifest["impairments"]
    drops = imp["delayer_stats"]["dropped_packets"]
    assert drops and all(d.get("encap") == "vxlan" and d["outer"]["dport"] == 4789 for d in drops if "proto" in d)


@pytest.mark.parametrize("cell", ["ipv6", "ipv6-nginx", "ipv6-haproxy"], indirect=True)
def test_half_the_sessions_go_over_ipv6_and_are_stored_as_such(cell: Cell) -> None:
    """Dual-stack: the requests to the IPv6 ClusterIP are answered, their traces carry IPv6 addresses at
    every network hop (the client's before node A's NAT, node A's after it), the app's leg stays on the
    IPv4 loopback, and the store keeps the addresses as the traces have them."""
    v6 = [r for r in cell.answered if r["target"].startswith("fd00:10:96::10:")]
    assert len(v6) >= len(cell.answered) // 3 and len(v6) < len(cell.answered)
    assert all(r["local"].startswith("fd00:10:244:1::") for r in v6)
    traces = [t for t in cell.l7_traces() if ":" in t["hops"][0]["orig_h"]]
    assert len(traces) == len(v6)
    for t in traces:
        by_point = {h["point"]: h for h in t["hops"]}
        assert by_point["nodeA-pre-nat"]["resp_h"] == "fd00:10:96::10"
        assert by_point["nodeA-post-nat"]["orig_h"] == "fd00:172:30::1"
        assert by_point["nodeB"]["resp_h"] in ("fd00:10:244:2::11", "fd00:10:244:2::12")
        assert t["hops"][-1]["point"].endswith("-app") and t["hops"][-1]["orig_h"] == "127.0.0.1"
    (imp,) = cell.manifest["impairments"]
    assert any(":" in d.get("src", "") for d in imp["delayer_stats"]["dropped_packets"])
    store = store_from_url(f"chdb://{cell.out / 'chdb'}", read_only=True)
    try:
        spans = store.query_spans(0, FOREVER, limit=1_000_000)
    finally:
        store.close()
    want = {(h["point"], h["orig_h"], h["orig_p"], h["resp_h"]) for t in traces for h in t["hops"]}
    got = {(s.point, s.orig_h, s.orig_p, s.resp_h) for s in spans}
    assert want <= got
