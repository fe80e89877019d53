"""Flow counts and per-direction packet counts equal tshark's ``-z conv,tcp`` / ``-z conv,udp``.

Runs on generated realistic traffic, on scapy-crafted captures (IPv6, VLAN, tunnels excluded: tshark
would count the outer conversation), and on the lab's captures under samples/lab/ when they exist.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.utils import wrpcap

from hopscope.probes.analyze import analyze_capture

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")

_CONV = re.compile(r"^(\S+)\s+<->\s+(\S+)\s+(\d+)\s+[\d,.]+\s+\S+\s+(\d+)\s+[\d,.]+\s+\S+\s+(\d+)")

Endpoint = tuple[str, int]
MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"


def _split(endpoint: str) -> Endpoint:
    addr, _, port = endpoint.rpartition(":")
    return addr.strip("[]"), int(port)


def tshark_conversations(path: Path, proto: str) -> Counter[tuple[Endpoint, Endpoint]]:
    """Packets sent per (sender endpoint, receiver endpoint) of every conversation tshark reports."""
    out = subprocess.run(["tshark", "-n", "-r", str(path), "-q", "-z", f"conv,{proto}"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    sent: Counter[tuple[Endpoint, Endpoint]] = Counter()
    for line in out.splitlines():
        m = _CONV.match(line)
        if m:
            a, b = _split(m.group(1)), _split(m.group(2))
            sent[(b, a)] += int(m.group(3))  # "<-" column: frames from B to A
            sent[(a, b)] += int(m.group(4))  # "->" column: frames from A to B
    return +sent


def our_conversations(path: Path, proto: int) -> tuple[Counter[tuple[Endpoint, Endpoint]], int]:
    result = analyze_capture(path)
    sent: Counter[tuple[Endpoint, Endpoint]] = Counter()
    pairs = set()
    for rec in result.flows.records():
        if not rec.final or rec.proto != proto or rec.tunnel:  # type: ignore[attr-defined]
            continue
        o, r = (rec.orig_h, rec.orig_p), (rec.resp_h, rec.resp_p)  # type: ignore[attr-defined]
        sent[(o, r)] += rec.orig_pkts  # type: ignore[attr-defined]
        sent[(r, o)] += rec.resp_pkts  # type: ignore[attr-defined]
        pairs.add(frozenset((o, r)))
    return +sent, len(pairs)


def assert_same(path: Path) -> None:
    for name, number in (("tcp", 6), ("udp", 17)):
        theirs = tshark_conversations(path, name)
        ours, pairs = our_conversations(path, number)
        assert ours == theirs, f"{name}: {sorted((ours - theirs).items())[:5]} vs {sorted((theirs - ours).items())[:5]}"
        assert pairs == len({frozenset(k) for k in theirs})


def test_generated_traffic_matches_tshark(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import probe_speed
    finally:
        sys.path.pop(0)
    path = tmp_path / "mix.pcap"
    probe_speed.generate(path, 5000, seed=11)
    assert_same(path)


def test_crafted_ipv6_and_vlan_match_tshark(tmp_path: Path) -> None:
    pkts = []
    for n in range(20):
        c6, s6 = "2001:db8::%x" % (n + 1), "2001:db8::ffff"
        pkts += [
            Ether(src=MAC_A, dst=MAC_B) / IPv6(src=c6, dst=s6) / TCP(sport=4000 + n, dport=443, flags="S"),
            Ether(src=MAC_A, dst=MAC_B) / IPv6(src=s6, dst=c6) / TCP(sport=443, dport=4000 + n, flags="SA"),
            Ether(src=MAC_A, dst=MAC_B)
            / Dot1Q(vlan=5)
            / IP(src=f"10.9.0.{n + 1}", dst="10.9.1.1")
            / UDP(sport=999, dport=53),
        ]
    for i, p in enumerate(pkts):
        p.time = 1_700_000_000 + i * 0.01
    path = tmp_path / "crafted.pcap"
    wrpcap(str(path), pkts)
    assert_same(path)


LAB = sorted((ROOT / "samples" / "lab").glob("*.pcap*")) if (ROOT / "samples" / "lab").is_dir() else []


@pytest.mark.skipif(not LAB, reason="no lab captures under samples/lab/ (`hopscope lab samples` records them)")
@pytest.mark.parametrize("path", LAB, ids=[p.name for p in LAB])
def test_lab_captures_match_tshark(path: Path) -> None:
    assert_same(path)
