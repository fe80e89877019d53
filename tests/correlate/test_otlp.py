"""correlate/otlp.py: traces as OTLP protobuf (parent chain, attributes, traceparent join) and the exporter
against a real HTTP server on loopback (accepts, refuses, is down)."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2

from hopscope.correlate.otlp import OtlpExporter, parse_traceparent, trace_requests, traces_url
from hopscope.errors import ConfigError
from hopscope.records import Batch, Span, Trace
from hopscope.topology.inventory import from_simple

TRACE_ID = "0123456789abcdef0123456789abcdef"
APP_TRACE, APP_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
SPAN_IDS = ("1111111111111111", "2222222222222222", "3333333333333333")


def _spans(trace_id: str = TRACE_ID) -> list[Span]:
    hops = (("client-pod", "client", "pod", "client"), ("node-nat", "nodeA", "nat", "client"),
            ("server-pod", "server", "pod", "server"))
    return [Span(trace_id=trace_id, span_id=SPAN_IDS[i], parent_span_id=SPAN_IDS[i - 1] if i else "", hop_index=i,
                 point=point, host=host, hop_kind=kind, side=side, orig_h="10.0.0.1", orig_p=40000,
                 resp_h="10.0.0.2" if i == 2 else "10.96.0.10", resp_p=8080 if i == 2 else 80,
                 request_first_ns=1_000_000 + i * 1000, request_last_ns=1_000_500 + i * 1000,
                 response_first_ns=2_000_000 - i * 1000, response_last_ns=2_000_500 - i * 1000,
                 req_link_us=i * 3, resp_link_us=i * 2, link_reason="origin" if i == 0 else "nat:syn_seq",
                 link_confidence=1.0 if i == 0 else 0.95, lost_pkts=i == 1, retrans_pkts=0)
            for i, (point, host, kind, side) in enumerate(hops)]


def _trace(traceparent: str = "", trace_id: str = TRACE_ID, **kw: Any) -> Trace:
    return Trace(trace_id=trace_id, kind="l7", l7_proto="http", method="GET", path="/api/items?page=2", status=200,
                 x_request_id="req-1", traceparent=traceparent, hop_count=3, **kw)


def _export(traces: list[Trace], spans: list[Span], **kw: Any) -> list[tuple[str, str, trace_pb2.Span]]:
    """(service.name, host.name, span) of every span of the requests built."""
    out = []
    for request, _ in trace_requests(Batch.from_records(Trace, traces), Batch.from_records(Span, spans), **kw):
        for rs in request.resource_spans:
            res = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
            out += [(res["service.name"], res.get("host.name", ""), s) for ss in rs.scope_spans for s in ss.spans]
    return sorted(out, key=lambda x: x[2].start_time_unix_nano)


def _attrs(span: trace_pb2.Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        which = kv.value.WhichOneof("value")
        v = getattr(kv.value, which)
        out[kv.key] = [x.string_value for x in v.values] if which == "array_value" else v
    return out


def test_spans_chain_along_the_path_under_hopscopes_trace_id() -> None:
    got = [s for _, _, s in _export([_trace()], _spans())]
    assert [s.span_id.hex() for s in got] == list(SPAN_IDS)
    assert {s.trace_id.hex() for s in got} == {TRACE_ID}
    assert [s.parent_span_id.hex() for s in got] == ["", SPAN_IDS[0], SPAN_IDS[1]]
    assert [s.kind for s in got] == [trace_pb2.Span.SPAN_KIND_CLIENT] * 2 + [trace_pb2.Span.SPAN_KIND_SERVER]
    assert got[0].name == "GET /api/items @ client-pod"
    assert (got[0].start_time_unix_nano, got[0].end_time_unix_nano) == (1_000_000, 2_000_500)


def test_a_traceparent_joins_the_applications_trace_under_its_span() -> None:
    got = [s for _, _, s in _export([_trace(f"00-{APP_TRACE}-{APP_SPAN}-01")], _spans())]
    assert {s.trace_id.hex() for s in got} == {APP_TRACE}
    assert [s.parent_span_id.hex() for s in got] == [APP_SPAN, SPAN_IDS[0], SPAN_IDS[1]]
    assert _attrs(got[0])["hopscope.trace_id"] == TRACE_ID  # the way back to hopscope's trace


@pytest.mark.parametrize("value", [
    "", "garbage", f"00-{'0' * 32}-{APP_SPAN}-01", f"00-{APP_TRACE}-{'0' * 16}-01", f"ff-{APP_TRACE}-{APP_SPAN}-01",
    f"00-{APP_TRACE[:-1]}g-{APP_SPAN}-01", f"00-{APP_TRACE}-{APP_SPAN}",
])
def test_an_invalid_traceparent_leaves_hopscopes_trace(value: str) -> None:
    assert parse_traceparent(value) is None
    got = [s for _, _, s in _export([_trace(value)], _spans())]
    assert got[0].trace_id.hex() == TRACE_ID and got[0].parent_span_id == b""


def test_attributes_follow_the_semantic_conventions_and_hopscopes_own() -> None:
    first, nat, server = (_attrs(s) for _, _, s in _export([_trace(f"00-{APP_TRACE}-{APP_SPAN}-01")], _spans()))
    assert first["network.transport"] == "tcp" and first["network.type"] == "ipv4"
    assert (first["client.address"], first["client.port"]) == ("10.0.0.1", 40000)
    assert (first["server.address"], first["server.port"]) == ("10.96.0.10", 80)
    assert first["network.peer.address"] == "10.96.0.10"  # the client side sees the server
    assert server["network.peer.address"] == "10.0.0.1"  # and the server side the client
    assert (first["http.request.method"], first["url.path"], first["url.query"]) == ("GET", "/api/items", "page=2")
    assert first["http.response.status_code"] == 200
    assert first["http.request.header.x-request-id"] == ["req-1"]
    assert "dns.question.name" not in first
    assert (nat["hopscope.point"], nat["hopscope.hop_kind"], nat["hopscope.hop_index"]) == ("node-nat", "nat", 1)
    assert (nat["hopscope.link.request_us"], nat["hopscope.link.response_us"]) == (3, 2)
    assert (nat["hopscope.link.reason"], nat["hopscope.link.confidence"]) == ("nat:syn_seq", pytest.approx(0.95))
    assert nat["hopscope.lost_pkts"] == 1


def test_dns_is_udp_with_its_question_name() -> None:
    trace = Trace(trace_id=TRACE_ID, kind="l7", l7_proto="dns", dns_qname="web.default.svc.cluster.local")
    first = _attrs(_export([trace], _spans())[0][2])
    assert first["network.transport"] == "udp" and first["dns.question.name"] == "web.default.svc.cluster.local"
    assert "http.request.method" not in first


def test_service_name_is_the_inventorys_pod_or_service_else_the_host() -> None:
    inventory = from_simple({"pods": [{"name": "client-7f9", "namespace": "shop", "ip": "10.0.0.1"}],
                             "services": [{"name": "web", "namespace": "default", "cluster_ip": "10.0.0.2"}]})
    assert [(svc, host) for svc, host, _ in _export([_trace()], _spans(), inventory=inventory)] == [
        ("shop/client-7f9", "client"), ("shop/client-7f9", "nodeA"), ("web", "server")]
    assert [svc for svc, _, _ in _export([_trace()], _spans())] == ["client", "nodeA", "server"]


def test_requests_carry_at_most_the_traces_asked_and_only_their_spans() -> None:
    ids = [f"{n:032x}" for n in range(1, 6)]
    spans = [s for t in ids for s in _spans(t)] + _spans("f" * 32)  # a trace not exported
    requests = list(trace_requests(Batch.from_records(Trace, [_trace(trace_id=t) for t in ids]),
                                   Batch.from_records(Span, spans), traces_per_request=2))
    assert [n for _, n in requests] == [2, 2, 1]
    sent = {s.trace_id.hex() for r, _ in requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans}
    assert sent == set(ids)


@pytest.mark.parametrize(("endpoint", "url"), [
    ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
    ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
    ("https://collector:4318/custom/traces", "https://collector:4318/custom/traces"),
])
def test_traces_url(endpoint: str, url: str) -> None:
    assert traces_url(endpoint) == url


@pytest.mark.parametrize("endpoint", ["127.0.0.1:4318", "grpc://127.0.0.1:4317", "http://"])
def test_traces_url_rejects_what_is_not_an_http_endpoint(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="--otlp"):
        traces_url(endpoint)


class _Collector(http.server.BaseHTTPRequestHandler):
    """Answers with the statuses queued in ``server.statuses`` (then 200), keeping what was posted."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server: Any = self.server
        server.posts.append((self.path, self.headers["Content-Type"], body))
        status = server.statuses.pop(0) if server.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Any]:
    server: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    server.posts, server.statuses = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _batches() -> tuple[Batch, Batch]:
    ids = [f"{n:032x}" for n in range(1, 4)]
    return (Batch.from_records(Trace, [_trace(trace_id=t) for t in ids]),
            Batch.from_records(Span, [s for t in ids for s in _spans(t)]))


