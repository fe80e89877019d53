"""The FastAPI application factory: REST under ``/api/v1`` and the trace lookup page at ``/``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from hopscope import __version__
from hopscope.api.config import ApiSettings
from hopscope.api.routes import flows, requests, topology, traces
from hopscope.api.security import HeadAsGet, HostGuard, SecurityHeaders
from hopscope.errors import ConfigError, UnavailableError
from hopscope.store import QueryError, Store
from hopscope.topology.inventory import Inventory

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def create_app(
    store: Store,
    settings: ApiSettings | None = None,
    *,
    close_store: bool = False,
    inventory: Inventory | None = None,
) -> FastAPI:
    """An app serving ``store``. The caller owns the store unless ``close_store`` is set. ``inventory``
    names the pods, Services and nodes behind addresses in the topology views (None: addresses only)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if close_store:
            store.close()

    settings = settings or ApiSettings()
    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN into the API's origin.
    # The schema itself is at /openapi.json.
    app = FastAPI(title="hopscope", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.store = store
    app.state.settings = settings
    app.state.inventory = inventory
    for module in (flows, requests, traces, topology):
        app.include_router(module.router)
    _add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # The last added runs first: security headers on every answer, Host checked before anything else.
    app.add_middleware(HeadAsGet)
    app.add_middleware(HostGuard, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(SecurityHeaders)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, object]:
        return {"status": "ok", "store": store.url, "degradations": store.degradations()}

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ConfigError)
    async def bad_filter(_: Request, exc: ConfigError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(UnavailableError)
    async def store_down(_: Request, exc: UnavailableError) -> JSONResponse:
        log.warning("store unavailable: %s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(QueryError)
    async def store_error(_: Request, exc: QueryError) -> JSONResponse:
        log.error("store query failed: %s", exc)
        return JSONResponse({"detail": "the store rejected the query"}, status_code=502)
