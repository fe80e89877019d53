"""API tokens: every /api/v1 route without a token, with a wrong one, with one of the wrong scope and
with another tenant's; the token file holds no token in clear; the OpenAPI schema states it all."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hopscope.api.app import create_app
from hopscope.api.auth import printable
from hopscope.api.config import ApiSettings
from hopscope.api.tokens import TokenVerifier, add_token, load_tokens, token_digest
from hopscope.errors import ConfigError
from hopscope.records import Batch, Span, Trace
from hopscope.store import SqlStore, store_from_url
from tests.conftest import CLICKHOUSE_URL, require_service
from tests.topology.paths import lab_trace

#: A trace id no store holds, for the routes that look one up.
ABSENT = "9" * 32


def api_paths(client: TestClient) -> list[str]:
    """Every GET route under /api/v1 from the app's own schema, path parameters filled in."""
    paths = [p for p in client.get("/openapi.json").json()["paths"] if p.startswith("/api/v1")]
    return [p.replace("{trace_id}", ABSENT) for p in paths]


def scope_of(path: str) -> str:
    """The scope a route needs: pcap:read for a trace's packets, traces:read for the rest."""
    return "pcap:read" if path.endswith(("/pcap", "/packets")) else "traces:read"


#: The token of the fixture ``tokens`` holding each scope alone, and one lacking it.
HOLDER = {"traces:read": "reader", "pcap:read": "pcap"}
LACKER = {"traces:read": "pcap", "pcap:read": "reader"}


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return tmp_path / "tokens.json"


@pytest.fixture
def tokens(token_file: Path) -> dict[str, str]:
    """name -> token: a reader, an admin, and one holding only pcap:read."""
    return {
        "reader": add_token(token_file, "reader", ["traces:read"]),
        "admin": add_token(token_file, "admin", ["admin"]),
        "pcap": add_token(token_file, "pcap", ["pcap:read"]),
    }


@pytest.fixture
def guarded(store: SqlStore, token_file: Path, tokens: dict[str, str]) -> TestClient:
    app = create_app(store, tokens=TokenVerifier(load_tokens(token_file)))
    return TestClient(app, base_url="http://127.0.0.1")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_api_route_is_listed(guarded: TestClient) -> None:
    assert {"/api/v1/traces", "/api/v1/flows", "/api/v1/requests", f"/api/v1/traces/{ABSENT}",
            "/api/v1/topology/services", "/api/v1/topology/points"} <= set(api_paths(guarded))  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "no bearer token"),
        (bearer("hst_" + "A" * 43), "unknown token"),
        (bearer(""), "the Authorization header is not a bearer token"),
        ({"Authorization": "Basic cmVhZGVyOnNlY3JldA=="}, "the Authorization header is not a bearer token"),
    ],
)
def test_without_a_valid_token_every_route_is_401(
    guarded: TestClient, headers: dict[str, str], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hopscope.api.auth")
    for path in api_paths(guarded):
        r = guarded.get(path, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json() == {"error": {"code": "unauthorized", "message": reason}}
        assert caplog.records[-1].getMessage() == f"authentication failed: client testclient, GET {path}: {reason}"


def test_a_token_of_the_wrong_scope_is_403(guarded: TestClient, tokens: dict[str, str]) -> None:
    paths = api_paths(guarded)
    assert {scope_of(p) for p in paths} == {"traces:read", "pcap:read"}
    for path in paths:
        name, scope = LACKER[scope_of(path)], scope_of(path)
        r = guarded.get(path, headers=bearer(tokens[name]))
        assert r.status_code == 403, (path, r.text)
        assert r.json() == {"error": {"code": "forbidden", "message": f"token {name!r} lacks the scope {scope}"}}
        assert "www-authenticate" not in r.headers


@pytest.mark.parametrize("name", ["holder", "admin"])
def test_a_token_with_the_scope_is_served(guarded: TestClient, tokens: dict[str, str], name: str) -> None:
    for path in api_paths(guarded):
        token = tokens[HOLDER[scope_of(path)] if name == "holder" else name]
        r = guarded.get(path, headers=bearer(token))
        assert r.status_code == (404 if ABSENT in path else 200), (path, r.text)


def test_failures_are_logged_without_the_token(
    guarded: TestClient, tokens: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hopscope.api.auth")
    wrong = tokens["reader"][:-4] + "AAAA"
    guarded.get("/api/v1/flows", headers=bearer(wrong))
    guarded.get("/api/v1/flows", headers=bearer(tokens["pcap"]))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "authentication failed: client testclient, GET /api/v1/flows: unknown token",
        "authentication failed: client testclient, GET /api/v1/flows: token 'pcap' lacks the scope traces:read",
    ]
    assert not any(t in line for line in lines for t in [wrong, *tokens.values()])


@pytest.mark.parametrize(
    ("path", "logged"),
    [("/api/v1/flows", "/api/v1/flows"), ("/x\nauthentication succeeded", "/x\\nauthentication succeeded"),
     ("/x\r\x1b[2J", "/x\\r\\x1b[2J"), ("/zürich", "/zürich")],
)  # fmt: skip
def test_a_path_cannot_forge_log_lines(path: str, logged: str) -> None:
    assert printable(path) == logged


def test_a_refused_request_takes_no_heavy_query_slot(store: SqlStore, token_file: Path) -> None:
    token = add_token(token_file, "reader", ["traces:read"])
    app = create_app(store, ApiSettings(max_heavy_queries=1), tokens=TokenVerifier(load_tokens(token_file)))
    client = TestClient(app, base_url="http://127.0.0.1")
    assert app.state.heavy_gate.try_enter()  # the only slot is taken
    try:
        assert client.get("/api/v1/traces", headers=bearer(token)).status_code == 429
        assert client.get("/api/v1/traces").status_code == 401
    finally:
        app.state.heavy_gate.leave()


def test_a_token_file_that_cannot_be_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot write token file"):
        add_token(tmp_path / "missing" / "tokens.json", "ui", ["traces:read"])


def test_page_and_health_need_no_token(guarded: TestClient) -> None:
    for path in ("/", "/static/app.js", "/healthz", "/openapi.json"):
        assert guarded.get(path).status_code == 200, path


def test_schema_documents_the_bearer_scheme(guarded: TestClient) -> None:
    schema = guarded.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["token"] == {
        "type": "http", "scheme": "bearer",
        "description": "an API token made by `hopscope token add`; each route states the scope it needs",
    }  # fmt: skip
    for path, item in schema["paths"].items():
        if path.startswith("/api/v1"):
            scope = scope_of(path)
            assert item["get"]["security"] == [{"token": [scope]}], path
            assert {"401", "403"} <= set(item["get"]["responses"]), path
            assert item["get"]["responses"]["403"]["description"] == f"forbidden: the token lacks {scope}"


def test_token_file_keeps_no_token_in_clear(token_file: Path, tokens: dict[str, str]) -> None:
    text = token_file.read_text()
    assert token_file.stat().st_mode & 0o777 == 0o600
    for token in tokens.values():
        assert token.startswith("hst_") and len(token) == 47
        assert token not in text and token[4:] not in text and token[4:20] not in text
    entries = {e.name: e for e in load_tokens(token_file)}
    rows = json.loads(text)["tokens"]
    assert len({row["salt"] for row in rows}) == len(rows)  # a salt per token
    for name, token in tokens.items():
        assert token_digest(token, entries[name].salt) == entries[name].digest
        assert TokenVerifier(tuple(entries.values())).verify(token) == entries[name]


@pytest.mark.parametrize(
    ("content", "message"),
    [("not json", "is not a hopscope token file"), ('{"version": 2, "tokens": []}', "version 2, expected 1"),
     ('{"version": 1, "tokens": [{"name": "x", "scopes": ["root"], "salt": "", "sha256": ""}]}', "unknown scopes")],
)  # fmt: skip
def test_bad_token_files(token_file: Path, content: str, message: str) -> None:
    token_file.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_tokens(token_file)


def test_add_refuses_a_second_token_of_a_name_and_unknown_scopes(token_file: Path) -> None:
    add_token(token_file, "ui", ["traces:read"])
    with pytest.raises(ConfigError, match="named 'ui' already"):
        add_token(token_file, "ui", ["traces:read"])
    with pytest.raises(ConfigError, match="scopes must be some of"):
        add_token(token_file, "other", ["traces:write"])
    assert [e.name for e in load_tokens(token_file)] == ["ui"]


# --- tenancy ------------------------------------------------------------------------------------------


@pytest.fixture(params=["clickhouse", "chdb"])
def tenant_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, SqlStore]]:
    """Two tenants' stores: two databases of one ClickHouse server, or of one chDB directory."""
    if request.param == "clickhouse":
        require_service("ClickHouse", CLICKHOUSE_URL.split("//")[1].split("/")[0])
        base = CLICKHOUSE_URL.rsplit("/", 1)[0]
        suffix = uuid.uuid4().hex[:8]
        urls = {t: f"{base}/hs_{t}_{suffix}" for t in ("acme", "globex")}
    else:
        urls = {t: f"chdb://{tmp_path}/chdb?database={t}" for t in ("acme", "globex")}
    stores = {t: store_from_url(url) for t, url in urls.items()}
    try:
        for s in stores.values():
            s.ensure_schema()
        yield stores
    finally:
        for s in stores.values():
            s.drop_schema()
            s.close()


