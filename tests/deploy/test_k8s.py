"""The Kubernetes manifests of deploy/k8s, offline: every object against the schemas of one Kubernetes
version (strict: unknown fields fail), and what ties them together: the kustomization lists every
file, every workload runs the one image built by the Containerfile, addresses live in one ConfigMap,
the agent's config holds the fields its contract documents, the agent's privileges are the ones
capture needs, and the commands' arguments parse with the commands' own parsers."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate  # the dev extra: Kubernetes' JSON schemas, per version
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
#: The Kubernetes version whose schemas (shipped by kubernetes-validate) the manifests must pass.
KUBERNETES_VERSION = "1.34.0"
AGENT_CAPABILITIES = {"NET_RAW", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}
ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def objects() -> list[tuple[str, dict[str, Any]]]:
    """Every object of every manifest, with the file it is in."""
    return [(p.name, doc) for p in manifest_files() for doc in yaml.safe_load_all(p.read_text()) if doc]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in objects() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def kustomization() -> dict[str, Any]:
    return dict(yaml.safe_load((K8S / "kustomization.yaml").read_text()))


def pod_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def workloads() -> list[dict[str, Any]]:
    return [doc for _, doc in objects() if doc["kind"] in ("Deployment", "DaemonSet")]


def endpoints() -> dict[str, str]:
    return dict(one("ConfigMap", "hopscope-endpoints")["data"])


def documented_agent_fields() -> dict[str, str]:
    """``field: type`` rows of the agent configuration table in deploy/k8s/README.md."""
    text = (K8S / "README.md").read_text()
    section = text.split("## Agent configuration", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9_.]+)` \| ([a-z\[\], ]+) \|", section, flags=re.MULTILINE)
    return dict(rows)


def agent_config() -> dict[str, Any]:
    return dict(yaml.safe_load(one("ConfigMap", "hopscope-agent")["data"]["agent.yaml"]))


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted paths of a nested mapping's values (mappings under a field typed map[...] stay whole)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and not path.endswith("overrides"):
            out.update(leaves(value, path + "."))
        else:
            out[path] = value
    return out


@pytest.mark.parametrize(("file", "doc"), objects(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_object_passes_the_kubernetes_schemas(file: str, doc: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{file}: {doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")


def test_the_validator_catches_a_wrong_field() -> None:
    daemonset = one("DaemonSet", "hopscope-agent")
    broken = yaml.safe_load(yaml.safe_dump(daemonset))
    broken["spec"]["template"]["spec"]["hostNetwrk"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest_and_the_namespace_holds_them() -> None:
    k = kustomization()
    assert sorted(k["resources"]) == [p.name for p in manifest_files()]
    assert one("Namespace", k["namespace"])
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for file, doc in objects():
        if doc["kind"] not in cluster_scoped:
            assert doc["metadata"].get("namespace") == k["namespace"], (file, doc["kind"])


def test_every_workload_runs_the_one_image_the_containerfile_builds() -> None:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)
    (image,) = kustomization()["images"]
    ref = f"{image['name']}:{image['newTag']}"
    assert image["newTag"] == project["project"]["version"]
    used = {c["image"] for doc in workloads() for c in pod_containers(doc)}
    assert used == {ref}
    assert f"-t {ref} ." in (K8S / "Containerfile").read_text()  # the documented build command
    assert f"-t {ref} ." in (K8S / "README.md").read_text()


def test_the_containerfile_copies_every_package_folder() -> None:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        roots = tomllib.load(fh)["tool"]["setuptools"]["package-dir"].values()
    copied = set(re.findall(r"^COPY (\S+) \1$", (K8S / "Containerfile").read_text(), flags=re.MULTILINE))
    assert copied == set(roots)


def test_the_addresses_live_in_one_configmap() -> None:
    values = endpoints()
    assert {"KAFKA_BOOTSTRAP", "STORE_URL", "TOPIC_PREFIX"} <= set(values)
    for path in [*manifest_files(), K8S / "kustomization.yaml"]:
        if path.name != "endpoints.yaml":
            text = path.read_text()
            assert values["KAFKA_BOOTSTRAP"] not in text and values["STORE_URL"] not in text, path.name
    for doc in workloads():
        for c in pod_containers(doc):
            assert {"configMapRef": {"name": "hopscope-endpoints"}} in c.get("envFrom", []), c["name"]


def test_the_agent_config_has_the_documented_fields_and_types() -> None:
    documented = documented_agent_fields()
    assert len(documented) > 15
    config = leaves(agent_config())
    assert set(config) == set(documented)
    types = {"str": str, "int": int, "bool": bool, "list[str]": list, "map[str, str]": dict}
    for field, kind in documented.items():
        assert isinstance(config[field], types[kind]), (field, kind, config[field])
    assert config["schema"] == "hopscope.agent/1"
    include = re.compile(config["interfaces.include"])
    for name in ("veth1a2b3c", "cni0", "eth0", "tap0", "lo"):
        assert include.fullmatch(name), name
    assert not include.fullmatch("docker0")
    assert set(re.findall(r"\{(\w+)\}", config["points.name"])) == {"host", "netns", "iface"}
    assert config["hop_kinds.infer"] is True


def test_the_agent_configs_environment_references_are_provided() -> None:
    refs = set(ENV_REF.findall(one("ConfigMap", "hopscope-agent")["data"]["agent.yaml"]))
    assert {"NODE_NAME", "KAFKA_BOOTSTRAP", "TOPIC_PREFIX"} <= refs
    (agent,) = pod_containers(one("DaemonSet", "hopscope-agent"))
    provided = {e["name"] for e in agent.get("env", [])} | set(endpoints())
    assert refs <= provided
    mounted = {m["mountPath"] for m in agent["volumeMounts"]}
    config = agent_config()
    assert "/etc/hopscope" in mounted and agent["args"] == ["agent", "--config", "/etc/hopscope/agent.yaml"]
    assert {config["namespaces"]["proc_root"], *config["namespaces"]["netns_dirs"]} <= mounted


def test_the_agent_has_only_the_privileges_capture_needs() -> None:
    daemonset = one("DaemonSet", "hopscope-agent")
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["hostPID"] is True
    (agent,) = spec["containers"]
    security = agent["securityContext"]
    assert security.get("privileged", False) is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(security["capabilities"]["add"]) == AGENT_CAPABILITIES
    assert security["readOnlyRootFilesystem"] is True
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert sorted(host_paths.values()) == ["/proc", "/var/run/netns"]
    for mount in agent["volumeMounts"]:
        if mount["name"] in host_paths:
            assert mount["readOnly"] is True, mount
    others = [c for doc in workloads() if doc["kind"] != "DaemonSet" for c in pod_containers(doc)]
    for c in others:
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]


def test_the_agent_may_only_read_the_inventory() -> None:
    role = one("ClusterRole", "hopscope-agent")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods", "services", "nodes"],
                              "verbs": ["get", "list", "watch"]}]  # fmt: skip
    binding = one("ClusterRoleBinding", "hopscope-agent")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hopscope-agent", "namespace": "hopscope"}]
    assert one("DaemonSet", "hopscope-agent")["spec"]["template"]["spec"]["serviceAccountName"] == "hopscope-agent"
    for doc in workloads():
        if doc["kind"] == "Deployment":
            assert doc["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_every_container_has_requests_and_limits() -> None:
    for doc in workloads():
        for c in pod_containers(doc):
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"memory"} <= set(c["resources"]["limits"])


def expanded(args: list[str]) -> list[str]:
    """Container arguments with ``$(NAME)`` replaced as the kubelet does, from the endpoints ConfigMap."""
    values = endpoints()
    return [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], a) for a in args]


@pytest.mark.parametrize(("kind", "name", "container"), [
    ("Deployment", "hopscope-correlator", "correlator"),
    ("Deployment", "hopscope-api", "store-init"),
    ("Deployment", "hopscope-api", "api"),
    ("DaemonSet", "hopscope-agent", "agent"),
])  # fmt: skip
def test_container_arguments_parse_with_the_commands_parsers(kind: str, name: str, container: str) -> None:
    from hopscope.cli import BY_NAME, build_parser

    (c,) = [c for c in pod_containers(one(kind, name)) if c["name"] == container]
    args = expanded(c["args"])
    assert args[0] in BY_NAME, f"no 'hopscope {args[0]}' command"
    parsed = build_parser(args[0]).parse_args(args)
    assert parsed.command == args[0]
    if hasattr(parsed, "store") and args[0] != "agent":
        assert parsed.store == endpoints()["STORE_URL"]


def test_the_api_beyond_loopback_reads_tokens_from_its_secret() -> None:
    """serve refuses a non-loopback address without a token file (or --insecure): the Deployment
    gives it the file, mounted from the Secret the README says how to make."""
    deployment = one("Deployment", "hopscope-api")
    (c,) = [c for c in pod_containers(deployment) if c["name"] == "api"]
    args = c["args"]
    assert args[args.index("--host") + 1] == "0.0.0.0" and "--insecure" not in args
    token_file = Path(args[args.index("--token-file") + 1])
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (name,) = [n for n, path in mounts.items() if Path(path) == token_file.parent]
    secret = volumes[name]["secret"]["secretName"]
    assert f"create secret generic {secret} --from-file={token_file.name}" in (K8S / "README.md").read_text()


def test_the_correlators_share_one_consumer_group() -> None:
    deployment = one("Deployment", "hopscope-correlator")
    assert deployment["spec"]["replicas"] >= 2
    (c,) = pod_containers(deployment)
    assert c["args"][c["args"].index("--group") + 1] == "hopscope-correlate"


def test_the_api_probes_get_healthz_from_the_app(tmp_path: Path) -> None:
    """The probes' path and Host header, against the real app on a real (embedded) store."""
    from fastapi.testclient import TestClient

    from hopscope.api.app import create_app
    from hopscope.api.config import ApiSettings
    from hopscope.cli.serve import allowed_hosts
    from hopscope.store import store_from_url

    deployment = one("Deployment", "hopscope-api")
    (api,) = deployment["spec"]["template"]["spec"]["containers"]
    args = api["args"]
    hosts = allowed_hosts(args[args.index("--host") + 1], [a for i, a in enumerate(args) if args[i - 1] ==
                                                           "--allowed-host"])  # fmt: skip
    service = one("Service", "hopscope-api")
    assert f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc" in hosts
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == api["ports"][0]["name"]
    store = store_from_url(f"chdb://{tmp_path}")
    store.ensure_schema()
    client = TestClient(create_app(store, ApiSettings(store_url=store.url, allowed_hosts=hosts), close_store=True))
    with client:
        for probe in (api["readinessProbe"], api["livenessProbe"]):
            get = probe["httpGet"]
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
            assert client.get(get["path"], headers=headers).status_code == 200
            assert client.get(get["path"], headers={"Host": "10.1.2.3"}).status_code == 400  # the pod IP
