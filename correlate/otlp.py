"""Traces as OpenTelemetry spans, sent to an OTLP/HTTP collector (Jaeger, the OpenTelemetry Collector).

One OTLP span per hop, parented along the path: the first hop's span is the root (or, when the request
carried a W3C ``traceparent``, a child of the application's span in the application's trace), each
later hop a child of the hop before it (``Span.parent_span_id``). Trace ids are hopscope's 16 bytes,
span ids hopscope's 8 bytes, so exporting the same traces twice sends the same ids.

Attributes follow the OpenTelemetry semantic conventions where one exists (``network.transport``,
``client.address``, ``server.address``, ``network.peer.address``, ``http.request.method``,
``url.path``, ``http.response.status_code``, ``dns.question.name``); hopscope's own are under
``hopscope.*``. The resource's ``service.name`` is the pod or Service the inventory gives for the
hop's own end (client side: the client address, server side: the server address), else the host.

``trace_requests`` builds the protobuf messages (``opentelemetry-proto``); ``OtlpExporter`` posts
them in batches with retries and counts what failed, so a collector that is down costs the export,
never the stored traces.
"""

from __future__ import annotations

import logging
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1 import trace_pb2

from hopscope.errors import ConfigError, UnavailableError
from hopscope.records import Batch, Span, Trace
from hopscope.topology.inventory import EMPTY, Inventory

log = logging.getLogger(__name__)

SCOPE_NAME = "hopscope"
#: HTTP statuses worth another attempt (the OTLP/HTTP specification's retryable ones).
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
_ENTITY_KINDS = ("pod", "service")


@dataclass(frozen=True, slots=True)
class Parent:
    """Where a trace's first hop hangs: the trace id (16 bytes) and the parent span id (8 bytes,
    empty for a root). ``joined``: both came from the request's W3C traceparent."""

    trace_id: bytes
    span_id: bytes = b""
    joined: bool = False


def parse_traceparent(value: str) -> tuple[bytes, bytes] | None:
    """(trace id, parent id) of a W3C traceparent ``00-<32 hex>-<16 hex>-<2 hex>``; None if malformed
    or an id is all zeros (the specification's invalid values)."""
    parts = value.strip().lower().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff" or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id, span_id = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
    except ValueError:
        return None
    if not any(trace_id) or not any(span_id):
        return None
    return trace_id, span_id


def parent_of(trace: Trace) -> Parent:
    """The application's trace and span when the request carried a valid traceparent, else hopscope's trace."""
    joined = parse_traceparent(trace.traceparent) if trace.traceparent else None
    if joined:
        return Parent(joined[0], joined[1], joined=True)
    return Parent(bytes.fromhex(trace.trace_id))


def transport_of(trace: Trace) -> str:
    """``network.transport``: DNS goes over UDP, everything hopscope stitches otherwise is TCP."""
    return "udp" if trace.l7_proto == "dns" else "tcp"


def _value(v: str | int | float | list[str]) -> AnyValue:
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=s) for s in v]))
    if isinstance(v, bool | str):
        return AnyValue(string_value=str(v))
    if isinstance(v, int):
        return AnyValue(int_value=v)
    return AnyValue(double_value=float(v))


def _attributes(pairs: Sequence[tuple[str, str | int | float | list[str]]]) -> list[KeyValue]:
    """Key-values, leaving out empty text (an attribute hopscope does not know is not sent)."""
    return [KeyValue(key=k, value=_value(v)) for k, v in pairs if v != "" and v != []]


def _network_attributes(span: Span, trace: Trace) -> list[tuple[str, str | int | float | list[str]]]:
    peer = (span.resp_h, span.resp_p) if span.side != "server" else (span.orig_h, span.orig_p)
    return [
        ("network.transport", transport_of(trace)),
        ("network.type", "ipv6" if ":" in span.orig_h else "ipv4"),
        ("client.address", span.orig_h), ("client.port", span.orig_p),
        ("server.address", span.resp_h), ("server.port", span.resp_p),
        ("network.peer.address", peer[0]), ("network.peer.port", peer[1]),
    ]


