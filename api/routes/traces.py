"""Stitched traces: ``GET /api/v1/traces`` (search) and ``GET /api/v1/traces/{trace_id}`` (one trace
with its spans in hop order: a point query on the trace id)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel

from hopscope.api.auth import TRACES_READ_SCOPE
from hopscope.api.deps import HEAVY, StoreDep, TimeRangeDep, filters_of
from hopscope.api.errors import COMMON_RESPONSES, NOT_FOUND
from hopscope.api.models import SpanJson, TraceJson
from hopscope.store.query import FilterValue
from hopscope.topology.inventory import EMPTY, Inventory

router = APIRouter(
    prefix="/api/v1/traces", tags=["traces"], responses=COMMON_RESPONSES, dependencies=[TRACES_READ_SCOPE]
)

Text = Annotated[str | None, Query(max_length=1024)]
SEARCH_HELP = "a trace id, a path, a client address or an x-request-id"
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
STATUS_CLASSES = {"1xx": (100, 199), "2xx": (200, 299), "3xx": (300, 399), "4xx": (400, 499), "5xx": (500, 599)}
ENTITY_HELP = (
    "an inventory entity (pod:ns/name, service:ns/name, node:name) or ip:ADDR: traces with a hop from or to one "
    "of its addresses; repeat for several (all must match)"
)
LINK_HELP = "a link between two capture points, 'a>b': traces whose path crossed it"


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


def entity_addresses(inventory: Inventory, entity_id: str) -> list[str]:
    """The addresses an entity id stands for (``ip:ADDR``: that address); 422 when it is unknown."""
    kind, _, rest = entity_id.partition(":")
    if kind == "ip":
        try:
            return [str(ipaddress.ip_address(rest))]
        except ValueError:
            raise HTTPException(422, f"entity {entity_id!r}: {rest!r} is not an IP address") from None
    addrs = sorted(addr for addr, e in inventory.by_ip.items() if e.id == entity_id)
    if not addrs:
        known = any(e.id == entity_id for e in inventory.entities)
        why = "claims no address" if known else "is not in the server's inventory"
        raise HTTPException(422, f"entity {entity_id!r} {why}")
    return addrs


def _link_items(link: str) -> str:
    a, sep, b = link.partition(">")
    if not sep or not a.strip() or not b.strip() or "," in link:
        raise HTTPException(422, f"link {link!r} is not 'a>b' (two capture point names)")
    return f"{a.strip()},{b.strip()}"


@router.get("", response_model=TracesOut, dependencies=[HEAVY])
def list_traces(
    request: Request,
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
    min_duration_us: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
    max_duration_us: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
    min_lost_pkts: Annotated[int | None, Query(ge=0, le=2**32 - 1)] = None,
    http_host: Annotated[str | None, Query(max_length=1024, description="HTTP Host header (the service asked)")] = None,
    path_contains: Annotated[str | None, Query(max_length=1024, description="part of the request target")] = None,
    status_class: Annotated[Literal["1xx", "2xx", "3xx", "4xx", "5xx"] | None, Query()] = None,
    traceparent: Annotated[str | None, Query(max_length=1024, description="part of the W3C traceparent")] = None,
    point: Annotated[str | None, Query(max_length=1024, description="traces seen at this capture point")] = None,
    hop_kind: Annotated[str | None, Query(max_length=64, description="traces with a hop of this kind")] = None,
    link: Annotated[str | None, Query(max_length=2048, description=LINK_HELP)] = None,
    entity: Annotated[list[str] | None, Query(description=ENTITY_HELP)] = None,
    order: Annotated[Literal["time", "time_desc", "slowest"], Query()] = "time",
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="rows to skip (the next page)")] = 0,
) -> TracesOut:
    """Traces that started in ``[start_ns, end_ns)``, oldest first, newest first (``time_desc``) or
    slowest first; every filter given must match (blank text is no filter)."""
    low, high = STATUS_CLASSES[status_class] if status_class else (None, None)
    filters = filters_of(
        kind=kind, method=method, path=path, status=status, error=error, x_request_id=x_request_id,
        client_h=client_h, duration_us__gte=min_duration_us, duration_us__lte=max_duration_us,
        lost_pkts__gte=min_lost_pkts, http_host=http_host, path__contains=path_contains, status__gte=low,
        status__lte=high, traceparent__contains=traceparent, points__items=point and point.strip(),
        **{"spans.hop_kind": hop_kind},
    )  # fmt: skip
    if link and link.strip():
        filters["points__items#link"] = _link_items(link)
    inventory: Inventory = getattr(request.app.state, "inventory", None) or EMPTY
    if len(entity or ()) > 16 or any(len(e) > 1024 for e in entity or ()):
        raise HTTPException(422, "at most 16 entity filters of at most 1024 characters each")
    for i, ident in enumerate(e.strip() for e in entity or () if e.strip()):
        filters[f"spans.orig_h|resp_h#{i}"] = entity_addresses(inventory, ident)
    if q and q.strip():
        filters.update(_free_text(q))
    traces = store.query_traces(window.start_ns, window.end_ns, filters, window.limit, order, offset)
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