def test_exporter_posts_protobuf_and_retries_a_busy_collector(collector: Any) -> None:
    collector.statuses = [503]
    exporter = OtlpExporter(f"http://127.0.0.1:{collector.server_port}", backoff_s=0.01, traces_per_request=2)
    exporter.export(*_batches())
    assert exporter.stats.retries == 1 and not exporter.stats.failed
    assert (exporter.stats.traces_sent, exporter.stats.spans_sent, exporter.stats.requests_sent) == (3, 9, 2)
    assert [(p, t) for p, t, _ in collector.posts] == [("/v1/traces", "application/x-protobuf")] * 3
    request = ExportTraceServiceRequest.FromString(collector.posts[-1][2])
    assert sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans) == 3


def test_exporter_counts_a_rejected_request_without_retrying_it(collector: Any) -> None:
    collector.statuses = [400]
    exporter = OtlpExporter(f"http://127.0.0.1:{collector.server_port}", backoff_s=0.01, traces_per_request=2)
    exporter.export(*_batches())
    stats = exporter.stats
    assert (stats.requests_failed, stats.spans_failed, stats.retries, stats.spans_sent) == (1, 6, 0, 3)
    assert "HTTP 400" in stats.summary() and "1 of 2 requests failed (6 spans)" in stats.summary()


