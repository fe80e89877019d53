"""What the agent captures: network namespaces, their interfaces, each one's point name and hop kind.

Namespaces
    The agent's own namespace (``root``: on Kubernetes, with host network, the node's), the named
    namespaces under each of ``namespaces.netns_dirs`` (a file's name is the namespace's name), and the
    namespaces of processes under ``namespaces.proc_root`` (``PID/ns/net``), named ``ns-INODE``. One
    namespace is listed once, by its inode: a named one keeps its name even when processes run in it,
    and the agent's own is never listed again under another name. Files that are not namespaces (a
    stale entry of ``/var/run/netns`` whose mount is gone) are skipped: their device is not nsfs.

Interfaces
    Listed inside each namespace (``setns`` for the listing, then back), kept when ``interfaces.include``
    matches the whole name and ``interfaces.exclude`` does not. A point is identified by namespace
    inode, interface index and name, so an interface deleted and created again under the same name is
    a new point.

Hop kinds
    ``hop_kinds.overrides`` first (the first whole match), then, with ``hop_kinds.infer``: ``tap*`` is a
    ``hypervisor`` hop wherever it is; in the root namespace everything else (pod veths, ``cni0`` and
    other bridges, physical NICs, the node's ``lo``) is a ``node`` hop; in any other namespace, ``lo``
    is a ``proxy`` hop (a loopback carries traffic only between a pod's application and its sidecar,
    so one that yields records is a proxy's) and every other interface (a pod's ``eth0``) a ``pod`` hop.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from hopscope.errors import CaptureError, ConfigError
from hopscope.probes.agent_config import AgentConfig, HopKindsConfig, NamespacesConfig
from hopscope.probes.live import in_netns
from hopscope.records import HopKind

log = logging.getLogger(__name__)

ROOT_NAME: Final = "root"  # {netns} of the agent's own namespace
OWN_NAMESPACE: Final = "/proc/thread-self/ns/net"


@dataclass(frozen=True, slots=True)
class NetNamespace:
    """A network namespace the agent found."""

    name: str  # ROOT_NAME, a file name under a netns dir, or ns-INODE
    path: str | None  # the file to setns() into; None: the agent's own namespace
    inode: int  # the namespace's identity

    @property
    def is_root(self) -> bool:
        return self.path is None


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One interface to capture: where it is, what its records are called and which hop they observe."""

    point: str  # the capture point's name (points.name)
    iface: str
    ifindex: int  # in its namespace
    netns: NetNamespace
    hop_kind: str  # a HopKind value ('' when unknown)

    @property
    def key(self) -> tuple[int, int, str]:
        """Identity across rescans: namespace inode, interface index and name."""
        return (self.netns.inode, self.ifindex, self.iface)


def _namespace_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of a namespace file, or None when it is gone or unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _named(dirs: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    for directory in dirs:
        try:
            names = sorted(os.listdir(directory))
        except OSError:  # not there (yet): no namespace was ever created on this node
            continue
        for name in names:
            yield name, os.path.join(directory, name)


def _of_processes(proc_root: str) -> Iterator[tuple[str, str]]:
    try:
        pids = sorted((e for e in os.listdir(proc_root) if e.isdigit()), key=int)
    except OSError:
        return
    for pid in pids:
        yield "", os.path.join(proc_root, pid, "ns", "net")


def discover_namespaces(config: NamespacesConfig) -> list[NetNamespace]:
    """The namespaces of ``config``, each once: the agent's own (if ``root``), the named, the processes'."""
    own = _namespace_id(OWN_NAMESPACE)
    if own is None:
        raise CaptureError(f"cannot read the agent's own network namespace ({OWN_NAMESPACE})")
    nsfs, seen = own[0], {own[1]}
    found = [NetNamespace(ROOT_NAME, None, own[1])] if config.root else []
    for name, path in (*_named(config.netns_dirs), *_of_processes(config.proc_root)):
        ident = _namespace_id(path)
        if ident is None or ident[0] != nsfs or ident[1] in seen:
            continue
        seen.add(ident[1])
        found.append(NetNamespace(name or f"ns-{ident[1]}", path, ident[1]))
    return found


def namespace_interfaces(ns: NetNamespace) -> list[tuple[int, str]]:
    """(index, name) of the interfaces of ``ns``; empty when the namespace went away meanwhile."""
    own = _namespace_id(OWN_NAMESPACE)
    try:
        with in_netns(ns.path):
            return socket.if_nameindex()
    except (ConfigError, OSError) as exc:
        log.debug("namespace %s (%s) gone while listing its interfaces: %s", ns.name, ns.path, exc)
        return []
    except CaptureError as exc:  # setns failed: a namespace of a process that just exited, or no rights
        if _namespace_id(OWN_NAMESPACE) != own:  # stranded in the other namespace: nothing is safe now
            raise
        log.debug("cannot enter namespace %s: %s", ns.name, exc)
        return []


def infer_hop_kind(iface: str, in_root: bool) -> HopKind:
    """The hop kind an interface observes, from its name and whether it is in the node's namespace."""
    if iface.startswith("tap"):
        return HopKind.HYPERVISOR
    if in_root:
        return HopKind.NODE
    return HopKind.PROXY if iface == "lo" else HopKind.POD


def hop_kind_of(iface: str, in_root: bool, config: HopKindsConfig) -> HopKind:
    """``config.overrides`` first, then inference when ``config.infer``; else unknown."""
    override = config.override(iface)
    if override is not None:
        return override
    return infer_hop_kind(iface, in_root) if config.infer else HopKind.UNKNOWN


def discover_points(config: AgentConfig) -> dict[tuple[int, int, str], PointSpec]:
    """Every interface the configuration selects, now, by ``PointSpec.key``."""
    points = {}
    for ns in discover_namespaces(config.namespaces):
        for index, name in namespace_interfaces(ns):
            if not config.interfaces.selects(name):
                continue
            kind = hop_kind_of(name, ns.is_root, config.hop_kinds)
            spec = PointSpec(config.points.point_name(config.host, ns.name, name), name, index, ns, kind.value)
            points[spec.key] = spec
    return points
