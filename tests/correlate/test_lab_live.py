"""A fresh lab run with delay *and* loss injected at node B's ingress, stitched and scored against its
manifest (root only: network namespaces). The committed samples carry no loss; this run does.

Each request's path names it (``tag_requests``): the run asks for precision 1.0, and identical
requests without a client id are the known case no record can settle. A starved Envoy forwards two
such requests out of arrival order in about one run in ten on a loaded machine, and the correlator
can only guess (and says so); ``test_lab_recorded_swap.py`` keeps one such run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hopscope.correlate import Correlator
from hopscope.correlate.capture import read_point
from hopscope.correlate.evaluate import Evaluation, evaluate
from hopscope.records import Batch

pytestmark = pytest.mark.lab
SITE, DELAY_MS, LOSS = "nodeB-ingress", 3.0, 0.05


@pytest.fixture(scope="module")
def lossy_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    from hopscope.lab.lab import ImpairSpec, Lab, record
    from hopscope.lab.plan import PlanSettings
    from tests.lab.conftest import require_lab

    require_lab()
    out = tmp_path_factory.mktemp("lossy")
    lab = Lab()
    try:
        lab.up()
        record(lab, out, [ImpairSpec(SITE, delay_ms=DELAY_MS, loss=LOSS)],
               PlanSettings(requests_per_session=20, sessions=2, tag_requests=True), seed=3)
    finally:
        lab.down()
    yield out, json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def scored(lossy_run: tuple[Path, dict[str, Any]]) -> Evaluation:
    out, manifest = lossy_run
    got = [read_point(str(out / cp["file"]), cp["name"], cp["kind"], cp["host"]) for cp in manifest["capture_points"]]
    requests = Batch.concat([g.requests for g in got])
    result = Correlator().stitch(requests, Batch.concat([g.flows for g in got]))
    ev = evaluate(manifest, result, requests)
    print("\nlossy lab run:", json.dumps(ev.as_dict()))
    return ev


def test_stitched_with_loss(scored: Evaluation) -> None:
    assert scored.requests > 50
    assert scored.recall >= 0.999 and scored.precision == 1.0
    assert scored.duplicate_traces == 0 and scored.shared_hops == 0


def test_loss_is_pinned_to_the_impaired_link(scored: Evaluation) -> None:
    assert scored.lossy_links and set(scored.lossy_links) <= set(scored.impaired_loss_links)
    assert scored.dropped_pinned == scored.dropped_request_segments


def test_delay_on_the_impaired_link(scored: Evaluation) -> None:
    """Median within the tolerance; single requests also carry the delayer's own lateness under load
    (its late_us percentiles are in the manifest), which is the lab's error, not the correlator's."""
    for d in scored.delays:
        assert d.measured_us
        errors = sorted(abs(e) for e in d.errors_us)
        assert errors[len(errors) // 2] <= d.tolerance_us, d.link
