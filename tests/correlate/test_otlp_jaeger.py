"""``hopscope analyze --otlp`` into a real Jaeger v2 (deploy/jaeger), read back through its query API:
every demo trace whole with its parent chain and attributes, and a request that carried a W3C
traceparent joined under the application's span in the application's trace."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1 import trace_pb2
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import wrpcap

from hopscope.correlate.otlp import OtlpExporter

pytestmark = pytest.mark.jaeger

MANIFEST = Path(__file__).resolve().parents[2] / "samples" / "lab" / "manifest.json"
SEMCONV = ("network.transport", "client.address", "client.port", "server.address", "server.port",
           "network.peer.address")
HOPSCOPE_KEYS = ("hopscope.point", "hopscope.hop_kind", "hopscope.link.request_us", "hopscope.link.response_us",
                 "hopscope.link.reason", "hopscope.link.confidence", "hopscope.lost_pkts")


def _analyze(tmp_path: Path, otlp: str, *inputs: str) -> list[dict[str, Any]]:
    out = tmp_path / "traces.json"
    cmd = [sys.executable, "-m", "hopscope", "analyze", *inputs, "--no-store", "--format", "json", "-o", str(out),
           "--otlp", otlp]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "spans sent" in done.stderr and "failed" not in done.stderr
    traces: list[dict[str, Any]] = json.loads(out.read_text())["traces"]
    return traces


def _jaeger_trace(query: str, trace_id: str, spans: int) -> dict[str, Any]:
    """The trace as Jaeger's query API returns it, once it holds ``spans`` distinct spans (Jaeger
    batches what it received: give it a few seconds, more on a busy machine)."""
    deadline, got = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{query}/api/traces/{trace_id}", timeout=5) as resp:
                got = json.load(resp)["data"][0]
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
        if len({s["spanID"] for s in got.get("spans", [])}) >= spans:
            return got
        time.sleep(0.3)
    raise AssertionError(f"Jaeger has {len(got.get('spans', []))} spans of trace {trace_id}, expected {spans}")


STALE = ("Jaeger keeps what earlier runs sent under the same deterministic ids: if one exported different "
         "spans, restart it (deploy/jaeger/stop.sh; deploy/jaeger/start.sh)")


def _by_id(trace: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Spans by id; every copy of a span (a run before sent the same ids) must agree on parent and tags."""
    out: dict[str, dict[str, Any]] = {}
    for s in trace["spans"]:
        seen = out.setdefault(s["spanID"], s)
        assert (_parent(seen), _tags(seen)) == (_parent(s), _tags(s)), STALE
    return out


def _parent(span: dict[str, Any]) -> str:
    refs = [r["spanID"] for r in span["references"] if r["refType"] == "CHILD_OF"]
    return refs[0] if refs else ""


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


def test_demo_traces_arrive_whole_with_their_parent_chain_and_attributes(jaeger: tuple[str, str],
                                                                         tmp_path: Path) -> None:
    otlp, query = jaeger
    traces = _analyze(tmp_path, otlp, "--manifest", str(MANIFEST))
    assert traces
    for trace in traces:
        hops = trace["hops"]
        got = _by_id(_jaeger_trace(query, trace["trace_id"], len(hops)))
        assert set(got) == {h["span_id"] for h in hops}, trace["trace_id"]
        for prev, hop in zip([None, *hops], hops, strict=False):
            span = got[hop["span_id"]]
            assert _parent(span) == (prev["span_id"] if prev else ""), (trace["trace_id"], hop["point"])
            tags = _tags(span)
            assert all(k in tags for k in SEMCONV + HOPSCOPE_KEYS), sorted(set(SEMCONV + HOPSCOPE_KEYS) - set(tags))
            assert (tags["hopscope.point"], tags["hopscope.link.reason"]) == (hop["point"], hop["link_reason"])
            assert (tags["client.address"], tags["server.port"]) == (hop["orig_h"], hop["resp_p"])
            request = trace["request"]
            if request["method"]:
                assert (tags["http.request.method"], tags["http.response.status_code"]) == \
                    (request["method"], request["status"])
            if request["dns_qname"]:
                assert tags["dns.question.name"] == request["dns_qname"]


def _http_exchange(traceparent: str) -> list[Packet]:
    """One HTTP/1.1 request carrying ``traceparent`` and its response, on a fresh connection."""
    client, server = ("10.1.0.1", 41000), ("10.1.0.2", 8080)
    request = (f"GET /orders/7 HTTP/1.1\r\nHost: shop\r\ntraceparent: {traceparent}\r\n\r\n").encode()
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    c_isn, s_isn = secrets.randbits(31), secrets.randbits(31)
    steps = [(">", "S", c_isn, 0, b""), ("<", "SA", s_isn, c_isn + 1, b""), (">", "A", c_isn + 1, s_isn + 1, b""),
             (">", "PA", c_isn + 1, s_isn + 1, request),
             ("<", "PA", s_isn + 1, c_isn + 1 + len(request), response),
             (">", "FA", c_isn + 1 + len(request), s_isn + 1 + len(response), b""),
             ("<", "FA", s_isn + 1 + len(response), c_isn + 2 + len(request), b""),
             (">", "A", c_isn + 2 + len(request), s_isn + 2 + len(response), b"")]
    t0, packets = time.time() - 60, []
    for n, (direction, flags, seq, ack, payload) in enumerate(steps):
        src, dst = (client, server) if direction == ">" else (server, client)
        pkt = Ether() / IP(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], flags=flags, seq=seq, ack=ack)
        pkt = pkt / payload if payload else pkt
        pkt.time = t0 + n * 0.002
        packets.append(pkt)
    return packets


