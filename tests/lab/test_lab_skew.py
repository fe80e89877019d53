"""A real lab run with one host's clock skewed (``hopscope lab run --clock-skew``), stitched with the
default options and scored against its manifest (root only: network namespaces).

The lab's namespaces share one kernel clock, so the skew is applied to nodeB's captures after the
run and recorded in the manifest; nodeB is reached from the switch mirror over a link without an
injected delay, so its offset must come out within a few µs of the skew.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hopscope.correlate.engine import StitchResult
from hopscope.correlate.offline import analyze_points, plan_points
from hopscope.correlate.report import link_latencies
from hopscope.lab import skew

pytestmark = pytest.mark.lab

SKEW_HOST, SKEW_US = "nodeB", -1_500
#: One-way delays of the lab's veth links differ by a few µs between directions (the NTP midpoint
#: splits that difference); a busy machine adds scheduling noise to the minimum delays.
OFFSET_TOLERANCE_US = 20
#: Per-link median latency against the same run without the skew: max(100 µs, 5%).
LATENCY_FLOOR_US = 100.0
LATENCY_SHARE = 0.05


@pytest.fixture(scope="module")
def skewed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from hopscope.cli import lab as lab_cli
    from tests.lab.conftest import require_lab

    require_lab()
    out = tmp_path_factory.mktemp("skewed_run")
    parser = argparse.ArgumentParser()
    lab_cli.add_arguments(parser)
    args = parser.parse_args(["run", "--out", str(out), "--delay", "nodeB-ingress=3", "--requests", "6",
                              "--big-bytes", "0", "--no-overhead", "--clock-skew", f"{SKEW_HOST}={SKEW_US}"])
    assert lab_cli.run(args) == 0
    return out, json.loads((out / "manifest.json").read_text())


def test_skewed_lab_run_stitches_whole_and_finds_the_skew(skewed_run: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = skewed_run
    assert manifest["clock_skew_ns"] == {SKEW_HOST: SKEW_US * 1000}
    path = str(out / "manifest.json")
    analysis = analyze_points(plan_points(manifest=path), None, path)
    ev = analysis.evaluation
    assert ev is not None
    assert ev["requests"] > 0 and (ev["recall"], ev["precision"]) == (1.0, 1.0), ev
    node_b = next(c for c in analysis.result.clocks if c.domain == SKEW_HOST)
    assert node_b.domain_kind == "host" and node_b.decision.value == "corrected"
    assert abs(node_b.offset_ns / 1000 - SKEW_US) <= OFFSET_TOLERANCE_US, node_b
    check = next(c for c in ev["clocks"] if c["host"] == SKEW_HOST)
    assert abs(check["error_us"]) <= OFFSET_TOLERANCE_US, check

    # the same run with the skew taken off again: every link's latency as measured across the skew
    unskewed = out.parent / (out.name + "-unskewed")
    restored = str(skew.apply(out, {SKEW_HOST: -SKEW_US * 1000}, unskewed))
    assert json.loads(Path(restored).read_text())["clock_skew_ns"] == {}
    base = analyze_points(plan_points(manifest=restored), None, restored)
    want, have = _medians(base.result), _medians(analysis.result)
    assert want.keys() == have.keys()
    for link, w in want.items():
        assert abs(have[link] - w) <= max(LATENCY_FLOOR_US, LATENCY_SHARE * abs(w)), (link, w, have[link])


def _medians(result: StitchResult) -> dict[str, float]:
    return {link: float(np.median(a)) for link, (a, _, _) in link_latencies(result).items()}
