"""The inventory: which pod, Service or node an IP address belongs to.

Two sources, one model. A hand-written YAML (or JSON) file::

    nodes:                       # node addresses: NIC, pod bridge (cni0), tunnel endpoint
      - {name: nodeA, ips: [172.30.0.1, 10.244.1.1]}
    pods:                        # ip, or ips for dual-stack pods; node and labels optional
      - {name: client1, namespace: default, ip: 10.244.1.11, node: nodeA, labels: {app: client}}
    services:                    # cluster_ip, or cluster_ips; ports as numbers or {port: 80}
      - {name: web, namespace: default, cluster_ip: 10.96.0.10, ports: [80], selector: {app: web}}

or the JSON of ``kubectl get pods,services,nodes -A -o json`` (a ``List`` whose items have ``kind``
Pod, Service or Node): a Pod's ``status.podIPs[].ip`` (else ``status.podIP``), ``spec.nodeName`` and
``metadata.name/namespace/labels``; a Service's ``spec.clusterIPs`` (else ``spec.clusterIP``; ``None``
for headless Services), ``spec.ports[].port`` and ``spec.selector``; a Node's ``status.addresses[]``
of type InternalIP or ExternalIP. Pods with ``spec.hostNetwork`` and pods that ended (phase Succeeded
or Failed) claim no address.

When two entries claim one address: Service cluster IPs first, then node addresses, then pods (the
first pod listed wins); a pod whose address is a node's (host network) maps to the node. Every
address that lost is counted in ``Inventory.conflicts``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from hopscope.errors import ConfigError, one_line

#: Entity kinds, in the order a claimed address is given to them.
KINDS = ("service", "node", "pod", "ip")


@dataclass(frozen=True, slots=True)
class Entity:
    """Something an address belongs to.

    kind: ``pod``, ``service``, ``node``, or ``ip`` (an address the inventory does not know);
    name: the object's name (the address itself for ``ip``); namespace: '' for nodes and ``ip``;
    node: the node a pod runs on ('' if unknown); labels: sorted (key, value) pairs (pods) or the
    selector (Services); ports: a Service's ports.
    """

    kind: str
    name: str
    namespace: str = ""
    node: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[int, ...] = ()

    @property
    def id(self) -> str:
        """Graph node id: ``pod:ns/name``, ``service:ns/name``, ``node:name`` or ``ip:addr``."""
        if self.namespace:
            return f"{self.kind}:{self.namespace}/{self.name}"
        return f"{self.kind}:{self.name}"

    @property
    def label(self) -> str:
        """Short display name: ``name`` or ``namespace/name`` outside ``default``."""
        if self.namespace and self.namespace != "default":
            return f"{self.namespace}/{self.name}"
        return self.name


def unknown(addr: str) -> Entity:
    """The entity of an address no inventory entry claims."""
    return Entity(kind="ip", name=addr)


@dataclass(frozen=True, slots=True)
class Inventory:
    """Address -> entity, plus the Services that select each pod.

    by_ip: normalized address text -> entity; entities: every pod, Service and node listed (also
    those that claim no address); conflicts: addresses claimed by more than one entry.
    """

    by_ip: Mapping[str, Entity] = field(default_factory=dict)
    entities: tuple[Entity, ...] = ()
    conflicts: int = 0
    #: The Services of ``entities`` (what ``services_of`` looks through).
    services: tuple[Entity, ...] = field(init=False, repr=False, compare=False)
    #: Answers given (an inventory does not change): a graph asks for the same addresses and pods in
    #: every row and every window. Emptied when it reaches ``MEMO_SIZE`` entries.
    _memo: dict[Any, Any] = field(init=False, repr=False, compare=False)

    MEMO_SIZE: ClassVar[int] = 1 << 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "services", tuple(e for e in self.entities if e.kind == "service"))
        object.__setattr__(self, "_memo", {})

    def _remember(self, key: Any, value: Any) -> Any:
        if len(self._memo) >= self.MEMO_SIZE:
            self._memo.clear()
        self._memo[key] = value
        return value

    def lookup(self, addr: str) -> Entity | None:
        """The entity owning ``addr``, or None (also for text that is not an address)."""
        key = _normalize(addr)
        return self.by_ip.get(key) if key else None

    def entity_of(self, addr: str) -> Entity:
        """The entity owning ``addr``, or an ``ip:<addr>`` entity."""
        found: Entity | None = self._memo.get(addr)
        if found is None:
            found = self._remember(addr, self.lookup(addr) or unknown(addr))
        return found

    def services_of(self, pod: Entity) -> list[Entity]:
        """Services in the pod's namespace whose (non-empty) selector matches the pod's labels."""
        key = ("services", pod.namespace, pod.labels)
        found = self._memo.get(key)
        if found is None:
            labels = dict(pod.labels)
            found = self._remember(key, tuple(
                e for e in self.services
                if e.namespace == pod.namespace and e.labels and all(labels.get(k) == v for k, v in e.labels)
            ))  # fmt: skip
        return list(found)

    def __len__(self) -> int:
        return len(self.by_ip)


EMPTY = Inventory()


def _normalize(addr: str) -> str | None:
    try:
        return str(ipaddress.ip_address(addr.strip()))
    except ValueError:
        return None


def _address(value: object, where: str) -> str:
    if isinstance(value, str):
        normalized = _normalize(value)
        if normalized:
            return normalized
    raise ConfigError(f"{where}: {value!r} is not an IP address")


def _text(item: Mapping[str, Any], key: str, where: str, required: bool = True) -> str:
    value = item.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise ConfigError(f"{where}: '{key}' must be a non-empty string, got {value!r}")
    return value


def _labels(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: labels/selector must be a mapping, got {type(value).__name__}")
    return tuple(sorted((str(k), str(v)) for k, v in value.items()))


def _ports(value: object, where: str) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{where}: ports must be a list")
    ports = []
    for p in value:
        port = p.get("port") if isinstance(p, Mapping) else p
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"{where}: bad port {p!r}")
        ports.append(port)
    return tuple(ports)


def _addresses(item: Mapping[str, Any], one: str, many: str, where: str) -> list[str]:
    values: list[object] = []
    if item.get(many) is not None:
        if not isinstance(item[many], list):
            raise ConfigError(f"{where}: '{many}' must be a list")
        values.extend(item[many])
    if item.get(one) is not None:
        values.append(item[one])
    return list(dict.fromkeys(_address(v, where) for v in values))


@dataclass(slots=True)
class _Builder:
    """Collects claims, then resolves them by kind precedence (``KINDS``)."""

    claims: list[tuple[str, Entity]] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)

    def add(self, entity: Entity, addrs: Iterable[str]) -> None:
        self.entities.append(entity)
        self.claims.extend((a, entity) for a in addrs)

    def build(self) -> Inventory:
        by_ip: dict[str, Entity] = {}
        conflicts = 0
        rank = {kind: i for i, kind in enumerate(KINDS)}
        for addr, entity in sorted(self.claims, key=lambda c: rank[c[1].kind]):  # stable: first listed wins
            if addr in by_ip:
                conflicts += by_ip[addr] != entity
                continue
            by_ip[addr] = entity
        return Inventory(by_ip=by_ip, entities=tuple(self.entities), conflicts=conflicts)


def _items(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    items = data.get(key) or []
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise ConfigError(f"inventory: '{key}' must be a list of mappings")
    return items


def from_simple(data: Mapping[str, Any]) -> Inventory:
    """An inventory from the hand-written format (module docstring)."""
    unknown_keys = set(data) - {"nodes", "pods", "services"}
    if unknown_keys:
        raise ConfigError(f"inventory: unknown sections {sorted(unknown_keys)} (nodes, pods, services)")
    b = _Builder()
    for i, n in enumerate(_items(data, "nodes")):
        where = f"nodes[{i}]"
        b.add(Entity("node", _text(n, "name", where)), _addresses(n, "ip", "ips", where))
    for i, p in enumerate(_items(data, "pods")):
        where = f"pods[{i}]"
        pod = Entity(
            "pod", _text(p, "name", where), _text(p, "namespace", where, required=False) or "default",
            node=_text(p, "node", where, required=False), labels=_labels(p.get("labels"), where),
        )  # fmt: skip
        b.add(pod, _addresses(p, "ip", "ips", where))
    for i, s in enumerate(_items(data, "services")):
        where = f"services[{i}]"
        svc = Entity(
            "service", _text(s, "name", where), _text(s, "namespace", where, required=False) or "default",
            labels=_labels(s.get("selector"), where), ports=_ports(s.get("ports"), where),
        )  # fmt: skip
        b.add(svc, _addresses(s, "cluster_ip", "cluster_ips", where))
    return b.build()


def _kube_pod(item: Mapping[str, Any], where: str) -> tuple[Entity, list[str]]:
    meta, spec, status = item.get("metadata") or {}, item.get("spec") or {}, item.get("status") or {}
    pod = Entity(
        "pod", _text(meta, "name", where), _text(meta, "namespace", where, required=False) or "default",
        node=_text(spec, "nodeName", where, required=False), labels=_labels(meta.get("labels"), where),
    )  # fmt: skip
    if spec.get("hostNetwork") or status.get("phase") in ("Succeeded", "Failed"):
        return pod, []
    ips = [p.get("ip") for p in status.get("podIPs") or [] if isinstance(p, Mapping)]
    if status.get("podIP"):
        ips.append(status["podIP"])
    return pod, list(dict.fromkeys(_address(ip, where) for ip in ips))


def _kube_service(item: Mapping[str, Any], where: str) -> tuple[Entity, list[str]]:
    meta, spec = item.get("metadata") or {}, item.get("spec") or {}
    svc = Entity(
        "service", _text(meta, "name", where), _text(meta, "namespace", where, required=False) or "default",
        labels=_labels(spec.get("selector"), where), ports=_ports(spec.get("ports"), where),
    )  # fmt: skip
    ips = list(spec.get("clusterIPs") or []) + ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return svc, list(dict.fromkeys(_address(ip, where) for ip in ips if ip != "None"))


def _kube_node(item: Mapping[str, Any], where: str) -> tuple[Entity, list[str]]:
    meta, status = item.get("metadata") or {}, item.get("status") or {}
    ips = [
        a.get("address")
        for a in status.get("addresses") or []
        if isinstance(a, Mapping) and a.get("type") in ("InternalIP", "ExternalIP")
    ]
    return Entity("node", _text(meta, "name", where)), list(dict.fromkeys(_address(ip, where) for ip in ips))


_KUBE_KINDS = {"Pod": _kube_pod, "Service": _kube_service, "Node": _kube_node}


def from_kubectl(data: Mapping[str, Any]) -> Inventory:
    """An inventory from ``kubectl get pods,services,nodes -A -o json`` (other kinds are skipped)."""
    b = _Builder()
    for i, item in enumerate(_items(data, "items")):
        parse = _KUBE_KINDS.get(str(item.get("kind")))
        if parse is not None:
            b.add(*parse(item, f"items[{i}] ({item.get('kind')})"))
    return b.build()


def from_data(data: object) -> Inventory:
    """Either format, told apart by kubectl's ``items`` list."""
    if data is None:
        return EMPTY
    if not isinstance(data, Mapping):
        raise ConfigError("inventory: the document must be a mapping (nodes/pods/services, or kubectl's List)")
    return from_kubectl(data) if "items" in data else from_simple(data)


def load_inventory(path: str | Path) -> Inventory:
    """Read an inventory file: YAML (the hand-written format) or kubectl's JSON."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"inventory {p}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        language = "JSON" if p.suffix == ".json" else "YAML"
        raise ConfigError(f"inventory {p}: not valid {language}: {one_line(exc)}") from exc
    try:
        return from_data(data)
    except ConfigError as exc:
        raise ConfigError(f"inventory {p}: {exc}") from exc

