"""The L7 stage of a probe: TCP segments and UDP datagrams of selected flows in, RequestRecords out.

One ``L7Tracker`` per capture point keeps a bounded table of HTTP connections and pending DNS queries,
keyed by the meter's ``flow_id``. Which flows are parsed:

- HTTP/1.x: TCP flows with a port in ``L7Settings.http_ports``, or (``detect_http``) whose first
  payload starts with an HTTP method or status line;
- DNS: UDP or TCP flows with a port in ``L7Settings.dns_ports``;
- TLS (``detect_tls``): TCP flows whose first payload is a TLS record (ClientHello, ServerHello, or
  application data when the connection is picked up mid-stream), on any port, HTTP ports included.
  Each request/response *exchange* of application-data records becomes a record with ``l7_proto``
  ``tls`` (``hopscope.probes.l7.tls``): no method, path or status, only what passes a proxy's
  encryption unchanged (TCP sequence numbers, times, byte counts).

Records are produced when an exchange is complete and has lingered (``linger_ns``, so later
retransmissions are still charged to it), when a request waited ``request_timeout_ns`` without a
response, when a connection closes or is evicted, and on ``flush()``. Everything dropped is counted in
``L7Stats``.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Final

from hopscope.ids import PAYLOAD_HASH_BYTES, payload_hash, request_id
from hopscope.probes.l7.dns import DnsDecodeError, DnsMessage, DnsTcpFramer, parse_dns
from hopscope.probes.l7.http import (
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    HttpConnection,
    HttpExchange,
    looks_like_request,
    looks_like_response,
)
from hopscope.probes.l7.reassembly import Reassembler, stream_reassembler
from hopscope.probes.l7.tls import TlsConnection, TlsExchange, looks_like_tls
from hopscope.records import Batch, RequestRecord

_TCP, _UDP = 6, 17
#: A request record as the tracker holds it until taken: RequestRecord's fields, in order.
_Row = tuple[Any, ...]
_ROW_FIELDS: Final = (
    "point", "host", "iface", "hop_kind", "request_id", "flow_id", "l7_proto", "proto",
    "orig_h", "orig_p", "resp_h", "resp_p", "syn_seq", "synack_seq", "seq_in_flow", "req_tcp_seq", "resp_tcp_seq",
    "req_payload_hash", "req_first_ns", "req_last_ns", "resp_first_ns", "resp_last_ns", "req_retrans",
    "resp_retrans", "req_bytes", "resp_bytes", "method", "http_host", "path", "status", "x_request_id",
    "traceparent", "b3_trace_id", "b3_span_id", "dns_id", "dns_qname", "dns_qtype", "dns_rcode", "dns_answers",
    "req_body_bytes", "resp_body_bytes",
)  # fmt: skip
if tuple(c.name for c in RequestRecord.columns()) != _ROW_FIELDS:
    raise RuntimeError("RequestRecord's fields changed: update the tracker's rows (_ROW_FIELDS)")
_SECOND_NS = 1_000_000_000
DEFAULT_HTTP_PORTS = frozenset({80, 3000, 5000, 8000, 8008, 8080, 8081, 8888, 9080})
DEFAULT_TLS_PORTS = frozenset({443, 8443, 15443})


@dataclass(frozen=True, slots=True)
class CapturePoint:
    """Where the records were observed (copied into every record)."""

    point: str
    host: str = ""
    iface: str = ""
    hop_kind: str = ""


@dataclass(frozen=True, slots=True)
class L7Settings:
    """What to parse and how long to keep state. Times are in ns of capture time."""

    http_ports: frozenset[int] = DEFAULT_HTTP_PORTS
    dns_ports: frozenset[int] = frozenset({53, 5353})
    detect_http: bool = True  # parse TCP flows on other ports whose first payload looks like HTTP
    detect_tls: bool = True  # report TLS exchanges of TCP flows whose first payload is a TLS record
    tls_ports: frozenset[int] = DEFAULT_TLS_PORTS  # fed to the stage even when detect_http is off
    linger_ns: int = 2 * _SECOND_NS  # hold a complete exchange this long for late retransmissions
    request_timeout_ns: int = 60 * _SECOND_NS  # report a request without response after this
    dns_timeout_ns: int = 5 * _SECOND_NS  # report a DNS query without response after this
    idle_timeout_ns: int = 300 * _SECOND_NS  # forget a connection idle this long
    max_connections: int = 65_536  # HTTP/DNS-over-TCP connections tracked at once
    max_dns_pending: int = 65_536  # DNS queries awaiting a response at once
    max_ignored: int = 262_144  # flows remembered as "not L7"


@dataclass(slots=True)
class L7Stats:
    """Counters of the L7 stage (cumulative)."""

    http_requests: int = 0  # records emitted for HTTP
    http_no_response: int = 0  # of which without a response
    http_orphan_responses: int = 0  # responses whose request was not seen
    http_resyncs: int = 0  # start lines found by searching (mid-stream start, after gaps)
    http_skipped_bytes: int = 0  # bytes passed over while searching for a start line
    http_given_up: int = 0  # connections on HTTP ports dropped: no HTTP/1 message in their first 64 KiB
    tcp_gap_bytes: int = 0  # stream bytes never captured (given up)
    tls_exchanges: int = 0  # records emitted for TLS exchanges
    tls_no_response: int = 0  # of which without a response
    tls_orphan_records: int = 0  # server application data with no client data before it
    tls_broken: int = 0  # connections whose record framing was lost (gap or bad header)
    dns_requests: int = 0  # records emitted for DNS
    dns_no_response: int = 0
    dns_orphan_responses: int = 0  # responses without a pending query
    dns_decode_errors: int = 0
    dns_retransmitted_queries: int = 0  # same id on the same flow again before the response
    evicted_connections: int = 0  # flushed early because the table was full
    evicted_dns_queries: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class FlowEnds:
    """Client and server of a flow as seen at this point."""

    flow_id: int
    proto: int
    client_h: str
    client_p: int
    server_h: str
    server_p: int


@dataclass(slots=True)
class _TcpState:
    ends: FlowEnds
    client_is_orig: bool
    http: HttpConnection | None = None
    tls: TlsConnection | None = None
    dns_streams: tuple[DnsTcpFramer, DnsTcpFramer] | None = None
    dns_reassembly: tuple[Reassembler, Reassembler] | None = None
    syn_seq: int = 0
    synack_seq: int = 0
    last_ns: int = 0


@dataclass(slots=True)
class _DnsQuery:
    ends: FlowEnds
    msg: DnsMessage
    first_ns: int
    last_ns: int
    req_bytes: int
    req_hash: int
    req_tcp_seq: int = 0
    retrans: int = 0
    syn_seq: int = 0
    synack_seq: int = 0


@dataclass(slots=True)
class _Tables:
    tcp: dict[int, _TcpState] = field(default_factory=dict)
    dns: dict[tuple[int, int], _DnsQuery] = field(default_factory=dict)
    ignored: dict[int, None] = field(default_factory=dict)


class L7Tracker:
    """HTTP/1.x and DNS request records of one capture point (see the module docstring)."""

    def __init__(self, point: CapturePoint, settings: L7Settings | None = None) -> None:
        self.point = point
        self.settings = settings or L7Settings()
        self._linger_ns, self._request_timeout_ns = self.settings.linger_ns, self.settings.request_timeout_ns
        self.stats = L7Stats()
        self._tables = _Tables()
        self._out: list[_Row] = []  # records as tuples of RequestRecord's fields, until taken
        self.now_ns = 0  # newest capture time seen

    # --- input ------------------------------------------------------------------------------------

    def tcp_segment(
        self,
        flow_id: int,
        ts_ns: int,
        from_orig: bool,
        seq: int,
        ack: int,
        flags: int,
        payload: bytes,
        src: tuple[str, int],
        dst: tuple[str, int],
    ) -> None:
        """One TCP segment of flow ``flow_id`` (``src``/``dst`` are (address, port) of this packet)."""
        if ts_ns > self.now_ns:
            self.now_ns = ts_ns
        state = self._tables.tcp.get(flow_id)
        if state is None:
            state = self._new_tcp(flow_id, from_orig, flags, payload, src, dst)
            if state is None:
                return
        state.last_ns = ts_ns
        from_client = from_orig == state.client_is_orig
        if flags & TCP_SYN:
            if from_client:
                state.syn_seq = seq
            else:
                state.synack_seq = seq
        conn = state.http
        if conn is None:  # not HTTP (yet)
            if state.dns_streams is None and state.tls is None:
                if not payload:
                    return
                self._classify(state, from_client, src, dst, payload)
            if state.tls is not None:
                self._tls_segment(flow_id, state, ts_ns, from_client, seq, ack, flags, payload)
                return
            if state.dns_streams is not None:
                self._dns_tcp_segment(state, ts_ns, from_client, seq, flags, payload)
                if flags & TCP_RST:
                    del self._tables.tcp[flow_id]
                return
            conn = state.http
            if conn is None:
                return
        conn.segment(ts_ns, from_client, seq, ack, flags, payload)
        if conn.closed or conn.overflow or not conn.next_index:  # (no request yet: hopeless?)
            self._http_after(flow_id, state, conn, ts_ns)
        elif conn.waiting and conn.due(ts_ns, self._linger_ns, self._request_timeout_ns):
            self._emit_ready(state, ts_ns, final=False)

    def udp_datagram(
        self, flow_id: int, ts_ns: int, payload: bytes, src: tuple[str, int], dst: tuple[str, int]
    ) -> None:
        """One UDP datagram; only DNS ports are parsed."""
        self.now_ns = max(self.now_ns, ts_ns)
        dns_ports = self.settings.dns_ports
        if src[1] not in dns_ports and dst[1] not in dns_ports:
            return
        try:
            msg = parse_dns(payload)
        except DnsDecodeError:
            self.stats.dns_decode_errors += 1
            return
        if msg.is_response:
            ends = FlowEnds(flow_id, _UDP, dst[0], dst[1], src[0], src[1])
        else:
            ends = FlowEnds(flow_id, _UDP, src[0], src[1], dst[0], dst[1])
        self._dns_message(ends, msg, ts_ns, ts_ns, len(payload), payload_hash(payload[:PAYLOAD_HASH_BYTES]), 0, None)

    # --- output -----------------------------------------------------------------------------------

    def expire(self, now_ns: int | None = None) -> None:
        """Report what is ready at ``now_ns`` (capture time; default: newest packet seen)."""
        now = self.now_ns if now_ns is None else now_ns
        s = self.settings
        for flow_id, state in list(self._tables.tcp.items()):
            if state.last_ns + s.idle_timeout_ns <= now:
                self._finish_tcp(flow_id, state)
            elif state.http is not None:
                self._emit_ready(state, now, final=False)
            elif state.tls is not None:
                self._emit_tls(state, now, final=False)
        for key, query in list(self._tables.dns.items()):
            if query.first_ns + s.dns_timeout_ns <= now:
                del self._tables.dns[key]
                self._emit_dns(query, None, 0, 0)

    def flush(self) -> None:
        """Report everything still held (end of capture, or shutdown)."""
        for flow_id, state in list(self._tables.tcp.items()):
            self._finish_tcp(flow_id, state)
        for query in list(self._tables.dns.values()):
            self._emit_dns(query, None, 0, 0)
        self._tables.dns.clear()

    def take_records(self) -> list[RequestRecord]:
        out, self._out = self._out, []
        return [RequestRecord(*row) for row in out]

    def take_batch(self) -> Batch:
        """The records reported so far as one batch, its columns built from the rows (no record objects):
        equal to ``Batch.from_records(RequestRecord, self.take_records())``."""
        out, self._out = self._out, []
        return Batch.from_rows(RequestRecord, out)

    def pending_records(self) -> int:
        return len(self._out)

    def tcp_table(self) -> Container[int]:
        """The flow ids of the TCP flows tracked (a live view: ``has_tcp`` without a call per packet)."""
        return self._tables.tcp

    def has_tcp(self, flow_id: int) -> bool:
        """True when the TCP flow is tracked (its addresses are known already)."""
        return flow_id in self._tables.tcp

    def ignored_flow_ids(self) -> dict[int, None]:
        """Flows found not to carry an L7 protocol we parse (a bounded, oldest-first table)."""
        return self._tables.ignored

    def tables_size(self) -> tuple[int, int]:
        """(TCP connections, DNS queries) currently held."""
        return len(self._tables.tcp), len(self._tables.dns)

    # --- TCP state --------------------------------------------------------------------------------

    def _new_tcp(
        self,
        flow_id: int,
        from_orig: bool,
        flags: int,
        payload: bytes,
        src: tuple[str, int],
        dst: tuple[str, int],
    ) -> _TcpState | None:
        tables = self._tables
        if flow_id in tables.ignored or (not payload and not flags & TCP_SYN):
            return None
        sender_is_client = _sender_is_client(flags, payload, src[1], dst[1], self.settings)
        client, server = (src, dst) if sender_is_client else (dst, src)
        ends = FlowEnds(flow_id, _TCP, client[0], client[1], server[0], server[1])
        state = _TcpState(ends, client_is_orig=from_orig == sender_is_client)
        if payload:
            self._classify(state, sender_is_client, src, dst, payload)
            if state.http is None and state.dns_streams is None and state.tls is None:
                self._ignore(flow_id)
                return None
        if len(tables.tcp) >= self.settings.max_connections:
            oldest = next(iter(tables.tcp))
            self.stats.evicted_connections += 1
            self._finish_tcp(oldest, tables.tcp[oldest])
        tables.tcp[flow_id] = state
        return state

    def _ignore(self, flow_id: int) -> None:
        ignored = self._tables.ignored
        ignored[flow_id] = None
        if len(ignored) > self.settings.max_ignored:
            del ignored[next(iter(ignored))]

    def _classify(
        self,
        state: _TcpState,
        from_client: bool,
        src: tuple[str, int],
        dst: tuple[str, int],
        payload: bytes,
    ) -> None:
        s = self.settings
        ports = (state.ends.client_p, state.ends.server_p)
        if s.detect_tls and looks_like_tls(payload):
            state.tls = TlsConnection()
        elif ports[0] in s.dns_ports or ports[1] in s.dns_ports:
            state.dns_streams = (DnsTcpFramer(), DnsTcpFramer())
            state.dns_reassembly = (stream_reassembler(), stream_reassembler())
        elif state.ends.server_p in s.http_ports or (
            s.detect_http and (looks_like_request(payload) or looks_like_response(payload))
        ):
            state.http = HttpConnection()
        else:
            return
        self._replay_syns(state)

    def _replay_syns(self, state: _TcpState) -> None:
        """Hand the ISNs seen before the flow was classified to the reassemblers."""
        if state.http is not None:
            pair = (state.http.client, state.http.server)
        elif state.tls is not None:
            pair = (state.tls.client, state.tls.server)
        elif state.dns_reassembly is not None:
            pair = state.dns_reassembly
        else:
            return
        if state.syn_seq:
            pair[0].syn(state.syn_seq)
        if state.synack_seq:
            pair[1].syn(state.synack_seq)

    def _finish_tcp(self, flow_id: int, state: _TcpState) -> None:
        self._tables.tcp.pop(flow_id, None)
        if state.tls is not None:
            state.tls.flush(self.now_ns)
            self._emit_tls(state, self.now_ns, final=True)
        elif state.http is not None:
            state.http.flush(self.now_ns)
            self._emit_ready(state, self.now_ns, final=True)
        elif state.dns_reassembly is not None and state.dns_streams is not None:
            for i in (0, 1):
                events = state.dns_reassembly[i].flush(self.now_ns)
                self._dns_tcp_messages(state, i == 0, state.dns_streams[i].feed(events))

    # --- HTTP -------------------------------------------------------------------------------------

    def _http_after(self, flow_id: int, state: _TcpState, conn: HttpConnection, ts_ns: int) -> None:
        """What a segment of an HTTP connection may lead to: given up, closed, or exchanges due."""
        if conn.hopeless:
            self.stats.http_given_up += 1
            self._tables.tcp.pop(flow_id, None)
            self._ignore(flow_id)
        elif conn.closed:
            self._finish_tcp(flow_id, state)
        elif conn.due(ts_ns, self.settings.linger_ns, self.settings.request_timeout_ns):
            self._emit_ready(state, ts_ns, final=False)

    def _emit_ready(self, state: _TcpState, now_ns: int, final: bool) -> None:
        conn = state.http
        assert conn is not None
        s = self.settings
        for ex in conn.take(now_ns, s.linger_ns, s.request_timeout_ns, final):
            self._out.append(self._http_record(state, conn, ex))
        stats = self.stats
        if final:
            stats.http_orphan_responses += conn.orphan_responses
            stats.tcp_gap_bytes += conn.client.gap_bytes + conn.server.gap_bytes
            for parser in (conn.request_parser, conn.response_parser):
                if parser is not None:
                    stats.http_resyncs += parser.resyncs
                    stats.http_skipped_bytes += parser.skipped_bytes

    def _http_record(self, state: _TcpState, conn: HttpConnection, ex: HttpExchange) -> _Row:
        req, resp = ex.request, ex.response
        req_retrans, resp_retrans = conn.retrans_of(ex)
        req_tcp_seq = conn.client.seq_of(req.start_offset)
        resp_start = ex.resp_start_offset  # a 1xx counts: there may be a start and no (final) response
        resp_tcp_seq = conn.server.seq_of(resp_start) if resp_start >= 0 else 0
        stats = self.stats
        stats.http_requests += 1
        if resp is None:
            stats.http_no_response += 1
            resp_last_ns = resp_bytes = status = resp_body_bytes = 0
        else:
            resp_last_ns, status, resp_body_bytes = resp.last_ns, resp.status, resp.body_bytes
            resp_bytes = resp.end_offset - resp_start if resp_start >= 0 else 0
        ends, point = state.ends, self.point.point
        flow_id = ends.flow_id
        return (  # RequestRecord's fields in order (_ROW_FIELDS)
            point, self.point.host, self.point.iface, self.point.hop_kind,
            request_id(point, flow_id, req_tcp_seq, req.first_ns, 0), flow_id, "http", _TCP,
            ends.client_h, ends.client_p, ends.server_h, ends.server_p,
            state.syn_seq, state.synack_seq, ex.index, req_tcp_seq, resp_tcp_seq, req.payload_hash,
            req.first_ns, req.last_ns, ex.resp_first_ns, resp_last_ns, req_retrans, resp_retrans,
            req.end_offset - req.start_offset, resp_bytes, req.method, req.host, req.target, status,
            req.x_request_id, req.traceparent, req.b3_trace_id, req.b3_span_id,
            0, "", 0, 0, "",  # dns_id, dns_qname, dns_qtype, dns_rcode, dns_answers
            req.body_bytes, resp_body_bytes,
        )  # fmt: skip

    # --- TLS -------------------------------------------------------------------------------------

    def _tls_segment(self, flow_id: int, state: _TcpState, ts_ns: int, from_client: bool, seq: int, ack: int,
                     flags: int, payload: bytes) -> None:
        conn = state.tls
        assert conn is not None
        conn.segment(ts_ns, from_client, seq, ack, flags, payload)
        if conn.closed:
            self._finish_tcp(flow_id, state)
        elif conn.due(ts_ns, self.settings.linger_ns):
            self._emit_tls(state, ts_ns, final=False)

    def _emit_tls(self, state: _TcpState, now_ns: int, final: bool) -> None:
        conn = state.tls
        assert conn is not None
        for ex in conn.take(now_ns, self.settings.linger_ns, final):
            self._out.append(self._tls_record(state, conn, ex))
        if final:
            self.stats.tls_orphan_records += conn.orphan_records
            self.stats.tls_broken += conn.broken
            self.stats.tcp_gap_bytes += conn.client.gap_bytes + conn.server.gap_bytes

    def _tls_record(self, state: _TcpState, conn: TlsConnection, ex: TlsExchange) -> _Row:
        """One exchange as a request record: the correlator's keys and times, no HTTP fields."""
        req_retrans, resp_retrans = conn.retrans_of(ex)
        req_tcp_seq = conn.client.seq_of(ex.req_start)
        has_resp = ex.resp_start >= 0
        self.stats.tls_exchanges += 1
        self.stats.tls_no_response += not has_resp
        ends, p = state.ends, self.point
        return (  # RequestRecord's fields in order (_ROW_FIELDS)
            p.point, p.host, p.iface, p.hop_kind,
            request_id(p.point, ends.flow_id, req_tcp_seq, ex.req_first_ns, 0), ends.flow_id, "tls", _TCP,
            ends.client_h, ends.client_p, ends.server_h, ends.server_p,
            state.syn_seq, state.synack_seq, ex.index,
            req_tcp_seq, conn.server.seq_of(ex.resp_start) if has_resp else 0, ex.req_hash,
            ex.req_first_ns, ex.req_last_ns, ex.resp_first_ns, ex.resp_last_ns, req_retrans, resp_retrans,
            ex.req_end - ex.req_start, ex.resp_end - ex.resp_start if has_resp else 0,
            "", "", "", 0, "", "", "", "",  # method, http_host, path, status, x_request_id ... b3_span_id
            0, "", 0, 0, "",  # dns_id, dns_qname, dns_qtype, dns_rcode, dns_answers
            0, 0,  # req_body_bytes, resp_body_bytes
        )  # fmt: skip

    # --- DNS --------------------------------------------------------------------------------------

    def _dns_tcp_segment(
        self, state: _TcpState, ts_ns: int, from_client: bool, seq: int, flags: int, payload: bytes
    ) -> None:
        assert state.dns_reassembly is not None and state.dns_streams is not None
        i = 0 if from_client else 1
        stream = state.dns_reassembly[i]
        if flags & TCP_SYN:
            stream.syn(seq)
            return
        events = stream.segment(ts_ns, seq, payload, bool(flags & TCP_FIN))
        if events:
            self._dns_tcp_messages(state, from_client, state.dns_streams[i].feed(events))

    def _dns_tcp_messages(
        self, state: _TcpState, from_client: bool, messages: Iterable[tuple[int, int, int, bytes]]
    ) -> None:
        assert state.dns_reassembly is not None
        stream = state.dns_reassembly[0 if from_client else 1]
        for start, first_ns, last_ns, data in messages:
            try:
                msg = parse_dns(data)
            except DnsDecodeError:
                self.stats.dns_decode_errors += 1
                continue
            self._dns_message(
                state.ends,
                msg,
                first_ns,
                last_ns,
                len(data) + 2,
                payload_hash(data[:PAYLOAD_HASH_BYTES]),
                stream.seq_of(start),
                state,
            )

    def _dns_message(
        self,
        ends: FlowEnds,
        msg: DnsMessage,
        first_ns: int,
        last_ns: int,
        size: int,
        digest: int,
        tcp_seq: int,
        state: _TcpState | None,
    ) -> None:
        key = (ends.flow_id, msg.dns_id)
        pending = self._tables.dns
        if msg.is_response:
            query = pending.pop(key, None)
            if query is None:
                self.stats.dns_orphan_responses += 1
                return
            self._emit_dns(query, msg, first_ns, last_ns, size, tcp_seq)
            return
        query = pending.get(key)
        if query is not None:
            query.retrans += 1
            self.stats.dns_retransmitted_queries += 1
            return
        if len(pending) >= self.settings.max_dns_pending:
            oldest = next(iter(pending))
            self.stats.evicted_dns_queries += 1
            self._emit_dns(pending.pop(oldest), None, 0, 0)
        syn_seq, synack_seq = (state.syn_seq, state.synack_seq) if state is not None else (0, 0)
        pending[key] = _DnsQuery(ends, msg, first_ns, last_ns, size, digest, tcp_seq, 0, syn_seq, synack_seq)

    def _emit_dns(
        self,
        query: _DnsQuery,
        resp: DnsMessage | None,
        resp_first_ns: int,
        resp_last_ns: int,
        resp_bytes: int = 0,
        resp_tcp_seq: int = 0,
    ) -> None:
        ends, p, q = query.ends, self.point, query.msg
        self.stats.dns_requests += 1
        if resp is None:
            self.stats.dns_no_response += 1
        self._out.append((  # RequestRecord's fields in order (_ROW_FIELDS)
            p.point, p.host, p.iface, p.hop_kind,
            request_id(p.point, ends.flow_id, query.req_tcp_seq, query.first_ns, q.dns_id), ends.flow_id, "dns",
            ends.proto, ends.client_h, ends.client_p, ends.server_h, ends.server_p,
            query.syn_seq, query.synack_seq, 0, query.req_tcp_seq, resp_tcp_seq, query.req_hash,
            query.first_ns, query.last_ns, resp_first_ns, resp_last_ns, query.retrans, 0,
            query.req_bytes, resp_bytes,
            "", "", "", 0, "", "", "", "",  # method, http_host, path, status, x_request_id ... b3_span_id
            q.dns_id, q.qname, q.qtype, resp.rcode if resp is not None else 0,
            ",".join(resp.answers) if resp is not None else "",
            0, 0,  # req_body_bytes, resp_body_bytes
        ))  # fmt: skip


def _sender_is_client(flags: int, payload: bytes, sport: int, dport: int, settings: L7Settings) -> bool:
    """Whether the sender of the first packet seen of a flow is its client."""
    if flags & TCP_SYN:
        return not flags & 0x10  # a SYN's sender is the client, a SYN-ACK's the server
    if payload:
        if looks_like_request(payload):
            return True
        if looks_like_response(payload):
            return False
    server_ports = settings.http_ports | settings.dns_ports
    return not (sport in server_ports and dport not in server_ports)
