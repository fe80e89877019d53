"""The client pods' egress sidecars without root: configs filled, plans aimed at them, capture points
on the client pods' loopback, options parsed, ground truth scored on the client leg too."""

from __future__ import annotations

from typing import Any

import pytest

from hopscope.cli import command_parser
from hopscope.correlate.evaluate import expected_points, first_point
from hopscope.errors import ConfigError
from hopscope.lab.lab import Lab
from hopscope.lab.plan import PlanSettings, default_plan
from hopscope.lab.services import CLIENT_SIDECARS, EGRESS_PORT, egress_config
from hopscope.lab.topology import WEB_CLUSTER_IP, default_topology


@pytest.mark.parametrize(
    ("kind", "must_have"),
    [
        ("envoy", [f"address: 127.0.0.1, port_value: {EGRESS_PORT}", f'address: "{WEB_CLUSTER_IP}", port_value: 80',
                   "generate_request_id: true", "preserve_external_request_id: true",
                   '{key: x-hs-egress-request-id, value: "%REQ(X-REQUEST-ID)%"}',
                   '{key: x-hs-egress-local, value: "%UPSTREAM_LOCAL_ADDRESS%"}']),
        ("haproxy", [f"bind 127.0.0.1:{EGRESS_PORT}", f"server web {WEB_CLUSTER_IP}:80", "http-reuse always",
                     "http-response set-header x-hs-egress-local %[bc_src]:%[bc_src_port]"]),
    ],
)
def test_egress_config_fills_every_placeholder(kind: str, must_have: list[str]) -> None:
    text = egress_config(kind, "client1", WEB_CLUSTER_IP, 80)
    for line in must_have:
        assert line in text, line
    assert "${" not in text and "$$" not in text


def test_plan_sends_the_web_service_through_the_sidecar() -> None:
    plan = default_plan(0, PlanSettings(), web_via=("127.0.0.1", EGRESS_PORT))
    web = [s for s in plan if s["kind"] == "http" and s["host"] == "web"]
    dead = [s for s in plan if s["kind"] == "http" and s["host"] == "dead"]
    assert web and all((s["target"], s["port"]) == ("127.0.0.1", EGRESS_PORT) for s in web)
    assert dead and all(s["target"] != "127.0.0.1" for s in dead)


def test_topology_captures_the_client_loopback() -> None:
    plain = {c.name for c in default_topology().captures}
    topo = default_topology(client_sidecar=True)
    egress = [c for c in topo.captures if c.name not in plain]
    assert [(c.name, c.host, c.interface, c.kind, c.side) for c in egress] == [
        ("client1-egress", "client1", "lo", "proxy", "client"), ("client2-egress", "client2", "lo", "proxy", "client")]
    assert [c.name for c in default_topology("vxlan", client_sidecar=True).captures].index("nodeA-underlay") == 6


def test_unknown_client_sidecar_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown client sidecar"):
        Lab(client_sidecar="nginx")
    assert CLIENT_SIDECARS == ("none", "envoy", "haproxy")


@pytest.mark.parametrize("action", ["up", "run", "samples", "check"])
def test_client_sidecar_option(action: str) -> None:
    parser = command_parser("lab")
    extra = ["--out", "x"] if action == "run" else []
    assert parser.parse_args([action, *extra]).client_sidecar == "none"
    assert parser.parse_args([action, "--client-sidecar", "envoy", *extra]).client_sidecar == "envoy"
    with pytest.raises(SystemExit):
        parser.parse_args([action, "--client-sidecar", "nginx"])


@pytest.mark.parametrize(
    ("truth", "first", "points"),
    [
        ({"client": "client1", "server": "server2"}, "client1-pod", 8),
        ({"client": "client1", "server": "server2", "egress_local": "10.244.1.11:40000"}, "client1-egress", 9),
    ],
)
def test_expected_path_starts_at_the_client_app(truth: dict[str, Any], first: str, points: int) -> None:
    path = expected_points(truth)
    assert first_point(truth) == path[0] == first and len(path) == points and path[-1] == "server2-app"
