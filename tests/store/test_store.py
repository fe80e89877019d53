"""Both stores, for real: the ClickHouse server (18.16, started by deploy/clickhouse/start.sh) and
chDB in a temporary directory. Every test taking ``store``/``ready_store`` runs on both."""

from __future__ import annotations

import socket

import pytest

from hopscope.errors import ConfigError, UnavailableError
from hopscope.records import RECORD_TYPES, Batch, FlowRecord, PacketIndex, Record, RequestRecord, Span, Trace
from hopscope.store import SqlStore, Store, store_from_url
from hopscope.store.base import QueryError
from hopscope.store.schema import EVENT_TIME, TABLES, table_spec
from hopscope.store.server import ServerStore
from tests.store.records_factory import BASE_NS, make_record

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def _insert(store: SqlStore, records: list[Record]) -> None:
    record_type = type(records[0])
    assert store.insert(record_type.TABLE, Batch.from_records(record_type, records)) == len(records)


def _read_all(store: SqlStore, record_type: type[Record]) -> list[Record]:
    reader = {
        FlowRecord: store.query_flows,
        RequestRecord: store.query_requests,
        Span: store.query_spans,
        Trace: store.query_traces,
        PacketIndex: store.query_packet_index,
    }[record_type]
    return list(reader(BASE_NS, BASE_NS + 1000, None, 100))


def test_both_backends_are_stores(store: SqlStore) -> None:
    assert isinstance(store, Store)


def test_schema_is_created_idempotently(store: SqlStore) -> None:
    store.ensure_schema()
    store.ensure_schema()
    for name, spec in TABLES.items():
        assert store._existing_columns(name) == {c.name for c in spec.columns()} | {EVENT_TIME}
        assert store.count(name) == 0


def test_schema_gains_a_field_the_table_lacks(ready_store: SqlStore) -> None:
    ready_store._command(f"ALTER TABLE `{ready_store.database}`.`flows` DROP COLUMN `tunnel`")
    assert "tunnel" not in ready_store._existing_columns("flows")
    ready_store.ensure_schema()
    assert "tunnel" in ready_store._existing_columns("flows")


def test_degradations_match_the_server(store: SqlStore) -> None:
    if store.features.version.startswith("18."):
        assert any(line.startswith("ttl:") for line in store.degradations())
        assert any(line.startswith("low_cardinality:") for line in store.degradations())
    else:
        assert store.degradations() == []


@pytest.mark.parametrize("record_type", RECORD_TYPES, ids=lambda t: t.TABLE)
def test_round_trip_of_every_field(ready_store: SqlStore, record_type: type[Record]) -> None:
    records = [make_record(record_type, 0), make_record(record_type, 1)]
    _insert(ready_store, records)
    assert _read_all(ready_store, record_type) == records


def test_span_replay_is_idempotent(ready_store: SqlStore) -> None:
    span = make_record(Span, 0, trace_id=TRACE_ID, version=5)
    _insert(ready_store, [span])
    _insert(ready_store, [span])  # at-least-once delivery: the same span again
    assert ready_store.count("spans") == 1
    trace, spans = ready_store.get_trace(TRACE_ID)
    assert trace is None
    assert spans == [span]


def test_newer_span_version_wins(ready_store: SqlStore) -> None:
    old = make_record(Span, 0, trace_id=TRACE_ID, version=5, link_reason="timing:nested")
    new = make_record(Span, 0, trace_id=TRACE_ID, version=6, link_reason="nat:syn_seq")
    _insert(ready_store, [new])
    _insert(ready_store, [old])  # a late replay of an older stitch must not win
    assert ready_store.get_trace(TRACE_ID)[1] == [new]


def test_trace_with_spans_in_hop_order(ready_store: SqlStore) -> None:
    trace = make_record(Trace, 0, trace_id=TRACE_ID, version=1)
    spans = [make_record(Span, 0, trace_id=TRACE_ID, span_id=f"{i:016x}", hop_index=i) for i in (2, 0, 1)]
    _insert(ready_store, [trace])
    _insert(ready_store, [trace])
    _insert(ready_store, spans)
    got_trace, got_spans = ready_store.get_trace(TRACE_ID)
    assert got_trace == trace
    assert [s.hop_index for s in got_spans] == [0, 1, 2]
    assert ready_store.count("traces") == 1
    assert ready_store.get_trace("f" * 32) == (None, [])


def test_flow_reports_collapse_to_the_newest(ready_store: SqlStore) -> None:
    interim = make_record(FlowRecord, 0, end_ns=BASE_NS + 10, final=0, orig_pkts=3)
    final = make_record(FlowRecord, 0, end_ns=BASE_NS + 20, final=1, orig_pkts=9)
    _insert(ready_store, [interim])
    _insert(ready_store, [final])
    _insert(ready_store, [interim])  # replayed interim report
    assert _read_all(ready_store, FlowRecord) == [final]


def test_request_replay_is_idempotent(ready_store: SqlStore) -> None:
    request = make_record(RequestRecord, 0)
    _insert(ready_store, [request, request])
    _insert(ready_store, [request])
    assert _read_all(ready_store, RequestRecord) == [request]


def test_time_range_is_half_open_and_limited(ready_store: SqlStore) -> None:
    flows = [make_record(FlowRecord, i, flow_id=i, point="p") for i in range(5)]
    _insert(ready_store, flows)
    got = ready_store.query_flows(BASE_NS + 1, BASE_NS + 3)
    assert [f.flow_id for f in got] == [1, 2]
    assert [f.flow_id for f in ready_store.query_flows(BASE_NS, BASE_NS + 5, limit=2)] == [0, 1]
    assert ready_store.query_flows(BASE_NS + 5, BASE_NS + 10) == []
    # Open ranges: up to the largest UInt64 ns and just past DateTime's last second (2106).
    assert len(ready_store.query_flows(0, 2**64 - 1)) == 5
    assert len(ready_store.query_flows(0, 2**63 - 1)) == 5
    assert len(ready_store.query_flows(0, 4_294_967_296 * 10**9)) == 5


