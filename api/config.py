"""API settings: one class, validated once at start-up, handed to the app factory."""

from __future__ import annotations

from dataclasses import dataclass

from hopscope.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """Settings of the HTTP API."""

    store_url: str = "chdb://var/hopscope.chdb"
    #: Most rows one list request may return; larger ``limit`` values are refused with 422.
    max_limit: int = 10_000

    def __post_init__(self) -> None:
        if self.max_limit < 1:
            raise ConfigError(f"max_limit must be positive, not {self.max_limit}")