def _l7_attributes(trace: Trace) -> list[tuple[str, str | int | float | list[str]]]:
    out: list[tuple[str, str | int | float | list[str]]] = []
    if trace.method:
        out += [("http.request.method", trace.method), ("url.path", trace.path.partition("?")[0])]
        if "?" in trace.path:
            out.append(("url.query", trace.path.partition("?")[2]))
    if trace.status:
        out.append(("http.response.status_code", trace.status))
    if trace.dns_qname:
        out.append(("dns.question.name", trace.dns_qname))
    if trace.x_request_id:
        out.append(("http.request.header.x-request-id", [trace.x_request_id]))
    if trace.traceparent:
        out.append(("http.request.header.traceparent", [trace.traceparent]))
    return out


def _hopscope_attributes(span: Span, trace: Trace) -> list[tuple[str, str | int | float | list[str]]]:
    return [
        ("hopscope.trace_id", trace.trace_id), ("hopscope.trace_kind", trace.kind),
        ("hopscope.point", span.point), ("hopscope.host", span.host), ("hopscope.hop_kind", span.hop_kind),
        ("hopscope.hop_index", span.hop_index), ("hopscope.side", span.side),
        ("hopscope.link.request_us", span.req_link_us), ("hopscope.link.response_us", span.resp_link_us),
        ("hopscope.link.reason", span.link_reason), ("hopscope.link.confidence", round(span.link_confidence, 4)),
        ("hopscope.lost_pkts", span.lost_pkts), ("hopscope.retrans_pkts", span.retrans_pkts),
        ("hopscope.clock_offset_us", span.clock_offset_us),
    ]


def span_name(span: Span, trace: Trace) -> str:
    """``GET /path @ point``, ``DNS name @ point``, ``TCP @ point`` (the query string left out)."""
    if trace.method:
        what = f"{trace.method} {trace.path.partition('?')[0]}"
    elif trace.dns_qname:
        what = f"DNS {trace.dns_qname}"
    else:
        what = transport_of(trace).upper()
    return f"{what} @ {span.point}"


def otlp_span(span: Span, trace: Trace, parent: Parent) -> trace_pb2.Span:
    """One hop as an OTLP span: the first hop under ``parent``, the others under the previous hop."""
    start = span.request_first_ns
    end = max(span.response_last_ns, span.response_first_ns, span.request_last_ns, start)
    parent_id = bytes.fromhex(span.parent_span_id) if span.parent_span_id else parent.span_id
    kind = trace_pb2.Span.SPAN_KIND_SERVER if span.side == "server" else trace_pb2.Span.SPAN_KIND_CLIENT
    status = trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR, message="request failed") \
        if trace.error else trace_pb2.Status()
    attrs = _network_attributes(span, trace) + _l7_attributes(trace) + _hopscope_attributes(span, trace)
    return trace_pb2.Span(
        trace_id=parent.trace_id, span_id=bytes.fromhex(span.span_id), parent_span_id=parent_id,
        name=span_name(span, trace), kind=kind, start_time_unix_nano=start, end_time_unix_nano=end,
        attributes=_attributes(attrs), status=status,
    )


def service_name(span: Span, inventory: Inventory) -> str:
    """The pod or Service of the hop's own end, by the inventory; else the host (else the point)."""
    entity = inventory.lookup(span.resp_h if span.side == "server" else span.orig_h)
    if entity is not None and entity.kind in _ENTITY_KINDS:
        return entity.label
    return span.host or span.point


