"""What the lab matrices share (tests/lab/test_*_matrix.py): one cell's run and the bar every cell is
held to.

A cell is one lab (a sidecar, a client sidecar, mutual TLS, an overlay, dual stack), one recorded run
of a traffic plan with an impairment, the lab down afterwards whatever happens, and
``hopscope analyze --manifest`` scoring the run against its ground truth. Every cell must stitch
>= 99.9% of its requests across every hop with no false link, and measure the injected delay within
the evaluation's tolerance (the median error over the link's requests).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from hopscope.correlate.offline import plan_points, read_points
from hopscope.correlate.stream import Relay, StreamCorrelator, StreamSettings, StreamStats
from hopscope.lab.lab import ImpairSpec, Lab, record
from hopscope.lab.plan import PlanSettings
from hopscope.store.embedded import EmbeddedStore
from tests.correlate.test_stream import Log, LogConsumer, offline, stored
from tests.correlate.test_stream_chain import FOREVER, Published, input_log
from tests.lab.conftest import require_lab

CELL_DELAY_MS = 5.0
#: About 145 HTTP requests per cell: two clients, three keep-alive and three one-shot sessions each,
#: each request's path tagged with a query string (requests differ in their paths, as most real
#: traffic does; identical requests without ids are the known limit, see docs/DESIGN.md).
CELL_SETTINGS = PlanSettings(requests_per_session=12, sessions=3, big_bytes=200_000, dead_attempts=1, dns_lookups=1,
                             tag_requests=True)
#: The streaming correlator's windows, wide enough for the lab's slowest request (a 20 ms server delay
#: behind 5 ms of link delay); the relay publishes in 10 ms slices, so stage 2 really gets its input in
#: many messages.
STREAM = StreamSettings(lateness_us=300_000, trace_spread_us=100_000, stitch_every_s=0.0, idle_flush_s=0.2,
                        poll_timeout_s=0.0, relay_lateness_us=20_000, relay_chunk_records=300)


@dataclasses.dataclass
class MatrixCell:
    """A cell's recorded run: its manifest (the ground truth), the analysis of it, and the run folder."""

    manifest: dict[str, Any]
    analysis: dict[str, Any]
    out: Path

    @property
    def evaluation(self) -> dict[str, Any]:
        return self.analysis["evaluation"]

    @property
    def answered(self) -> list[dict[str, Any]]:
        return [r for r in self.manifest["requests"] if r["status"] is not None]

    def l7_traces(self) -> list[dict[str, Any]]:
        return [t for t in self.analysis["traces"] if t["kind"] == "l7"]

    def hops_at(self, suffix: str) -> list[dict[str, Any]]:
        return [h for t in self.l7_traces() for h in t["hops"] if h["point"].endswith(suffix)]

    def delay_summary(self) -> dict[str, str]:
        return {d["link"]: f"{d['within']}/{d['n']} within, median {d['median_error_us']} us, "
                           f"max {d['max_abs_error_us']} us" for d in self.evaluation["delays"]}


def run_cell(out: Path, lab_args: dict[str, Any], impairments: list[ImpairSpec], plan: PlanSettings, *,
             seed: int = 1, store_url: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Record one run in a lab built with ``lab_args`` (down afterwards whatever happens) into ``out``,
    analyse it with ``hopscope analyze --manifest`` (into ``store_url``, or no store); return the
    manifest and the analysis."""
    require_lab()
    lab = Lab(**lab_args)
    try:
        lab.up()
        record(lab, out, impairments, plan, seed=seed)
    finally:
        lab.down()
    report = out / "analysis.json"
    store = ["--store", store_url] if store_url else ["--no-store"]
    argv = [sys.executable, "-m", "hopscope", "analyze", "--manifest", str(out / "manifest.json"),
            "--format", "json", *store, "--progress", "off", "-o", str(report)]
    subprocess.run(argv, check=True, timeout=300)
    return json.loads((out / "manifest.json").read_text()), json.loads(report.read_text())


def assert_stitched(cell: MatrixCell, min_requests: int) -> None:
    """More than ``min_requests`` requests, >= 99.9% of them stitched across every hop."""
    ev = cell.evaluation
    assert ev["requests"] > min_requests
    assert ev["recall"] >= 0.999, ev


def assert_no_false_links(cell: MatrixCell) -> None:
    """Every request matched and precise, no request in two traces, no hop in two requests."""
    ev = cell.evaluation
    assert ev["matched"] == ev["requests"] and ev["precise"] == ev["matched"]
    assert ev["duplicate_traces"] == 0 and ev["shared_hops"] == 0


def assert_delay_measured(cell: MatrixCell) -> None:
    """The median latency of each delayed link within its tolerance (max(100 us, 5%)) of the injected
    delay. Single requests also carry the delayer's own lateness under load (its late_us percentiles
    are in the manifest): the lab's error, not the correlator's, so no bound on each one."""
    delays = cell.evaluation["delays"]
    assert any(d["n"] for d in delays), delays
    served = Counter(r.get("server") for r in cell.manifest["requests"])
    for d in delays:
        if not d["n"]:
            # kube-proxy picks a backend per connection, and a cell whose sidecars pool a few connections
            # can send them all to one backend: then, by the manifest, no request crossed this link.
            backend = d["link"].split(">")[1].removesuffix("-pod")
            assert not served[backend], f"{d['link']}: {served[backend]} requests served, none measured"
            continue
        assert abs(d["median_error_us"]) <= d["tolerance_us"], d


def app_and_upstream_connections(cell: MatrixCell) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """The client apps' connections and the egress sidecars' upstream connections that carried them."""
    inbound = {(r["client"], r["local"]) for r in cell.answered}
    upstream = {(r["client"], r["egress_local"]) for r in cell.answered}
    return inbound, upstream


def client_nic_reasons(cell: MatrixCell) -> Counter[str]:
    """The link reasons of the client pod NIC hops of the traces that start at an egress sidecar."""
    return Counter(h["link_reason"] for t in cell.l7_traces() if t["hops"][0]["point"].endswith("-egress")
                   for h in t["hops"] if h["point"].startswith("client") and h["point"].endswith("-pod"))


def assert_streaming_as_offline(cell: MatrixCell, key: str, tmp_path: Path) -> None:
    """Stage 1 (the relay, its host groups) and one stage-2 correlator per key it published, on the
    cell's records: the same traces as the offline engine, every request's chain from the egress
    sidecar to the app whole."""
    flows, requests = read_points(plan_points(manifest=str(cell.out / "manifest.json")))
    pub = Published()
    relay = Relay(LogConsumer(input_log(requests, flows)), pub, key, STREAM, StreamStats())
    while relay.step(0.0):
        pass
    relay.release(FOREVER)
    store = EmbeddedStore(str(tmp_path / "chdb"), f"hs_{key}_{uuid.uuid4().hex[:8]}")
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
