"""The lab's pieces that need no root: topology data, NAT rules, plans, DNS wire, delayer logic, CLI."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from hopscope.cli import command_parser
from hopscope.cli.lab import ACTIONS, parse_impairments
from hopscope.errors import ConfigError
from hopscope.lab import netns
from hopscope.lab.build import _interfaces, nat_ruleset
from hopscope.lab.delayer import HEADER_BYTES, Delayer, describe
from hopscope.lab.dns_server import answer, build_query, parse_answer
from hopscope.lab.plan import DNS_ZONE, PlanSettings, default_plan
from hopscope.lab.services import envoy_config
from hopscope.lab.topology import HOP_KINDS, SIDES, default_topology


@pytest.mark.parametrize(("overlay", "ipv6"), [(None, False), ("vxlan", False), (None, True)])
def test_topology_is_consistent(overlay: str | None, ipv6: bool) -> None:
    topo = default_topology(overlay, ipv6=ipv6)
    names = [h.name for h in topo.hosts]
    assert len(set(names)) == len(names) and len({h.short for h in topo.hosts}) == len(names)
    ifaces = set(_interfaces(topo)) | {(h.name, "lo") for h in topo.hosts}
    for host, ifname in ifaces:
        assert len(ifname) <= 15 and host in names
    assert len(ifaces) == len(_interfaces(topo)) + len(topo.hosts), "an interface name repeats in a host"
    for cp in topo.captures:
        assert (cp.host, cp.interface) in ifaces, cp
        assert cp.kind in HOP_KINDS and cp.side in SIDES
    captures = {c.name for c in topo.captures}
    for site in topo.impair_sites:
        assert (site.host, site.interface) in ifaces and site.host in topo.routers
        assert set(site.upstream) | set(site.downstream) <= captures
    for a in topo.addresses:
        assert re.match(r"^(10\.|172\.(1[6-9]|2\d|3[01])\.|fd00:)", a.cidr), f"not a private range: {a}"
    assert {c.kind for c in topo.captures} == set(HOP_KINDS)
    v6 = [a for a in topo.addresses if ":" in a.cidr]
    if not ipv6:
        assert not v6 and not topo.pod_cidrs6
        return
    # dual-stack: every host with an IPv4 address has an IPv6 one on the same interface, but the DNS pod
    v4 = {(a.host, a.interface) for a in topo.addresses if ":" not in a.cidr}
    assert {(a.host, a.interface) for a in v6} == v4 - {("dns", "eth0")}
    for r in topo.routes:
        assert (":" in r.via) == (":" in r.dst or (r.dst == "default" and ":" in r.via))


def test_ipv6_is_not_built_with_an_overlay() -> None:
    with pytest.raises(ValueError, match="overlay"):
        default_topology("vxlan", ipv6=True)


def test_ipv6_nat_ruleset() -> None:
    """The dual-stack NAT node gets the same chains for ip6tables: the Services with an IPv6 ClusterIP,
    DNAT to the backends' IPv6 addresses, masquerade of the node's IPv6 pod range; IPv4's is unchanged."""
    topo = default_topology(ipv6=True)
    assert nat_ruleset(topo) == nat_ruleset(default_topology())
    rules = nat_ruleset(topo, family=6)
    assert "-A KUBE-SERVICES -d fd00:10:96::10/128 -p tcp --dport 80" in rules
    assert "-A KUBE-SEP-WEB2 -p tcp -j DNAT --to-destination [fd00:10:244:2::12]:80" in rules
    assert "-A KUBE-POSTROUTING -s fd00:10:244:1::/64 ! -o cni0 -j MASQUERADE" in rules
    assert "10.96.0.53" not in rules and "KUBE-SVC-DNS" not in rules and "10.244." not in rules