def test_each_tenant_reads_only_its_own_store(
    store: SqlStore, tenant_stores: dict[str, SqlStore], token_file: Path
) -> None:
    owned = {"acme": lab_trace(1), "globex": lab_trace(2)}
    for tenant, (trace, spans) in owned.items():
        tenant_stores[tenant].insert("traces", Batch.from_records(Trace, [trace]))
        tenant_stores[tenant].insert("spans", Batch.from_records(Span, spans))
    tokens = {t: add_token(token_file, t, ["traces:read"], tenant=t) for t in owned}
    app = create_app(store, tokens=TokenVerifier(load_tokens(token_file)), tenant_stores=tenant_stores)
    client = TestClient(app, base_url="http://127.0.0.1")
    for tenant, (trace, _) in owned.items():
        other = "globex" if tenant == "acme" else "acme"
        headers = bearer(tokens[tenant])
        listed = client.get("/api/v1/traces", headers=headers).json()["traces"]
        assert [t["trace_id"] for t in listed] == [trace.trace_id]
        assert client.get(f"/api/v1/traces/{trace.trace_id}", headers=headers).status_code == 200
        theirs = owned[other][0].trace_id
        for path in (f"/api/v1/traces/{theirs}", f"/api/v1/topology/traces/{theirs}"):
            r = client.get(path, headers=headers)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (tenant, path)
        points = client.get("/api/v1/topology/points", headers=headers).json()
        assert points["graph"]["traces"] == 1


def test_a_tenant_without_a_store_is_refused_at_start(store: SqlStore, token_file: Path) -> None:
    add_token(token_file, "acme", ["traces:read"], tenant="acme")
    with pytest.raises(ConfigError, match="tenants without a store: acme"):
        create_app(store, tokens=TokenVerifier(load_tokens(token_file)))
    with pytest.raises(ConfigError, match="need a token file"):
        create_app(store, tenant_stores={"acme": store})
