"""Every error in one shape, ``{"error": {"code", "message"}}``, and an OpenAPI schema that says so:
bounds as Query constraints, error responses per route, blank filters as no filter."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hopscope.api.app import create_app
from hopscope.api.config import ApiSettings
from hopscope.records import Batch, Trace
from hopscope.store import SqlStore
from hopscope.store.server import ServerStore

T0 = 1_700_000_000_000_000_000


def _error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"], body
    return dict(body["error"])


@pytest.mark.parametrize(
    ("method", "path", "params", "status", "code"),
    [
        ("GET", "/api/v1/traces/" + "e" * 32, {}, 404, "not_found"),
        ("GET", "/api/v1/topology/traces/" + "e" * 32, {}, 404, "not_found"),
        ("GET", "/api/v1/nothing", {}, 404, "not_found"),
        ("GET", "/static/nothing.js", {}, 404, "not_found"),
        ("POST", "/api/v1/traces", {}, 405, "method_not_allowed"),
        ("DELETE", "/api/v1/traces/" + "e" * 32, {}, 405, "method_not_allowed"),
        ("GET", "/api/v1/traces", {"limit": 0}, 422, "invalid_request"),
        ("GET", "/api/v1/traces", {"limit": 10_001}, 422, "invalid_request"),
        ("GET", "/api/v1/flows", {"start_ns": -1}, 422, "invalid_request"),
        ("GET", "/api/v1/requests", {"start_ns": 10, "end_ns": 10}, 422, "invalid_request"),
        ("GET", "/api/v1/topology/points", {"start_ns": 10, "end_ns": 5}, 422, "invalid_request"),
        ("GET", "/api/v1/traces/NOT-AN-ID", {}, 422, "invalid_request"),
        ("GET", "/api/v1/traces", {"order": "random"}, 422, "invalid_request"),
    ],
)
def test_one_error_shape(
    client: TestClient, method: str, path: str, params: dict[str, object], status: int, code: str
) -> None:
    _error(client.request(method, path, params=params), status, code)


def test_validation_errors_say_where(client: TestClient) -> None:
    error = _error(client.get("/api/v1/flows", params={"limit": "many", "orig_p": 70000}), 422, "invalid_request")
    assert {tuple(d["loc"]) for d in error["details"] or []} == {("query", "limit"), ("query", "orig_p")}
    assert "query.limit" in error["message"]
    error = _error(client.get("/api/v1/traces", params={"start_ns": 10, "end_ns": 5}), 422, "invalid_request")
    assert error["message"] == "end_ns (5) must be after start_ns (10)"


def test_limit_above_the_configured_maximum(store: SqlStore) -> None:
    client = TestClient(create_app(store, ApiSettings(max_limit=50)), base_url="http://127.0.0.1")
    assert client.get("/api/v1/traces", params={"limit": 50}).status_code == 200
    error = _error(client.get("/api/v1/traces", params={"limit": 51}), 422, "invalid_request")
    assert error["message"] == "limit 51 is above the maximum 50"
    limit = _parameter(client.get("/openapi.json").json(), "/api/v1/traces", "limit")
    assert limit["schema"]["maximum"] == 50 and limit["schema"]["minimum"] == 1


def test_store_down_is_503() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = TestClient(create_app(ServerStore("127.0.0.1", port, "x")), base_url="http://127.0.0.1")
    error = _error(client.get("/api/v1/traces"), 503, "store_unavailable")
    assert f"127.0.0.1:{port} is unreachable" in error["message"]


def _parameter(schema: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    params = schema["paths"][path]["get"]["parameters"]
    return next(dict(p) for p in params if p["name"] == name)


def test_schema_states_bounds_and_errors(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    error_ref = {"$ref": "#/components/schemas/ErrorOut"}
    for path, item in schema["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        responses = item["get"]["responses"]
        for status in ("400", "422", "429", "502", "503", "504"):
            assert responses[status]["content"]["application/json"]["schema"] == error_ref, (path, status)
        assert ("404" in responses) == ("{trace_id}" in path), path  # a trace, or its packets
    start = _parameter(schema, "/api/v1/flows", "start_ns")["schema"]
    end = _parameter(schema, "/api/v1/flows", "end_ns")
    assert start["minimum"] == 0 and end["schema"]["maximum"] == 2**63 - 1
    assert "greater than start_ns" in end["description"]
    assert _parameter(schema, "/api/v1/flows", "orig_p")["schema"]["anyOf"][0]["maximum"] == 65535


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/traces", {"q": " "}),
        ("/api/v1/traces", {"q": ""}),
        ("/api/v1/traces", {"path": ""}),
        ("/api/v1/traces", {"method": "  ", "x_request_id": ""}),
        ("/api/v1/requests", {"path": "", "point": " "}),
        ("/api/v1/flows", {"point": "", "conn_state": " "}),
    ],
)
def test_blank_filters_mean_no_filter(client: TestClient, store: SqlStore, path: str, params: dict[str, str]) -> None:
    store.insert("traces", Batch.from_records(Trace, [Trace(trace_id="a" * 32, start_ns=T0, path="/x", version=1)]))
    unfiltered = client.get(path).json()
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    assert r.json() == unfiltered
    if path == "/api/v1/traces":
        assert r.json()["count"] == 1
