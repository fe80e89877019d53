"""FastAPI dependencies: the stores and the settings live on ``app.state``, set by ``create_app``.

``StoreDep`` is the store of the request's principal: its tenant's store, or the server's own store
for a token without a tenant (and for every request of a server without a token file)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from hopscope.api.auth import PrincipalDep
from hopscope.api.config import LIMIT_CEILING, ApiSettings
from hopscope.api.shards import note_store
from hopscope.store import Store
from hopscope.store.query import FilterValue


def get_store(request: Request, principal: PrincipalDep) -> Store:
    if principal.tenant is None:
        store: Store = request.app.state.store
    else:
        store = request.app.state.tenant_stores[principal.tenant]  # create_app checked it exists
    note_store(request.scope.setdefault("state", {}), store)  # for X-Hopscope-Missing-Shards
    return store


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]


class HeavyQueryGate:
    """At most ``limit`` heavy queries at once. One more is refused, not queued: a queue would hold a
    worker thread per waiting request, and trace lookups would wait behind them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def try_enter(self) -> bool:
        return self._slots.acquire(blocking=False)

    def leave(self) -> None:
        self._slots.release()


async def heavy_query_slot(request: Request, settings: SettingsDep) -> AsyncIterator[None]:
    """Holds one of the heavy-query slots for the request, or answers 429 with Retry-After."""
    gate: HeavyQueryGate = request.app.state.heavy_gate
    if not gate.try_enter():
        raise HTTPException(
            429,
            f"{gate.limit} heavy queries are running; retry in {settings.retry_after_s} s",
            headers={"Retry-After": str(settings.retry_after_s)},
        )
    try:
        yield
    finally:
        gate.leave()


#: Add to a route's ``dependencies`` when it scans a time range (lists, topology views).
HEAVY = Depends(heavy_query_slot)


NS_MAX = 2**63 - 1
START_HELP = "range start, ns since the epoch (inclusive)"
END_HELP = "range end, ns since the epoch (exclusive); must be greater than start_ns, else 422"
LIMIT_HELP = "most rows to return; at most the server's max_limit (the schema's maximum), else 422"


class TimeRange:
    """``start_ns``/``end_ns``/``limit`` query parameters, validated: ``0 <= start_ns < end_ns``,
    ``1 <= limit <= max_limit``. The schema states the bounds (``create_app`` writes the server's
    ``max_limit`` into it); the order of the two times, which a schema cannot say, is in END_HELP."""

    def __init__(
        self,
        settings: SettingsDep,
        start_ns: Annotated[int, Query(ge=0, lt=NS_MAX, description=START_HELP)] = 0,
        end_ns: Annotated[int, Query(gt=0, le=NS_MAX, description=END_HELP)] = NS_MAX,
        limit: Annotated[int, Query(ge=1, le=LIMIT_CEILING, description=LIMIT_HELP)] = 100,
    ) -> None:
        if end_ns <= start_ns:
            raise HTTPException(422, f"end_ns ({end_ns}) must be after start_ns ({start_ns})")
        if limit > settings.max_limit:
            raise HTTPException(422, f"limit {limit} is above the maximum {settings.max_limit}")
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.limit = limit


TimeRangeDep = Annotated[TimeRange, Depends()]


def filters_of(**values: FilterValue | None) -> dict[str, FilterValue]:
    """The store filters for the query parameters that were given: ``None`` (absent) and blank text
    (``?path=``, ``?point=%20``) mean no filter."""
    return {name: value for name, value in values.items() if value is not None and not _blank(value)}


def _blank(value: FilterValue) -> bool:
    return isinstance(value, str) and not value.strip()
