"""Synthetic multi-hop records with known ground truth, for tests and the benchmark.

One request path of a small cluster: client pod, node A before and after NAT (addresses and ports
rewritten, sequence numbers kept), hypervisor bridge, switch mirror, node B, the envoy sidecar's
inbound leg; then envoy's upstream leg (a new TCP connection) seen at the sidecar and at the app.
``CHAIN_PATH`` puts an egress sidecar in the client pod before that path: the client app's leg on the
pod's loopback, then the sidecar's upstream leg through the NAT and network hops to the server-side
sidecar on another host (proxies chained across hosts). Connections are keep-alive (several requests
each). Everything is generated as numpy columns, so a
million records take a second or two. ``request_id // HOP_STRIDE`` of every record is the index of the
request it belongs to: the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from hopscope.records import Batch, FlowRecord, RequestRecord

HOP_STRIDE = 16


@dataclass(frozen=True, slots=True)
class Hop:
    """One capture point on the path, the leg (0: client to envoy, 1: envoy to app; a chain of proxies
    has one leg more per proxy) it observes."""

    point: str
    host: str
    kind: str
    leg: int
    orig_h: str
    resp_h: str
    resp_p: int
    fwd_delay_us: int  # request delay from the previous hop to this one
    back_delay_us: int  # response delay from this hop to the previous one


DEFAULT_PATH: tuple[Hop, ...] = (
    Hop("client-pod", "node-a", "pod", 0, "10.1.0.5", "10.96.0.10", 80, 0, 0),
    Hop("node-a-pre", "node-a", "nat", 0, "10.1.0.5", "10.96.0.10", 80, 15, 12),
    Hop("node-a-post", "node-a", "nat", 0, "192.168.0.1", "10.2.0.7", 8080, 8, 6),
    Hop("hypervisor", "hv-1", "hypervisor", 0, "192.168.0.1", "10.2.0.7", 8080, 40, 35),
    Hop("switch", "switch-1", "switch", 0, "192.168.0.1", "10.2.0.7", 8080, 120, 110),
    Hop("node-b", "node-b", "node", 0, "192.168.0.1", "10.2.0.7", 8080, 90, 80),
    Hop("sidecar-in", "node-b", "proxy", 0, "192.168.0.1", "10.2.0.7", 8080, 20, 18),
    Hop("sidecar-out", "node-b", "proxy", 1, "127.0.0.6", "10.2.0.7", 80, 150, 60),
    Hop("app", "node-b", "pod", 1, "127.0.0.6", "10.2.0.7", 80, 10, 9),
)
#: The client app's leg into an egress sidecar on its own host (node-a), then DEFAULT_PATH with the
#: sidecar's upstream leg as leg 1 and the server sidecar's leg to the app as leg 2.
CHAIN_PATH: tuple[Hop, ...] = (
    Hop("client-app", "node-a", "proxy", 0, "127.0.0.1", "127.0.0.1", 15001, 0, 0),
    *(Hop(h.point, h.host, h.kind, h.leg + 1, h.orig_h, h.resp_h, h.resp_p,
          h.fwd_delay_us + (30 if i == 0 else 0), h.back_delay_us + (25 if i == 0 else 0))
      for i, h in enumerate(DEFAULT_PATH)),
)


@dataclass(frozen=True, slots=True)
class Scenario:
    """Knobs of one synthetic run."""

    requests: int = 1000
    per_connection: int = 4  # keep-alive: requests per connection
    path: tuple[Hop, ...] = DEFAULT_PATH
    #: "client": every hop carries x-request-id; "generated": only the legs after the first proxy; "none": no id
    request_id_mode: str = "client"
    #: the proxy rewrites as nginx and haproxy do: Host (shop.example -> cart-svc:8080) and a path
    #: prefix (/shop/cart -> /cart) on the upstream leg
    upstream_rewrite: bool = False
    spacing_us: int = 500  # between requests on one connection
    conn_spacing_us: int = 37  # mean gap between connection starts (exponential: Poisson arrivals)
    service_us: int = 2_000  # app's mean time to answer (exponential, plus 100 µs)
    #: clock shift (µs) added to every timestamp of a point
    clock_shift_us: dict[str, int] = field(default_factory=dict)
    #: point -> probability that the request's first segment is lost on the link *into* that point
    loss_into: dict[str, float] = field(default_factory=dict)
    rto_us: int = 200_000
    status_5xx_every: int = 0  # every n-th request answers 503 (0: never)
    l4_connections: int = 0  # extra raw TCP (TLS) connections without L7, seen at the leg-0 hops
    seed: int = 7
    start_ns: int = 1_700_000_000_000_000_000


@dataclass(slots=True)
class Synthetic:
    requests: Batch
    flows: Batch
    #: expected points in path order of each request (the same for every request here)
    expected_points: list[str]
    #: per request: the (point name) of the link its loss must be pinned to, '' if none
    loss_link: list[str]


def _legs(sc: Scenario) -> int:
    """TCP connections one request crosses (at least two: the random draws of a two-leg path stay as
    they always were)."""
    return max(2, max(h.leg for h in sc.path) + 1)


def _cum(values: list[int]) -> npt.NDArray[np.int64]:
    return np.cumsum(np.asarray(values, dtype=np.int64)) * 1000


def generate(sc: Scenario) -> Synthetic:
    """Request and flow records of ``sc.requests`` requests over the whole path."""
    rng = np.random.default_rng(sc.seed)
    n, path = sc.requests, sc.path
    conns = (n + sc.per_connection - 1) // sc.per_connection
    conn = np.arange(n) // sc.per_connection
    nth = np.arange(n) % sc.per_connection
    legs = _legs(sc)
    syn = [rng.integers(1, 2**32, conns, dtype=np.uint64) for _ in range(legs)]
    synack = [rng.integers(1, 2**32, conns, dtype=np.uint64) for _ in range(legs)]
    gaps = rng.exponential(sc.conn_spacing_us * 1000, conns).astype(np.int64)  # Poisson arrivals
    conn_start = sc.start_ns + np.cumsum(gaps)
    t0 = conn_start[conn] + 1_000_000 + nth * sc.spacing_us * 1000
    fwd = _cum([h.fwd_delay_us for h in path])
    jitter = rng.integers(0, 3000, (n, len(path)), dtype=np.int64).cumsum(axis=1)
    t_req = t0[:, None] + fwd[None, :] + jitter
    lost_at = np.full(n, -1)
    for hi, hop in enumerate(path):
        p = sc.loss_into.get(hop.point, 0.0)
        if p:
            hit = (rng.random(n) < p) & (lost_at < 0)
            lost_at[hit] = hi
            t_req[hit, hi:] += sc.rto_us * 1000
    back = np.asarray([h.back_delay_us for h in path], dtype=np.int64) * 1000
    t_resp = np.empty_like(t_req)
    service_ns = rng.exponential(sc.service_us * 1000, n).astype(np.int64) + 100_000
    t_resp[:, -1] = t_req[:, -1] + service_ns
    for hi in range(len(path) - 2, -1, -1):
        extra = 300_000 if path[hi].leg != path[hi + 1].leg else 0  # the proxy's own time
        t_resp[:, hi] = t_resp[:, hi + 1] + back[hi + 1] + extra + (jitter[:, hi + 1] - jitter[:, hi]) // 2
    req = _request_columns(sc, rng, syn, synack, conn, nth, t_req, t_resp, lost_at)
    flows = _flow_columns(sc, rng, syn, synack, conn_start)
    loss_link = [f"{path[i - 1].point}>{path[i].point}" if i > 0 else "" for i in lost_at.tolist()]
    return Synthetic(requests=req, flows=flows, expected_points=[h.point for h in path], loss_link=loss_link)


def _request_columns(sc: Scenario, rng: np.random.Generator, syn: list[npt.NDArray[np.uint64]],
                     synack: list[npt.NDArray[np.uint64]], conn: npt.NDArray[np.int64],
                     nth: npt.NDArray[np.int64], t_req: npt.NDArray[np.int64],
                     t_resp: npt.NDArray[np.int64], lost_at: npt.NDArray[np.int64]) -> Batch:
    n, path = sc.requests, sc.path
    req_len, resp_len = 120, 900
    status = np.full(n, 200)
    if sc.status_5xx_every:
        status[:: sc.status_5xx_every] = 503
    xrid = [f"{i:08x}-rid" for i in range(n)]
    legs = _legs(sc)
    payload = rng.integers(1, 2**63, (n, 2), dtype=np.uint64)
    if legs > 2:  # drawn after the two-leg columns, so two-leg scenarios keep their values
        payload = np.c_[payload, rng.integers(1, 2**63, (n, legs - 2), dtype=np.uint64)]
    cols: dict[str, list[object]] = {c.name: [] for c in RequestRecord.columns()}
    parts: dict[str, list[npt.NDArray[np.int64] | npt.NDArray[np.uint64]]] = {}
    for hi, hop in enumerate(path):
        shift = sc.clock_shift_us.get(hop.point, 0) * 1000
        leg = hop.leg
        numeric = {
            "request_id": np.arange(n, dtype=np.uint64) * HOP_STRIDE + hi,
            "flow_id": conn.astype(np.uint64) * legs + leg + 1000 * hi,
            "proto": np.full(n, 6), "orig_p": 40000 + conn % 20000 + leg, "resp_p": np.full(n, hop.resp_p),
            "syn_seq": syn[leg][conn], "synack_seq": synack[leg][conn], "seq_in_flow": nth,
            "req_tcp_seq": (syn[leg][conn] + 1 + nth.astype(np.uint64) * req_len) % 2**32,
            "resp_tcp_seq": (synack[leg][conn] + 1 + nth.astype(np.uint64) * resp_len) % 2**32,
            "req_payload_hash": payload[:, leg],
            "req_first_ns": t_req[:, hi] + shift, "req_last_ns": t_req[:, hi] + shift + 1000,
            "resp_first_ns": t_resp[:, hi] + shift, "resp_last_ns": t_resp[:, hi] + shift + 5000,
            "req_retrans": ((lost_at > hi) & (lost_at >= 0)).astype(np.int64),
            "req_bytes": np.full(n, req_len), "resp_bytes": np.full(n, resp_len), "status": status,
        }
        for k, v in numeric.items():
            parts.setdefault(k, []).append(np.asarray(v))
        has_id = sc.request_id_mode == "client" or (sc.request_id_mode == "generated" and leg >= 1)
        rewritten = sc.upstream_rewrite and leg == 1
        text = {"point": hop.point, "host": hop.host, "iface": "eth0", "hop_kind": hop.kind,
                "l7_proto": "http", "orig_h": hop.orig_h, "resp_h": hop.resp_h, "method": "GET",
                "http_host": "cart-svc:8080" if rewritten else "shop.example",
                "path": "/cart" if rewritten or not sc.upstream_rewrite else "/shop/cart"}
        for name, value in text.items():
            cols[name].extend([value] * n)
        cols["x_request_id"].extend(xrid if has_id else [""] * n)
    columns: dict[str, object] = {k: v for k, v in cols.items() if v}
    columns.update({k: np.concatenate(v) for k, v in parts.items()})
    return Batch(RequestRecord, columns, n * len(path))  # type: ignore[arg-type]


def _flow_columns(sc: Scenario, rng: np.random.Generator, syn: list[npt.NDArray[np.uint64]],
                  synack: list[npt.NDArray[np.uint64]], conn_start: npt.NDArray[np.int64]) -> Batch:
    """One final flow record per connection per point, plus raw TCP connections without L7."""
    conns = len(conn_start)
    extra = sc.l4_connections
    l4_syn = rng.integers(1, 2**32, extra, dtype=np.uint64)
    l4_ack = rng.integers(1, 2**32, extra, dtype=np.uint64)
    l4_start = sc.start_ns + np.arange(extra, dtype=np.int64) * 51_000
    fwd = _cum([h.fwd_delay_us for h in sc.path])
    last_leg0 = max(i for i, h in enumerate(sc.path) if h.leg == 0)
    rows: list[Batch] = []
    for hi, hop in enumerate(sc.path):
        shift = sc.clock_shift_us.get(hop.point, 0) * 1000
        leg_syn, leg_ack = syn[hop.leg], synack[hop.leg]
        start = conn_start + fwd[hi] + shift
        rtt_server = np.full(conns, max(0, 2 * int(fwd[-1] - fwd[hi]) // 1000 + 50))
        n_all = conns + (extra if hop.leg == 0 else 0)
        cols: dict[str, object] = {
            "point": [hop.point] * n_all, "host": [hop.host] * n_all, "iface": ["eth0"] * n_all,
            "hop_kind": [hop.kind] * n_all, "orig_h": [hop.orig_h] * n_all, "resp_h": [hop.resp_h] * n_all,
            "conn_state": ["SF"] * n_all, "close_type": ["normal"] * n_all,
            "flow_id": np.arange(n_all, dtype=np.uint64) * _legs(sc) + hop.leg + 1000 * hi,
            "final": np.ones(n_all),
            "proto": np.full(n_all, 6), "ip_version": np.full(n_all, 4), "resp_p": np.full(n_all, hop.resp_p),
        }
        if hop.leg == 0:
            # the SYN-ACK comes back as fast as the SYN went: symmetric, like the other connections
            l4_rtt = np.full(extra, 2 * int(fwd[last_leg0] - fwd[hi]) // 1000 + 50)
            cols.update(syn_seq=np.r_[leg_syn, l4_syn], synack_seq=np.r_[leg_ack, l4_ack],
                        start_ns=np.r_[start, l4_start + fwd[hi] + shift],
                        rtt_server_us=np.r_[rtt_server, l4_rtt])
        else:
            cols.update(syn_seq=leg_syn, synack_seq=leg_ack, start_ns=start, rtt_server_us=rtt_server)
        cols["end_ns"] = np.asarray(cols["start_ns"]) + 50_000_000
        rows.append(Batch(FlowRecord, cols, n_all))  # type: ignore[arg-type]
    return Batch.concat(rows)
