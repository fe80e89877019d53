"""The record schema: what probes emit, what the correlator produces, what the store keeps.

Five record types, each a frozen, slotted dataclass whose fields carry their wire and column type and
a description (``Column``):

- ``FlowRecord``: one L4 flow (bidirectional, keyed by the 5-tuple as seen) at one capture point.
- ``RequestRecord``: one L7 request/response exchange (HTTP/1.x, DNS, ...) at one capture point.
- ``Span``: one hop of one stitched trace: where and when a request passed one capture point, and how
  it was linked to the previous hop.
- ``Trace``: one request end to end (or one L4 connection when it carries no L7 we parse).
- ``PacketIndex``: where one flow's packets at one capture point lie in a capture file.

On hot paths records travel as a ``Batch``: one typed column per field (numpy arrays for numbers, lists
of ``str`` for text, lists of int sequences for arrays), which is what the codec puts on the wire and
what the stores insert. Array columns (``ColumnType.I32_ARRAY``, ``U64_ARRAY``) are for the store's
own tables (the rollups' histograms): the codec does not carry them.

Conventions (Zeek's): ``orig_``/``resp_`` for the two directions of a conversation (the originator is
the side that sent the first SYN, or the first packet when no handshake was seen), ``src_``/``dst_`` for
one packet, ``client``/``server`` for roles. Units are in the names: ``_ns`` nanoseconds since the Unix
epoch (UInt64), ``_us`` microseconds. For the TCP anchors, 0 means "not seen": an ISN of exactly 0 is
possible but vanishingly rare, and the correlator never links on a 0 anchor.

``SCHEMA_VERSION`` changes when a field changes meaning or type; adding a field does not change it
(readers fill missing columns with defaults and ignore unknown ones).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

SCHEMA_VERSION = 1


class ColumnType(enum.Enum):
    """The logical type of a column: its numpy dtype on the wire and its ClickHouse type."""

    U8 = ("u1", "UInt8")
    U16 = ("<u2", "UInt16")
    U32 = ("<u4", "UInt32")
    U64 = ("<u8", "UInt64")
    I64 = ("<i8", "Int64")
    F32 = ("<f4", "Float32")
    STR = ("", "String")
    #: Arrays of numbers (a list of int sequences in a ``Batch``; ``dtype``: of their elements).
    I32_ARRAY = ("<i4", "Array(Int32)")
    U64_ARRAY = ("<u8", "Array(UInt64)")

    def __init__(self, dtype: str, clickhouse: str) -> None:
        self.dtype = dtype
        self.clickhouse = clickhouse

    @property
    def is_text(self) -> bool:
        return self is ColumnType.STR

    @property
    def is_array(self) -> bool:
        return self.clickhouse.startswith("Array(")

    @property
    def is_list(self) -> bool:
        """Held as a Python list in a ``Batch`` (text and arrays), not as a numpy array."""
        return self.is_text or self.is_array


@dataclass(frozen=True, slots=True)
class Column:
    """Describes one field of a record type."""

    name: str
    type: ColumnType
    doc: str


class HopKind(enum.StrEnum):
    """The kind of hop a capture point observes (DESIGN.md, "Capture points and hops")."""

    POD = "pod"  # pod or VM NIC, veth
    NODE = "node"  # node NIC, routing, tunnel endpoint
    NAT = "nat"  # before/after iptables DNAT/SNAT
    HYPERVISOR = "hypervisor"  # KVM tap, Linux bridge, OVS
    SWITCH = "switch"  # mirror/SPAN/ERSPAN port of a physical switch
    GATEWAY = "gateway"  # SLB, VIP
    PROXY = "proxy"  # sidecar such as envoy (its inbound or outbound leg)
    PROCESS = "process"  # reserved: inside the application process
    UNKNOWN = ""


def _col(ctype: ColumnType, doc: str) -> Any:
    default: Any = "" if ctype.is_text else (0.0 if ctype is ColumnType.F32 else 0)
    return field(default=default, metadata={"type": ctype, "doc": doc})


U8, U16, U32, U64, I64, F32, STR = (
    ColumnType.U8,
    ColumnType.U16,
    ColumnType.U32,
    ColumnType.U64,
    ColumnType.I64,
    ColumnType.F32,
    ColumnType.STR,
)


class Record:
    """Base of the record types: column introspection shared by codec and stores."""

    KIND: ClassVar[int]
    TABLE: ClassVar[str]

    @classmethod
    def columns(cls) -> tuple[Column, ...]:
        cached: tuple[Column, ...] | None = cls.__dict__.get("_columns_cache")
        if cached is None:
            cached = tuple(
                Column(f.name, f.metadata["type"], f.metadata["doc"])
                for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            )
            type.__setattr__(cls, "_columns_cache", cached)
        return cached


# --- L4 flows ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlowRecord(Record):
    """One L4 flow at one capture point, for one reporting interval or for its whole life.

    A long flow yields several records with the same ``flow_id`` (``final`` = 0 for the interim ones,
    whose counters are cumulative since the flow started), so the newest record of a flow is its state.
    """

    KIND: ClassVar[int] = 1
    TABLE: ClassVar[str] = "flows"

    point: str = _col(STR, "capture point name (unique per host and interface)")
    host: str = _col(STR, "host (node, hypervisor, switch) the capture point is on")
    iface: str = _col(STR, "interface name at the capture point")
    hop_kind: str = _col(STR, "HopKind of the capture point")
    flow_id: int = _col(U64, "stable id of this flow at this point (hash of point, 5-tuple, start)")
    start_ns: int = _col(U64, "time of the first packet")
    end_ns: int = _col(U64, "time of the last packet so far (TCP: up to the close, as Zeek's duration)")
    final: int = _col(U8, "1 when the flow ended or timed out, 0 for an interim report")
    ip_version: int = _col(U8, "4 or 6")
    proto: int = _col(U8, "IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6)")
    orig_h: str = _col(STR, "originator address as seen at this point")
    orig_p: int = _col(U16, "originator port (ICMP: type)")
    resp_h: str = _col(STR, "responder address as seen at this point")
    resp_p: int = _col(U16, "responder port (ICMP: the counterpart type, or the code of a one-way type)")
    orig_pkts: int = _col(U64, "packets from the originator")
    resp_pkts: int = _col(U64, "packets from the responder")
    orig_bytes: int = _col(U64, "payload bytes from the originator (TCP: sequence range, as Zeek's size)")
    resp_bytes: int = _col(U64, "payload bytes from the responder (TCP: sequence range, as Zeek's size)")
    orig_ip_bytes: int = _col(U64, "IP bytes (headers included) from the originator")
    resp_ip_bytes: int = _col(U64, "IP bytes (headers included) from the responder")
    syn_seq: int = _col(U32, "ISN of the client's SYN (0: no SYN seen); NAT-invariant join key")
    synack_seq: int = _col(U32, "ISN of the server's SYN-ACK (0: not seen); NAT-invariant join key")
    syn_ip_id: int = _col(U16, "IPv4 id of the first SYN (tie-breaker across points)")
    rtt_client_us: int = _col(U32, "SYN-ACK to ACK at this point: the client side of the handshake")
    rtt_server_us: int = _col(U32, "SYN to SYN-ACK at this point: the server side of the handshake")
    orig_retrans_pkts: int = _col(U32, "retransmitted segments from the originator")
    resp_retrans_pkts: int = _col(U32, "retransmitted segments from the responder")
    orig_ooo_pkts: int = _col(U32, "out-of-order segments from the originator")
    resp_ooo_pkts: int = _col(U32, "out-of-order segments from the responder")
    orig_zero_win: int = _col(U32, "zero-window advertisements by the originator")
    resp_zero_win: int = _col(U32, "zero-window advertisements by the responder")
    conn_state: str = _col(STR, "Zeek conn_state (S0, S1, SF, REJ, RSTO, RSTR, SH, OTH, ...)")
    history: str = _col(STR, "Zeek history letters (upper case: originator, lower case: responder)")
    close_type: str = _col(STR, "normal, client_rst, server_rst, server_syn_miss, half_close, timeout, ...")
    community_id: str = _col(STR, "Community ID v1 of the 5-tuple as seen here")
    vlan: int = _col(U16, "outer 802.1Q VLAN id (0: none)")
    tunnel: str = _col(STR, "enclosing tunnel, e.g. 'vxlan vni=42 10.0.0.1>10.0.0.2' ('' if none)")
    orig_payload_hash: int = _col(U64, "hash of the originator's first payload bytes (0: no payload)")
    resp_payload_hash: int = _col(U64, "hash of the responder's first payload bytes (0: no payload)")
    service: str = _col(
        STR, "Zeek's service: protocols found in the content, not the port (http, http2, ssl, ssh, dns; on "
        "the outer flow of a UDP tunnel the tunnel: vxlan, geneve, teredo, ayiya, gtpv1, gre), lower case, "
        "comma-separated in the order found ('' if none; hopscope.probes.service)"
    )
    missed_bytes: int = _col(
        U64, "Zeek's missed_bytes: TCP bytes the peer acknowledged that were never captured (content gaps), "
        "counted only while both sides are established"
    )
    tunnel_parents: str = _col(
        STR, "Zeek's tunnel_parents: flow_id (16 hex digits, as the uid is printed) of the outer UDP tunnel "
        "flow(s) the packets came in, comma-separated ('' if none)"
    )


# --- L7 requests -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestRecord(Record):
    """One L7 request and its response as seen at one capture point."""

    KIND: ClassVar[int] = 2
    TABLE: ClassVar[str] = "requests"

    point: str = _col(STR, "capture point name")
    host: str = _col(STR, "host the capture point is on")
    iface: str = _col(STR, "interface name at the capture point")
    hop_kind: str = _col(STR, "HopKind of the capture point")
    request_id: int = _col(U64, "stable id of this request at this point")
    flow_id: int = _col(U64, "flow_id of the FlowRecord that carried it")
    l7_proto: str = _col(STR, "http, dns, tls (one exchange of TLS records, no HTTP fields), ...")
    proto: int = _col(U8, "IP protocol number of the carrying flow")
    orig_h: str = _col(STR, "client address as seen here")
    orig_p: int = _col(U16, "client port as seen here")
    resp_h: str = _col(STR, "server address as seen here")
    resp_p: int = _col(U16, "server port as seen here")
    syn_seq: int = _col(U32, "syn_seq of the carrying connection (0: unknown)")
    synack_seq: int = _col(U32, "synack_seq of the carrying connection (0: unknown)")
    seq_in_flow: int = _col(U32, "index of this request on its connection (0 for the first)")
    req_tcp_seq: int = _col(U32, "TCP seq of the request's first byte (0: not TCP)")
    resp_tcp_seq: int = _col(U32, "TCP seq of the response's first byte (0: no response)")
    req_payload_hash: int = _col(U64, "hash of the request's first payload bytes (tie-breaker)")
    req_first_ns: int = _col(U64, "first byte of the request passed this point")
    req_last_ns: int = _col(U64, "last byte of the request passed this point")
    resp_first_ns: int = _col(U64, "first byte of the response passed this point (0: none)")
    resp_last_ns: int = _col(U64, "last byte of the response passed this point (0: none)")
    req_retrans: int = _col(U32, "retransmissions of the request's segments seen here")
    resp_retrans: int = _col(U32, "retransmissions of the response's segments seen here")
    req_bytes: int = _col(U64, "request bytes (headers and body) seen here")
    resp_bytes: int = _col(U64, "response bytes (headers and body) seen here")
    method: str = _col(STR, "HTTP method ('' for DNS)")
    http_host: str = _col(STR, "HTTP Host header")
    path: str = _col(STR, "HTTP request target")
    status: int = _col(U16, "HTTP status (0: no response)")
    x_request_id: str = _col(STR, "X-Request-ID header of the request")
    traceparent: str = _col(STR, "W3C traceparent header of the request")
    b3_trace_id: str = _col(STR, "B3 trace id (X-B3-TraceId or the b3 header)")
    b3_span_id: str = _col(STR, "B3 span id")
    dns_id: int = _col(U16, "DNS transaction id")
    dns_qname: str = _col(STR, "DNS query name")
    dns_qtype: int = _col(U16, "DNS query type")
    dns_rcode: int = _col(U8, "DNS response code (0 with resp_first_ns=0: no response)")
    dns_answers: str = _col(STR, "DNS answers, comma-separated")
    req_body_bytes: int = _col(
        U64, "request body bytes as framed (Content-Length, the sum of chunk sizes, or bytes to FIN)"
    )
    resp_body_bytes: int = _col(
        U64, "response body bytes as framed (survive a proxy that rewrites headers; 0: none or no response)"
    )


# --- stitched traces ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Span(Record):
    """One hop of one trace: a request (or connection) observed at one capture point."""

    KIND: ClassVar[int] = 3
    TABLE: ClassVar[str] = "spans"

    trace_id: str = _col(STR, "deterministic trace id (32 hex digits)")
    span_id: str = _col(STR, "deterministic span id (16 hex digits)")
    parent_span_id: str = _col(STR, "span of the previous hop ('' for the first)")
    hop_index: int = _col(U16, "position on the path, 0 = nearest the client")
    point: str = _col(STR, "capture point name")
    host: str = _col(STR, "host of the capture point")
    hop_kind: str = _col(STR, "HopKind of the capture point")
    side: str = _col(STR, "client or server: which end of a proxy-split path this hop is on")
    orig_h: str = _col(STR, "client address as seen at this hop")
    orig_p: int = _col(U16, "client port as seen at this hop")
    resp_h: str = _col(STR, "server address as seen at this hop")
    resp_p: int = _col(U16, "server port as seen at this hop")
    request_first_ns: int = _col(U64, "request's first byte passed this hop (clock-corrected)")
    request_last_ns: int = _col(U64, "request's last byte passed this hop (clock-corrected)")
    response_first_ns: int = _col(U64, "response's first byte passed this hop (0: none)")
    response_last_ns: int = _col(U64, "response's last byte passed this hop (0: none)")
    req_link_us: int = _col(I64, "request latency from the previous hop to this one")
    resp_link_us: int = _col(I64, "response latency from this hop back to the previous one")
    clock_offset_us: int = _col(I64, "correction applied to this host's timestamps")
    link_reason: str = _col(
        STR, "why this hop was linked: nat:syn_seq, l7:req_tcp_seq, proxy:x-request-id, ..."
    )
    link_confidence: float = _col(F32, "confidence of the link, 0..1")
    lost_pkts: int = _col(U32, "segments lost on the link from the previous hop to this one")
    retrans_pkts: int = _col(U32, "retransmissions of this request's segments seen here")
    flow_id: int = _col(U64, "flow_id of the observation")
    request_id: int = _col(U64, "request_id of the observation (0 for L4 traces)")
    version: int = _col(U64, "row version for ReplacingMergeTree (stitch time, ns)")


@dataclass(frozen=True, slots=True)
class Trace(Record):
    """One request end to end, or one L4 connection that carried no L7 protocol hopscope parses."""

    KIND: ClassVar[int] = 4
    TABLE: ClassVar[str] = "traces"

    trace_id: str = _col(STR, "deterministic trace id (32 hex digits)")
    kind: str = _col(STR, "l7 (a request) or l4 (a connection)")
    start_ns: int = _col(U64, "request's first byte at the first hop")
    end_ns: int = _col(U64, "response's last byte at the first hop (or last packet)")
    duration_us: int = _col(I64, "end_ns - start_ns in microseconds")
    l7_proto: str = _col(STR, "http, dns, ... ('' for l4)")
    method: str = _col(STR, "HTTP method")
    http_host: str = _col(STR, "HTTP Host header")
    path: str = _col(STR, "HTTP request target")
    status: int = _col(U16, "HTTP status (0: none)")
    dns_qname: str = _col(STR, "DNS query name")
    x_request_id: str = _col(STR, "X-Request-ID (from any hop)")
    traceparent: str = _col(STR, "W3C traceparent (from any hop)")
    client_h: str = _col(STR, "client address at the first hop")
    client_p: int = _col(U16, "client port at the first hop")
    server_h: str = _col(STR, "server address at the last hop")
    server_p: int = _col(U16, "server port at the last hop")
    hop_count: int = _col(U16, "number of spans")
    points: str = _col(STR, "capture points in path order, comma-separated")
    error: int = _col(U8, "1 when the request failed (5xx, RST, no response, DNS error)")
    lost_pkts: int = _col(U32, "segments lost along the path")
    loss_link: str = _col(STR, "'a>b' link with the most loss ('' if none)")
    slowest_link: str = _col(STR, "'a>b' link with the largest request+response latency")
    slowest_link_us: int = _col(I64, "latency of slowest_link")
    min_confidence: float = _col(F32, "lowest link confidence in the trace")
    syn_seq: int = _col(U32, "client ISN (the NAT-invariant key of the first connection)")
    version: int = _col(U64, "row version for ReplacingMergeTree (stitch time, ns)")


# --- where packets are kept ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PacketIndex(Record):
    """Where the packets of one flow at one capture point lie in one capture file (as Arkime keeps a
    session's packet positions): the file and, per packet, its frame's byte offset, captured and
    original length and time. A flow whose packets are spread over several files (a rolling packet
    store's segments) has a row per file. ``hopscope.probes.packet_index`` writes and reads them.
    """

    KIND: ClassVar[int] = 5
    TABLE: ClassVar[str] = "packet_index"

    point: str = _col(STR, "capture point name")
    flow_id: int = _col(U64, "flow_id of the FlowRecord the packets belong to")
    host: str = _col(STR, "host whose file system holds the file")
    file: str = _col(STR, "capture file (pcap or pcapng) holding the packets, an absolute path on that host")
    linktype: int = _col(U16, "LINKTYPE_* of the frames (a flow seen on interfaces of two link types has a row each)")
    start_ns: int = _col(U64, "time of the first of these packets")
    end_ns: int = _col(U64, "time of the last of these packets")
    pkts: int = _col(U32, "number of packets")
    frames: str = _col(
        STR, "per packet, in capture order: file offset of the frame's first byte, captured length, original "
        "length and time (hopscope.probes.packet_index.FRAME_DTYPE rows in base64)"
    )


RECORD_TYPES: tuple[type[Record], ...] = (FlowRecord, RequestRecord, Span, Trace, PacketIndex)
RECORD_BY_KIND: Mapping[int, type[Record]] = {t.KIND: t for t in RECORD_TYPES}
RECORD_BY_TABLE: Mapping[str, type[Record]] = {t.TABLE: t for t in RECORD_TYPES}

R = TypeVar("R", bound=Record)


def _default_column(ctype: ColumnType, length: int) -> ColumnData:
    """A column of ``length`` default values (empty text, empty arrays, zeros)."""
    if ctype.is_array:
        return [()] * length
    return [""] * length if ctype.is_text else np.zeros(length, ctype.dtype)


def _as_list(data: ColumnData) -> list[Any]:
    return data if isinstance(data, list) else data.tolist()

ColumnData = npt.NDArray[Any] | list[Any]  # list: of str (text) or of int sequences (arrays)


class Batch:
    """Records of one type as columns: numpy arrays for numbers, lists of str for text.

    ``columns`` maps every field of ``record_type`` to a sequence of length ``len(batch)``.
    """

    __slots__ = ("columns", "length", "record_type")

    def __init__(self, record_type: type[Record], columns: Mapping[str, ColumnData], length: int) -> None:
        self.record_type = record_type
        self.length = length
        full: dict[str, ColumnData] = {}
        for col in record_type.columns():
            data = columns.get(col.name)
            if data is None:
                full[col.name] = _default_column(col.type, length)
            elif col.type.is_list:
                full[col.name] = list(data)
            else:
                full[col.name] = np.asarray(data, dtype=col.type.dtype)
            if len(full[col.name]) != length:
                raise ValueError(f"column {col.name} has {len(full[col.name])} values, expected {length}")
        self.columns = full

    def __len__(self) -> int:
        return self.length

    @classmethod
    def wrap(cls, record_type: type[Record], columns: dict[str, ColumnData], length: int) -> Batch:
        """A batch of ``columns`` as they are: every field of ``record_type`` present, of its column
        type and ``length`` long (not checked, not copied). For decoders and gathers that build fresh
        columns so; everyone else goes through the constructor."""
        batch = cls.__new__(cls)
        batch.record_type, batch.columns, batch.length = record_type, columns, length
        return batch

    @classmethod
    def from_records(cls, record_type: type[R], records: Sequence[R]) -> Batch:
        names = [c.name for c in record_type.columns()]
        # one attrgetter call per record (C), then the rows transposed: no getattr per field in Python
        if len(names) > 1:
            return cls.from_rows(record_type, list(map(attrgetter(*names), records)))
        return cls.from_rows(record_type, [(getattr(r, names[0]),) for r in records])

    @classmethod
    def from_rows(cls, record_type: type[Record], rows: Sequence[tuple[Any, ...]]) -> Batch:
        """A batch of rows, each a tuple of the record type's fields in column order."""
        cols = record_type.columns()
        by_column = list(zip(*rows, strict=True)) if rows else [() for _ in cols]
        columns: dict[str, ColumnData] = {}
        for col, values in zip(cols, by_column, strict=True):
            columns[col.name] = list(values) if col.type.is_list else np.asarray(values, dtype=col.type.dtype)
        return cls(record_type, columns, len(rows))

    def records(self) -> Iterator[Record]:
        names = [c.name for c in self.record_type.columns()]
        lists = [_as_list(self.columns[n]) for n in names]
        for values in zip(*lists, strict=True):
            yield self.record_type(**dict(zip(names, values, strict=True)))

    def slice(self, start: int, stop: int) -> Batch:
        cols = {name: data[start:stop] for name, data in self.columns.items()}
        return Batch(self.record_type, cols, max(0, min(stop, self.length) - start))

    @classmethod
    def concat(cls, batches: Iterable[Batch]) -> Batch:
        batches = list(batches)
        if not batches:
            raise ValueError("concat of no batches")
        rtype = batches[0].record_type
        columns: dict[str, ColumnData] = {}
        for col in rtype.columns():
            parts = [b.columns[col.name] for b in batches]
            if col.type.is_list:
                columns[col.name] = list(chain.from_iterable(parts))
            else:
                columns[col.name] = np.concatenate(parts)
        return cls.wrap(rtype, columns, sum(len(b) for b in batches))

    def take(self, indices: npt.NDArray[np.intp]) -> Batch:
        """The records at ``indices``, in that order."""
        positions = indices.tolist()
        pick = itemgetter(*positions) if len(positions) > 1 else None  # C-speed gather for text columns
        cols: dict[str, ColumnData] = {}
        for name, data in self.columns.items():
            if not isinstance(data, list):
                cols[name] = data[indices]
            elif pick is not None:
                cols[name] = list(pick(data))
            else:
                cols[name] = [data[i] for i in positions]
        return Batch.wrap(self.record_type, cols, len(positions))
