"""64-bit ids and nanosecond times go out as decimal strings, exact where a JavaScript number is not."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hopscope.api.models import record_from_json, sent_as_string, string_fields
from hopscope.records import Batch, Column, ColumnType, FlowRecord, RequestRecord, Span, Trace
from hopscope.store import SqlStore

#: Neither is a double: 2**53 < T0 and T0 + 1 rounds to T0 in a browser.
T0 = 1_700_000_000_000_000_001
BIG = 2**64 - 1
TID = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("name", "ctype", "as_string"),
    [
        ("start_ns", ColumnType.U64, True),
        ("flow_id", ColumnType.U64, True),
        ("req_payload_hash", ColumnType.U64, True),
        ("version", ColumnType.U64, True),
        ("orig_bytes", ColumnType.U64, False),
        ("duration_us", ColumnType.I64, False),
        ("syn_seq", ColumnType.U32, False),
        ("dns_id", ColumnType.U16, False),
        ("trace_id", ColumnType.STR, False),
    ],
)
def test_the_rule(name: str, ctype: ColumnType, as_string: bool) -> None:
    assert sent_as_string(Column(name, ctype, "")) is as_string


def test_every_wide_id_and_time_is_a_string() -> None:
    assert string_fields(Trace) == {"start_ns", "end_ns", "version"}
    assert {"flow_id", "request_id", "request_first_ns", "response_last_ns", "version"} <= string_fields(Span)
    assert {"request_id", "flow_id", "req_first_ns", "req_payload_hash"} <= string_fields(RequestRecord)


def _as_javascript(text: str) -> Any:
    """What a browser's JSON.parse makes of a body: every number a double."""
    return json.loads(text, parse_int=float)


def test_trace_and_spans_are_exact(client: TestClient, store: SqlStore) -> None:
    store.insert("traces", Batch.from_records(Trace, [Trace(trace_id=TID, start_ns=T0, end_ns=T0 + 2, version=BIG)]))
    span = Span(trace_id=TID, span_id="a" * 16, request_first_ns=T0, response_last_ns=T0 + 1, flow_id=BIG,
                request_id=BIG - 1, version=1)  # fmt: skip
    store.insert("spans", Batch.from_records(Span, [span]))
    body = _as_javascript(client.get(f"/api/v1/traces/{TID}").text)
    assert body["trace"]["start_ns"] == str(T0) and body["trace"]["end_ns"] == str(T0 + 2)
    assert body["trace"]["version"] == str(BIG)
    got = body["spans"][0]
    assert (got["flow_id"], got["request_id"]) == (str(BIG), str(BIG - 1))
    assert got["request_first_ns"] == str(T0) and got["response_last_ns"] == str(T0 + 1)
    assert record_from_json(Span, json.loads(client.get(f"/api/v1/traces/{TID}").text)["spans"][0]) == span
    listed = _as_javascript(client.get("/api/v1/traces").text)["traces"][0]
    assert listed["start_ns"] == str(T0) and listed["duration_us"] == 0.0  # a number: µs stay numbers


def test_flows_and_requests_are_exact(client: TestClient, store: SqlStore) -> None:
    flow = FlowRecord(point="p", flow_id=BIG, start_ns=T0, end_ns=T0 + 1, orig_payload_hash=BIG - 2, orig_bytes=7)
    store.insert("flows", Batch.from_records(FlowRecord, [flow]))
    request = RequestRecord(point="p", request_id=BIG, flow_id=BIG - 1, req_first_ns=T0, req_payload_hash=3)
    store.insert("requests", Batch.from_records(RequestRecord, [request]))
    f = client.get("/api/v1/flows").json()["flows"][0]
    got = (f["flow_id"], f["start_ns"], f["orig_payload_hash"], f["orig_bytes"])
    assert got == (str(BIG), str(T0), str(BIG - 2), 7)
    r = client.get("/api/v1/requests").json()["requests"][0]
    got = (r["request_id"], r["flow_id"], r["req_first_ns"], r["req_payload_hash"])
    assert got == (str(BIG), str(BIG - 1), str(T0), "3")
    assert record_from_json(FlowRecord, f) == flow and record_from_json(RequestRecord, r) == request


def test_trace_path_graph_is_exact(client: TestClient, store: SqlStore) -> None:
    store.insert("traces", Batch.from_records(Trace, [Trace(trace_id=TID, start_ns=T0, version=1)]))
    spans = [Span(trace_id=TID, span_id=c * 16, hop_index=i, point=f"p{i}", request_first_ns=T0 + i, version=1)
             for i, c in enumerate("ab")]  # fmt: skip
    store.insert("spans", Batch.from_records(Span, spans))
    graph = _as_javascript(client.get(f"/api/v1/topology/traces/{TID}").text)
    assert [n["request_first_ns"] for n in graph["nodes"]] == [str(T0), str(T0 + 1)]


def test_schema_says_string(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    trace = schemas["TraceOut"]["properties"]["trace"]["properties"]
    assert trace["start_ns"]["type"] == "string" and trace["start_ns"]["pattern"] == "^-?[0-9]+$"
    assert "decimal string" in trace["start_ns"]["description"]
    assert trace["duration_us"]["type"] == "integer"
    flow = schemas["FlowsOut"]["properties"]["flows"]["items"]["properties"]
    assert flow["flow_id"]["type"] == "string" and flow["orig_bytes"]["type"] == "integer"
