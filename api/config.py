"""API settings: one class, validated once at start-up, handed to the app factory."""

from __future__ import annotations

from dataclasses import dataclass

from hopscope.api.security import LOOPBACK_HOSTS, valid_host_name
from hopscope.errors import ConfigError
from hopscope.store.query import MAX_LIMIT

#: The largest ``max_limit`` a server may be configured with: the most rows one store query returns.
LIMIT_CEILING = MAX_LIMIT


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """Settings of the HTTP API."""

    store_url: str = "chdb://var/hopscope.chdb"
    #: Most rows one list request may return; larger ``limit`` values are refused with 422.
    max_limit: int = 10_000
    #: Host header names the API answers (any port); anything else gets 400 (DNS rebinding guard).
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    #: Heavy queries (the list and topology routes: range scans) running at once; one more gets 429.
    #: Trace lookups are never refused: the store keeps connections beyond these for them.
    max_heavy_queries: int = 4
    #: The Retry-After of a 429, seconds.
    retry_after_s: int = 1
    #: Rolling packet store directories (agents' and probes' ``packets`` stores) whose packets the pcap
    #: routes serve besides those the store's ``packet_index`` names.
    packet_stores: tuple[str, ...] = ()
    #: Most packets one pcap or packets answer reads (each hop's whole flow is read to find its
    #: request's exchange); a trace beyond is 413.
    max_packets: int = 200_000

    def __post_init__(self) -> None:
        if not 1 <= self.max_limit <= LIMIT_CEILING:
            raise ConfigError(f"max_limit must be in 1..{LIMIT_CEILING}, not {self.max_limit}")
        if self.max_heavy_queries < 1 or self.retry_after_s < 1 or self.max_packets < 1:
            raise ConfigError("max_heavy_queries, retry_after_s and max_packets must be at least 1")
        for name in self.allowed_hosts:
            if not valid_host_name(name):
                raise ConfigError(f"allowed host {name!r} is not a host name or address (no port, no scheme)")