def test_dual_stack_plan_sends_half_the_web_sessions_over_ipv6() -> None:
    settings = PlanSettings(sessions=3, dead_attempts=1)
    web = [s for i in (0, 1) for s in default_plan(i, settings, ipv6=True) if s.get("host") == "web"]
    v6 = [s for s in web if ":" in s["target"]]
    assert {s["target"] for s in v6} == {"fd00:10:96::10"}
    assert not any("/bytes/" in s["requests"][0]["path"] for s in v6)
    assert len(v6) == 6 and len(web) == 13  # 2 clients x 3 sessions x (keep-alive + close), + the long transfer
    dead = [s["target"] for i in (0, 1) for s in default_plan(i, settings, ipv6=True) if s.get("host") == "dead"]
    assert dead == ["10.96.0.11", "fd00:10:96::11"]
    assert all(":" not in s.get("target", "") for i in (0, 1) for s in default_plan(i, settings))


def test_prefix_and_namespace_names() -> None:
    prefix = netns.new_prefix()
    assert netns.PREFIX_RE.match(prefix)
    assert netns.NETNS_RE.match(prefix + "na").group(1) == prefix  # type: ignore[union-attr]
    assert not netns.NETNS_RE.match("hsxyz123-na") and not netns.NETNS_RE.match("other")
    with pytest.raises(netns.LabError):
        netns.remove_prefix("hs")  # never a broad pattern


def test_nat_ruleset_is_kube_proxy_like() -> None:
    rules = nat_ruleset(default_topology())
    assert rules.startswith("*nat\n") and rules.rstrip().endswith("COMMIT")
    assert "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp --dport 80" in rules
    assert "-A KUBE-SVC-WEB -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-WEB1" in rules
    assert "-A KUBE-SVC-WEB -j KUBE-SEP-WEB2" in rules
    assert "-A KUBE-SEP-WEB2 -p tcp -j DNAT --to-destination 10.244.2.12:80" in rules
    assert "-A KUBE-SEP-DEAD1 -p tcp -j DNAT --to-destination 10.244.2.12:81" in rules
    assert "-A KUBE-SEP-DNS1 -p udp -j DNAT --to-destination 10.244.2.53:53" in rules
    assert "-j MASQUERADE" in rules


def test_default_plan_covers_every_case() -> None:
    plans = [default_plan(i, PlanSettings()) for i in range(2)]
    sessions = [s for p in plans for s in p]
    http = [s for s in sessions if s["kind"] == "http"]
    reqs = [r for s in http for r in s["requests"]]
    assert {s["keepalive"] for s in http} == {True, False}
    assert {r["send_id"] for r in reqs} == {True, False}
    assert {"/status/500", "/status/503", "/delay/20"} <= {r["path"] for r in reqs}
    assert any(s["target"] == "10.96.0.11" for s in http)  # the dead backend
    assert any(r["path"].startswith("/bytes/") for r in reqs)
    assert any(s["kind"] == "dns" for s in sessions)


def test_dns_wire_round_trip() -> None:
    q = build_query(0x1234, "web.default.svc.cluster.local")
    resp, name, rcode = answer(q, DNS_ZONE)
    assert (name, rcode) == ("web.default.svc.cluster.local", 0)
    assert parse_answer(resp) == (0x1234, 0, ["10.96.0.10"])
    resp, _, rcode = answer(build_query(7, "nosuch.example"), DNS_ZONE)
    assert rcode == 3 and parse_answer(resp) == (7, 3, [])


class FakePacket:
    """What NetfilterQueue hands the callback: the first bytes, the kernel's arrival stamp (0.0: none)."""

    def __init__(self, n: int, data: bytes = b"", stamp: float = 0.0) -> None:
        self.n = n
        self.data = data
        self.stamp = stamp
        self.verdict: str | None = None

    def get_payload(self) -> bytes:
        pkt = IP(src="10.244.2.11", dst="172.30.0.1", id=self.n) / TCP(sport=80, dport=4000, seq=self.n) / self.data
        return bytes(pkt)[:HEADER_BYTES]

    def get_timestamp(self) -> float:
        return self.stamp

    def accept(self) -> None:
        assert self.verdict is None
        self.verdict = "accept"

    def drop(self) -> None:
        assert self.verdict is None
        self.verdict = "drop"


def test_delayer_holds_in_order_then_accepts() -> None:
    d = Delayer(delay_ns=50_000_000, loss=0.0, seed=1)
    pkts = [FakePacket(i) for i in range(5)]
    for p in pkts:
        d.on_packet(p)
    assert all(p.verdict is None for p in pkts) and d.release_due() is not None
    d.release_all()
    assert [p.verdict for p in pkts] == ["accept"] * 5 and d.stats()["accepted"] == 5


