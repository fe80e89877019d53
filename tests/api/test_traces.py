"""Trace search and lookup, the UI page, and health."""

from __future__ import annotations

from fastapi.testclient import TestClient

from hopscope.records import Batch, Span, Trace
from hopscope.store import SqlStore

T0 = 1_700_000_000_000_000_000
TID = "0123456789abcdef0123456789abcdef"


def _seed(store: SqlStore) -> None:
    traces = [
        Trace(trace_id=TID, kind="l7", start_ns=T0, end_ns=T0 + 9_000_000, duration_us=9000, method="GET",
              path="/slow", status=200, x_request_id="rid-1", client_h="10.244.1.2", hop_count=2, version=1),
        Trace(trace_id="f" * 32, kind="l7", start_ns=T0 + 1, end_ns=T0 + 1_000_000, duration_us=1000,
              method="GET", path="/fail", status=503, error=1, client_h="10.244.1.3", hop_count=1, version=1),
    ]  # fmt: skip
    spans = [
        Span(trace_id=TID, span_id="b" * 16, hop_index=1, point="nodeA-post-nat", request_first_ns=T0 + 50,
             req_link_us=5000, link_reason="nat:syn_seq", link_confidence=1.0, version=1),
        Span(trace_id=TID, span_id="a" * 16, hop_index=0, point="client1-pod", request_first_ns=T0,
             link_reason="origin", link_confidence=1.0, version=1),
    ]  # fmt: skip
    store.insert("traces", Batch.from_records(Trace, traces))
    store.insert("spans", Batch.from_records(Span, spans))


def test_lookup_one_trace_with_spans_in_hop_order(client: TestClient, store: SqlStore) -> None:
    _seed(store)
    r = client.get(f"/api/v1/traces/{TID}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["trace"]["path"] == "/slow"
    assert [s["point"] for s in body["spans"]] == ["client1-pod", "nodeA-post-nat"]
    assert body["spans"][1]["link_reason"] == "nat:syn_seq"


def test_unknown_and_malformed_trace_ids(client: TestClient, store: SqlStore) -> None:
    _seed(store)
    assert client.get(f"/api/v1/traces/{'e' * 32}").status_code == 404
    for bad in ["xyz", "A" * 32, "0" * 33, "' OR 1=1 --"]:
        assert client.get(f"/api/v1/traces/{bad}").status_code in (404, 422), bad


def test_search(client: TestClient, store: SqlStore) -> None:
    _seed(store)

    def paths(**params: object) -> list[str]:
        r = client.get("/api/v1/traces", params=params)
        assert r.status_code == 200, r.text
        return [t["path"] for t in r.json()["traces"]]

    assert paths() == ["/slow", "/fail"]
    assert paths(error=1) == ["/fail"]
    assert paths(q="rid-1") == ["/slow"]
    assert paths(q="/fail") == ["/fail"]
    assert paths(q="10.244.1.3") == ["/fail"]
    assert paths(q=TID) == ["/slow"]
    assert paths(order="slowest") == ["/slow", "/fail"]
    assert paths(min_duration_us=5000) == ["/slow"]
    assert client.get("/api/v1/traces", params={"order": "random"}).status_code == 422


def test_ui_and_health(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "trace lookup" in page.text
    assert client.get("/static/app.js").status_code == 200
    health = client.get("/healthz").json()
    assert health["status"] == "ok"
