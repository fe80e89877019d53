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

import dataclasses
import json
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hopscope.correlate.offline import plan_points, read_points
from hopscope.correlate.stream import Relay, StreamCorrelator, StreamSettings, StreamStats
from hopscope.lab.lab import ImpairSpec, Lab, record
from hopscope.store.embedded import EmbeddedStore
from tests.correlate.test_stream import Log, LogConsumer, offline, stored
from tests.correlate.test_stream_chain import FOREVER, Published, input_log
from tests.lab.conftest import DELAY_SITE, require_lab
from tests.lab.test_sidecar_matrix import CELL_DELAY_MS, CELL_SETTINGS

pytestmark = pytest.mark.lab

#: (client sidecar, server sidecar)
CELLS = (("envoy", "envoy"), ("envoy", "nginx"), ("haproxy", "envoy"))
#: Windows wide enough for the lab's slowest request (a 20 ms server delay behind 5 ms of link delay);
#: the relay publishes in 10 ms slices, so stage 2 really gets its input in many messages.
STREAM = StreamSettings(lateness_us=300_000, trace_spread_us=100_000, stitch_every_s=0.0, idle_flush_s=0.2,
                        poll_timeout_s=0.0, relay_lateness_us=20_000, relay_chunk_records=300)


@dataclass
class ChainCell:
    client_sidecar: str
    server_sidecar: str
    manifest: dict[str, Any]
    analysis: dict[str, Any]
    out: Path

    @property
    def evaluation(self) -> dict[str, Any]:
        return self.analysis["evaluation"]

    def hops_at(self, suffix: str) -> list[dict[str, Any]]:
        return [h for t in self.analysis["traces"] if t["kind"] == "l7" for h in t["hops"]
                if h["point"].endswith(suffix)]


@pytest.fixture(scope="module", params=CELLS, ids=lambda c: f"{c[0]}-{c[1]}")
def cell(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChainCell]:
    """One recorded run through both sidecars, analysed with ``hopscope analyze --manifest``."""
    require_lab()
    client_sidecar, server_sidecar = request.param
    out = tmp_path_factory.mktemp(f"chain-{client_sidecar}-{server_sidecar}")
    lab = Lab(sidecar=server_sidecar, client_sidecar=client_sidecar)
    try:
        lab.up()
        record(lab, out, [ImpairSpec(DELAY_SITE, delay_ms=CELL_DELAY_MS)], CELL_SETTINGS)
    finally:
        lab.down()
    report = out / "analysis.json"
    argv = [sys.executable, "-m", "hopscope", "analyze", "--manifest", str(out / "manifest.json"),
            "--format", "json", "--no-store", "--progress", "off", "-o", str(report)]
    subprocess.run(argv, check=True, timeout=300)
    c = ChainCell(client_sidecar, server_sidecar, json.loads((out / "manifest.json").read_text()),
                  json.loads(report.read_text()), out)
    ev = c.evaluation
    delays = {d["link"]: f"{d['within']}/{d['n']} within, median {d['median_error_us']} us, "
                         f"max {d['max_abs_error_us']} us" for d in ev["delays"]}
    reasons = {s: dict(Counter(h["link_reason"] for h in c.hops_at(s))) for s in ("-pod", "-app")}
    print(f"\ncell {client_sidecar}->{server_sidecar}: requests {ev['requests']} recall {ev['recall']} "
          f"precision {ev['precision']} delays {delays} reasons {reasons}")
    yield c


def test_every_request_is_stitched_across_every_hop(cell: ChainCell) -> None:
    ev = cell.evaluation
    assert ev["requests"] > 50
    assert all(r["egress_local"] for r in cell.manifest["requests"] if r["status"] is not None)
    assert ev["recall"] >= 0.999, ev


def test_no_false_links(cell: ChainCell) -> None:
    ev = cell.evaluation
    assert ev["matched"] == ev["requests"] and ev["precise"] == ev["matched"]
    assert ev["duplicate_traces"] == 0 and ev["shared_hops"] == 0


def test_injected_delay_is_measured(cell: ChainCell) -> None:
    delays = cell.evaluation["delays"]
    assert delays
    for d in delays:
        assert d["n"] > 0, d["link"]
        assert abs(d["median_error_us"]) <= d["tolerance_us"], d


def test_the_client_sidecar_pools_its_upstream_connections(cell: ChainCell) -> None:
    """The egress sidecar serves many of the app's connections over a few upstream ones: the client
    leg is linked to its network leg by what survives a proxy, never by following a connection."""
    answered = [r for r in cell.manifest["requests"] if r["status"] is not None]
    inbound = {(r["client"], r["local"]) for r in answered}
    upstream = {(r["client"], r["egress_local"]) for r in answered}
    print(f"\n{cell.client_sidecar}: {len(inbound)} app connections over {len(upstream)} upstream ones")
    assert len(upstream) < len(inbound) / 2, (len(upstream), len(inbound))


def test_link_reasons(cell: ChainCell) -> None:
    """The client pod NIC hop joins the app's leg across the egress sidecar by the app's own id where
    it sent one (both sidecars pass it on), by nesting otherwise (Envoy generates an id upstream only,
    haproxy adds none)."""
    client = Counter(h["link_reason"] for t in cell.analysis["traces"] if t["kind"] == "l7"
                     and t["hops"][0]["point"].endswith("-egress")
                     for h in t["hops"] if h["point"].startswith("client") and h["point"].endswith("-pod"))
    answered = [r for r in cell.manifest["requests"] if r["status"] is not None]
    assert client["proxy:x-request-id"] == sum(1 for r in answered if r["sent_request_id"]), client
    assert client["proxy:nested"] == sum(1 for r in answered if not r["sent_request_id"]), client


def test_streaming_links_the_chain_as_offline(cell: ChainCell, tmp_path: Path) -> None:
    """Stage 1 (the relay, its host groups) and one stage-2 correlator per key it published, on the
    cell's records: the same traces as offline, every request's chain whole."""
    flows, requests = read_points(plan_points(manifest=str(cell.out / "manifest.json")))
    pub = Published()
    relay = Relay(LogConsumer(input_log(requests, flows)), pub, "chain", STREAM, StreamStats())
    while relay.step(0.0):
        pass
    relay.release(FOREVER)
    store = EmbeddedStore(str(tmp_path / "chdb"), f"hs_chain_{uuid.uuid4().hex[:8]}")
    store.ensure_schema()
    try:
        for batches in pub.by_key().values():
            log = Log()
            for b in batches:
                log.append(b)
            StreamCorrelator(LogConsumer(log), store, stream=dataclasses.replace(STREAM)).run(
                threading.Event(), exit_when_idle=True)
        got = stored(store)
    finally:
        store.close()
    assert got == offline(requests, flows)
    chains = [p for _, p in got if p.split(",")[0].endswith("-egress") and p.endswith("-app")]
    assert len(chains) == cell.evaluation["requests"]
