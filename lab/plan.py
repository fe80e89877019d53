"""Traffic plans: what each client pod's generator sends (see :mod:`hopscope.lab.generator`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hopscope.lab.topology import DEAD_CLUSTER_IP, DEAD_CLUSTER_IP6, DNS_CLUSTER_IP, WEB_CLUSTER_IP, WEB_CLUSTER_IP6

WEB_HOST = "web.default.svc.cluster.local"
DNS_ZONE = {
    WEB_HOST: WEB_CLUSTER_IP,
    "dead.default.svc.cluster.local": DEAD_CLUSTER_IP,
    "kube-dns.kube-system.svc.cluster.local": DNS_CLUSTER_IP,
}


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """Knobs of the default plan.

    requests_per_session: HTTP requests in each keep-alive and each close session;
    sessions: concurrent HTTP sessions of each kind per client; big_bytes: size of the long transfer
    (0: none); dead_attempts: connections per client to the Service whose backend is dead (RST).
    """

    requests_per_session: int = 10
    sessions: int = 1
    big_bytes: int = 2_000_000
    dead_attempts: int = 2
    dns_lookups: int = 3
    pause_ms: int = 5
    #: a query string naming each request (``?req=<client>.<session>.<seq>``): requests that differ in
    #: their paths, as most real traffic does; without it the plan's requests are identical but for time
    tag_requests: bool = False
    #: each web session starts this long after the one before it (0: all at once, in lockstep)
    stagger_ms: float = 0.0


def _requests(n: int, offset: int, prefix: str = "", tag: str = "") -> list[dict[str, Any]]:
    """n requests: mostly /ok, one 500 and one 503 when n allows, a delayed one; every other one
    carries the client's own x-request-id. ``prefix`` goes before every path (a sidecar strips it);
    with a ``tag`` each path ends in ``?req=<tag>.<index>``."""
    out = []
    for i in range(n):
        j = i + offset
        path = "/ok"
        if i == 3:
            path = "/status/500"
        elif i == 6:
            path = "/status/503"
        elif i == 8:
            path = "/delay/20"
        query = f"?req={tag}.{i}" if tag else ""
        out.append({"method": "GET", "path": prefix + path + query, "send_id": j % 2 == 0})
    return out


def uses_ipv6(client_index: int, session: int) -> bool:
    """Whether a session of a dual-stack plan goes over IPv6: every other one, client by client
    (half of them: client 0's odd sessions, client 1's even ones, ...)."""
    return (client_index + session) % 2 == 1


def default_plan(client_index: int, settings: PlanSettings, path_prefix: str = "",
                 web_via: tuple[str, int] | None = None, ipv6: bool = False) -> list[dict[str, Any]]:
    """The sessions of one client (index 0, 1, ...): DNS, keep-alive and close HTTP, RST, long transfer.
    ``path_prefix`` goes before the paths sent to the web Service (a sidecar that strips one);
    ``web_via`` (address, port): the web Service's requests go there instead (the client pod's egress
    sidecar, which forwards them to the Service); the dead Service is still reached directly.
    ``ipv6`` (a dual-stack lab, without ``web_via``): the keep-alive and close sessions for which
    ``uses_ipv6`` holds, and odd clients' attempts on the dead Service, go to the Services' IPv6
    ClusterIPs; DNS and the long transfer stay IPv4."""
    target, port = web_via or (WEB_CLUSTER_IP, 80)
    web = {"kind": "http", "target": target, "port": port, "host": "web"}
    web6 = {**web, "target": WEB_CLUSTER_IP6} if ipv6 and not web_via else web
    plan: list[dict[str, Any]] = []
    if settings.dns_lookups:
        names = [WEB_HOST, "nosuch.default.svc.cluster.local", "dead.default.svc.cluster.local"]
        plan.append(
            {
                "kind": "dns",
                "server": DNS_CLUSTER_IP,
                "port": 53,
                "names": (names * settings.dns_lookups)[: settings.dns_lookups],
                "pause_ms": 10,
            }
        )
    for s in range(settings.sessions):
        n = settings.requests_per_session
        base = (client_index * 7 + s) * 100
        tags = (f"{client_index}.{s}.k", f"{client_index}.{s}.c") if settings.tag_requests else ("", "")
        session = web6 if uses_ipv6(client_index, s) else web
        plan.append({**session, "keepalive": True, "requests": _requests(n, base, path_prefix, tags[0]),
                     "pause_ms": settings.pause_ms, "stagger_ms": settings.stagger_ms})
        plan.append({**session, "keepalive": False, "requests": _requests(n, base + 1, path_prefix, tags[1]),
                     "pause_ms": settings.pause_ms, "stagger_ms": settings.stagger_ms})
    if settings.dead_attempts:
        plan.append(
            {
                "kind": "http",
                "target": DEAD_CLUSTER_IP6 if ipv6 and client_index % 2 else DEAD_CLUSTER_IP,
                "port": 80,
                "host": "dead",
                "keepalive": False,
                "requests": [{"method": "GET", "path": "/ok", "send_id": False}] * settings.dead_attempts,
                "pause_ms": 20,
            }
        )
    if settings.big_bytes and client_index == 0:
        plan.append(
            {
                **web,
                "keepalive": False,
                "requests": [{"method": "GET", "path": f"{path_prefix}/bytes/{settings.big_bytes}",
                              "send_id": True}],
            }
        )
    return plan
