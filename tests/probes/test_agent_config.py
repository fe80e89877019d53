"""The agent's configuration loader: the DaemonSet's file, defaults, and every error naming its field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from hopscope.errors import ConfigError
from hopscope.probes.agent_config import SCHEMA, load_config, parse_config
from hopscope.records import HopKind

ROOT = Path(__file__).resolve().parents[2]
ENV = {"NODE_NAME": "node-7", "KAFKA_BOOTSTRAP": "kafka:9092", "TOPIC_PREFIX": "hs"}
MINIMAL = f"schema: {SCHEMA}\nkafka: {{bootstrap: 127.0.0.1:9092}}\n"


def daemonset_config_text() -> str:
    for doc in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "agent-config.yaml").read_text()):
        return str(doc["data"]["agent.yaml"])
    raise AssertionError("no ConfigMap in agent-config.yaml")


def test_the_daemonsets_config_loads_with_the_environment_substituted() -> None:
    config = parse_config(daemonset_config_text(), ENV)
    assert (config.host, config.kafka.bootstrap, config.kafka.topic_prefix) == ("node-7", "kafka:9092", "hs")
    assert config.schema == SCHEMA and config.report_interval_s == 10
    assert [n for n in ("veth1a2b", "cni0", "eth0", "tap3", "lo", "docker0", "ethernet-lo") if
            config.interfaces.selects(n)] == ["veth1a2b", "cni0", "eth0", "tap3", "lo", "ethernet-lo"]  # fmt: skip
    assert config.interfaces.exclude is None and config.interfaces.rescan_s == 5
    assert config.namespaces.netns_dirs == ("/var/run/netns",) and config.namespaces.proc_root == "/host/proc"
    assert config.points.point_name("node-7", "cni-1", "eth0") == "node-7/cni-1/eth0"
    assert config.hop_kinds.infer and config.hop_kinds.overrides == ()
    assert (config.capture.bpf, config.capture.l7, config.capture.ring_mb) == ("", True, 8)
    assert config.inventory.kubernetes is True


def test_defaults_and_overrides_and_exclude(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(MINIMAL + "interfaces: {exclude: 'veth9.*'}\n"
                    "hop_kinds: {overrides: {'eth1': gateway, 'e.*': switch}}\n")  # fmt: skip
    config = load_config(path, {})
    assert config.interfaces.selects("veth1") and not config.interfaces.selects("veth9x")
    assert config.hop_kinds.override("eth1") is HopKind.GATEWAY  # the first whole match, in file order
    assert config.hop_kinds.override("eth0") is HopKind.SWITCH
    assert config.hop_kinds.override("xeth0") is None
    assert config.host and config.namespaces.proc_root == "/proc" and config.kafka.topic_prefix == "hopscope"


@pytest.mark.parametrize(("text", "tls"), [(MINIMAL, True), (MINIMAL + "capture: {tls: false}", False)])
def test_tls_parsing_is_on_unless_the_config_turns_it_off(tmp_path: Path, text: str, tls: bool) -> None:
    """``capture.tls`` reaches each point's L7 stage (off: TLS connections get flow records only)."""
    from hopscope.probes.agent import Agent
    from hopscope.probes.agent_discovery import NetNamespace, PointSpec

    (tmp_path / "agent.yaml").write_text(text)
    config = load_config(tmp_path / "agent.yaml", {})
    spec = PointSpec("h/root/eth0", "eth0", 2, NetNamespace("root", None, 1), "node")
    assert config.capture.tls is tls
    assert Agent(config).settings_of(spec).l7_settings.detect_tls is tls


@pytest.mark.parametrize(("text", "message"), [
    (MINIMAL + "interfaces: {rescan_s: '5'}", "interfaces.rescan_s: expected int, got str"),
    (MINIMAL + "interfaces: {rescan_s: true}", "interfaces.rescan_s: expected int, got bool"),
    (MINIMAL + "interfaces: {rescan_s: 0}", "interfaces.rescan_s: must be at least 1"),
    (MINIMAL + "report_interval_s: 1.5", "report_interval_s: expected int, got float"),
    (MINIMAL + "namespaces: {root: 'yes'}", "namespaces.root: expected bool, got str"),
    (MINIMAL + "namespaces: {netns_dirs: /var/run/netns}", "namespaces.netns_dirs: expected list, got str"),
    (MINIMAL + "namespaces: {netns_dirs: [1]}", "namespaces.netns_dirs[0]: expected str, got int"),
    (MINIMAL + "namespaces: {netns_dirs: [netns]}", "namespaces.netns_dirs[0]: 'netns' is not an absolute path"),
    (MINIMAL + "interfaces: {include: 'veth(.*'}", "interfaces.include: invalid regular expression"),
    (MINIMAL + "interfaces: {exclude: '[a'}", "interfaces.exclude: invalid regular expression"),
    (MINIMAL + "interfaces: {inclde: 'x'}", "interfaces.inclde: unknown field"),
    (MINIMAL + "capture: {snaplen: 96}", "capture.snaplen: unknown field"),
    (MINIMAL + "extra: 1", "extra: unknown field"),
    (MINIMAL + "capture: 8", "capture: expected a mapping"),
    (MINIMAL + "points: {name: '{host}/{pod}/{iface}'}", "points.name: unknown placeholder ['pod']"),
    (MINIMAL + "points: {name: '{host}/{netns}'}", "points.name: '{host}/{netns}' must hold {iface}"),
    (MINIMAL + "hop_kinds: {overrides: {'eth0': router}}", "hop_kinds.overrides['eth0']: unknown hop kind 'router'"),
    (MINIMAL + "hop_kinds: {overrides: {'(': pod}}", "hop_kinds.overrides['(']: invalid regular expression"),
    (MINIMAL + "host: ${env:HOPSCOPE_TEST_UNSET}", "host: environment variable HOPSCOPE_TEST_UNSET is not set"),
    (MINIMAL + "namespaces: {netns_dirs: ['${env:NOPE}']}", "namespaces.netns_dirs[0]: environment variable NOPE"),
    ("kafka: {bootstrap: 'x:1'}", "schema: required field missing"),
    ("schema: hopscope.agent/2\nkafka: {bootstrap: 'x:1'}", "schema: this agent reads 'hopscope.agent/1'"),
    (f"schema: {SCHEMA}", "kafka.bootstrap: required field missing"),
    (f"schema: {SCHEMA}\nkafka: {{bootstrap: 9092}}", "kafka.bootstrap: expected str, got int"),
    ("- a list", "the file: expected a mapping, got list"),
    ("schema: [unclosed", "not valid YAML: expected ',' or ']', but got '<stream end>' (line 1, column 18)"),
])  # fmt: skip
def test_errors_name_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(text, {})


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the agent configuration"):
        load_config(tmp_path / "nope.yaml")


def test_errors_of_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(MINIMAL + "capture: {l7: 1}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: capture.l7: expected bool, got int")):
        load_config(path, {})
