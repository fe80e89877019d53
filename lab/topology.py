"""The lab's topology as data: hosts (network namespaces), links, addresses, services, capture points.

Nothing here runs a command; :mod:`hopscope.lab.build` applies a :class:`Topology`. The picture::

    client1 ─┐                       (overlay: vx0 ── VXLAN 4789 ── vx0)
    client2 ─┴ cni0 [nodeA] eth0 ── tap0 [hv] up0 ── p1 [switch] p2 ── eth0 [nodeB] cni0 ┬ server1
               iptables DNAT+SNAT                       │ tc u32+mirred             ├ server2
                                                    span0 ── mon0 [probe]           └ dns
    (server pods: envoy on pod-IP:80 -> app on 127.0.0.1:8080)

Dual-stack (``ipv6``): pods, nodes and Services get IPv6 addresses beside their IPv4 ones (fd00::/8,
the IPv4 numbers in the groups: pod fd00:10:244:<node>::x, Service fd00:10:96::x), node A's Service
NAT is written for ip6tables too, and the hypervisor, switch and probe stay layer 2 only.

Interface names are the same in every run: each lives only inside that run's namespaces (created
there directly, never in the root namespace), and the namespace names carry the per-run prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Hop kinds of a capture point (the design's names).
HOP_KINDS = ("pod", "node", "nat", "hypervisor", "switch", "proxy")
#: Side of a capture point relative to the request.
SIDES = ("client", "server")


@dataclass(frozen=True, slots=True)
class Host:
    """One network namespace.

    name: the lab's name for it (``nodeA``); short: the suffix of the namespace name (``na``);
    role: ``pod``, ``node``, ``bridge`` (hypervisor or switch: no IP) or ``probe``.
    """

    name: str
    short: str
    role: str


@dataclass(frozen=True, slots=True)
class Link:
    """A veth pair ``host_a:if_a <-> host_b:if_b``."""

    host_a: str
    if_a: str
    host_b: str
    if_b: str


@dataclass(frozen=True, slots=True)
class Address:
    """An IPv4 or IPv6 address with prefix length on ``host:interface``."""

    host: str
    interface: str
    cidr: str


@dataclass(frozen=True, slots=True)
class Route:
    """``ip route add dst via gateway`` in ``host`` (``dst`` may be ``default``)."""

    host: str
    dst: str
    via: str


@dataclass(frozen=True, slots=True)
class Bridge:
    """A Linux bridge ``name`` in ``host`` enslaving ``ports``."""

    host: str
    name: str
    ports: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Mirror:
    """A SPAN port: every frame entering ``host`` on one of ``sources`` is copied to ``destination``.

    Applied as ``tc qdisc ingress`` + ``u32 match u32 0 0 action mirred egress mirror`` per source
    port (the kernel here has no clsact/matchall); ingress on every switch port covers both directions.
    """

    host: str
    sources: tuple[str, ...]
    destination: str


@dataclass(frozen=True, slots=True)
class Backend:
    """One endpoint of a Service: pod IP and port (a port nobody listens on makes a dead backend);
    ``ip6``: the pod's IPv6 address in a dual-stack lab."""

    ip: str
    port: int
    ip6: str = ""


@dataclass(frozen=True, slots=True)
class Service:
    """A kube-proxy-like Service: ClusterIP:port DNAT'd on ``node`` to the backends at random."""

    name: str
    cluster_ip: str
    port: int
    protocol: str  # "tcp" or "udp"
    backends: tuple[Backend, ...]
    #: the Service's IPv6 ClusterIP in a dual-stack lab ("": IPv4 only)
    cluster_ip6: str = ""


@dataclass(frozen=True, slots=True)
class CapturePoint:
    """Where a tcpdump runs: ``host:interface``, with the hop kind and side it observes."""

    name: str
    host: str
    interface: str
    kind: str
    side: str
    description: str


