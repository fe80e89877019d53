"""FastAPI dependencies: the store and the settings live on ``app.state``, set by ``create_app``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from hopscope.api.config import ApiSettings
from hopscope.store import Store
from hopscope.store.query import FilterValue


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]


NS_MAX = 2**63 - 1


class TimeRange:
    """``start_ns``/``end_ns`` query parameters, validated: non-negative, ordered, bounded width."""

    def __init__(
        self,
        settings: SettingsDep,
        start_ns: Annotated[int, Query(ge=0, le=NS_MAX, description="range start, ns since epoch")] = 0,
        end_ns: Annotated[int, Query(ge=0, le=NS_MAX, description="range end (exclusive), ns")] = NS_MAX,
        limit: Annotated[int, Query(ge=1, description="most rows to return")] = 100,
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
    """The store filters for the query parameters that were given (``None`` means not given)."""
    return {name: value for name, value in values.items() if value is not None}