def trace_requests(traces: Batch, spans: Batch, inventory: Inventory = EMPTY,
                   traces_per_request: int = 200) -> Iterator[tuple[ExportTraceServiceRequest, int]]:
    """The OTLP requests of ``traces`` (``Trace`` rows) with their ``spans`` (``Span`` rows), each with
    how many traces it carries (at most ``traces_per_request``); spans of a trace not in ``traces``
    are left out."""
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for s in spans.records():
        assert isinstance(s, Span)
        by_trace[s.trace_id].append(s)
    rows = [t for t in traces.records() if isinstance(t, Trace)]
    step = max(1, traces_per_request)
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        yield _request(chunk, by_trace, inventory), len(chunk)


def _request(traces: Sequence[Trace], by_trace: dict[str, list[Span]],
             inventory: Inventory) -> ExportTraceServiceRequest:
    groups: dict[tuple[str, str], list[trace_pb2.Span]] = defaultdict(list)
    for trace in traces:
        parent = parent_of(trace)
        for span in sorted(by_trace.get(trace.trace_id, ()), key=lambda s: s.hop_index):
            groups[(service_name(span, inventory), span.host)].append(otlp_span(span, trace, parent))
    scope = InstrumentationScope(name=SCOPE_NAME, version=_version())
    return ExportTraceServiceRequest(resource_spans=[
        trace_pb2.ResourceSpans(
            resource=Resource(attributes=_attributes([("service.name", service), ("host.name", host)])),
            scope_spans=[trace_pb2.ScopeSpans(scope=scope, spans=members)],
        )
        for (service, host), members in groups.items()
    ])


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hopscope")
    except PackageNotFoundError:
        return ""


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of ``endpoint``: ``http://host:4318`` gets ``/v1/traces``; a URL with a
    path is taken as it is. Raises ``ConfigError`` for anything but an http(s) URL with a host."""
    parsed = urllib.parse.urlsplit(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"--otlp expects an OTLP/HTTP endpoint such as http://127.0.0.1:4318, got {endpoint!r}")
    if parsed.path in ("", "/"):
        return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, "/v1/traces", "", ""))
    return endpoint


@dataclass(slots=True)
class ExportStats:
    """What an ``OtlpExporter`` sent and what it could not."""

    url: str
    traces_sent: int = 0
    spans_sent: int = 0
    requests_sent: int = 0
    requests_failed: int = 0
    spans_failed: int = 0  # in failed requests, plus those a collector rejected
    retries: int = 0
    last_error: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.requests_failed > 0 or self.spans_failed > 0

    def summary(self) -> str:
        """One line: what went out, and what failed and why."""
        line = f"otlp {self.url}: {self.traces_sent} traces, {self.spans_sent} spans sent"
        if self.failed:
            line += (f"; {self.requests_failed} of {self.requests_sent + self.requests_failed} requests failed "
                     f"({self.spans_failed} spans): {self.last_error}")
        return line


class OtlpExporter:
    """Posts ``ExportTraceServiceRequest``s to an OTLP/HTTP collector (protobuf body), each up to
    ``attempts`` times with a doubling backoff from ``backoff_s``; a request that still fails is
    counted in ``stats``, never raised; with ``warn``, the first failure after a success (and the
    recovery) is logged as a warning, so a collector that stays down is one line, not one per request."""

    def __init__(self, endpoint: str, inventory: Inventory = EMPTY, *, timeout_s: float = 10.0,
                 attempts: int = 3, backoff_s: float = 0.5, traces_per_request: int = 200,
                 warn: bool = True) -> None:
        self.url = traces_url(endpoint)
        self.inventory = inventory
        self.timeout_s, self.attempts, self.backoff_s = timeout_s, max(1, attempts), backoff_s
        self.traces_per_request = traces_per_request
        self.stats = ExportStats(self.url)
        self.warn = warn
        self._failing = False

    def export(self, traces: Batch, spans: Batch) -> None:
        """Send ``traces`` with their ``spans``."""
        for request, count in trace_requests(traces, spans, self.inventory, self.traces_per_request):
            self.send(request, count)

    def send(self, request: ExportTraceServiceRequest, traces: int = 0) -> bool:
        """Post one request (of ``traces`` traces); True when the collector accepted it (perhaps in part)."""
        spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        error = ""
        for attempt in range(self.attempts):
            if attempt:
                self.stats.retries += 1
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            error, retry, body = self._post(request.SerializeToString())
            if not error:
                self._accepted(body, spans, traces)
                if self._failing and self.warn:
                    log.warning("otlp: %s accepts spans again", self.url)
                self._failing = False
                return True
            if not retry:
                break
        self.stats.requests_failed += 1
        self.stats.spans_failed += spans
        self.stats.last_error = error
        level = logging.WARNING if self.warn and not self._failing else logging.DEBUG
        log.log(level, "otlp: %d spans not exported to %s: %s (failures are counted)", spans, self.url, error)
        self._failing = True
        return False

    def _accepted(self, body: bytes, spans: int, traces: int) -> None:
        rejected = 0
        if body:
            response = ExportTraceServiceResponse()
            try:
                response.ParseFromString(body)
                rejected = int(response.partial_success.rejected_spans)
            except DecodeError as exc:  # a collector's odd body does not undo an accepted export
                log.debug("otlp: unreadable response body: %s", exc)
            if rejected:
                self.stats.spans_failed += rejected
                self.stats.last_error = f"collector rejected {rejected} spans: {response.partial_success.error_message}"
        self.stats.requests_sent += 1
        self.stats.spans_sent += spans - rejected
        self.stats.traces_sent += traces

    def _post(self, payload: bytes) -> tuple[str, bool, bytes]:
        """(error text or '', whether to try again, response body)."""
        req = urllib.request.Request(self.url, data=payload, method="POST",
                                     headers={"Content-Type": "application/x-protobuf"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return "", False, resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace").strip()
            return f"HTTP {exc.code} {exc.reason} {detail}".strip(), exc.code in RETRYABLE_STATUS, b""
        except urllib.error.URLError as exc:
            return f"collector unreachable ({exc.reason})", True, b""
        except (TimeoutError, OSError) as exc:
            return f"collector unreachable ({exc})", True, b""



class ExportingStore:
    """A store that also exports what it accepted: spans are held until the ``traces`` insert that
    follows them (the streaming correlator writes a pass's spans, then its traces), then the traces go
    out with their spans and the held spans are let go. Everything else is the wrapped store's."""

    def __init__(self, store: Any, exporter: OtlpExporter) -> None:
        self._store = store
        self.exporter = exporter
        self._spans: list[Batch] = []

    def insert(self, table: str, batch: Batch) -> Any:
        result = self._store.insert(table, batch)  # raises when the store refused: nothing exported
        if table == "spans":
            self._spans.append(batch)
        elif table == "traces":
            spans, self._spans = self._spans, []
            if spans:
                self.exporter.export(batch, Batch.concat(spans))
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def exporter_of(endpoint: str, inventory_path: str | None = None, warn: bool = True) -> OtlpExporter:
    """The exporter of ``--otlp ENDPOINT`` (and ``--inventory FILE`` for service names)."""
    from hopscope.topology.inventory import load_inventory

    return OtlpExporter(endpoint, load_inventory(inventory_path) if inventory_path else EMPTY, warn=warn)


def export_traces(endpoint: str, inventory_path: str | None, traces: Batch, spans: Batch) -> ExportStats:
    """``hopscope analyze --otlp``: send ``traces`` with their ``spans``, say what went out on stderr in
    one line; raises ``UnavailableError`` (that line) when some of it could not be sent."""
    exporter = exporter_of(endpoint, inventory_path, warn=False)  # the error below is the one line
    exporter.export(traces, spans)
    if exporter.stats.failed:
        raise UnavailableError(f"{exporter.stats.summary()}; what went to the store is unaffected")
    print(f"hopscope: {exporter.stats.summary()}", file=sys.stderr)
    return exporter.stats