@dataclass(frozen=True, slots=True)
class ImpairSite:
    """A place where delay/loss can be injected: iptables mangle + NFQUEUE on ``host:interface``.

    direction ``in`` queues in PREROUTING (``-i interface``): the capture on that interface sees the
    packet first, so the delay lies between ``upstream`` (that capture) and ``downstream``.
    direction ``out`` queues in POSTROUTING (``-o interface``): the delay lies before the capture on
    that interface. flow_direction says which way of a request the site affects.
    """

    name: str
    host: str
    interface: str
    direction: str  # "in" or "out"
    flow_direction: str  # "client->server" or "server->client"
    upstream: tuple[str, ...]
    downstream: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Topology:
    """Everything the lab builds; all lists are applied in order."""

    hosts: tuple[Host, ...]
    links: tuple[Link, ...]
    bridges: tuple[Bridge, ...]
    addresses: tuple[Address, ...]
    routes: tuple[Route, ...]
    mirrors: tuple[Mirror, ...]
    services: tuple[Service, ...]
    nat_node: str
    pod_cidrs: dict[str, str]
    captures: tuple[CapturePoint, ...]
    impair_sites: tuple[ImpairSite, ...]
    routers: tuple[str, ...]
    clients: tuple[str, ...]
    servers: tuple[str, ...]
    dns_host: str
    overlay: str | None = None
    pod_mtu: int = 1500
    #: dual-stack: IPv6 addresses, routes and Service NAT beside the IPv4 ones
    ipv6: bool = False
    pod_cidrs6: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def capture(self, name: str) -> CapturePoint:
        for c in self.captures:
            if c.name == name:
                return c
        raise KeyError(name)

    def site(self, name: str) -> ImpairSite:
        for s in self.impair_sites:
            if s.name == name:
                return s
        raise KeyError(name)

    def address_of(self, host: str, interface: str = "eth0", family: int = 4) -> str:
        """The IPv4 (``family`` 4) or IPv6 (6) address of ``host:interface``."""
        for a in self.addresses:
            if a.host == host and a.interface == interface and (":" in a.cidr) == (family == 6):
                return a.cidr.split("/")[0]
        raise KeyError(f"{host}:{interface} IPv{family}")


# Addresses: pods 10.244.<node>.x/24, underlay 172.30.0.0/24, overlay 10.250.0.0/30, Services 10.96.0.x.
POD_CIDR_A = "10.244.1.0/24"
POD_CIDR_B = "10.244.2.0/24"
UNDERLAY_A = "172.30.0.1"
UNDERLAY_B = "172.30.0.2"
OVERLAY_A = "10.250.0.1"
OVERLAY_B = "10.250.0.2"
WEB_CLUSTER_IP = "10.96.0.10"
DEAD_CLUSTER_IP = "10.96.0.11"
DNS_CLUSTER_IP = "10.96.0.53"
SERVER_IPS = {"server1": "10.244.2.11", "server2": "10.244.2.12"}
CLIENT_IPS = {"client1": "10.244.1.11", "client2": "10.244.1.12"}
DNS_POD_IP = "10.244.2.53"
VXLAN_ID = 42
VXLAN_PORT = 4789
# IPv6 (dual-stack): the same numbers in fd00::/8.
POD_CIDR6_A = "fd00:10:244:1::/64"
POD_CIDR6_B = "fd00:10:244:2::/64"
UNDERLAY6_A = "fd00:172:30::1"
UNDERLAY6_B = "fd00:172:30::2"
WEB_CLUSTER_IP6 = "fd00:10:96::10"
DEAD_CLUSTER_IP6 = "fd00:10:96::11"
SERVER_IPS6 = {"server1": "fd00:10:244:2::11", "server2": "fd00:10:244:2::12"}
CLIENT_IPS6 = {"client1": "fd00:10:244:1::11", "client2": "fd00:10:244:1::12"}


