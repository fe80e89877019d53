"""L7 request records per capture point: ``GET /api/v1/requests``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from hopscope.api.auth import TRACES_READ_SCOPE
from hopscope.api.deps import HEAVY, StoreDep, TimeRangeDep, filters_of
from hopscope.api.errors import COMMON_RESPONSES
from hopscope.api.models import RequestJson

router = APIRouter(
    prefix="/api/v1/requests", tags=["requests"], responses=COMMON_RESPONSES, dependencies=[TRACES_READ_SCOPE]
)

Text = Annotated[str | None, Query(max_length=1024)]


class RequestsOut(BaseModel):
    count: int
    requests: list[RequestJson]


@router.get("", response_model=RequestsOut, dependencies=[HEAVY])
def list_requests(
    store: StoreDep,
    window: TimeRangeDep,
    point: Text = None,
    l7_proto: Text = None,
    method: Text = None,
    path: Text = None,
    status: Annotated[int | None, Query(ge=0, le=999)] = None,
    x_request_id: Text = None,
    dns_qname: Text = None,
    orig_h: Text = None,
) -> RequestsOut:
    """Requests whose first byte passed their point in ``[start_ns, end_ns)``, oldest first."""
    filters = filters_of(
        point=point, l7_proto=l7_proto, method=method, path=path, status=status,
        x_request_id=x_request_id, dns_qname=dns_qname, orig_h=orig_h,
    )  # fmt: skip
    rows = store.query_requests(window.start_ns, window.end_ns, filters, window.limit)
    return RequestsOut(count=len(rows), requests=rows)
