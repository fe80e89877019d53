"""The trace search's filters, orders and pages on both stores (ClickHouse server and chDB): what the
UI's search form sends. Blank text is no filter; hostile values get the API's one error shape (422)
or match nothing, never an SQL error."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from hopscope.api.app import create_app
from hopscope.records import Batch, Span, Trace
from hopscope.store import SqlStore
from hopscope.topology.inventory import from_data
from tests.topology.paths import INVENTORY, T0, lab_trace


def _seed(store: SqlStore) -> None:
    """1: client1 -> server1, 1 ms; 2: client2 -> server2, 3 ms, 500, loss into hv-tap; 3: client1 ->
    server2, 2 ms, a traceparent; 4: client1 -> server1 seen only up to the NAT (no proxy hop), 404."""
    built = [
        lab_trace(1, duration_us=1000),
        lab_trace(2, client=2, server=2, duration_us=3000, error=1, lost_on="hv-tap"),
        lab_trace(3, server=2, duration_us=2000),
        lab_trace(4, duration_us=500),
    ]
    t3, s3 = built[2]
    built[2] = dataclasses.replace(t3, traceparent=f"00-{'ab' * 16}-{'cd' * 8}-01"), s3
    t4, s4 = built[3]
    s4 = s4[:3]
    built[3] = dataclasses.replace(t4, status=404, hop_count=3, points=",".join(s.point for s in s4)), s4
    store.insert("traces", Batch.from_records(Trace, [t for t, _ in built]))
    store.insert("spans", Batch.from_records(Span, [s for _, spans in built for s in spans]))


@pytest.fixture
def api(store: SqlStore) -> Iterator[TestClient]:
    _seed(store)
    yield TestClient(create_app(store, inventory=from_data(INVENTORY)), base_url="http://127.0.0.1")


def ids(api: TestClient, **params: object) -> list[int]:
    """The trace numbers the search answers, in its order."""
    r = api.get("/api/v1/traces", params=params)
    assert r.status_code == 200, r.text
    return [int(t["trace_id"], 16) for t in r.json()["traces"]]


def test_filters(api: TestClient) -> None:
    assert ids(api) == [1, 2, 3, 4]
    assert ids(api, status_class="5xx") == [2]
    assert ids(api, status_class="2xx") == [1, 3]
    assert ids(api, status_class="4xx") == [4]
    assert ids(api, min_duration_us=1000, max_duration_us=2000) == [1, 3]
    assert ids(api, max_duration_us=999) == [4]
    assert ids(api, path_contains="r3") == [3]
    assert ids(api, http_host="web", method="GET") == [1, 2, 3, 4]
    assert ids(api, traceparent="ab" * 16) == [3]
    assert ids(api, min_lost_pkts=1) == [2]
    assert ids(api, error=1) == [2]
    assert ids(api, client_h="10.244.1.12") == [2]
    # capture points and links: traces that passed there
    assert ids(api, point="server2-pod") == [2, 3]
    assert ids(api, point="server2") == []  # a whole point name, not a part of one
    assert ids(api, link="nodeB>server1-pod") == [1]
    assert ids(api, link="nodeA-post-nat>hv-tap") == [1, 2, 3]
    assert ids(api, link="client1-pod>hv-tap") == []  # both seen, but not one after the other
    # a hop kind and inventory entities: any hop of the trace
    assert ids(api, hop_kind="proxy") == [1, 2, 3]
    assert ids(api, hop_kind="switch") == [1, 2, 3]
    assert ids(api, entity="pod:default/server2") == [2, 3]
    assert ids(api, entity="service:default/web") == [1, 2, 3, 4]
    assert ids(api, entity=["pod:default/client1", "pod:default/server2"]) == [3]
    assert ids(api, entity="ip:10.244.1.12") == [2]
    assert ids(api, entity="node:nodeA") == [1, 2, 3, 4]  # the SNAT address (post-NAT hops) is node A's


def test_blank_filters_are_no_filter(api: TestClient) -> None:
    blank = {"path_contains": "", "http_host": " ", "traceparent": "", "point": "", "hop_kind": "", "link": "",
             "method": "", "entity": ""}  # fmt: skip
    assert ids(api, **blank) == [1, 2, 3, 4]


def test_orders_and_pages(api: TestClient) -> None:
    assert ids(api, order="time_desc") == [4, 3, 2, 1]
    assert ids(api, order="slowest") == [2, 3, 1, 4]
    assert ids(api, order="slowest", limit=2) == [2, 3]
    assert ids(api, order="slowest", limit=2, offset=2) == [1, 4]
    assert ids(api, order="time_desc", limit=3, offset=3) == [1]
    assert ids(api, offset=4) == []
    # the range bounds the search, the order does not change which traces are in it
    assert ids(api, start_ns=T0 + 2_000_000, end_ns=T0 + 4_000_000, order="time_desc") == [3, 2]


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"status_class": "6xx"}, "status_class"),
        ({"order": "random()"}, "order"),
        ({"offset": -1}, "offset"),
        ({"max_duration_us": "1; DROP TABLE traces"}, "max_duration_us"),
        ({"link": "nodeB"}, "link"),
        ({"link": "a,b>c"}, "link"),
        ({"entity": "pod:default/nobody"}, "not in the server's inventory"),
        ({"entity": "ip:not-an-address"}, "not an IP address"),
        ({"entity": [f"ip:10.0.0.{i}" for i in range(17)]}, "at most 16"),
        ({"hop_kind": "x" * 65}, "hop_kind"),
    ],
)
def test_hostile_values_are_one_clear_error(api: TestClient, params: dict[str, object], says: str) -> None:
    r = api.get("/api/v1/traces", params=params)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and says in r.text, error


def test_hostile_text_matches_nothing(api: TestClient) -> None:
    for text in ["' OR 1=1 --", "%", "_", "\\", "') OR ('1'='1", "\x00"]:
        for name in ("path_contains", "traceparent", "point", "hop_kind", "http_host"):
            assert ids(api, **{name: text}) == [], (name, text)
    assert ids(api) == [1, 2, 3, 4]  # and the store is as it was