def default_topology(overlay: str | None = None, client_sidecar: bool = False, ipv6: bool = False) -> Topology:
    """Two client pods on node A, two envoy-fronted server pods and a DNS pod on node B.

    overlay ``"vxlan"`` routes pod traffic between the nodes through a VXLAN device (flannel-like)
    instead of plain routing on the underlay; pod MTU drops to 1450 then. ``client_sidecar``: the
    client pods run an egress sidecar, captured on their loopback (``<client>-egress``, kind proxy).
    ``ipv6``: dual-stack, every pod, node and the web and dead Services with an IPv6 address too
    (DNS stays IPv4); not with an overlay.
    """
    if overlay not in (None, "vxlan"):
        raise ValueError(f"unknown overlay {overlay!r} (known: vxlan)")
    if ipv6 and overlay:
        raise ValueError("a dual-stack lab has no overlay (ipv6 with overlay vxlan is not built)")
    hosts = (
        Host("client1", "c1", "pod"),
        Host("client2", "c2", "pod"),
        Host("nodeA", "na", "node"),
        Host("hv", "hv", "bridge"),
        Host("switch", "sw", "bridge"),
        Host("probe", "pr", "probe"),
        Host("nodeB", "nb", "node"),
        Host("server1", "s1", "pod"),
        Host("server2", "s2", "pod"),
        Host("dns", "dn", "pod"),
    )
    links = (
        Link("client1", "eth0", "nodeA", "vc1"),
        Link("client2", "eth0", "nodeA", "vc2"),
        Link("nodeA", "eth0", "hv", "tap0"),
        Link("hv", "up0", "switch", "p1"),
        Link("switch", "p2", "nodeB", "eth0"),
        Link("switch", "span0", "probe", "mon0"),
        Link("nodeB", "vs1", "server1", "eth0"),
        Link("nodeB", "vs2", "server2", "eth0"),
        Link("nodeB", "vdn", "dns", "eth0"),
    )
    bridges = (
        Bridge("nodeA", "cni0", ("vc1", "vc2")),
        Bridge("hv", "br0", ("tap0", "up0")),
        Bridge("switch", "br0", ("p1", "p2")),
        Bridge("nodeB", "cni0", ("vs1", "vs2", "vdn")),
    )
    addresses = [
        Address("client1", "eth0", CLIENT_IPS["client1"] + "/24"),
        Address("client2", "eth0", CLIENT_IPS["client2"] + "/24"),
        Address("nodeA", "cni0", "10.244.1.1/24"),
        Address("nodeA", "eth0", UNDERLAY_A + "/24"),
        Address("nodeB", "eth0", UNDERLAY_B + "/24"),
        Address("nodeB", "cni0", "10.244.2.1/24"),
        Address("server1", "eth0", SERVER_IPS["server1"] + "/24"),
        Address("server2", "eth0", SERVER_IPS["server2"] + "/24"),
        Address("dns", "eth0", DNS_POD_IP + "/24"),
    ]
    routes = [
        Route("client1", "default", "10.244.1.1"),
        Route("client2", "default", "10.244.1.1"),
        Route("server1", "default", "10.244.2.1"),
        Route("server2", "default", "10.244.2.1"),
        Route("dns", "default", "10.244.2.1"),
    ]
    if overlay == "vxlan":
        addresses += [Address("nodeA", "vx0", OVERLAY_A + "/30"), Address("nodeB", "vx0", OVERLAY_B + "/30")]
        routes += [Route("nodeA", POD_CIDR_B, OVERLAY_B), Route("nodeB", POD_CIDR_A, OVERLAY_A)]
    else:
        routes += [Route("nodeA", POD_CIDR_B, UNDERLAY_B), Route("nodeB", POD_CIDR_A, UNDERLAY_A)]
    if ipv6:
        addresses += [Address(c, "eth0", ip + "/64") for c, ip in CLIENT_IPS6.items()]
        addresses += [Address(s, "eth0", ip + "/64") for s, ip in SERVER_IPS6.items()]
        addresses += [Address("nodeA", "cni0", "fd00:10:244:1::1/64"), Address("nodeA", "eth0", UNDERLAY6_A + "/64"),
                      Address("nodeB", "eth0", UNDERLAY6_B + "/64"), Address("nodeB", "cni0", "fd00:10:244:2::1/64")]
        routes += [Route(c, "default", "fd00:10:244:1::1") for c in CLIENT_IPS6]
        routes += [Route(s, "default", "fd00:10:244:2::1") for s in SERVER_IPS6]
        routes += [Route("nodeA", POD_CIDR6_B, UNDERLAY6_B), Route("nodeB", POD_CIDR6_A, UNDERLAY6_A)]
    v6 = SERVER_IPS6 if ipv6 else {"server1": "", "server2": ""}
    services = (
        Service(
            "web",
            WEB_CLUSTER_IP,
            80,
            "tcp",
            (Backend(SERVER_IPS["server1"], 80, v6["server1"]), Backend(SERVER_IPS["server2"], 80, v6["server2"])),
            WEB_CLUSTER_IP6 if ipv6 else "",
        ),
        Service("dead", DEAD_CLUSTER_IP, 80, "tcp", (Backend(SERVER_IPS["server2"], 81, v6["server2"]),),
                DEAD_CLUSTER_IP6 if ipv6 else ""),
        Service("dns", DNS_CLUSTER_IP, 53, "udp", (Backend(DNS_POD_IP, 53),)),
    )
    uplink = "vx0" if overlay == "vxlan" else "eth0"
    captures = [
        CapturePoint("client1-pod", "client1", "eth0", "pod", "client", "client pod 1 NIC (sees ClusterIP)"),
        CapturePoint("client2-pod", "client2", "eth0", "pod", "client", "client pod 2 NIC (sees ClusterIP)"),
        CapturePoint("nodeA-pre-nat", "nodeA", "cni0", "nat", "client", "node A pod bridge: before DNAT/SNAT"),
        CapturePoint("nodeA-post-nat", "nodeA", uplink, "nat", "client", "node A uplink: after DNAT to a pod and SNAT"),
        CapturePoint("hv-tap", "hv", "tap0", "hypervisor", "client", "hypervisor tap of the node A VM"),
        CapturePoint(
            "switch-mirror",
            "probe",
            "mon0",
            "switch",
            "server",
            "SPAN copy of every frame entering the switch",
        ),
        CapturePoint("nodeB", "nodeB", "eth0", "node", "server", "node B NIC"),
        CapturePoint("server1-pod", "server1", "eth0", "pod", "server", "server pod 1 NIC: client -> envoy leg"),
        CapturePoint("server1-app", "server1", "lo", "proxy", "server", "server pod 1 loopback: envoy -> app leg"),
        CapturePoint("server2-pod", "server2", "eth0", "pod", "server", "server pod 2 NIC: client -> envoy leg"),
        CapturePoint("server2-app", "server2", "lo", "proxy", "server", "server pod 2 loopback: envoy -> app leg"),
    ]
    if client_sidecar:
        captures[0:0] = [CapturePoint(f"{c}-egress", c, "lo", "proxy", "client",
                                      f"client pod {c[-1]} loopback: app -> egress sidecar leg")
                         for c in ("client1", "client2")]
    if overlay == "vxlan":
        captures.insert(
            4 + (2 if client_sidecar else 0),
            CapturePoint("nodeA-underlay", "nodeA", "eth0", "node", "client", "node A NIC: VXLAN-encapsulated"),
        )
    sites = (
        ImpairSite("nodeA-egress", "nodeA", uplink, "out", "client->server", ("nodeA-pre-nat",), ("nodeA-post-nat",)),
        ImpairSite("nodeA-ingress", "nodeA", uplink, "in", "server->client", ("nodeA-post-nat",), ("nodeA-pre-nat",)),
        ImpairSite(
            "nodeB-ingress",
            "nodeB",
            "eth0",
            "in",
            "client->server",
            ("nodeB",),
            ("server1-pod", "server2-pod"),
        ),
        ImpairSite(
            "nodeB-egress",
            "nodeB",
            "eth0",
            "out",
            "server->client",
            ("server1-pod", "server2-pod"),
            ("nodeB",),
        ),
    )
    return Topology(
        hosts=hosts,
        links=links,
        bridges=bridges,
        addresses=tuple(addresses),
        routes=tuple(routes),
        mirrors=(Mirror("switch", ("p1", "p2"), "span0"),),
        services=services,
        nat_node="nodeA",
        pod_cidrs={"nodeA": POD_CIDR_A, "nodeB": POD_CIDR_B},
        captures=tuple(captures),
        impair_sites=sites,
        routers=("nodeA", "nodeB"),
        clients=("client1", "client2"),
        servers=("server1", "server2"),
        dns_host="dns",
        overlay=overlay,
        pod_mtu=1450 if overlay == "vxlan" else 1500,
        ipv6=ipv6,
        pod_cidrs6={"nodeA": POD_CIDR6_A, "nodeB": POD_CIDR6_B} if ipv6 else {},
    )
