"""Traces and spans built by hand along the lab's path (client pod, NAT node, hypervisor, switch,
server node, server pod, envoy -> app on loopback), for the topology tests."""

from __future__ import annotations

from dataclasses import dataclass

from hopscope.records import FlowRecord, Span, Trace

T0 = 1_800_000_000_000_000_000
CLIENT1, CLIENT2 = "10.244.1.11", "10.244.1.12"
WEB_VIP, SERVER1, SERVER2, SNAT = "10.96.0.10", "10.244.2.11", "10.244.2.12", "172.30.0.1"

INVENTORY = {
    "nodes": [{"name": "nodeA", "ips": [SNAT]}, {"name": "nodeB", "ips": ["172.30.0.2"]}],
    "pods": [
        {"name": "client1", "ip": CLIENT1, "node": "nodeA", "labels": {"app": "client"}},
        {"name": "client2", "ip": CLIENT2, "node": "nodeA", "labels": {"app": "client"}},
        {"name": "server1", "ip": SERVER1, "node": "nodeB", "labels": {"app": "web"}},
        {"name": "server2", "ip": SERVER2, "node": "nodeB", "labels": {"app": "web"}},
    ],
    "services": [{"name": "web", "cluster_ip": WEB_VIP, "ports": [80], "selector": {"app": "web"}}],
}


@dataclass(frozen=True)
class Hop:
    point: str
    host: str
    kind: str


def lab_hops(client: int, server: int) -> list[Hop]:
    return [
        Hop(f"client{client}-pod", f"client{client}", "pod"),
        Hop("nodeA-pre-nat", "nodeA", "nat"),
        Hop("nodeA-post-nat", "nodeA", "nat"),
        Hop("hv-tap", "hv", "hypervisor"),
        Hop("switch-mirror", "probe", "switch"),
        Hop("nodeB", "nodeB", "node"),
        Hop(f"server{server}-pod", f"server{server}", "pod"),
        Hop(f"server{server}-app", f"server{server}", "proxy"),
    ]


def lab_trace(
    n: int,
    client: int = 1,
    server: int = 1,
    duration_us: int = 1000,
    req_link_us: int = 10,
    lost_on: str = "",
    error: int = 0,
    start_ns: int | None = None,
) -> tuple[Trace, list[Span]]:
    """Trace number ``n``: client<client> -> web VIP -> server<server>, every link ``req_link_us``
    (the link into the server pod 500 us), one lost segment on the link into point ``lost_on``."""
    tid = f"{n:032x}"
    start = T0 + n * 1_000_000 if start_ns is None else start_ns
    client_h = CLIENT1 if client == 1 else CLIENT2
    server_h = SERVER1 if server == 1 else SERVER2
    spans: list[Span] = []
    t = start
    for i, hop in enumerate(lab_hops(client, server)):
        link = 0 if i == 0 else (500 if hop.kind == "pod" else req_link_us)
        t += link * 1000
        if hop.kind == "proxy":
            orig, resp = ("127.0.0.1", 40000 + n), ("127.0.0.1", 8080)
        elif i < 2:
            orig, resp = (client_h, 50000 + n), (WEB_VIP, 80)
        else:
            orig, resp = (SNAT, 50000 + n), (server_h, 80)
        spans.append(Span(
            trace_id=tid, span_id=f"{n:08x}{i:08x}", parent_span_id=f"{n:08x}{i - 1:08x}" if i else "",
            hop_index=i, point=hop.point, host=hop.host, hop_kind=hop.kind,
            side="client" if i < 5 else "server", orig_h=orig[0], orig_p=orig[1], resp_h=resp[0], resp_p=resp[1],
            request_first_ns=t, request_last_ns=t + 100, response_first_ns=start + duration_us * 1000 - (i + 1) * 2000,
            response_last_ns=start + duration_us * 1000 - i * 1000, req_link_us=link, resp_link_us=link // 2,
            link_reason="origin" if i == 0 else ("proxy:x-request-id" if hop.kind == "proxy" else "l7:req_tcp_seq"),
            link_confidence=1.0 if hop.kind != "proxy" else 0.9, lost_pkts=1 if hop.point == lost_on else 0,
            flow_id=1000 + i, request_id=n, version=1,
        ))  # fmt: skip
    trace = Trace(
        trace_id=tid, kind="l7", start_ns=start, end_ns=start + duration_us * 1000, duration_us=duration_us,
        l7_proto="http", method="GET", http_host="web", path=f"/r{n}", status=500 if error else 200, error=error,
        client_h=client_h, client_p=50000 + n, server_h="127.0.0.1", server_p=8080, hop_count=len(spans),
        points=",".join(s.point for s in spans), lost_pkts=1 if lost_on else 0,
        loss_link=f"x>{lost_on}" if lost_on else "", slowest_link=f"nodeB>server{server}-pod", slowest_link_us=500,
        min_confidence=0.9, syn_seq=1000 + n, version=1,
    )  # fmt: skip
    return trace, spans


def flow(point: str, orig_h: str, resp_h: str, start_ns: int, syn_seq: int, **kw: object) -> FlowRecord:
    return FlowRecord(
        point=point, flow_id=hash((point, syn_seq, start_ns)) & 0xFFFFFFFF, start_ns=start_ns, end_ns=start_ns + 1,
        final=1, proto=6, orig_h=orig_h, orig_p=50000, resp_h=resp_h, resp_p=80, syn_seq=syn_seq,
        synack_seq=syn_seq + 1 if syn_seq else 0, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
