"""The one shape of every error the API sends: ``{"error": {"code": ..., "message": ...}}``.

``code`` is a stable word a client can branch on (the table below); ``message`` is for people.
Validation errors add ``details``: FastAPI's list of what was wrong, where.

| code | status | when |
| --- | --- | --- |
| ``bad_host`` | 400 | the Host header is not an allowed name (DNS rebinding guard) |
| ``unauthorized`` | 401 | no bearer token, or one the server does not know (``WWW-Authenticate: Bearer``) |
| ``forbidden`` | 403 | the token lacks the route's scope |
| ``invalid_request`` | 422 | a query or path parameter is malformed or out of range |
| ``not_found`` | 404 | no such trace, no packets of it available (``routes/packets.py`` says why), or no such route |
| ``method_not_allowed`` | 405 | the route exists for another method |
| ``too_large`` | 413 | a trace's flows hold more packets than the server reads for one answer |
| ``busy`` | 429 | too many heavy queries are running; retry after ``Retry-After`` seconds |
| ``store_error`` | 502 | the store rejected the query |
| ``store_unavailable`` | 503 | the store cannot be reached |
| ``store_timeout`` | 504 | the query ran past the per-query time limit |
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from hopscope.errors import ConfigError, UnavailableError
from hopscope.store import QueryError, QueryTimeoutError

log = logging.getLogger(__name__)

#: The ``code`` of an HTTP error raised without one, by status.
CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    422: "invalid_request",
    429: "busy",
    502: "store_error",
    503: "store_unavailable",
    504: "store_timeout",
}


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorOut(BaseModel):
    """What every error response carries."""

    error: ErrorBody


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


#: The error responses every API route can give, for the OpenAPI schema (``responses=``).
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _doc("bad_host: the Host header is not one this server answers"),
    401: _doc("unauthorized: no bearer token, or an unknown one (the server has a token file)"),
    403: _doc("forbidden: the token lacks the scope this route needs"),
    422: _doc("invalid_request: a parameter is malformed or out of range (details say which)"),
    429: _doc("busy: too many heavy queries running; retry after Retry-After seconds"),
    502: _doc("store_error: the store rejected the query"),
    503: _doc("store_unavailable: the store cannot be reached"),
    504: _doc("store_timeout: the query ran past the per-query time limit"),
}

#: Added to routes that look one thing up.
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _doc("not_found: no such trace")}


def add_error_handlers(app: FastAPI) -> None:
    """Every error the app raises, answered in the one shape."""

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = jsonable_encoder(exc.errors(), exclude={"input", "ctx", "url"})
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return error_response(422, "invalid_request", message, details=details)

    @app.exception_handler(ConfigError)
    async def bad_filter(_: Request, exc: ConfigError) -> JSONResponse:
        return error_response(422, "invalid_request", str(exc))

    @app.exception_handler(UnavailableError)
    async def store_down(_: Request, exc: UnavailableError) -> JSONResponse:
        log.warning("store unavailable: %s", exc)
        return error_response(503, "store_unavailable", str(exc))

    @app.exception_handler(QueryTimeoutError)
    async def store_timeout(_: Request, exc: QueryTimeoutError) -> JSONResponse:
        log.warning("store query timed out: %s", exc)
        return error_response(504, "store_timeout", "the query ran past the time limit; narrow the range or filter")

    @app.exception_handler(QueryError)
    async def store_error(_: Request, exc: QueryError) -> JSONResponse:
        log.error("store query failed: %s", exc)
        return error_response(502, "store_error", "the store rejected the query")
