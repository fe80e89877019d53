"""The committed sample captures (samples/lab, made by ``hopscope lab samples``): no root needed.

The same checks as the live run, on the files the demo and the no-root tests use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.lab.checks import CHECKS
from tests.lab.pcapcheck import load_manifest

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "lab"
MAX_BYTES = 4_000_000


def test_samples_are_small_and_complete() -> None:
    m = load_manifest(SAMPLES)
    files = {p.name for p in SAMPLES.glob("*.pcap")}
    assert files == {c["file"] for c in m["capture_points"]}
    assert sum(p.stat().st_size for p in SAMPLES.iterdir()) < MAX_BYTES
    assert 20 <= m["counts"]["requests"] <= 200


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_samples(check: Any) -> None:
    check(SAMPLES, load_manifest(SAMPLES))
