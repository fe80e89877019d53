"""The FastAPI application factory: REST under ``/api/v1`` and the trace lookup page at ``/``."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from hopscope import __version__
from hopscope.api.config import ApiSettings
from hopscope.api.deps import HeavyQueryGate
from hopscope.api.errors import add_error_handlers
from hopscope.api.routes import flows, requests, topology, traces
from hopscope.api.security import HeadAsGet, HostGuard, SecurityHeaders
from hopscope.api.tokens import TokenVerifier
from hopscope.errors import ConfigError
from hopscope.store import Store
from hopscope.topology.inventory import Inventory

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def create_app(
    store: Store,
    settings: ApiSettings | None = None,
    *,
    close_store: bool = False,
    inventory: Inventory | None = None,
    tokens: TokenVerifier | None = None,
    tenant_stores: Mapping[str, Store] | None = None,
) -> FastAPI:
    """An app serving ``store``. The caller owns the stores unless ``close_store`` is set. ``inventory``
    names the pods, Services and nodes behind addresses in the topology views (None: addresses only).
    ``tokens``: the API needs a bearer token of these (None: it is open, ``hopscope.api.auth``);
    ``tenant_stores``: the store of each tenant the tokens name (a token without a tenant reads ``store``)."""
    tenant_stores = dict(tenant_stores or {})
    _check_tenants(tokens, tenant_stores)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if close_store:
            for each in (store, *tenant_stores.values()):
                each.close()

    settings = settings or ApiSettings()
    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN into the API's origin.
    # The schema itself is at /openapi.json.
    app = FastAPI(title="hopscope", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.store = store
    app.state.tenant_stores = tenant_stores
    app.state.tokens = tokens
    app.state.settings = settings
    app.state.heavy_gate = HeavyQueryGate(settings.max_heavy_queries)
    app.state.inventory = inventory
    for module in (flows, requests, traces, topology):
        app.include_router(module.router)
    add_error_handlers(app)
    _state_max_limit(app, settings.max_limit)
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


def _check_tenants(tokens: TokenVerifier | None, tenant_stores: Mapping[str, Store]) -> None:
    """Every tenant a token names has a store; tenant stores come with tokens."""
    if tokens is None:
        if tenant_stores:
            raise ConfigError("tenant stores need a token file: tokens say which tenant a request is")
        return
    missing = sorted(tokens.tenants - set(tenant_stores))
    if missing:
        raise ConfigError(f"tokens name tenants without a store: {', '.join(missing)} (give --tenant-store TENANT=URL)")


def _state_max_limit(app: FastAPI, max_limit: int) -> None:
    """The schema's maximum of every ``limit`` parameter is this server's ``max_limit``; component
    schemas nothing refers to (the records' input forms, never sent) are left out."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operation in (op for path in schema["paths"].values() for op in path.values()):
                for param in operation.get("parameters", []):
                    if param["name"] == "limit":
                        param["schema"]["maximum"] = max_limit
            _drop_unreferenced(schema)
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]


def _drop_unreferenced(schema: dict[str, Any]) -> None:
    components = schema.get("components", {}).get("schemas", {})
    text = json.dumps(schema["paths"]) + json.dumps(components)
    for name in [n for n in components if f'"#/components/schemas/{n}"' not in text]:
        del components[name]
