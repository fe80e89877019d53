"""Bearer-token authentication and scopes, as FastAPI dependencies.

With a token file (``create_app(tokens=...)``), every ``/api/v1`` route needs an ``Authorization:
Bearer <token>`` header naming a token of the file (else 401 ``unauthorized``, with ``WWW-Authenticate:
Bearer``) whose scopes include the route's (else 403 ``forbidden``). Each router declares its scope
once, in its ``dependencies`` (``TRACES_READ_SCOPE``, ``PCAP_READ_SCOPE``); they run before the route's other
dependencies, so an unauthenticated request never takes a heavy-query slot or a store connection.
Without a token file every request is the open principal, holding every scope and no tenant: a
loopback-only server (``hopscope serve`` refuses other addresses without ``--insecure``).

Each refusal is logged on one line: client address, method and path, reason; never the token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hopscope.api.tokens import ADMIN, PCAP_READ, SCOPES, TRACES_READ, TokenVerifier

log = logging.getLogger(__name__)

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="an API token made by `hopscope token add`; each route states the scope it needs",
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as."""

    name: str  # the token's name; "open" without a token file
    scopes: frozenset[str]
    tenant: str | None  # whose store it reads; None: the server's --store

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes


#: Every request of a server without a token file.
OPEN = Principal("open", frozenset(SCOPES), None)


def printable(text: str) -> str:
    """``text`` with control characters escaped: a path from the request cannot forge log lines."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _refuse(request: Request, status: int, reason: str) -> HTTPException:
    client = request.client.host if request.client else "unknown"
    path = printable(request.url.path)
    log.warning("authentication failed: client %s, %s %s: %s", client, request.method, path, reason)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return HTTPException(status, reason, headers=headers)


def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """The principal of the request's bearer token, or 401."""
    verifier: TokenVerifier | None = request.app.state.tokens
    if verifier is None:
        return OPEN
    if credentials is None:
        given = "Authorization" in request.headers
        raise _refuse(request, 401, "the Authorization header is not a bearer token" if given else "no bearer token")
    entry = verifier.verify(credentials.credentials)
    if entry is None:
        raise _refuse(request, 401, "unknown token")
    return Principal(entry.name, entry.scopes, entry.tenant)


PrincipalDep = Annotated[Principal, Depends(authenticate)]


class ScopeCheck:
    """A dependency refusing, with 403, principals without ``scope``; ``create_app`` writes each route's
    scope into its OpenAPI security requirement (OpenAPI 3.1: the roles an HTTP scheme needs)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    def __call__(self, request: Request, principal: PrincipalDep) -> None:
        if not principal.allows(self.scope):
            raise _refuse(request, 403, f"token {principal.name!r} lacks the scope {self.scope}")


def require(scope: str) -> Any:
    """For a router's or route's ``dependencies=[...]``: the request's token must hold ``scope``."""
    return Depends(ScopeCheck(scope))


#: The scope of the routes reading traces, flows, requests and topology.
TRACES_READ_SCOPE = require(TRACES_READ)
#: The scope of routes reading packet captures.
PCAP_READ_SCOPE = require(PCAP_READ)