def test_delayer_counts_the_delay_from_the_kernels_arrival_stamp() -> None:
    """A segment that waited 30 ms in the queue before the delayer read it is due 30 ms sooner than one
    read as it came; the hold written per data segment runs from the arrival stamp (pure ACKs: none).
    One-sided bounds only: a stall between two calls can only make the later packet later."""
    d = Delayer(delay_ns=50_000_000, loss=0.0, seed=1)
    waited = FakePacket(1000, b"GET / HTTP/1.1\r\n", stamp=time.time() - 0.030)
    unstamped = FakePacket(2000, b"x" * 10)
    d.on_packet(waited)
    d.on_packet(unstamped)
    d.on_packet(FakePacket(3000))  # a pure ACK
    (due_waited, _, _), (due_unstamped, _, _), _ = d.held
    assert due_unstamped - due_waited >= 29_900_000
    d.release_all()
    assert [waited.verdict, unstamped.verdict] == ["accept", "accept"]
    stats = d.stats()
    assert stats["kernel_stamped"] == 1
    (seq1, len1, held1), (seq2, len2, held2) = stats["held_segments"]
    assert (seq1, len1, seq2, len2) == (1000, 16, 2000, 10)
    assert held1 >= 30_000_000 and held2 >= 0


def test_delay_check_holds_each_request_against_its_segments_hold() -> None:
    """The delayer's hold of a request's segment is its truth; without one, the injected delay plus the
    overhead measured at delay 0; a segment held twice (a retransmission) is no truth for either."""
    from hopscope.correlate.evaluate import DelayCheck, _held_us

    held = _held_us({"held_segments": [[1, 10, 7_400_000], [2, 10, 5_100_000], [3, 10, 5_000_000],
                                       [3, 10, 9_000_000]]})
    assert held == {1: 7400.0, 2: 5100.0}
    d = DelayCheck("a>b", 5000.0, 80.0, [7420, 5090, 5200, 5100], [held.get(s) for s in (1, 2, 3, 4)])
    assert d.truth_us == [7400.0, 5100.0, 5080.0, 5080.0]
    assert d.errors_us == [20.0, -10.0, 120.0, 20.0] and d.within == 4 and d.held_known == 2
    assert DelayCheck("a>b", 5000.0, 80.0, [5300]).errors_us == [220.0]  # a check from before held_us


@pytest.mark.parametrize(("loss", "seed"), [(0.1, 1), (0.5, 2)])
def test_delayer_loss_is_seeded(loss: float, seed: int) -> None:
    def run() -> list[Any]:
        d = Delayer(delay_ns=0, loss=loss, seed=seed)
        pkts = [FakePacket(i) for i in range(2000)]
        for p in pkts:
            d.on_packet(p)
        return [p.verdict for p in pkts]

    first = run()
    assert first == run()
    dropped = [i for i, v in enumerate(first) if v == "drop"]
    d = Delayer(delay_ns=0, loss=loss, seed=seed)
    for i in range(2000):
        d.on_packet(FakePacket(i))
    assert [p["ip_id"] for p in d.stats()["dropped_packets"]] == dropped
    assert abs(first.count("drop") / len(first) - loss) < 0.05


def test_describe_a_dropped_packet() -> None:
    raw = bytes(IP(src="10.244.2.11", dst="172.30.0.1", id=77) / TCP(sport=80, dport=4000, seq=5, ack=9) / (b"x" * 100))
    rec = describe(raw[:64], 123)
    assert rec == {
        "time_ns": 123, "src": "10.244.2.11", "dst": "172.30.0.1", "ip_id": 77, "ip_len": 140, "proto": 6,
        "sport": 80, "dport": 4000, "seq": 5, "ack": 9, "payload_len": 100,
    }  # fmt: skip


