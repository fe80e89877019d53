"""The one shape of every error the API sends: ``{"error": {"code": ..., "message": ...}}``.

``code`` is a stable word a client can branch on (the table below); ``message`` is for people.
Validation errors add ``details``: FastAPI's list of what was wrong, where.

| code | status | when |
| --- | --- | --- |
| ``bad_host`` | 400 | the Host header is not an allowed name (DNS rebinding guard) |
| ``invalid_request`` | 422 | a query or path parameter is malformed or out of range |
| ``not_found`` | 404 | no such trace, or no such route |
| ``method_not_allowed`` | 405 | the route exists for another method |
| ``busy`` | 429 | too many heavy queries are running; retry after ``Retry-After`` seconds |
| ``store_error`` | 502 | the store rejected the query |
| ``store_unavailable`` | 503 | the store cannot be reached |
| ``store_timeout`` | 504 | the query ran past the per-query time limit |
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel


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
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)
