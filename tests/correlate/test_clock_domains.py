"""Clock domains on the committed lab samples with host clocks skewed (``hopscope.lab.skew``).

The lab's namespaces share one kernel clock; the skew is applied to every capture of a host after
the fact and recorded in the manifest, so the offsets the correlator finds have a known answer.
By default the points of one host share its clock: with nodeB's and a client-side host's clocks
off, every request still stitches whole, the offsets come out within a few µs of the skew and the
link latencies are those of the unskewed run. With a clock per point (``--clock-domain point``) a
host whose clock is far off splits from its sidecar's loopback leg, which is why the host is the
default.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hopscope.correlate.offline import Analysis, analyze_points, plan_points
from hopscope.correlate.report import link_latencies
from hopscope.correlate.settings import ClockDomain, CorrelateSettings
from hopscope.lab import skew

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "lab"

pytestmark = pytest.mark.skipif(not (SAMPLES / "manifest.json").is_file(), reason="no lab samples committed")

#: How far an estimated offset may lie from the applied skew: the one-way delays of the lab's
#: veth links differ by a few µs between directions, and the NTP midpoint splits that difference.
OFFSET_TOLERANCE_US = 10
#: Per-link latency against the unskewed run: the scorer's delay tolerance, max(100 µs, 5%).
LATENCY_FLOOR_US = 100.0
LATENCY_SHARE = 0.05

#: Skews (µs) of hosts whose links to the rest are symmetric: nodeB (from the switch mirror)
#: and a client-side host, each with its own offset.
SKEWS_US = [{"nodeB": 1_500, "hv": -700}, {"nodeB": -1_500, "client1": 800}]


def _analyze(run_dir: Path, domain: ClockDomain | None = None) -> Analysis:
    manifest = str(run_dir / "manifest.json")
    settings = CorrelateSettings(clock_domain=domain) if domain else None
    return analyze_points(plan_points(manifest=manifest), settings, manifest)


def _skewed(tmp_path_factory: pytest.TempPathFactory, skews_us: dict[str, int]) -> Path:
    out = tmp_path_factory.mktemp("skewed")
    skew.apply(SAMPLES, {h: us * 1000 for h, us in skews_us.items()}, out)
    return out


@pytest.fixture(scope="module")
def unskewed() -> Analysis:
    return _analyze(SAMPLES)


@pytest.fixture(scope="module", params=SKEWS_US, ids=lambda s: ",".join(f"{h}{us:+d}" for h, us in s.items()))
def skewed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, int], Path]:
    return request.param, _skewed(tmp_path_factory, request.param)


def _medians(analysis: Analysis) -> dict[str, tuple[float, float]]:
    return {link: (float(np.median(a)), float(np.median(b)) if b else 0.0)
            for link, (a, b, _) in link_latencies(analysis.result).items()}


def _evaluation(analysis: Analysis) -> dict[str, Any]:
    assert analysis.evaluation is not None
    return analysis.evaluation


def test_skewed_hosts_stitch_whole_by_default(unskewed: Analysis, skewed: tuple[dict[str, int], Path]) -> None:
    skews_us, run_dir = skewed
    got = _analyze(run_dir)
    ev, base = _evaluation(got), _evaluation(unskewed)
    assert (ev["recall"], ev["precision"]) == (base["recall"], base["precision"]) == (1.0, 1.0)
    assert ev["recalled"] == base["recalled"] and ev["requests"] == base["requests"]
    clocks = {c.domain: c for c in got.result.clocks}
    assert {c.domain_kind for c in clocks.values()} == {"host"}
    for host, us in skews_us.items():
        assert abs(clocks[host].offset_ns / 1000 - us) <= OFFSET_TOLERANCE_US, clocks[host]
        assert abs(clocks[host].offset_ns / 1000 - us) <= clocks[host].uncertainty_ns / 1000 + 1, clocks[host]
    assert {d for d, c in clocks.items() if c.offset_ns} == set(skews_us)
    assert {c["host"]: c["error_us"] for c in ev["clocks"] if c["applied_us"]} == {
        h: pytest.approx(0, abs=OFFSET_TOLERANCE_US) for h in skews_us}
    want, have = _medians(unskewed), _medians(got)
    assert want.keys() == have.keys()
    for link, (req_us, resp_us) in want.items():
        for w, h in ((req_us, have[link][0]), (resp_us, have[link][1])):
            assert abs(h - w) <= max(LATENCY_FLOOR_US, LATENCY_SHARE * abs(w)), (link, want[link], have[link])
    assert [d["within"] for d in ev["delays"]] == [d["within"] for d in base["delays"]]


def test_the_reference_is_a_tightly_measured_clock(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every point its own clock: the sidecars' loopback captures join the group through proxy links
    and the group's median point by name alone would be server1's loopback capture. From there nodeB
    is reached only over the link into the server pods, which carries the 5 ms injected one way and
    cannot tell nodeB's 1.5 ms from delay: nodeB would be kept and every client-side point moved,
    the skew ending up in the delay into the server pods. Among the points that agree with the
    median, the reference is the one measured most tightly (a client-side point), so nodeB's skew
    is found even with a clock per point."""
    skews_us = SKEWS_US[0]
    got = _analyze(_skewed(tmp_path_factory, skews_us), ClockDomain.POINT)
    clocks = {c.domain: c for c in got.result.clocks}
    assert {c.domain_kind for c in clocks.values()} == {"point"}
    reference = [d for d, c in clocks.items() if c.decision.value == "reference"]
    assert reference and not any(d.startswith("server") for d in reference), reference
    assert abs(clocks["nodeB"].offset_ns / 1000 - skews_us["nodeB"]) <= OFFSET_TOLERANCE_US, clocks["nodeB"]
    delays = _evaluation(got)["delays"]
    assert delays and all(d["within"] == d["n"] for d in delays), delays