def test_describe_a_dropped_ack_with_a_sack_block() -> None:
    """A D-SACK ACK is as long as a segment of 12 data bytes with timestamps: only the TCP header's
    data offset tells them apart."""
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2)), ("NOP", None), ("NOP", None), ("SAck", (100, 186))]
    raw = bytes(IP(src="172.30.0.1", dst="10.244.2.12", id=7) / TCP(sport=40688, dport=80, seq=5, ack=9, flags="A",
                                                                     options=opts))
    rec = describe(raw[:64], 1)
    assert rec["ip_len"] == 64 and rec["payload_len"] == 0


def test_describe_a_dropped_ipv6_segment() -> None:
    raw = bytes(IPv6(src="fd00:10:244:2::11", dst="fd00:172:30::1") / TCP(sport=80, dport=4000, seq=5, ack=9)
                / (b"x" * 100))
    rec = describe(raw[:HEADER_BYTES], 5)
    assert rec == {
        "time_ns": 5, "src": "fd00:10:244:2::11", "dst": "fd00:172:30::1", "ip_len": 160, "proto": 6,
        "sport": 80, "dport": 4000, "seq": 5, "ack": 9, "payload_len": 100,
    }  # fmt: skip


def test_describe_a_dropped_vxlan_frame_by_the_segment_it_carries() -> None:
    """Dropped on an overlay's underlay, a frame is described by its inner TCP segment (what the
    captures on either side show as the flow), its outer headers kept beside it."""
    inner = IP(src="10.250.0.1", dst="10.244.2.11", id=77) / TCP(sport=4000, dport=80, seq=5, ack=9) / (b"x" * 100)
    outer = IP(src="172.30.0.1", dst="172.30.0.2", id=3) / UDP(sport=51000, dport=4789) / VXLAN(vni=42)
    raw = bytes(outer / Ether() / inner)
    rec = describe(raw[:HEADER_BYTES], 1)
    assert rec["encap"] == "vxlan" and rec["src"] == "10.250.0.1" and rec["ip_id"] == 77
    assert (rec["seq"], rec["ack"], rec["payload_len"], rec["dport"]) == (5, 9, 100, 80)
    assert rec["outer"] == {"src": "172.30.0.1", "dst": "172.30.0.2", "ip_id": 3, "ip_len": len(raw),
                            "sport": 51000, "dport": 4789}
    plain_udp = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=53) / b"q")
    assert "encap" not in describe(plain_udp, 1) and describe(plain_udp, 1)["dport"] == 53


def test_envoy_config_fills_every_placeholder(tmp_path: Any) -> None:
    text = envoy_config("10.244.2.11", "server1", tmp_path / "a.log")
    config = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "$" not in config  # the comments name placeholders; the config itself has none left
    assert "10.244.2.11" in text and "generate_request_id: true" in text
    assert "additional_addresses" not in text
    text6 = envoy_config("10.244.2.11", "server1", tmp_path / "a.log", "fd00:10:244:2::11")
    listener6 = '{address: {socket_address: {address: "fd00:10:244:2::11", port_value: 80}}}'
    assert f"additional_addresses: [{listener6}]" in text6


def test_cli_parses_impairments() -> None:
    specs = parse_impairments(["nodeB-ingress=5", "nodeA-egress=2ms"], ["nodeB-ingress=0.01"])
    assert [(s.site, s.delay_ms, s.loss) for s in specs] == [("nodeB-ingress", 5.0, 0.01), ("nodeA-egress", 2.0, 0.0)]
    with pytest.raises(ConfigError):
        parse_impairments(["nodeB-ingress"], [])
    parser = command_parser("lab")
    args = parser.parse_args(["run", "--out", "x", "--delay", "nodeB-ingress=5"])
    assert args.action == "run" and args.delay == ["nodeB-ingress=5"]
    assert not args.ipv6 and parser.parse_args(["up", "--ipv6"]).ipv6
    for action in ("up", "traffic", "down", "samples", "status", "check"):
        assert parser.parse_args([action]).action in ACTIONS


def test_missing_prerequisites_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda exe: None if exe == "tcpdump" else "/bin/" + exe)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    missing = netns.missing_prerequisites()
    assert any(m.startswith("root") for m in missing)
    assert any(m.startswith("tcpdump (Debian package tcpdump)") for m in missing)
    assert len(missing) == 2
