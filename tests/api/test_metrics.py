"""``GET /metrics`` of ``hopscope serve``: requests counted and timed by route template and status, the
scope ``metrics:read`` with a token file, the Host guard in front; scraped and parsed as Prometheus does."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from hopscope.api.app import create_app
from hopscope.api.tokens import TokenVerifier, add_token, load_tokens
from hopscope.records import Batch, Span, Trace
from hopscope.store import SqlStore, store_from_url
from tests.topology.paths import lab_trace


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value of every sample of a scrape."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def api(route: str, status: int, name: str = "hopscope_api_requests_total") -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, (("method", "GET"), ("route", route), ("status", str(status)))


def test_requests_are_counted_by_route_template_and_status(client: TestClient, store: SqlStore) -> None:
    trace, spans = lab_trace(1)
    store.insert("traces", Batch.from_records(Trace, [trace]))
    store.insert("spans", Batch.from_records(Span, spans))
    for _ in range(3):
        assert client.get("/api/v1/traces").status_code == 200
    assert client.get(f"/api/v1/traces/{trace.trace_id}").status_code == 200
    for missing in ("0" * 32, "f" * 32):
        assert client.get(f"/api/v1/traces/{missing}").status_code == 404
    assert client.get("/api/v1/traces/not-an-id").status_code == 422
    assert client.get("/no/such/page").status_code == 404
    scraped = client.get("/metrics")
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    got = samples(scraped.text)
    assert got[api("/api/v1/traces", 200)] == 3
    assert got[api("/api/v1/traces/{trace_id}", 200)] == 1
    assert got[api("/api/v1/traces/{trace_id}", 404)] == 2  # the template, not the two paths
    assert got[api("/api/v1/traces/{trace_id}", 422)] == 1
    assert got[api("unmatched", 404)] == 1
    assert got[api("/api/v1/traces", 200, "hopscope_api_request_duration_seconds_count")] == 3
    assert not any(n == "hopscope_api_requests_total" and ("route", "/metrics") in labels for n, labels in got)
    again = samples(client.get("/metrics").text)  # the first scrape is counted once it was answered
    assert again[api("/metrics", 200)] == 1
    assert again[("hopscope_api_requests_in_progress", ())] == 1  # this scrape


@pytest.fixture
def chdb(tmp_path: Path) -> SqlStore:
    store = store_from_url(f"chdb://{tmp_path / 'chdb'}")
    store.ensure_schema()
    return store  # type: ignore[return-value]


def test_with_a_token_file_metrics_need_the_metrics_scope(chdb: SqlStore, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens.json"
    tokens = {scope: add_token(token_file, scope.replace(":", "-"), [scope])
              for scope in ("traces:read", "metrics:read", "admin")}  # fmt: skip
    client = TestClient(create_app(chdb, tokens=TokenVerifier(load_tokens(token_file))), base_url="http://127.0.0.1")
    try:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer " + tokens["traces:read"]}).status_code == 403
        for scope in ("metrics:read", "admin"):
            answer = client.get("/metrics", headers={"Authorization": "Bearer " + tokens[scope]})
            assert answer.status_code == 200, scope
        assert samples(answer.text)[api("/metrics", 401)] == 1
        reader = {"Authorization": "Bearer " + tokens["metrics:read"]}
        assert client.get("/api/v1/traces", headers=reader).status_code == 403  # metrics:read reads nothing else
        assert client.get("/metrics", headers={**reader, "Host": "evil.example"}).status_code == 400  # the Host guard
    finally:
        chdb.close()


def test_hopscope_serve_answers_metrics_over_http(tmp_path: Path) -> None:
    """The real server (uvicorn) on loopback, scraped as Prometheus does."""
    import subprocess
    import sys

    import httpx

    from tests.api.test_serve import ROOT, _free_port

    url = f"chdb://{tmp_path / 'chdb'}"
    store = store_from_url(url)
    store.ensure_schema()
    store.close()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hopscope", "serve", "--store", url, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("hopscope: serving")
        base = f"http://127.0.0.1:{port}"
        for _ in range(2):
            assert httpx.get(f"{base}/api/v1/flows", timeout=30).status_code == 200
        assert httpx.head(f"{base}/healthz", timeout=30).status_code == 200
        scraped = httpx.get(f"{base}/metrics", timeout=30)
        assert scraped.status_code == 200
        got = samples(scraped.text)
        assert got[api("/api/v1/flows", 200)] == 2
        assert got[("hopscope_api_requests_total", (("method", "GET"), ("route", "/healthz"), ("status", "200")))] == 1
        assert httpx.get(f"{base}/metrics", headers={"Host": "evil.example"}, timeout=30).status_code == 400
    finally:
        proc.terminate()
        proc.wait(timeout=30)
