"""The server-side sidecars' configs and options, without root: templates filled, plans prefixed."""

from __future__ import annotations

from pathlib import Path

import pytest

from hopscope.cli import command_parser
from hopscope.errors import ConfigError
from hopscope.lab.lab import Lab
from hopscope.lab.plan import PlanSettings, default_plan
from hopscope.lab.services import PATH_PREFIX, SIDECARS, sidecar_config


@pytest.mark.parametrize(
    ("kind", "must_have"),
    [
        ("nginx", ["listen 10.244.2.11:80;", "server 127.0.0.1:8080;", "keepalive 16;", "proxy_pass http://app;",
                   "proxy_http_version 1.1;", 'proxy_set_header Connection "";',
                   "proxy_set_header X-Request-ID $request_id;"]),
        ("haproxy", ["bind 10.244.2.11:80", "server app 127.0.0.1:8080", "unique-id-format",
                     "http-request set-header X-Request-ID %[unique-id]",
                     r"http-request replace-path ^/web(/.*)$ \1", "http-request replace-path ^/web$ /"]),
    ],
)
def test_sidecar_config_fills_every_placeholder(tmp_path: Path, kind: str, must_have: list[str]) -> None:
    text = sidecar_config(kind, "10.244.2.11", "server1", tmp_path)
    for line in must_have:
        assert line in text, line
    assert "${" not in text and "$$" not in text


def test_plan_paths_carry_the_sidecars_prefix() -> None:
    assert set(SIDECARS) == set(PATH_PREFIX) == {"envoy", "nginx", "haproxy"}
    plan = default_plan(0, PlanSettings(), path_prefix="/web")
    web = [r["path"] for s in plan if s["kind"] == "http" and s["host"] == "web" for r in s["requests"]]
    assert web and all(p.startswith("/web/") for p in web)
    dead = [r["path"] for s in plan if s["kind"] == "http" and s["host"] == "dead" for r in s["requests"]]
    assert dead == ["/ok"] * len(dead)


def test_unknown_sidecar_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown server sidecar"):
        Lab(sidecar="traefik")


@pytest.mark.parametrize("action", ["up", "run", "samples", "check", "traffic"])
def test_server_sidecar_option(action: str) -> None:
    parser = command_parser("lab")
    argv = [action, "--server-sidecar", "haproxy"] + (["--out", "x"] if action == "run" else [])
    assert parser.parse_args(argv).server_sidecar == "haproxy"
    with pytest.raises(SystemExit):
        parser.parse_args([action, "--server-sidecar", "traefik"])
