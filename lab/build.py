"""Apply a :class:`~hopscope.lab.topology.Topology` with ``ip``, ``iptables``, ``tc`` and ``ethtool``.

Everything is created inside the run's namespaces: veth pairs are made in one namespace with the
peer placed straight into the other, so no interface or address ever exists in the root namespace
and no route is added there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from hopscope.lab.netns import LabError, ip, run
from hopscope.lab.topology import VXLAN_ID, VXLAN_PORT, Service, Topology

log = logging.getLogger(__name__)

#: Offloads turned off on every lab interface so captures show wire-sized, checksummed segments.
OFFLOADS = ("tso", "gso", "gro", "lro", "tx", "rx", "sg")


class Namespaces:
    """Namespace names of one run: ``prefix + host.short``."""

    def __init__(self, prefix: str, topo: Topology) -> None:
        self.prefix = prefix
        self.topo = topo

    def __getitem__(self, host: str) -> str:
        return self.prefix + self.topo.host(host).short

    def all(self) -> list[str]:
        return [self.prefix + h.short for h in self.topo.hosts]


def build(topo: Topology, ns: Namespaces) -> None:
    """Create the namespaces, links, bridges, addresses, routes, NAT rules and the mirror."""
    for name in ns.all():
        run(["ip", "netns", "add", name])
    for host in topo.hosts:
        _sysctls(ns[host.name], router=host.name in topo.routers, ipv6=topo.ipv6 and host.role in ("pod", "node"))
        ip(ns[host.name], "link", "set", "lo", "up")
    for link in topo.links:
        ip(
            ns[link.host_a],
            *f"link add {link.if_a} type veth peer name {link.if_b} netns {ns[link.host_b]}".split(),
        )
    for br in topo.bridges:
        ip(ns[br.host], *f"link add {br.name} type bridge stp_state 0 forward_delay 0".split())
        for port in br.ports:
            ip(ns[br.host], "link", "set", port, "master", br.name)
    if topo.overlay == "vxlan":
        _vxlan(topo, ns)
    for host_name, ifname in _interfaces(topo):
        if topo.host(host_name).role == "pod" and ifname == "eth0":
            ip(ns[host_name], "link", "set", ifname, "mtu", str(topo.pod_mtu))
        ip(ns[host_name], "link", "set", ifname, "up")
    for addr in topo.addresses:
        # nodad: an IPv6 address is usable at once, not after duplicate address detection (1 s or more)
        ip(ns[addr.host], "addr", "add", addr.cidr, "dev", addr.interface, *(["nodad"] if ":" in addr.cidr else []))
    for route in topo.routes:
        ip(ns[route.host], *(["-6"] if ":" in route.via else []), "route", "add", route.dst, "via", route.via)
    for mirror in topo.mirrors:
        for src in mirror.sources:
            tc = ["tc", "-n", ns[mirror.host]]
            run([*tc, "qdisc", "add", "dev", src, "ingress"])
            match_all = f"filter add dev {src} parent ffff: protocol all u32 match u32 0 0"
            run([*tc, *match_all.split(), "action", "mirred", "egress", "mirror", "dev", mirror.destination])
    run(["iptables-restore", "-w", "--noflush"], netns=ns[topo.nat_node], stdin=nat_ruleset(topo))
    if topo.ipv6:
        run(["ip6tables-restore", "-w", "--noflush"], netns=ns[topo.nat_node], stdin=nat_ruleset(topo, family=6))
    disable_offloads(topo, ns)


def _interfaces(topo: Topology) -> list[tuple[str, str]]:
    """Every (host, interface) the topology creates, bridges and tunnels included."""
    out: list[tuple[str, str]] = []
    for link in topo.links:
        out += [(link.host_a, link.if_a), (link.host_b, link.if_b)]
    out += [(br.host, br.name) for br in topo.bridges]
    if topo.overlay == "vxlan":
        out += [(r, "vx0") for r in topo.routers]
    return out


def _sysctls(netns: str, router: bool, ipv6: bool = False) -> None:
    """IPv6 stays off unless ``ipv6`` (a dual-stack lab's pods and nodes); where on, without router
    solicitations or duplicate address detection, so the captures carry little but the lab's traffic."""
    settings = {
        # Bridged frames must not traverse iptables: node A's DNAT would otherwise happen before
        # the capture on its pod bridge sees the packet.
        "net.bridge.bridge-nf-call-iptables": "0",
        "net.bridge.bridge-nf-call-ip6tables": "0",
        "net.ipv6.conf.all.disable_ipv6": "0" if ipv6 else "1",
        "net.ipv6.conf.default.disable_ipv6": "0" if ipv6 else "1",
    }
    if ipv6:
        for conf in ("all", "default"):
            settings |= {f"net.ipv6.conf.{conf}.accept_dad": "0", f"net.ipv6.conf.{conf}.accept_ra": "0",
                         f"net.ipv6.conf.{conf}.router_solicitations": "0"}
    if router:
        settings["net.ipv4.ip_forward"] = "1"
        if ipv6:
            settings["net.ipv6.conf.all.forwarding"] = "1"
    args = [f"{k}={v}" for k, v in settings.items()]
    # -e: a key missing on this kernel (br_netfilter not loaded) is not an error.
    run(["sysctl", "-q", "-e", "-w", *args], netns=netns)


def _vxlan(topo: Topology, ns: Namespaces) -> None:
    a, b = topo.routers
    ends = {a: (topo.address_of(a), topo.address_of(b)), b: (topo.address_of(b), topo.address_of(a))}
    for host, (local, remote) in ends.items():
        spec = f"link add vx0 type vxlan id {VXLAN_ID} local {local} remote {remote}"
        spec += f" dstport {VXLAN_PORT} dev eth0"
        ip(ns[host], *spec.split())


def iptables(netns: str, *args: str) -> None:
    """``iptables ARGS`` in ``netns`` (``-w``: wait for the xtables lock)."""
    run(["iptables", "-w", *args], netns=netns)


def nat_ruleset(topo: Topology, family: int = 4) -> str:
    """The NAT node's ``iptables-restore`` input, as kube-proxy writes it: KUBE-SERVICES ->
    KUBE-SVC-* -> KUBE-SEP-* (DNAT, ``statistic`` random over the backends), KUBE-MARK-MASQ on
    every Service hit, and MASQUERADE of marked traffic and of pod traffic leaving the node.
    ``family`` 6: the ``ip6tables-restore`` input of a dual-stack lab (the Services with an IPv6
    ClusterIP, their backends' IPv6 addresses, the node's IPv6 pod range)."""
    chains = ["KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"]
    rules = ["-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"]
    for svc in topo.services:
        if family == 6 and not svc.cluster_ip6:
            continue
        svc_chains, svc_rules = _service_rules(svc, family)
        chains += svc_chains
        rules += svc_rules
    rules += [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "-A OUTPUT -j KUBE-SERVICES",
        "-A POSTROUTING -j KUBE-POSTROUTING",
        "-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE",
        # Pod traffic leaving the node (not to its own pods) is masqueraded too, as a CNI does.
        f"-A KUBE-POSTROUTING -s {(topo.pod_cidrs6 if family == 6 else topo.pod_cidrs)[topo.nat_node]} "
        "! -o cni0 -j MASQUERADE",
    ]
    return "\n".join(["*nat", *(f":{c} - [0:0]" for c in chains), *rules, "COMMIT", ""])


def _service_rules(svc: Service, family: int = 4) -> tuple[list[str], list[str]]:
    tag = svc.name.upper()
    svc_chain = f"KUBE-SVC-{tag}"
    chains = [svc_chain]
    dst = f"{svc.cluster_ip6}/128" if family == 6 else f"{svc.cluster_ip}/32"
    rules = [
        f"-A KUBE-SERVICES -d {dst} -p {svc.protocol} --dport {svc.port} "
        f'-m comment --comment "default/{svc.name} cluster IP" -j {svc_chain}'
    ]
    n = len(svc.backends)
    for i, be in enumerate(svc.backends):
        sep = f"KUBE-SEP-{tag}{i + 1}"
        chains.append(sep)
        rules += [
            f"-A {sep} -j KUBE-MARK-MASQ",
            f"-A {sep} -p {svc.protocol} -j DNAT --to-destination "
            + (f"[{be.ip6}]:{be.port}" if family == 6 else f"{be.ip}:{be.port}"),
        ]
        remaining = n - i
        # kube-proxy's scheme: 1/n, then 1/(n-1), ..., the last backend unconditional.
        pick = f"-m statistic --mode random --probability {1 / remaining:.11f} " if remaining > 1 else ""
        rules.append(f"-A {svc_chain} {pick}-j {sep}")
    return chains, rules


def disable_offloads(topo: Topology, ns: Namespaces) -> None:
    """``ethtool -K IF tso off gso off ...`` on every lab interface and pod loopback.

    ethtool applies what the driver supports and fails on the rest ("Could not change any device
    features" or exit 1 for fixed features): those failures are tolerated, one feature at a time.
    """
    pairs: Iterable[tuple[str, str]] = [
        *_interfaces(topo),
        *((h.name, "lo") for h in topo.hosts if h.role == "pod"),
    ]
    for host, ifname in pairs:
        args = [x for feat in OFFLOADS for x in (feat, "off")]
        try:
            run(["ethtool", "-K", ifname, *args], netns=ns[host])
        except LabError:
            for feat in OFFLOADS:
                run(["ethtool", "-K", ifname, feat, "off"], netns=ns[host], check=False)


def offload_state(netns: str, ifname: str) -> dict[str, str]:
    """The offload features of an interface as ethtool -k reports them (for the manifest)."""
    keys = {
        "tcp-segmentation-offload": "tso",
        "generic-segmentation-offload": "gso",
        "generic-receive-offload": "gro",
        "large-receive-offload": "lro",
    }
    out = run(["ethtool", "-k", ifname], netns=netns, check=False)
    state = {}
    for line in out.splitlines():
        key, _, val = line.partition(":")
        if key.strip() in keys:
            state[keys[key.strip()]] = val.strip().split()[0] if val.strip() else ""
    return state
