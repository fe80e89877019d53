"""Stitched traces: ``GET /api/v1/traces`` (search) and ``GET /api/v1/traces/{trace_id}`` (one trace
with its spans in hop order: a point query on the trace id)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel

from hopscope.api.auth import TRACES_READ_SCOPE
from hopscope.api.deps import HEAVY, StoreDep, TimeRangeDep, filters_of
from hopscope.api.errors import COMMON_RESPONSES, NOT_FOUND
from hopscope.api.models import SpanJson, TraceJson
from hopscope.store.query import FilterValue

router = APIRouter(
    prefix="/api/v1/traces", tags=["traces"], responses=COMMON_RESPONSES, dependencies=[TRACES_READ_SCOPE]
)

Text = Annotated[str | None, Query(max_length=1024)]
SEARCH_HELP = "a trace id, a path, a client address or an x-request-id"
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


class TracesOut(BaseModel):
    count: int
    traces: list[TraceJson]


class TraceOut(BaseModel):
    trace: TraceJson
    spans: list[SpanJson]


def _free_text(q: str) -> dict[str, FilterValue]:
    """What a search box string means: a trace id, a path, an address, or a request id."""
    q = q.strip()
    if TRACE_ID.match(q):
        return {"trace_id": q}
    if q.startswith("/"):
        return {"path": q}
    try:
        return {"client_h": str(ipaddress.ip_address(q))}
    except ValueError:
        return {"x_request_id": q}


@router.get("", response_model=TracesOut, dependencies=[HEAVY])
def list_traces(
    store: StoreDep,
    window: TimeRangeDep,
    q: Annotated[str | None, Query(max_length=1024, description=SEARCH_HELP)] = None,
    kind: Annotated[Literal["l4", "l7"] | None, Query()] = None,
    method: Text = None,
    path: Text = None,
    status: Annotated[int | None, Query(ge=0, le=999)] = None,
    error: Annotated[int | None, Query(ge=0, le=1)] = None,
    x_request_id: Text = None,
    client_h: Text = None,
    min_duration_us: Annotated[int | None, Query(ge=0)] = None,
    min_lost_pkts: Annotated[int | None, Query(ge=0, le=2**32 - 1)] = None,
    order: Annotated[Literal["time", "slowest"], Query()] = "time",
) -> TracesOut:
    """Traces that started in ``[start_ns, end_ns)``; ``order=slowest`` sorts the page by duration."""
    filters = filters_of(
        kind=kind, method=method, path=path, status=status, error=error, x_request_id=x_request_id,
        client_h=client_h, duration_us__gte=min_duration_us, lost_pkts__gte=min_lost_pkts,
    )  # fmt: skip
    if q and q.strip():
        filters.update(_free_text(q))
    traces = store.query_traces(window.start_ns, window.end_ns, filters, window.limit)
    if order == "slowest":
        traces.sort(key=lambda t: t.duration_us, reverse=True)
    return TracesOut(count=len(traces), traces=traces)


@router.get("/{trace_id}", response_model=TraceOut, responses=NOT_FOUND)
def get_trace(
    store: StoreDep,
    trace_id: Annotated[str, Path(pattern=TRACE_ID.pattern, description="32 lower-case hex digits")],
) -> TraceOut:
    trace, spans = store.get_trace(trace_id)
    if trace is None:
        raise HTTPException(404, f"no trace {trace_id}")
    return TraceOut(trace=trace, spans=spans)
