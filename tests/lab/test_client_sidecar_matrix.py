"""Proxies chained across hosts (root): an egress sidecar in each client pod (node A) and a sidecar in
front of each server pod (node B), one lab per cell, the server matrix's traffic plan with 5 ms
injected at node B's ingress, ``hopscope analyze --manifest`` scored against the run's ground truth.

A request crosses the client app's leg (the client pod's loopback), the egress sidecar's upstream
leg (client pod NIC, node A's NAT, hypervisor, switch, node B, server pod NIC), and the server
sidecar's leg to the app. Each cell must stitch >= 99.9% of the requests across every one of those
hops in order with no false link (the client pod NIC hop on the egress sidecar's own upstream socket
for that request, the app's leg the one the server sidecar sent for it), and measure the injected
delay as the server matrix does: the median error over the link's requests within
max(100 us, 5%) of the delay. The streaming correlator's two stages, run in-process on the cell's
captures, store the same traces as the offline engine.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hopscope.lab.lab import ImpairSpec
from tests.lab.conftest import DELAY_SITE
from tests.lab.matrix import (
    CELL_DELAY_MS,
    CELL_SETTINGS,
    MatrixCell,
    app_and_upstream_connections,
    assert_delay_measured,
    assert_no_false_links,
    assert_stitched,
    assert_streaming_as_offline,
    client_nic_reasons,
    run_cell,
)

pytestmark = pytest.mark.lab

#: (client sidecar, server sidecar)
CELLS = (("envoy", "envoy"), ("envoy", "nginx"), ("haproxy", "envoy"))


@dataclass
class ChainCell(MatrixCell):
    client_sidecar: str
    server_sidecar: str


@pytest.fixture(scope="module", params=CELLS, ids=lambda c: f"{c[0]}-{c[1]}")
def cell(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChainCell]:
    """One recorded run through both sidecars, analysed with ``hopscope analyze --manifest``."""
    client_sidecar, server_sidecar = request.param
    out = tmp_path_factory.mktemp(f"chain-{client_sidecar}-{server_sidecar}")
    manifest, analysis = run_cell(out, {"sidecar": server_sidecar, "client_sidecar": client_sidecar},
                                  [ImpairSpec(DELAY_SITE, delay_ms=CELL_DELAY_MS)], CELL_SETTINGS)
    c = ChainCell(manifest, analysis, out, client_sidecar, server_sidecar)
    ev = c.evaluation
    reasons = {s: dict(Counter(h["link_reason"] for h in c.hops_at(s))) for s in ("-pod", "-app")}
    print(f"\ncell {client_sidecar}->{server_sidecar}: requests {ev['requests']} recall {ev['recall']} "
          f"precision {ev['precision']} delays {c.delay_summary()} reasons {reasons}")
    yield c


def test_every_request_is_stitched_across_every_hop(cell: ChainCell) -> None:
    assert all(r["egress_local"] for r in cell.answered)
    assert_stitched(cell, 50)


def test_no_false_links(cell: ChainCell) -> None:
    assert_no_false_links(cell)


def test_injected_delay_is_measured(cell: ChainCell) -> None:
    assert_delay_measured(cell)


def test_the_client_sidecar_pools_its_upstream_connections(cell: ChainCell) -> None:
    """The egress sidecar serves many of the app's connections over a few upstream ones: the client
    leg is linked to its network leg by what survives a proxy, never by following a connection."""
    inbound, upstream = app_and_upstream_connections(cell)
    print(f"\n{cell.client_sidecar}: {len(inbound)} app connections over {len(upstream)} upstream ones")
    assert len(upstream) < len(inbound) / 2, (len(upstream), len(inbound))


def test_link_reasons(cell: ChainCell) -> None:
    """The client pod NIC hop joins the app's leg across the egress sidecar by the app's own id where
    it sent one (both sidecars pass it on), by nesting otherwise (Envoy generates an id upstream only,
    haproxy adds none)."""
    client = client_nic_reasons(cell)
    answered = cell.answered
    assert client["proxy:x-request-id"] == sum(1 for r in answered if r["sent_request_id"]), client
    assert client["proxy:nested"] == sum(1 for r in answered if not r["sent_request_id"]), client


def test_streaming_links_the_chain_as_offline(cell: ChainCell, tmp_path: Path) -> None:
    """Stage 1 (the relay, its host groups) and one stage-2 correlator per key it published, on the
    cell's records: the same traces as offline, every request's chain whole."""
    assert_streaming_as_offline(cell, "chain", tmp_path)
