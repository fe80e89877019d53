"""A live lab run with 5 ms injected at nodeB-ingress, verified from its pcaps with scapy (root)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.lab.checks import CHECKS
from tests.lab.conftest import DELAY_MS, DELAY_SITE
from tests.lab.pcapcheck import load_manifest

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_live_run(lab_run: tuple[Path, dict[str, Any]], check: Any) -> None:
    run_dir, _ = lab_run
    check(run_dir, load_manifest(run_dir))


def test_live_run_impairment_recorded(lab_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, _info = lab_run
    m = load_manifest(run_dir)
    (imp,) = m["impairments"]
    assert (imp["site"], imp["delay_ms"], imp["loss"]) == (DELAY_SITE, DELAY_MS, 0.0)
    assert imp["between"] == {"upstream": ["nodeB"], "downstream": ["server1-pod", "server2-pod"]}
    assert imp["delayer_stats"]["seen"] == imp["delayer_stats"]["accepted"] > 0


def test_up_is_fast(lab_run: tuple[Path, dict[str, Any]]) -> None:
    _, info = lab_run
    assert info["up_seconds"] < 30
