"""Hardening against a hostile browser: the Host allow-list (DNS rebinding), security headers on
every answer, HEAD wherever GET is."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from hopscope.api.app import create_app
from hopscope.api.config import ApiSettings
from hopscope.api.security import host_of
from hopscope.cli.serve import allowed_hosts
from hopscope.errors import ConfigError
from hopscope.store import SqlStore


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost", "localhost"),
        ("LocalHost:8080", "localhost"),
        ("127.0.0.1:1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("[::1]:8080", "::1"),
        ("localhost.:80", "localhost"),
        ("[::1]x", None),
        ("[::1", None),
        ("localhost:http", None),
        ("", None),
        (":8080", None),
    ],
)
def test_host_of(header: str, name: str | None) -> None:
    assert host_of(header) == name


@pytest.mark.parametrize("host", ["localhost", "localhost:8080", "127.0.0.1:9", "[::1]:8080", "[::1]"])
def test_loopback_hosts_are_served(client: TestClient, host: str) -> None:
    r = client.get("/healthz", headers={"Host": host})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "host", ["attacker.example", "attacker.example:8080", "127.0.0.2", "localhost.attacker.example", "[::2]", "a b"]
)
def test_other_hosts_are_refused(client: TestClient, host: str) -> None:
    for path in ("/", "/healthz", "/api/v1/traces", "/static/app.js", "/openapi.json"):
        r = client.get(path, headers={"Host": host})
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"]["code"] == "bad_host"
        assert r.headers["x-frame-options"] == "DENY"


def test_added_host_names(store: SqlStore) -> None:
    settings = ApiSettings(allowed_hosts=allowed_hosts("0.0.0.0", ["hopscope.internal"]))
    client = TestClient(create_app(store, settings), base_url="http://hopscope.internal:8080")
    assert client.get("/healthz").status_code == 200
    assert client.get("/healthz", headers={"Host": "localhost"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "0.0.0.0"}).status_code == 400


@pytest.mark.parametrize(
    ("listen", "extra", "expected"),
    [
        ("127.0.0.1", [], ("localhost", "127.0.0.1", "::1")),
        ("::1", [], ("localhost", "127.0.0.1", "::1")),
        ("0.0.0.0", [], ("localhost", "127.0.0.1", "::1")),
        ("10.1.2.3", ["obs.example"], ("localhost", "127.0.0.1", "::1", "10.1.2.3", "obs.example")),
        ("obs.example", [], ("localhost", "127.0.0.1", "::1", "obs.example")),
    ],
)
def test_serve_allowed_hosts(listen: str, extra: list[str], expected: tuple[str, ...]) -> None:
    assert allowed_hosts(listen, extra) == expected


@pytest.mark.parametrize("name", ["http://x", "x:80", "a/b", "", "user@x"])
def test_bad_allowed_host_names(name: str) -> None:
    with pytest.raises(ConfigError):
        ApiSettings(allowed_hosts=(name,))


def test_security_headers_everywhere(client: TestClient) -> None:
    for path in ("/", "/static/app.js", "/healthz", "/api/v1/traces", "/api/v1/traces/" + "0" * 32, "/nope"):
        r = client.get(path)
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"


def test_ui_page_needs_no_inline_code(client: TestClient) -> None:
    """The strict CSP would block inline scripts, styles and handlers: the page must have none."""
    page = client.get("/").text
    assert "<style" not in page and not re.search(r"\sstyle=|\son[a-z]+=|javascript:", page)
    assert page.count("<script") == 1 and '<script src="static/app.js"></script>' in page


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/healthz", "/api/v1/traces", "/openapi.json"])
def test_head_where_get(client: TestClient, path: str) -> None:
    get, head = client.get(path), client.head(path)
    assert get.status_code == head.status_code == 200, (path, head.text)
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["x-frame-options"] == "DENY"