def test_filters_and_operators(ready_store: SqlStore) -> None:
    flows = [make_record(FlowRecord, i, flow_id=i, proto=(6, 17, 1)[i % 3], point=f"p{i % 2}") for i in range(6)]
    _insert(ready_store, flows)

    def ids(**filters: object) -> list[int]:
        return [f.flow_id for f in ready_store.query_flows(BASE_NS, BASE_NS + 10, filters)]  # type: ignore[arg-type]

    assert ids(proto=6) == [0, 3]
    assert ids(proto=[6, 17]) == [0, 1, 3, 4]
    assert ids(proto__ne=[6, 17]) == [2, 5]
    assert ids(proto__gte=6, point="p1") == [1, 3]
    assert ids(flow_id__lt=2) == [0, 1]
    assert ids(point__ne="p0", proto__lte=6) == [3, 5]


NASTY = [
    "x' OR 1=1 --",
    "x\\' OR 1=1 --",
    "'; DROP TABLE flows; --",
    "{p0:String}",
    "%(p0)s",
    "100% %s",
    "line\nbreak\ttab\0nul",
    "`; DROP DATABASE default; --",
    "ü日本 \"quoted\"",
]


@pytest.mark.parametrize("value", NASTY)
def test_injection_in_a_filter_value_stays_a_value(ready_store: SqlStore, value: str) -> None:
    flows = [make_record(FlowRecord, 0, point=value, flow_id=1), make_record(FlowRecord, 1, point="clean", flow_id=2)]
    _insert(ready_store, flows)
    assert [f.flow_id for f in ready_store.query_flows(BASE_NS, BASE_NS + 10, {"point": value})] == [1]
    assert [f.flow_id for f in ready_store.query_flows(BASE_NS, BASE_NS + 10, {"point": [value, "none"]})] == [1]
    assert ready_store.query_flows(BASE_NS, BASE_NS + 10, {"point": value + "'"}) == []
    assert ready_store.count("flows") == 2  # nothing was dropped or widened


def test_bad_identifiers_never_reach_the_server(ready_store: SqlStore) -> None:
    batch = Batch.from_records(FlowRecord, [make_record(FlowRecord, 0)])
    with pytest.raises(ConfigError):
        ready_store.insert("flows; DROP TABLE spans", batch)
    with pytest.raises(ConfigError):
        ready_store.query_flows(BASE_NS, BASE_NS + 1, {"point) OR (1": "x"})
    with pytest.raises(QueryError):
        ready_store.insert("spans", batch)  # a batch of flows into spans
    assert ready_store.insert("flows", Batch.from_records(FlowRecord, [])) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_server_down_is_unavailable_error() -> None:
    port = _free_port()
    store = ServerStore("127.0.0.1", port, "hopscope_down", connect_timeout_s=1)
    with pytest.raises(UnavailableError, match=f"127.0.0.1:{port}") as info:
        store.ensure_schema()
    assert "\n" not in str(info.value)
    with pytest.raises(UnavailableError, match=f"127.0.0.1:{port}"):
        store_from_url(f"clickhouse://127.0.0.1:{port}/x").query_flows(0, 1)
    store.close()


def test_bulk_insert_counts(ready_store: SqlStore) -> None:
    """A 20,000-row batch lands whole (the insert path the benchmark measures)."""
    n = 20_000
    batch = Batch.from_records(FlowRecord, [make_record(FlowRecord, i % 500, flow_id=i) for i in range(n)])
    assert ready_store.insert("flows", batch) == n
    assert ready_store.count("flows") == n
    assert len(ready_store.query_flows(BASE_NS, BASE_NS + 500, {"flow_id__lt": 100}, limit=1000)) == 100


def test_every_table_spec_time_column_is_ns() -> None:
    for spec in TABLES.values():
        assert spec.time_column.endswith("_ns") and table_spec(spec.name) is spec


def test_threads_share_one_store(ready_store: SqlStore) -> None:
    """The API serves requests from a thread pool with one store: every thread gets its own rows."""
    from concurrent.futures import ThreadPoolExecutor

    flows = [make_record(FlowRecord, i, flow_id=i, point=f"p{i % 4}") for i in range(40)]
    _insert(ready_store, flows)

    def read(point: str) -> list[int]:
        return [f.flow_id for f in ready_store.query_flows(BASE_NS, BASE_NS + 100, {"point": point})]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(read, [f"p{i % 4}" for i in range(32)]))
    for i, got in enumerate(results):
        assert got == list(range(i % 4, 40, 4))


def test_server_that_hangs_up_is_unavailable_error() -> None:
    """Something listens on the port but closes every connection (a server going down mid-start)."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)  # so the thread sees ``stop`` soon after the test ends
    port = listener.getsockname()[1]
    stop = threading.Event()

    def hang_up() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    store = ServerStore("127.0.0.1", port, "hopscope_hangup", connect_timeout_s=2, timeout_s=5)
    try:
        with pytest.raises(UnavailableError, match=f"127.0.0.1:{port}"):
            store.ensure_schema()
        with pytest.raises(UnavailableError, match=f"127.0.0.1:{port}"):
            store.count("flows")  # and again: the store is not left in a broken state
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
        store.close()
