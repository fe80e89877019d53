"""L4 flow records per capture point: ``GET /api/v1/flows``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from hopscope.api.auth import TRACES_READ_SCOPE
from hopscope.api.deps import HEAVY, StoreDep, TimeRangeDep, filters_of
from hopscope.api.errors import COMMON_RESPONSES
from hopscope.api.models import FlowJson

router = APIRouter(
    prefix="/api/v1/flows", tags=["flows"], responses=COMMON_RESPONSES, dependencies=[TRACES_READ_SCOPE]
)

Text = Annotated[str | None, Query(max_length=256)]
Port = Annotated[int | None, Query(ge=0, le=65535)]


class FlowsOut(BaseModel):
    count: int
    flows: list[FlowJson]


@router.get("", response_model=FlowsOut, dependencies=[HEAVY])
def list_flows(
    store: StoreDep,
    window: TimeRangeDep,
    point: Text = None,
    host: Text = None,
    orig_h: Text = None,
    resp_h: Text = None,
    orig_p: Port = None,
    resp_p: Port = None,
    proto: Annotated[int | None, Query(ge=0, le=255)] = None,
    conn_state: Text = None,
    service: Annotated[str | None, Query(max_length=256, description="FlowRecord.service, whole ('http,ssl')")] = None,
    community_id: Text = None,
    syn_seq: Annotated[int | None, Query(ge=0, le=2**32 - 1)] = None,
) -> FlowsOut:
    """Flows that started in ``[start_ns, end_ns)`` (newest report of each), oldest first."""
    filters = filters_of(
        point=point, host=host, orig_h=orig_h, resp_h=resp_h, orig_p=orig_p, resp_p=resp_p,
        proto=proto, conn_state=conn_state, service=service, community_id=community_id, syn_seq=syn_seq,
    )  # fmt: skip
    flows = store.query_flows(window.start_ns, window.end_ns, filters, window.limit)
    return FlowsOut(count=len(flows), flows=flows)