def test_exporter_reports_a_collector_that_is_down() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    exporter = OtlpExporter(f"http://127.0.0.1:{port}", attempts=2, backoff_s=0.01)
    exporter.export(*_batches())
    stats = exporter.stats
    assert (stats.requests_failed, stats.spans_failed, stats.retries, stats.spans_sent) == (1, 9, 1, 0)
    assert "collector unreachable" in stats.summary() and "\n" not in stats.summary()


class _Store:
    """Records inserts; refuses them while ``down``."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.down = False
        self.url = "memory://"

    def insert(self, table: str, batch: Batch) -> int:
        if self.down:
            raise ConnectionError("store down")
        self.rows[table] = self.rows.get(table, 0) + len(batch)
        return len(batch)


def test_exporting_store_sends_what_the_store_accepted(collector: Any) -> None:
    from hopscope.correlate.otlp import ExportingStore

    store, (traces, spans) = _Store(), _batches()
    sink = ExportingStore(store, OtlpExporter(f"http://127.0.0.1:{collector.server_port}"))
    sink.insert("spans", spans)
    assert not collector.posts  # held until the pass's traces are written
    store.down = True
    with pytest.raises(ConnectionError):
        sink.insert("traces", traces)
    assert not collector.posts  # the store refused: nothing went out; the retry comes through insert again
    store.down = False
    sink.insert("traces", traces)
    assert sink.exporter.stats.traces_sent == 3 and sink.exporter.stats.spans_sent == 9
    assert sink.url == "memory://" and store.rows == {"spans": 9, "traces": 3}
