"""Named tolerances of the correlator, with their units in their names."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hopscope.errors import ConfigError


class ClockMode(enum.StrEnum):
    """How clock offsets between capture points are corrected.

    ``auto``: correct a pair of points only when their timestamps violate causality (a negative
    one-way delay in either direction); the correction is then the NTP midpoint. Points whose clocks
    agree are left alone, so an asymmetric delay (injected in one direction only) is not smeared
    over both directions as a plain NTP estimate would.
    ``ntp``: always apply the NTP midpoint ((min forward - min backward) / 2).
    ``none``: trust the timestamps as they are.
    """

    AUTO = "auto"
    NTP = "ntp"
    NONE = "none"


class ClockDomain(enum.StrEnum):
    """Which captures share a clock.

    ``host`` (the default): every point of one host shares that host's clock, so one offset is
    estimated per host and applied to all its captures, including a point tied to the rest only
    through a proxy (a sidecar's loopback leg). A point whose host is not known (its records carry
    the point name as host) is a domain of its own. ``point``: every capture point its own clock,
    for captures whose clocks differ although they name one host (a capture file shifted on its
    own, a capture card with its own clock); it cannot tie a sidecar's loopback leg to its pod when
    the host's clock is off (docs/DESIGN.md, "Clock domains")."""

    POINT = "point"
    HOST = "host"


@dataclass(frozen=True, slots=True)
class CorrelateSettings:
    """Tolerances bounding every match; all durations in microseconds."""

    #: Largest spread of one request's first-byte times across the points of one TCP connection
    #: (network delay plus retransmission timeouts).
    network_delay_us: int = 3_000_000
    #: Largest clock offset between two capture points that the matchers must tolerate.
    host_clock_offset_us: int = 1_000_000
    #: Largest spread of one DNS query's times across points (16-bit ids collide sooner).
    dns_window_us: int = 2_000_000
    #: Largest time between a request entering a proxy and the proxy sending it upstream.
    proxy_gap_us: int = 2_000_000
    #: Two requests reaching a proxy closer than this may leave it in either order: a nested link
    #: chosen among such candidates gets the ambiguous confidence.
    proxy_order_jitter_us: int = 50
    #: Slack when checking that an upstream exchange nests inside the downstream one.
    nesting_slack_us: int = 20
    #: Largest time between two legs sharing a request id (x-request-id, traceparent, B3).
    proxy_id_window_us: int = 60_000_000
    #: Clock correction strategy.
    clock_mode: ClockMode = ClockMode.AUTO
    #: Which capture points share one clock.
    clock_domain: ClockDomain = ClockDomain.HOST
    #: A negative one-way delay smaller than this is timestamp jitter, not a clock offset.
    clock_jitter_us: int = 20

    def __post_init__(self) -> None:
        for name in ("network_delay_us", "host_clock_offset_us", "dns_window_us", "proxy_gap_us",
                     "proxy_id_window_us"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"correlate setting {name} must be positive, got {getattr(self, name)}")
        for name in ("nesting_slack_us", "clock_jitter_us", "proxy_order_jitter_us"):
            if getattr(self, name) < 0:
                raise ConfigError(f"correlate setting {name} must not be negative")
        if not isinstance(self.clock_domain, ClockDomain):
            raise ConfigError(f"clock_domain must be one of {[m.value for m in ClockDomain]}")
        if not isinstance(self.clock_mode, ClockMode):
            raise ConfigError(f"clock_mode must be one of {[m.value for m in ClockMode]}")

    @property
    def request_window_ns(self) -> int:
        """Window within which observations of one request on one connection are matched."""
        return (self.network_delay_us + self.host_clock_offset_us) * 1000

    @property
    def dns_window_ns(self) -> int:
        return (self.dns_window_us + self.host_clock_offset_us) * 1000
