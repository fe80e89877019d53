"""GET /api/v1/flows: time ranges, filters, and hostile parameters."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from hopscope.api.models import record_from_json
from hopscope.records import Batch, FlowRecord
from hopscope.store import SqlStore

T0 = 1_700_000_000_000_000_000


def _seed(store: SqlStore) -> list[FlowRecord]:
    flows = [
        FlowRecord(point="client1-pod", flow_id=1, start_ns=T0, end_ns=T0 + 5, proto=6, orig_h="10.244.1.2",
                   resp_h="10.96.0.10", orig_p=40000, resp_p=80, syn_seq=111, conn_state="SF", final=1),
        FlowRecord(point="nodeA-post-nat", flow_id=2, start_ns=T0 + 10, end_ns=T0 + 20, proto=6, orig_h="10.0.0.1",
                   resp_h="10.244.2.3", orig_p=50000, resp_p=80, syn_seq=111, conn_state="SF", final=1),
        FlowRecord(point="client1-pod", flow_id=3, start_ns=T0 + 1000, end_ns=T0 + 2000, proto=17,
                   orig_h="10.244.1.2", resp_h="10.244.0.53", orig_p=5353, resp_p=53, conn_state="SF", final=1),
    ]  # fmt: skip
    store.insert("flows", Batch.from_records(FlowRecord, flows))
    return flows


def test_time_range_and_round_trip(client: TestClient, store: SqlStore) -> None:
    flows = _seed(store)
    r = client.get("/api/v1/flows", params={"start_ns": T0, "end_ns": T0 + 100})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 2
    assert [record_from_json(FlowRecord, f) for f in body["flows"]] == flows[:2]


@pytest.mark.parametrize(
    ("params", "flow_ids"),
    [
        ({"point": "client1-pod"}, [1, 3]),
        ({"proto": 17}, [3]),
        ({"syn_seq": 111}, [1, 2]),
        ({"resp_p": 80, "point": "nodeA-post-nat"}, [2]),
        ({"orig_h": "10.244.1.2", "limit": 1}, [1]),
        ({"point": "nobody"}, []),
    ],
)
def test_filters(client: TestClient, store: SqlStore, params: dict[str, object], flow_ids: list[int]) -> None:
    _seed(store)
    r = client.get("/api/v1/flows", params={"start_ns": T0, "end_ns": T0 + 10**6, **params})
    assert r.status_code == 200, r.text
    assert [int(f["flow_id"]) for f in r.json()["flows"]] == flow_ids


@pytest.mark.parametrize(
    "params",
    [
        {"start_ns": "yesterday"},
        {"start_ns": -1},
        {"start_ns": 10, "end_ns": 5},
        {"end_ns": 2**64},
        {"limit": 0},
        {"limit": 10**9},
        {"orig_p": 70000},
        {"proto": "tcp"},
        {"point": "x" * 300},
    ],
)
def test_hostile_parameters_are_422(client: TestClient, params: dict[str, object]) -> None:
    r = client.get("/api/v1/flows", params=params)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize(
    "value",
    ["client1-pod' OR '1'='1", "x'); DROP TABLE flows; --", "\\'", "{point:String}", "%(point)s", "\x00"],
)
def test_injection_stays_a_value(client: TestClient, store: SqlStore, value: str) -> None:
    _seed(store)
    r = client.get("/api/v1/flows", params={"point": value})
    assert r.status_code == 200, r.text
    assert r.json()["count"] == 0
    assert store.count("flows") == 3  # nothing dropped, nothing matched


def test_default_range_is_everything(client: TestClient, store: SqlStore) -> None:
    _seed(store)
    assert client.get("/api/v1/flows").json()["count"] == 3
