"""Lab lifecycle (root): teardown on error, on Ctrl-C and of crashed runs; the overlay; injected loss."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hopscope.lab.lab import ImpairSpec, Lab, down_prefix, record
from hopscope.lab.netns import lab_prefixes, list_netns, netns_pids
from hopscope.lab.plan import PlanSettings
from tests.lab.conftest import require_lab
from tests.lab.pcapcheck import load_manifest, missing_downstream, pcap_of

pytestmark = pytest.mark.lab

SMALL = PlanSettings(requests_per_session=4, big_bytes=0, dead_attempts=1, dns_lookups=1)


def _ours(prefix: str) -> list[str]:
    return [n for n in list_netns() if n.startswith(prefix)]


def test_up_builds_namespaces_and_down_removes_them(lab: Lab) -> None:
    names = _ours(lab.prefix)
    assert len(names) == len(lab.topo.hosts)
    assert lab.up_seconds is not None and lab.up_seconds < 30
    # Nothing was added to the root namespace: no lab interface exists there.
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert "cni0" not in root_links and "tap0" not in root_links and "span0" not in root_links
    lab.down()
    assert _ours(lab.prefix) == []
    assert not lab.run_dir.exists()


def test_error_inside_the_block_tears_down() -> None:
    require_lab()
    lab = Lab()
    with pytest.raises(RuntimeError), lab:
        assert _ours(lab.prefix)
        raise RuntimeError("boom")
    assert _ours(lab.prefix) == []


def test_ctrl_c_tears_down(tmp_path: Path) -> None:
    require_lab()
    script = textwrap.dedent(
        """
        import sys, time
        from hopscope.lab.lab import Lab
        lab = Lab()
        print(lab.prefix, flush=True)
        with lab:
            print("up", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    assert proc.stdout is not None
    prefix = proc.stdout.readline().strip()
    assert proc.stdout.readline().strip() == "up"
    assert _ours(prefix)
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    assert _ours(prefix) == []


def test_down_removes_a_crashed_run() -> None:
    require_lab()
    lab = Lab().up()
    lab.detach()  # as if the process had been killed: namespaces and daemons are left behind
    pids = netns_pids(lab.ns["server1"])
    assert pids, "envoy and the app should be running in server1"
    assert lab.prefix in lab_prefixes()
    # ``hopscope lab down --prefix`` (down_all would take every run on the host, another suite's too)
    removed = down_prefix(lab.prefix)
    assert set(removed) == set(lab.ns.all())
    assert lab.prefix not in lab_prefixes()
    # ended when down returns; gone from /proc once their parent (init, for a daemon) reaped them
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} survived lab down"


def test_overlay_vxlan(tmp_path: Path) -> None:
    require_lab()
    with Lab(overlay="vxlan") as lab:
        record(lab, tmp_path, [], SMALL, measure_overhead=False)
    m = load_manifest(tmp_path)
    assert all(r["status"] for r in m["requests"] if r["target"].startswith("10.96.0.10"))
    underlay = pcap_of(tmp_path, m, "nodeA-underlay")  # inner packets of the VXLAN frames
    overlay = {p.segment_key for p in pcap_of(tmp_path, m, "nodeA-post-nat")}
    tcp = [p for p in underlay if p.proto == 6]
    assert tcp and all(p.segment_key in overlay for p in tcp)
    raw = subprocess.run(
        ["tshark", "-r", str(tmp_path / "nodeA-underlay.pcap"), "-Y", "vxlan", "-T", "fields", "-e", "vxlan.vni"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert raw and set(raw) == {"42"}


def test_injected_loss_causes_retransmissions(tmp_path: Path) -> None:
    """2% loss server -> client at node A: what the delayer dropped is what the capture after it
    misses, and the long transfer retransmits."""
    require_lab()
    settings = PlanSettings(requests_per_session=2, big_bytes=1_000_000, dead_attempts=0, dns_lookups=0)
    with Lab() as lab:
        record(lab, tmp_path, [ImpairSpec("nodeA-ingress", loss=0.02)], settings, seed=7, measure_overhead=False)
    m = load_manifest(tmp_path)
    (imp,) = m["impairments"]
    assert imp["delayer_stats"]["dropped"] > 0
    post = pcap_of(tmp_path, m, "nodeA-post-nat")
    pre = pcap_of(tmp_path, m, "nodeA-pre-nat")
    missing = missing_downstream(post, pre, toward="172.30.0.1")
    dropped = imp["delayer_stats"]["dropped_packets"]
    assert len(dropped) == imp["delayer_stats"]["dropped"]
    # Every packet missing after the drop point is one the delayer says it dropped, and every drop the
    # capture before the drop point saw is missing after it.
    dropped_keys = {(d["ip_id"], d["ip_len"], d.get("seq", 0), d.get("ack", 0)) for d in dropped}
    missing_keys = {(p.ip_id, p.ip_len, p.seq, p.ack) for p in missing}
    upstream_keys = {(p.ip_id, p.ip_len, p.seq, p.ack) for p in post}
    assert missing_keys == dropped_keys & upstream_keys
    assert len(dropped_keys & upstream_keys) >= 0.9 * len(dropped_keys), "drops the capture did not see"
    big = next(r for r in m["requests"] if r["path"].startswith("/bytes/"))
    assert big["status"] == 200 and big["response_bytes"] == 1_000_000
    data = [p for p in post if p.proto == 6 and p.sport == 80 and p.payload]
    seqs = [(p.dport, p.seq) for p in data]
    assert len(seqs) > len(set(seqs)), "no data segment was retransmitted"
