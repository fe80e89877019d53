"""Load limits: heavy queries beyond the bound get 429 with Retry-After while trace lookups are still
answered; a query past the store's time limit is 504."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from hopscope.api.app import create_app
from hopscope.api.config import ApiSettings
from hopscope.errors import ConfigError
from hopscope.store import QueryTimeoutError, SqlStore

HEAVY_ROUTES = ["/api/v1/traces", "/api/v1/flows", "/api/v1/requests", "/api/v1/topology/services",
                "/api/v1/topology/points"]  # fmt: skip
LOOKUPS = ["/api/v1/traces/" + "e" * 32, "/api/v1/topology/traces/" + "e" * 32]


def test_heavy_queries_beyond_the_bound_are_429(store: SqlStore) -> None:
    app = create_app(store, ApiSettings(max_heavy_queries=2, retry_after_s=3))
    client = TestClient(app, base_url="http://127.0.0.1")
    gate = app.state.heavy_gate
    assert gate.try_enter() and gate.try_enter()  # two heavy queries running
    try:
        for path in HEAVY_ROUTES:
            r = client.get(path)
            assert r.status_code == 429, (path, r.text)
            assert r.headers["retry-after"] == "3"
            assert r.json()["error"]["code"] == "busy"
        for path in LOOKUPS:
            assert client.get(path).status_code == 404, path  # answered, not refused
    finally:
        gate.leave()
    for path in HEAVY_ROUTES:
        assert client.get(path).status_code == 200, path  # the slot each took came back
    assert gate.try_enter() and not gate.try_enter()  # one still held above, one free: nothing leaked
    gate.leave()
    gate.leave()


def test_store_timeout_is_504(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def too_slow(*_: object, **__: object) -> None:
        raise QueryTimeoutError("ClickHouse server at 127.0.0.1:9000: Code: 159. Timeout exceeded")

    monkeypatch.setattr(store, "query_traces", too_slow)
    client = TestClient(create_app(store), base_url="http://127.0.0.1")
    r = client.get("/api/v1/traces")
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "store_timeout"


@pytest.mark.parametrize("settings", [{"max_heavy_queries": 0}, {"retry_after_s": 0}])
def test_bad_load_settings(settings: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        ApiSettings(**settings)  # type: ignore[arg-type]
