"""The pieces of ``hopscope lab run --live`` that need no root: the agents' configurations and the bar."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hopscope.correlate.evaluate import Evaluation
from hopscope.lab.lab import Lab
from hopscope.lab.live import agent_config, agent_plans, agent_point, bar_failures
from hopscope.probes.agent_config import parse_config


def test_one_agent_per_host_with_exactly_its_capture_points(tmp_path: Path) -> None:
    lab = Lab(prefix="hs0a0b0c-")  # not brought up: topology and names only
    plans = {p.host: p for p in agent_plans(lab, tmp_path)}
    assert set(plans) == {"client1", "client2", "nodeA", "hv", "probe", "nodeB", "server1", "server2"}
    assert plans["nodeA"].points == {"cni0": "nodeA-pre-nat", "eth0": "nodeA-post-nat"}
    assert plans["server1"].points == {"eth0": "server1-pod", "lo": "server1-app"}
    assert sum(len(p.points) for p in plans.values()) == len(lab.topo.captures)


@pytest.mark.parametrize("host", ["nodeA", "server1", "probe"])
def test_the_agent_configuration_is_valid_and_names_points_for_the_manifest(tmp_path: Path, host: str) -> None:
    lab = Lab(prefix="hs0a0b0c-")
    (plan,) = [p for p in agent_plans(lab, tmp_path) if p.host == host]
    kinds = {cp.name: cp.kind for cp in lab.topo.captures}
    config = parse_config(yaml.safe_dump(agent_config(plan, kinds, "127.0.0.1:9092", "hslivetest", tmp_path)), {})
    assert config.host == host and not config.namespaces.root
    (netns_dir,) = config.namespaces.netns_dirs
    link = Path(netns_dir) / host  # the one namespace the agent sees, named as the host
    assert link.is_symlink() and str(link.readlink()) == f"/var/run/netns/{lab.ns[host]}"
    assert not list(Path(config.namespaces.proc_root).iterdir())  # no namespace found through processes
    for iface, point in plan.points.items():
        assert config.interfaces.selects(iface)
        assert config.points.point_name(config.host, host, iface) == agent_point(host, iface)
        assert config.hop_kinds.override(iface) == kinds[point]
    assert not config.interfaces.selects("veth0") and not config.interfaces.selects("eth00")
    assert config.kafka.topic_prefix == "hslivetest"


def _ev(requests: int, recalled: int, matched: int, precise: int, duplicates: int = 0, shared: int = 0) -> Evaluation:
    return Evaluation(requests=requests, recalled=recalled, matched=matched, precise=precise,
                      duplicate_traces=duplicates, shared_hops=shared)  # fmt: skip


@pytest.mark.parametrize(("ev", "failing"), [
    (_ev(1000, 1000, 1000, 1000), []),
    (_ev(1000, 999, 1000, 1000), []),  # recall 0.999 is the bar itself
    (_ev(1000, 998, 1000, 1000), ["recall"]),
    (_ev(40, 40, 40, 39), ["precision"]),
    (_ev(40, 40, 40, 40, duplicates=1), ["shared"]),
    (_ev(40, 40, 40, 40, shared=2), ["shared"]),
    (_ev(0, 0, 0, 0), ["answered"]),
])  # fmt: skip
def test_the_bar(ev: Evaluation, failing: list[str]) -> None:
    failures = bar_failures(ev)
    assert len(failures) == len(failing) and all(w in f for w, f in zip(failing, failures, strict=True)), failures
