"""What a ClickHouse server can do, detected from ``SELECT version()``.

The schema code asks a ``ServerFeatures`` value, never a version number, so the degradations on old
servers are in one place and can be listed (``ServerFeatures.degradations()``). Thresholds are the
first release where a feature is usable without an experimental setting (ClickHouse changelog);
the two versions this project runs and tests are Debian's 18.16 (all off) and chDB's current engine
(all on).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hopscope.errors import ConfigError

#: Feature name -> (first version usable without an experimental setting, what the schema does without it).
FEATURE_SINCE: dict[str, tuple[tuple[int, int], str]] = {
    "low_cardinality": ((19, 0), "dictionary-encoded text columns are plain String"),
    "codecs": ((19, 1), "columns use the table's default compression (no per-column CODEC)"),
    "ipv4_type": ((19, 3), "addresses stay String (hopscope stores v4 and v6 as text anyway)"),
    "ttl": ((19, 6), "no TTL: old partitions are not dropped automatically"),
    "skip_indexes": ((20, 1), "no bloom-filter skip indexes on join keys: those filters scan more"),
    "datetime64": ((20, 1), "times are UInt64 ns only (as everywhere in hopscope)"),
}


@dataclass(frozen=True, slots=True)
class ServerFeatures:
    """Capabilities of one ClickHouse server (or chDB engine) that change the DDL hopscope emits."""

    version: str  # as reported by SELECT version(), e.g. "18.16.1" or "26.9.2.1"
    low_cardinality: bool  # LowCardinality(String) without allow_experimental_low_cardinality_type
    codecs: bool  # per-column CODEC(...)
    ipv4_type: bool  # the IPv4 data type
    ttl: bool  # table TTL
    skip_indexes: bool  # data skipping indexes (INDEX ... TYPE bloom_filter)
    datetime64: bool  # DateTime64

    @classmethod
    def from_version(cls, version: str) -> ServerFeatures:
        match = re.match(r"^\s*(\d+)\.(\d+)", version)
        if match is None:
            raise ConfigError(f"cannot parse ClickHouse version {version!r}")
        major_minor = (int(match.group(1)), int(match.group(2)))
        flags = {name: major_minor >= since for name, (since, _) in FEATURE_SINCE.items()}
        return cls(version=version.strip(), **flags)

    def degradations(self) -> list[str]:
        """One line per missing feature: what the schema does instead."""
        return [
            f"{name}: {effect}"
            for name, (_, effect) in FEATURE_SINCE.items()
            if not getattr(self, name)
        ]
