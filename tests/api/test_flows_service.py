"""GET /api/v1/flows returns FlowRecord.service and filters on it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from hopscope.api.models import record_from_json
from hopscope.records import Batch, FlowRecord
from hopscope.store import SqlStore

T0 = 1_700_000_000_000_000_000


def _seed(store: SqlStore) -> list[FlowRecord]:
    flows = [
        FlowRecord(point="edge", flow_id=1, start_ns=T0, proto=6, resp_p=8081, service="http", final=1),
        FlowRecord(point="edge", flow_id=2, start_ns=T0 + 1, proto=6, resp_p=2222, service="ssh", final=1),
        FlowRecord(point="edge", flow_id=3, start_ns=T0 + 2, proto=6, resp_p=3128, service="http,ssl", final=1),
        FlowRecord(point="edge", flow_id=4, start_ns=T0 + 3, proto=6, resp_p=80, final=1),
    ]
    store.insert("flows", Batch.from_records(FlowRecord, flows))
    return flows


def test_flows_carry_service(client: TestClient, store: SqlStore) -> None:
    flows = _seed(store)
    r = client.get("/api/v1/flows", params={"start_ns": T0, "end_ns": T0 + 10})
    assert r.status_code == 200, r.text
    assert [f["service"] for f in r.json()["flows"]] == ["http", "ssh", "http,ssl", ""]
    assert [record_from_json(FlowRecord, f) for f in r.json()["flows"]] == flows


@pytest.mark.parametrize(
    ("service", "flow_ids"), [("http", [1]), ("http,ssl", [3]), ("", [1, 2, 3, 4]), (" ", [1, 2, 3, 4]), ("dns", [])]
)  # a blank filter is no filter
def test_filter_on_service(client: TestClient, store: SqlStore, service: str, flow_ids: list[int]) -> None:
    _seed(store)
    r = client.get("/api/v1/flows", params={"start_ns": T0, "end_ns": T0 + 10, "service": service})
    assert r.status_code == 200, r.text
    assert [int(f["flow_id"]) for f in r.json()["flows"]] == flow_ids