def _seen_later(packets: list[Packet], delay_s: float) -> list[Packet]:
    """The same packets at a point ``delay_s`` further towards the server."""
    out = []
    for p in packets:
        q = p.copy()
        q.time = p.time + (delay_s if p[IP].src == packets[0][IP].src else -delay_s)
        out.append(q)
    return out


def _application_span(trace_id: bytes, span_id: bytes) -> ExportTraceServiceRequest:
    """The span the application's own OpenTelemetry SDK would have sent for the request."""
    now = time.time_ns() - 60_000_000_000
    span = trace_pb2.Span(trace_id=trace_id, span_id=span_id, name="checkout", kind=trace_pb2.Span.SPAN_KIND_CLIENT,
                          start_time_unix_nano=now - 1_000_000, end_time_unix_nano=now + 20_000_000)
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="shop-frontend"))])
    return ExportTraceServiceRequest(resource_spans=[
        trace_pb2.ResourceSpans(resource=resource, scope_spans=[trace_pb2.ScopeSpans(spans=[span])])])


def test_a_traceparent_request_joins_the_applications_trace_under_its_span(jaeger: tuple[str, str],
                                                                           tmp_path: Path) -> None:
    otlp, query = jaeger
    app_trace, app_span = secrets.token_bytes(16), secrets.token_bytes(8)
    assert OtlpExporter(otlp).send(_application_span(app_trace, app_span))
    traceparent = f"00-{app_trace.hex()}-{app_span.hex()}-01"
    packets = _http_exchange(traceparent)
    wrpcap(str(tmp_path / "client-pod.pcap"), packets)
    wrpcap(str(tmp_path / "server-pod.pcap"), _seen_later(packets, 0.0001))
    traces = _analyze(tmp_path, otlp, "--point", f"client-pod={tmp_path / 'client-pod.pcap'}",
                      "--point", f"server-pod={tmp_path / 'server-pod.pcap'}",
                      "--host", "client-pod=client", "--host", "server-pod=server")
    [trace] = [t for t in traces if t["request"]["traceparent"] == traceparent]
    hops = trace["hops"]
    assert len(hops) == 2
    got = _jaeger_trace(query, app_trace.hex(), 1 + len(hops))
    spans = _by_id(got)
    assert set(spans) == {app_span.hex(), *(h["span_id"] for h in hops)}
    assert _parent(spans[hops[0]["span_id"]]) == app_span.hex()  # under the application's span
    assert _parent(spans[hops[1]["span_id"]]) == hops[0]["span_id"]
    first = _tags(spans[hops[0]["span_id"]])
    assert first["hopscope.trace_id"] == trace["trace_id"]
    assert (first["http.request.method"], first["url.path"], first["http.response.status_code"]) == \
        ("GET", "/orders/7", 200)
    services = {got["processes"][s["processID"]]["serviceName"] for s in got["spans"]}
    assert services == {"shop-frontend", "client", "server"}


def _stored(url: str) -> dict[str, list[Any]]:
    """Every stored trace's spans in path order, by trace id."""
    from hopscope.store import store_from_url

    store = store_from_url(url)
    try:
        return {t.trace_id: list(store.get_trace(t.trace_id)[1]) for t in store.query_traces(0, 2**63 - 1,
                                                                                              limit=1_000_000)}
    finally:
        store.close()


@pytest.mark.kafka
def test_correlate_exports_what_it_stores(jaeger: tuple[str, str], kafka_bootstrap: str, tmp_path: Path) -> None:
    from tests.conftest import topic_prefix

    otlp, query = jaeger
    prefix, url = topic_prefix("otlp"), f"chdb://{tmp_path}?database=streamed"
    hopscope = [sys.executable, "-m", "hopscope"]
    replayed = subprocess.run([*hopscope, "replay", "--kafka", kafka_bootstrap, "--topic-prefix", prefix,
                               "--manifest", str(MANIFEST), "--speed", "max"], capture_output=True, text=True,
                              timeout=300)
    assert replayed.returncode == 0, replayed.stderr
    # Every address of the samples a pod of a namespace of this run: its spans carry it as service.name.
    analyzed = _analyze(tmp_path, otlp, "--manifest", str(MANIFEST))
    addrs = {h[k] for t in analyzed for h in t["hops"] for k in ("orig_h", "resp_h")}
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"pods": [{"name": f"p{n}", "namespace": prefix, "ip": a}
                                              for n, a in enumerate(sorted(addrs))]}))
    correlated = subprocess.run([*hopscope, "correlate", "--kafka", kafka_bootstrap, "--store", url,
                                 "--topic-prefix", prefix, "--group", prefix, "--idle-exit", "5", "--otlp", otlp,
                                 "--inventory", str(inventory)], capture_output=True, text=True, timeout=300)
    assert correlated.returncode == 0, correlated.stderr
    stored = _stored(url)
    assert len(stored) > 30
    assert f"{len(stored)} traces, {sum(map(len, stored.values()))} spans sent" in correlated.stderr
    for trace_id, spans in stored.items():
        got = _jaeger_trace(query, trace_id, len(spans))
        ours = {s["spanID"]: s for s in got["spans"]
                if got["processes"][s["processID"]]["serviceName"].startswith(f"{prefix}/")}
        assert set(ours) == {s.span_id for s in spans}, trace_id
        assert [_parent(ours[s.span_id]) for s in spans] == [s.parent_span_id for s in spans], trace_id
