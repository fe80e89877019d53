"""What a lab run must show in its pcaps, checked against its manifest (scapy only, see pcapcheck).

Each check takes the run directory and its manifest and asserts; the live lab test and the test of
the committed samples run the same checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.lab.pcapcheck import (
    dnat_pairs,
    hop_delays_ms,
    http_requests,
    median,
    pcap_of,
)

WEB_CLUSTER_IP = "10.96.0.10"
DEAD_CLUSTER_IP = "10.96.0.11"
DNS_CLUSTER_IP = "10.96.0.53"
SERVER_IPS = {"10.244.2.11", "10.244.2.12"}
NODE_A_SNAT = {"172.30.0.1", "10.250.0.1"}  # node A's uplink address: underlay, or VXLAN overlay


def _service_ip(m: dict[str, Any], name: str) -> str:
    return str(next(s["cluster_ip"] for s in m["topology"]["services"] if s["name"] == name))


def check_dnat_same_seq(run: Path, m: dict[str, Any]) -> None:
    """Every SYN to the web ClusterIP before NAT has a SYN with the same sequence number after NAT,
    addressed to a backend pod and source-NATed to the node; both backends get connections."""
    pre = pcap_of(run, m, "nodeA-pre-nat")
    post = pcap_of(run, m, "nodeA-post-nat")
    pairs = dnat_pairs(pre, post, _service_ip(m, "web"))
    n_http = sum(1 for r in m["requests"] if r["target"].startswith(WEB_CLUSTER_IP))
    assert len(pairs) >= n_http // 2, f"only {len(pairs)} SYNs to the ClusterIP for {n_http} requests"
    for before, after in pairs:
        assert after is not None, f"SYN seq {before.seq} from {before.src}:{before.sport} not seen after NAT"
        assert before.seq == after.seq
        assert after.dst in SERVER_IPS and after.dport == 80, f"DNAT to {after.dst}:{after.dport}"
        assert before.dst != after.dst and before.src != after.src
        assert after.src in NODE_A_SNAT, f"SNAT source {after.src}"
    assert {after.dst for _, after in pairs if after} == SERVER_IPS, "statistic load balancing used one backend"


def check_mirror_sees_switch(run: Path, m: dict[str, Any]) -> None:
    """Every packet crossing the switch (seen on the hypervisor side and at node B) is on the SPAN port."""
    mirror = {p.segment_key for p in pcap_of(run, m, "switch-mirror")}
    for name in ("hv-tap", "nodeB"):
        pkts = [p for p in pcap_of(run, m, name) if p.proto in (6, 17)]
        assert pkts, f"{name} saw no TCP/UDP"
        missing = [p for p in pkts if p.segment_key not in mirror]
        assert not missing, f"{len(missing)} of {len(pkts)} packets at {name} not on the mirror port"
    directions = {(p.src in SERVER_IPS) for p in pcap_of(run, m, "switch-mirror") if p.proto == 6}
    assert directions == {True, False}, "mirror port sees only one direction"


def check_injected_delay(run: Path, m: dict[str, Any]) -> None:
    """The manifest's injected delay shows between its two named capture points in its direction, and
    neither in the other direction nor on a hop without one."""
    (imp,) = [i for i in m["impairments"] if i["delay_ms"] > 0]
    up = [p for name in imp["between"]["upstream"] for p in pcap_of(run, m, name)]
    down = [p for name in imp["between"]["downstream"] for p in pcap_of(run, m, name)]
    overhead_ms = max(0.0, (m["delayer_overhead"] or {}).get("overhead_us", 0)) / 1000
    if imp["flow_direction"] == "client->server":
        delays = hop_delays_ms(up, down)
        hit, other = delays["to_server"], hop_delays_ms(down, up)["to_client"]
    else:
        delays = hop_delays_ms(up, down)
        hit, other = delays["to_client"], hop_delays_ms(down, up)["to_server"]
    assert len(hit) >= 20, f"only {len(hit)} segments matched between {imp['between']}"
    got = median(hit)
    assert imp["delay_ms"] - 0.05 <= got <= imp["delay_ms"] + overhead_ms + 1.5, (
        f"median delay {got:.3f} ms between {imp['between']}, injected {imp['delay_ms']} ms"
    )
    assert all(d >= imp["delay_ms"] - 0.05 for d in hit), f"a segment was delayed less: {min(hit):.3f} ms"
    assert median(other) < 1.0, f"other direction delayed too: {median(other):.3f} ms"
    control = hop_delays_ms(pcap_of(run, m, "hv-tap"), pcap_of(run, m, "nodeB"))["to_server"]
    assert control and median(control) < 1.0, "a hop without impairment shows a delay"


def check_envoy_request_ids(run: Path, m: dict[str, Any]) -> None:
    """On the upstream leg (envoy -> app, pod loopback) every request carries x-request-id; where the
    client sent none, it is envoy's own (absent on the inbound leg); a client's id is kept."""
    inbound, upstream = [], []
    for server in ("server1", "server2"):
        inbound += http_requests(pcap_of(run, m, f"{server}-pod"), 80)
        upstream += http_requests(pcap_of(run, m, f"{server}-app"), 8080)
    answered = [r for r in m["requests"] if r["status"] is not None]
    assert len(inbound) == len(upstream) == len(answered)
    assert all("x-request-id" in r.headers for r in upstream), "an upstream request lacks x-request-id"
    inbound_ids = {r.headers.get("x-request-id") for r in inbound}
    upstream_ids = {r.headers["x-request-id"] for r in upstream}
    without = [r for r in answered if not r["sent_request_id"]]
    with_id = [r for r in answered if r["sent_request_id"]]
    assert without and with_id, "the run must have requests with and without a client id"
    assert sum(1 for r in inbound if "x-request-id" not in r.headers) == len(without)
    for r in without:
        assert r["upstream_request_id"] in upstream_ids, f"envoy id of {r['path']} not on the upstream leg"
        assert r["upstream_request_id"] not in inbound_ids, "a generated id was already on the inbound leg"
    for r in with_id:
        assert r["request_id"] in inbound_ids and r["request_id"] in upstream_ids


def check_reset_and_5xx(run: Path, m: dict[str, Any]) -> None:
    """The dead backend answers SYNs with RST (seen at the client, from the ClusterIP); 5xx pass through."""
    refused = [r for r in m["requests"] if r["error"] == "refused"]
    assert refused, "no connection to the dead backend in the manifest"
    client_pkts = pcap_of(run, m, "client1-pod") + pcap_of(run, m, "client2-pod")
    rsts = [p for p in client_pkts if p.proto == 6 and "R" in p.flags and p.src == _service_ip(m, "dead")]
    assert len(rsts) >= len(refused)
    n_5xx = sum(1 for r in m["requests"] if (r["status"] or 0) >= 500)
    assert n_5xx, "no 5xx in the manifest"
    app = pcap_of(run, m, "server1-app") + pcap_of(run, m, "server2-app")
    wire_5xx = [p for p in app if p.proto == 6 and p.sport == 8080 and p.payload.startswith(b"HTTP/1.1 5")]
    assert len(wire_5xx) == n_5xx


def check_dns(run: Path, m: dict[str, Any]) -> None:
    """DNS queries go to the DNS ClusterIP from the client and to the DNS pod after NAT."""
    dns_ip = _service_ip(m, "dns")
    dns_pod = next(s["backends"][0]["ip"] for s in m["topology"]["services"] if s["name"] == "dns")
    pre = [p for p in pcap_of(run, m, "nodeA-pre-nat") if p.proto == 17 and p.dport == 53]
    post = [p for p in pcap_of(run, m, "nodeA-post-nat") if p.proto == 17 and p.dport == 53]
    assert len(pre) == len(m["dns"]) and all(p.dst == dns_ip for p in pre)
    assert len(post) == len(m["dns"]) and all(p.dst == dns_pod for p in post)
    assert any(d["rcode"] == 3 for d in m["dns"]) and any(d["answers"] for d in m["dns"])


def check_manifest(run: Path, m: dict[str, Any]) -> None:
    """The manifest lists every request with its ground truth, and every capture point with its kind."""
    assert m["schema"] == "hopscope.lab.manifest/1"
    kinds = {c["kind"] for c in m["capture_points"]}
    assert {"pod", "node", "nat", "hypervisor", "switch", "proxy"} <= kinds
    for c in m["capture_points"]:
        assert (run / c["file"]).exists(), c["file"]
        assert c["side"] in ("client", "server")
        assert c["dropped_by_kernel"] == 0
        assert c.get("offloads", {}).get("tso") in (None, "off")
    for r in m["requests"]:
        assert {"method", "path", "client", "start_ns", "sent_request_id"} <= r.keys()
    assert any(r["keepalive"] for r in m["requests"]) and any(not r["keepalive"] for r in m["requests"])
    assert {r["client"] for r in m["requests"]} == {"client1", "client2"}
    assert m["delayer_overhead"]["overhead_us"] < 1000


CHECKS = [
    check_dnat_same_seq,
    check_mirror_sees_switch,
    check_injected_delay,
    check_envoy_request_ids,
    check_reset_and_5xx,
    check_dns,
    check_manifest,
]
