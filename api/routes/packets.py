"""The packets of one trace: ``GET /api/v1/traces/{trace_id}/pcap`` (a pcapng file) and
``GET /api/v1/traces/{trace_id}/packets`` (the same packets as JSON, for the TCP sequence view).

Both take ``?point=NAME`` (only that capture point's hops) and need the ``pcap:read`` scope. The
packets of each hop are its request's exchange on its connection, or the whole flow of an L4 trace
(``hopscope.correlate.packets`` states the rule); they are read from the capture files the store's
``packet_index`` rows name, and from the rolling packet stores this server was given
(``ApiSettings.packet_stores``). 404 when the trace or the point is unknown, and when the packets are
not available: never indexed, the capture file moved or deleted, or dropped by a rolling store once it
passed its size or age limit; the message says which. 413 when the flows to read hold more packets
than ``ApiSettings.max_packets`` (``serve --max-packets``): each hop's whole flow is read to find its
request's exchange, so one answer's cost is bounded by that.

The pcapng has one interface per capture point (and link type), named after the point (``if_name``),
nanosecond timestamps, packets in time order. In the JSON, ``ts_ns`` is a decimal string as every ns
time of the API (``api/models.py``); ``seq``/``ack`` are the raw 32-bit TCP numbers.
"""

from __future__ import annotations

import io
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from hopscope.api.auth import PCAP_READ_SCOPE
from hopscope.api.deps import HEAVY, SettingsDep, StoreDep
from hopscope.api.errors import COMMON_RESPONSES, ErrorOut
from hopscope.correlate.packets import PacketSource, TooManyPackets, TraceNotFound, TracePackets, trace_packets
from hopscope.probes.packet_index import PacketsUnavailable

router = APIRouter(
    prefix="/api/v1/traces", tags=["packets"], responses=COMMON_RESPONSES, dependencies=[PCAP_READ_SCOPE]
)

TRACE_ID = r"^[0-9a-f]{32}$"
PCAPNG_TYPE = "application/x-pcapng"
NOT_AVAILABLE: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "not_found: no such trace, no hop at that point, or its packets are "
          "not available (never indexed, capture file moved or deleted, or dropped by a rolling packet store "
          "past its size or age limit)"},
    413: {"model": ErrorOut, "description": "too_large: the trace's flows hold more packets than the server's "
          "max_packets; ask for one point"},
}  # fmt: skip

TraceIdPath = Annotated[str, Path(pattern=TRACE_ID, description="32 lower-case hex digits")]
PointQuery = Annotated[str | None, Query(max_length=1024, description="only the hops at this capture point")]


class PacketJson(BaseModel):
    """One packet as a capture point saw it."""

    ts_ns: str = Field(pattern=r"^[0-9]+$", description="capture time at the point, ns (decimal string: 64 bits)")
    dir: Literal["c2s", "s2c"] = Field(description="from the hop's client to its server, or back")
    src: str
    dst: str
    sport: int
    dport: int
    flags: str = Field(description="TCP flags as letters, lowest bit first: F S R P A U E C ('SA': SYN-ACK)")
    seq: int = Field(description="raw TCP sequence number (0 when not TCP)")
    ack: int = Field(description="raw TCP acknowledgement number")
    len: int = Field(description="L4 payload bytes")
    retransmission: bool = Field(description="TCP: its bytes (or SYN/FIN) were sent before in this direction")


class PointPacketsJson(BaseModel):
    point: str
    hop_kind: str
    packets: list[PacketJson]


class PacketsOut(BaseModel):
    trace_id: str
    points: list[PointPacketsJson]


def packet_sources(settings: SettingsDep) -> list[PacketSource]:
    """The rolling packet stores this server reads besides the store's index."""
    from hopscope.probes.packet_store import PacketStoreIndex

    return [PacketStoreIndex(directory) for directory in settings.packet_stores]


SourcesDep = Annotated[list[PacketSource], Depends(packet_sources)]


def _packets(
    store: StoreDep, settings: SettingsDep, sources: list[PacketSource], trace_id: str, point: str | None
) -> TracePackets:
    point = point.strip() if point and point.strip() else None
    try:
        return trace_packets(store, trace_id, point, sources, settings.max_packets)
    except (TraceNotFound, PacketsUnavailable) as exc:
        raise HTTPException(404, str(exc)) from exc
    except TooManyPackets as exc:
        raise HTTPException(413, str(exc)) from exc


@router.get(
    "/{trace_id}/pcap", response_class=Response, dependencies=[HEAVY],
    responses={200: {"content": {PCAPNG_TYPE: {}}, "description": "the trace's packets as pcapng"}, **NOT_AVAILABLE},
)  # fmt: skip
def get_pcap(
    store: StoreDep, settings: SettingsDep, sources: SourcesDep, trace_id: TraceIdPath, point: PointQuery = None
) -> Response:
    """The trace's packets (all hops, or one point's) as a pcapng file, one interface per point."""
    from hopscope.probes.packet_slice import write_pcapng

    found = _packets(store, settings, sources, trace_id, point)
    out = io.BytesIO()
    write_pcapng(out, [(p.point, p.packets) for p in found.points])
    name = f"{trace_id}{'-' + found.points[0].point if point and found.points else ''}.pcapng"
    return Response(out.getvalue(), media_type=PCAPNG_TYPE,
                    headers={"Content-Disposition": f'attachment; filename="{_safe(name)}"'})  # fmt: skip


@router.get("/{trace_id}/packets", response_model=PacketsOut, dependencies=[HEAVY], responses=NOT_AVAILABLE)
def get_packets(
    store: StoreDep, settings: SettingsDep, sources: SourcesDep, trace_id: TraceIdPath, point: PointQuery = None
) -> PacketsOut:
    """The same packets as JSON, per point in hop order, each point's in time order."""
    return PacketsOut.model_validate(_packets(store, settings, sources, trace_id, point).as_json())


def _safe(name: str) -> str:
    """A file name for Content-Disposition: letters, digits, ``-``, ``_``, ``.`` only."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
