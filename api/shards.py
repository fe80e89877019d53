"""Saying which shards an answer lacks, when the store is a ClickHouse cluster.

A cluster store reads with ``skip_unavailable_shards``: with a shard down, every route still answers
from the shards that are up. ``MissingShardsHeader`` then adds ``X-Hopscope-Missing-Shards`` to the
answer: the numbers of the shards (``system.clusters``' ``shard_num``) none of whose servers answer,
comma-separated, e.g. ``2``, or ``unknown`` when the cluster's servers cannot be listed. The header
is absent when every shard answers, and on stores that are not clusters. ``/healthz`` carries the
same in its ``cluster`` field, with the addresses and the replicas that are down.

The check runs after the route has read (a TCP connect to each server, reused for a second), so it
describes the cluster as the answer leaves: a shard that returned in between is not named, and one
that left in between is.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hopscope.errors import HopscopeError
from hopscope.store import Store
from hopscope.store.cluster import ClusterStore

log = logging.getLogger(__name__)

MISSING_SHARDS_HEADER = "X-Hopscope-Missing-Shards"

#: Where ``get_store`` leaves the request's store in the ASGI scope's state.
STATE_KEY = "hopscope_store"


def note_store(scope_state: dict[str, Any], store: Store) -> None:
    """Remember the store a request reads (called by the store dependency)."""
    scope_state[STATE_KEY] = store


def cluster_status(store: Store) -> dict[str, Any] | None:
    """The cluster part of ``/healthz``: shards, missing shards, replicas down (None: not a cluster)."""
    if not isinstance(store, ClusterStore):
        return None
    return store.status().as_dict()


def _missing_value(store: ClusterStore) -> bytes:
    """The header's value: missing shard numbers, ``unknown`` when the cluster cannot be asked, or empty."""
    try:
        missing = store.missing_shards()
    except HopscopeError as exc:  # the answer is sent all the same; say that its completeness is unknown
        log.warning("cannot tell which shards of %s answer: %s", store.url, exc)
        return b"unknown"
    return ",".join(str(s) for s in missing).encode()


class MissingShardsHeader:
    """Adds ``X-Hopscope-Missing-Shards`` to answers read from a cluster with shards down."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Create the state dict here, so middlewares that copy the scope share it with the routes.
        state: dict[str, Any] = scope.setdefault("state", {})

        async def send_with_shards(message: Message) -> None:
            if message["type"] == "http.response.start":
                store = state.get(STATE_KEY)
                if isinstance(store, ClusterStore):
                    value = await anyio.to_thread.run_sync(_missing_value, store)
                    if value:
                        message = {
                            **message,
                            "headers": [*message.get("headers", []), (MISSING_SHARDS_HEADER.lower().encode(), value)],
                        }
            await send(message)

        await self.app(scope, receive, send_with_shards)
