"""The packets of a stored trace, hop by hop: what ``GET /api/v1/traces/{id}/pcap`` and ``/packets`` and
``hopscope pcap`` serve.

For each span of the trace (optionally only those at one capture point) the packets of its flow at
its point are found through ``packet_index`` rows: the store's (written by ``hopscope analyze`` and
``hopscope demo``) and those of any rolling packet stores given (``hopscope.probes.packet_store``,
written by live probes and agents). They are read from their capture files and cut down to the
request's exchange (``hopscope.probes.packet_slice``: its request and response bytes, the ACKs in
between, the handshake with a connection's first exchange and the teardown with its last); an L4
trace gets its whole flow. Several spans at one point (a proxy's two legs) share that point's list.

Packets are unavailable (``PacketsUnavailable``, the API's 404) when no index row names the flow
(captured before packets were indexed, or by a probe without a packet store), when the file is gone or
cut (moved, deleted, or dropped by a rolling store as its size or age limit passed), or when the
request record a span names is not in the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hopscope.errors import HopscopeError
from hopscope.probes.packet_index import PacketsUnavailable
from hopscope.probes.packet_slice import Endpoints, Packet, exchange_packets, flow_packets
from hopscope.records import PacketIndex, RequestRecord, Span, Trace

NS_MAX = 2**63 - 1


class TraceNotFound(HopscopeError):
    """No such trace, or no hop of it at the point asked for."""


class TooManyPackets(HopscopeError):
    """A trace's flows hold more packets than the caller reads for one answer."""


class PacketSource(Protocol):
    """Where packet index rows come from: a store, a rolling packet store."""

    def packet_index(self, point: str, flow_ids: Sequence[int]) -> list[PacketIndex]: ...


class TraceStore(PacketSource, Protocol):
    """What the lookup needs of a store (``hopscope.store.Store`` has it)."""

    def get_trace(self, trace_id: str) -> tuple[Trace | None, list[Span]]: ...

    def query_requests(
        self, start_ns: int, end_ns: int, filters: dict[str, int | str] | None = ..., limit: int = ...
    ) -> list[RequestRecord]: ...


@dataclass(frozen=True, slots=True)
class PointPackets:
    """The packets of a trace at one capture point, in time order."""

    point: str
    hop_kind: str
    packets: list[Packet]


@dataclass(frozen=True, slots=True)
class TracePackets:
    trace_id: str
    points: list[PointPackets]  # in hop order

    def as_json(self) -> dict[str, object]:
        """The body of ``GET /api/v1/traces/{id}/packets``."""
        return {
            "trace_id": self.trace_id,
            "points": [{"point": p.point, "hop_kind": p.hop_kind, "packets": [k.as_json() for k in p.packets]}
                       for p in self.points],
        }  # fmt: skip


def trace_packets(
    store: TraceStore, trace_id: str, point: str | None = None, sources: Sequence[PacketSource] = (),
    max_packets: int | None = None,
) -> TracePackets:  # fmt: skip
    """The packets of every hop of ``trace_id`` (or of its hops at ``point``); ``TraceNotFound`` or
    ``PacketsUnavailable`` with a message saying what is missing. ``max_packets``: the most packets
    read (a hop's whole flow is read to find its exchange); more is ``TooManyPackets``, before any
    file is opened."""
    trace, spans = store.get_trace(trace_id)
    if trace is None and not spans:
        raise TraceNotFound(f"no trace {trace_id}")
    hops = [s for s in spans if point is None or s.point == point]
    if not hops:
        known = ", ".join(dict.fromkeys(s.point for s in spans)) or "none"
        raise TraceNotFound(f"trace {trace_id} has no hop at point {point!r} (its points: {known})")
    rows = [index_rows(store, span, sources) for span in hops]
    total = sum(r.pkts for hop_rows in rows for r in hop_rows)
    if max_packets is not None and total > max_packets:
        raise TooManyPackets(f"the flows of trace {trace_id}{f' at point {point}' if point else ''} hold {total} "
                             f"packets, more than this server reads for one answer ({max_packets}): ask for one "
                             "point (?point=NAME), or use hopscope pcap")  # fmt: skip
    by_point: dict[str, PointPackets] = {}
    for span, hop_rows in zip(hops, rows, strict=True):
        held = by_point.setdefault(span.point, PointPackets(span.point, span.hop_kind, []))
        held.packets.extend(span_packets(store, span, hop_rows))
    for held in by_point.values():
        held.packets.sort(key=lambda p: p.ts_ns)
    return TracePackets(trace_id, list(by_point.values()))


def index_rows(store: TraceStore, span: Span, sources: Sequence[PacketSource] = ()) -> list[PacketIndex]:
    """Where the packets of ``span``'s flow lie, from the store and ``sources`` (each file once)."""
    rows = [r for source in (store, *sources) for r in source.packet_index(span.point, [span.flow_id])]
    if not rows:
        raise PacketsUnavailable(
            f"no packets of flow {span.flow_id} at point {span.point} are indexed: its capture was analysed "
            "before packets were indexed, or captured live without a packet store"
        )
    return list({(r.file, r.start_ns, r.linktype): r for r in rows}.values())  # a file named by two sources


def span_packets(store: TraceStore, span: Span, rows: Sequence[PacketIndex]) -> list[Packet]:
    """The packets of one hop: its request's exchange on its flow, or the whole flow of an L4 span."""
    try:
        packets = flow_packets(rows, Endpoints(span.orig_h, span.orig_p, span.resp_h, span.resp_p))
    except PacketsUnavailable as exc:
        raise PacketsUnavailable(
            f"packets of point {span.point} are not available: {exc} (moved or deleted since it was indexed, or "
            "dropped by a rolling packet store when it passed its size or age limit)"
        ) from exc
    if not span.request_id:
        return packets
    found = store.query_requests(0, NS_MAX, {"point": span.point, "request_id": span.request_id}, 1)
    if not found:
        raise PacketsUnavailable(f"request {span.request_id} of point {span.point} is not in the store")
    return exchange_packets(packets, found[0])
