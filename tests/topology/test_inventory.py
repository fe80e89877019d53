"""The inventory from the hand-written YAML format and from kubectl's JSON, and the lab's inventory file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hopscope.errors import ConfigError
from hopscope.topology.inventory import Entity, Inventory, from_data, load_inventory

ROOT = Path(__file__).resolve().parents[2]

SIMPLE_YAML = """
nodes:
  - {name: nodeA, ips: [172.30.0.1, 10.244.1.1]}
  - {name: nodeB, ip: "fd00::2"}
pods:
  - {name: client1, namespace: default, ip: 10.244.1.11, node: nodeA, labels: {app: client}}
  - {name: web-1, namespace: shop, ips: [10.244.2.11, "fd00:244::11"], node: nodeB, labels: {app: web}}
  - {name: hostnet, namespace: kube-system, ip: 172.30.0.1, node: nodeA}
  - {name: twin, ip: 10.244.1.11}
services:
  - {name: web, namespace: shop, cluster_ip: 10.96.0.10, ports: [80, {port: 443}], selector: {app: web}}
"""

# What `kubectl get pods,services,nodes -A -o json` prints, trimmed to the fields the inventory reads
# plus some it must ignore.
KUBECTL: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "List",
    "items": [
        {"kind": "Pod", "metadata": {"name": "client1", "namespace": "default", "labels": {"app": "client"}},
         "spec": {"nodeName": "nodeA"}, "status": {"phase": "Running", "podIP": "10.244.1.11",
                                                    "podIPs": [{"ip": "10.244.1.11"}]}},
        {"kind": "Pod", "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
         "spec": {"nodeName": "nodeB"},
         "status": {"phase": "Running", "podIP": "10.244.2.11",
                    "podIPs": [{"ip": "10.244.2.11"}, {"ip": "fd00:244::11"}]}},
        {"kind": "Pod", "metadata": {"name": "kube-proxy-x", "namespace": "kube-system"},
         "spec": {"nodeName": "nodeA", "hostNetwork": True}, "status": {"phase": "Running", "podIP": "172.30.0.1"}},
        {"kind": "Pod", "metadata": {"name": "job-done", "namespace": "default"},
         "spec": {"nodeName": "nodeA"}, "status": {"phase": "Succeeded", "podIP": "10.244.1.99"}},
        {"kind": "Pod", "metadata": {"name": "pending", "namespace": "default"}, "spec": {}, "status": {}},
        {"kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
         "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                  "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}], "selector": {"app": "web"}}},
        {"kind": "Service", "metadata": {"name": "headless", "namespace": "shop"},
         "spec": {"clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "web"}}},
        {"kind": "Node", "metadata": {"name": "nodeA"},
         "status": {"addresses": [{"type": "InternalIP", "address": "172.30.0.1"},
                                  {"type": "Hostname", "address": "nodeA"}]}},
        {"kind": "Node", "metadata": {"name": "nodeB"},
         "status": {"addresses": [{"type": "InternalIP", "address": "172.30.0.2"},
                                  {"type": "ExternalIP", "address": "203.0.113.2"}]}},
        {"kind": "ConfigMap", "metadata": {"name": "ignored", "namespace": "default"}, "data": {}},
    ],
}  # fmt: skip


@pytest.fixture(params=["yaml", "kubectl"])
def inventory(request: pytest.FixtureRequest, tmp_path: Path) -> Inventory:
    if request.param == "yaml":
        path = tmp_path / "inventory.yaml"
        path.write_text(SIMPLE_YAML)
    else:
        path = tmp_path / "kubectl.json"
        path.write_text(json.dumps(KUBECTL))
    return load_inventory(path)


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("10.244.1.11", "pod:default/client1"),
        ("10.244.2.11", "pod:shop/web-1"),
        ("fd00:244::11", "pod:shop/web-1"),
        ("FD00:244:0::11", "pod:shop/web-1"),  # normalized
        ("10.96.0.10", "service:shop/web"),
        ("172.30.0.1", "node:nodeA"),  # a host-network pod's address is its node's
        ("10.244.1.200", None),
        ("not-an-address", None),
        ("", None),
    ],
)
def test_lookup_in_both_formats(inventory: Inventory, addr: str, expected: str | None) -> None:
    found = inventory.lookup(addr)
    assert (found.id if found else None) == expected


def test_unknown_addresses_become_ip_entities(inventory: Inventory) -> None:
    assert inventory.entity_of("192.0.2.7") == Entity("ip", "192.0.2.7")
    assert inventory.entity_of("192.0.2.7").id == "ip:192.0.2.7"


def test_entity_fields_and_service_selection(inventory: Inventory) -> None:
    web_pod = inventory.lookup("10.244.2.11")
    assert web_pod is not None and web_pod.node == "nodeB" and dict(web_pod.labels) == {"app": "web"}
    web_svc = inventory.lookup("10.96.0.10")
    assert web_svc is not None and web_svc.kind == "service" and 80 in web_svc.ports
    assert [s.name for s in inventory.services_of(web_pod)] == (
        ["web", "headless"] if any(e.name == "headless" for e in inventory.entities) else ["web"]
    )
    client = inventory.lookup("10.244.1.11")
    assert client is not None and inventory.services_of(client) == []


def test_kubectl_specifics() -> None:
    inv = from_data(KUBECTL)
    assert inv.lookup("fd00:96::10") is not None and inv.lookup("fd00:96::10").name == "web"  # type: ignore[union-attr]
    assert inv.lookup("203.0.113.2").id == "node:nodeB"  # type: ignore[union-attr]
    assert inv.lookup("10.244.1.99") is None  # a finished pod claims nothing
    assert {e.name for e in inv.entities} >= {"pending", "headless", "job-done"}
    assert "ignored" not in {e.name for e in inv.entities}
    assert inv.conflicts == 0  # host-network pods claim no address at all


def test_precedence_and_conflicts() -> None:
    inv = from_data(
        {
            "nodes": [{"name": "n1", "ips": ["10.0.0.1"]}],
            "pods": [{"name": "a", "ip": "10.0.0.5"}, {"name": "b", "ip": "10.0.0.5"}, {"name": "h", "ip": "10.0.0.1"}],
            "services": [{"name": "s", "cluster_ip": "10.0.0.9"}],
        }
    )
    assert inv.lookup("10.0.0.5").name == "a"  # type: ignore[union-attr]  # the first pod listed wins
    assert inv.lookup("10.0.0.1").kind == "node"  # type: ignore[union-attr]
    assert inv.conflicts == 2
    assert len(inv) == 3


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"pods": [{"name": "a", "ip": "10.0.0.300"}]}, "not an IP address"),
        ({"pods": [{"ip": "10.0.0.3"}]}, "'name'"),
        ({"pods": [{"name": "", "ip": "10.0.0.3"}]}, "'name'"),
        ({"pods": [{"name": "a", "ip": "10.0.0.3", "labels": ["x"]}]}, "must be a mapping"),
        ({"pods": {"name": "a"}}, "must be a list"),
        ({"services": [{"name": "s", "cluster_ip": "10.96.0.1", "ports": [0]}]}, "bad port"),
        ({"services": [{"name": "s", "cluster_ip": "10.96.0.1", "ports": [True]}]}, "bad port"),
        ({"services": [{"name": "s", "cluster_ips": "10.96.0.1"}]}, "must be a list"),
        ({"deployments": []}, "unknown sections"),
        (["pods"], "must be a mapping"),
        ({"items": [{"kind": "Pod", "metadata": {"name": "p"}, "status": {"podIP": "bogus"}}]}, "not an IP"),
        ({"items": [{"kind": "Node", "metadata": {}}]}, "'name'"),
    ],
)
def test_bad_documents_fail_with_a_message(document: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_data(document)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_inventory(tmp_path / "missing.yaml")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("pods: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML: .* \(line 2, column 1\)$") as raised:
        load_inventory(bad_yaml)
    assert "\n" not in str(raised.value)  # one line, not the parser's quote of the text
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_inventory(bad_json)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert len(load_inventory(empty)) == 0


def test_the_lab_inventory_names_every_address_of_the_lab() -> None:
    inv = load_inventory(ROOT / "samples" / "lab" / "inventory.yaml")
    manifest = json.loads((ROOT / "samples" / "lab" / "manifest.json").read_text())
    topo = manifest["topology"]
    for a in topo["addresses"]:
        addr = a["cidr"].split("/")[0]
        entity = inv.lookup(addr)
        assert entity is not None, addr
        expected = "node" if a["host"] in ("nodeA", "nodeB") else "pod"
        assert entity.kind == expected, (addr, entity)
    for svc in topo["services"]:
        entity = inv.lookup(svc["cluster_ip"])
        assert entity is not None and entity.kind == "service", svc
        backends = {inv.entity_of(b["ip"]) for b in svc["backends"]}
        assert backends <= set(p for p in inv.entities if entity in inv.services_of(p)), svc["name"]
    # the SNAT address: the NAT node's uplink, which every request leaving it carries as its source
    nat_node = topo["nat"]["node"]
    uplinks = [a["cidr"].split("/")[0] for a in topo["addresses"] if (a["host"], a["interface"]) == (nat_node, "eth0")]
    uplink = uplinks[0]
    snat = inv.lookup(uplink)
    assert snat is not None and snat.id == f"node:{nat_node}"
