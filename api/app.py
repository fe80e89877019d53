"""The FastAPI application factory: REST under ``/api/v1`` and the trace lookup page at ``/``."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from hopscope import __version__
from hopscope.api import metrics
from hopscope.api.auth import ScopeCheck
from hopscope.api.config import ApiSettings
from hopscope.api.deps import HeavyQueryGate
from hopscope.api.errors import add_error_handlers
from hopscope.api.routes import flows, packets, requests, topology, traces
from hopscope.api.security import HeadAsGet, HostGuard, SecurityHeaders
from hopscope.api.shards import MissingShardsHeader, cluster_status
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
    routers = [module.router for module in (flows, requests, traces, topology, packets)]
    for router in routers:
        app.include_router(router)
    add_error_handlers(app)
    _state_max_limit(app, settings.max_limit, routers)
    metrics.install(app)  # /metrics (scope metrics:read); innermost middleware: it sees the matched route
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # The last added runs first: security headers on every answer, Host checked before anything else.
    app.add_middleware(HeadAsGet)
    app.add_middleware(HostGuard, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(MissingShardsHeader)  # outermost: the scope's state is created before HeadAsGet copies it

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, object]:
        health: dict[str, object] = {"status": "ok", "store": store.url, "degradations": store.degradations()}
        cluster = cluster_status(store)
        if cluster is not None:
            health["cluster"] = cluster
        return health

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


def _state_max_limit(app: FastAPI, max_limit: int, routers: list[APIRouter]) -> None:
    """The schema's maximum of every ``limit`` parameter is this server's ``max_limit``; component
    schemas nothing refers to (the records' input forms, never sent) are left out; each route of
    ``routers`` names its scopes."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operation in (op for path in schema["paths"].values() for op in path.values()):
                for param in operation.get("parameters", []):
                    if param["name"] == "limit":
                        param["schema"]["maximum"] = max_limit
            _drop_unreferenced(schema)
            _state_scopes(routers, schema)
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]


def _state_scopes(routers: list[APIRouter], schema: dict[str, Any]) -> None:
    """Each route's security requirement names the scopes its ``ScopeCheck`` dependencies demand
    (OpenAPI 3.1: the roles an HTTP scheme needs), and its 403 says which."""
    for router in routers:
        for route in (r for r in router.routes if isinstance(r, APIRoute)):
            # a route's dependencies include its router's
            checks = [d.dependency for d in route.dependencies if isinstance(d.dependency, ScopeCheck)]
            scopes = list(dict.fromkeys(check.scope for check in checks))
            if not scopes:
                continue
            for method in route.methods or ():
                operation = schema["paths"][route.path_format][method.lower()]
                operation["security"] = [{"token": scopes}]
                operation["responses"]["403"]["description"] = f"forbidden: the token lacks {', '.join(scopes)}"


def _drop_unreferenced(schema: dict[str, Any]) -> None:
    components = schema.get("components", {}).get("schemas", {})
    text = json.dumps(schema["paths"]) + json.dumps(components)
    for name in [n for n in components if f'"#/components/schemas/{n}"' not in text]:
        del components[name]