def test_a_clock_per_point_splits_a_host_behind_its_sidecar(tmp_path_factory: pytest.TempPathFactory) -> None:
    """server2's clock 20 ms ahead: its pod capture is corrected from nodeB, its sidecar's loopback
    leg only through proxy links; per point the two get different offsets and the requests
    through server2 split in two. One clock for the host keeps them whole."""
    run_dir = _skewed(tmp_path_factory, {"server2": 20_000})
    by_point = _analyze(run_dir, ClockDomain.POINT)
    offsets = {c.domain: c.offset_ns for c in by_point.result.clocks}
    assert offsets["server2-pod"] != offsets["server2-app"]
    assert _evaluation(by_point)["recall"] < 1.0
    by_host = _analyze(run_dir)
    assert (_evaluation(by_host)["recall"], _evaluation(by_host)["precision"]) == (1.0, 1.0)
    server2 = next(c for c in by_host.result.clocks if c.domain == "server2")
    assert server2.points == ("server2-app", "server2-pod")
    # the only link to server2 carries the injected delay one way: the offset is known only within it
    assert abs(server2.offset_ns - 20_000_000) <= server2.uncertainty_ns


def test_cli_default_is_the_host(tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]) -> None:
    from hopscope.cli import analyze

    run_dir = _skewed(tmp_path_factory, {"nodeB": 1_500})
    parser = argparse.ArgumentParser()
    analyze.add_arguments(parser)
    args = parser.parse_args(["--manifest", os.fspath(run_dir / "manifest.json"), "--no-store", "--format", "json"])
    assert args.clock_domain == "host"
    assert analyze.run(args) == 0
    doc = json.loads(capsys.readouterr().out)
    node_b = next(c for c in doc["clocks"] if c["domain"] == "nodeB")
    assert node_b["domain_kind"] == "host" and node_b["decision"] == "corrected"
    assert abs(node_b["offset_us"] - 1_500) <= OFFSET_TOLERANCE_US
    assert doc["evaluation"]["recall"] == 1.0


def test_the_streaming_correlator_logs_the_domains_it_corrects(
        tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture) -> None:
    """The streaming correlator estimates clocks every pass with the same default (the host) and
    logs a domain when its correction appears or moves, not on every pass."""
    import logging

    from hopscope.correlate.stream import StreamCorrelator

    result = _analyze(_skewed(tmp_path_factory, {"nodeB": 1_500})).result
    stream = StreamCorrelator(consumer=None, store=None)
    assert stream.correlator.settings.clock_domain is ClockDomain.HOST
    with caplog.at_level(logging.INFO, logger="hopscope.correlate.stream"):
        stream._note_clocks(result)
        stream._note_clocks(result)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("clock of")]
    assert len(lines) == 1 and lines[0].startswith("clock of host nodeB (nodeB): offset "), lines
    assert abs(float(lines[0].split("offset ")[1].split()[0]) - 1_500) <= OFFSET_TOLERANCE_US, lines
