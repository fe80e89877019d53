"""``GET /metrics``: the API's Prometheus metrics, behind a scope of their own (``metrics:read``).

Counted per request, by route template (``/api/v1/traces/{trace_id}``, never the path itself, so a
scanner cannot grow the series; ``unmatched`` for paths no route serves), method and status:
``hopscope_api_requests_total`` and the ``hopscope_api_request_duration_seconds`` histogram (from the
request to the last byte of the answer), and ``hopscope_api_requests_in_progress``.

Access: ``/metrics`` sits inside the Host guard like every route, and with a token file it needs a
bearer token holding ``metrics:read`` (or ``admin``): the counters show what the API is asked and how
often, so they are not open to every holder of a ``traces:read`` token nor to anyone; Prometheus sends
the token with its scrape (``authorization: {credentials_file: ...}`` in the scrape config). Without a
token file the server is loopback-only and ``/metrics`` is open, like the rest of the API. Each app
keeps its metrics in a registry of its own (``app.state.metrics_registry``).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hopscope.api.auth import require
from hopscope.api.tokens import METRICS_READ

UNMATCHED = "unmatched"
#: Answer times, 1 ms to 60 s (a heavy list query may take its whole query timeout).
DURATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

router = APIRouter(tags=["metrics"], dependencies=[require(METRICS_READ)])


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Every metric of this app, in Prometheus' text format."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """ASGI middleware counting and timing every HTTP request by route template, method and status."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        labels = ["method", "route", "status"]
        self.requests = Counter("hopscope_api_requests", "HTTP requests answered", labels, registry=registry)
        self.duration = Histogram("hopscope_api_request_duration_seconds", "time from the request to the answer's "
                                  "last byte", labels, buckets=DURATION_BUCKETS_S, registry=registry)  # fmt: skip
        self.in_progress = Gauge("hopscope_api_requests_in_progress", "HTTP requests being answered",
                                 registry=registry)  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception before the answer started: the server answers 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.in_progress.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.in_progress.dec()
            labels = (scope["method"], route_template(scope), str(status))
            self.requests.labels(*labels).inc()
            self.duration.labels(*labels).observe(time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    """The path template of the route that served the request (``UNMATCHED`` when none did)."""
    route: Any = scope.get("route")
    if route is None:
        return UNMATCHED
    return str(getattr(route, "path_format", None) or getattr(route, "path", UNMATCHED))


def install(app: FastAPI) -> None:
    """``/metrics`` and the request metrics on ``app`` (call before the other middlewares are added:
    it then runs innermost, where the matched route is known)."""
    registry = CollectorRegistry()
    app.state.metrics_registry = registry
    app.include_router(router)
    app.add_middleware(RequestMetrics, registry=registry)
