"""Fixtures for the lab tests: a lab that is always torn down, and one recorded run with a delay.

Lab tests are marked ``lab``; they skip when not root. As root with a prerequisite missing they
skip too, unless HOPSCOPE_REQUIRE_SERVICES=1 (CI), where they fail: CI installs everything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hopscope.errors import ConfigError
from hopscope.lab.lab import ImpairSpec, Lab, check_prerequisites, record
from hopscope.lab.plan import PlanSettings

#: The verification run: 5 ms injected client -> server between the captures "nodeB" and the server pods.
DELAY_SITE = "nodeB-ingress"
DELAY_MS = 5.0
RUN_SETTINGS = PlanSettings(requests_per_session=10, sessions=1, big_bytes=500_000, dead_attempts=2, dns_lookups=3)


def require_lab() -> None:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, iptables, tcpdump)")
    try:
        check_prerequisites()
    except ConfigError as exc:
        if os.environ.get("HOPSCOPE_REQUIRE_SERVICES") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A lab that is up for one test and torn down whatever happens."""
    require_lab()
    lab = Lab()
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="session")
def lab_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """One recorded run (pcaps + manifest) with DELAY_MS injected at DELAY_SITE; the lab is down after."""
    require_lab()
    out = tmp_path_factory.mktemp("labrun")
    lab = Lab()
    try:
        lab.up()
        record(lab, out, [ImpairSpec(DELAY_SITE, delay_ms=DELAY_MS)], RUN_SETTINGS)
        up_seconds = lab.up_seconds
    finally:
        lab.down()
    yield out, {"up_seconds": up_seconds, "prefix": lab.prefix}
