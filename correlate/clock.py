"""Clock offsets between capture points, from the same packets seen in both directions.

For two adjacent hops a and b of one connection, the request goes a to b and the response b to a.
With ``theta`` the offset of b's clock against a's, the measured one-way delays are
``fwd = true_fwd + theta`` and ``back = true_back - theta``; true delays are never negative, so
``theta`` lies in ``[-min(back), min(fwd)]`` over all requests the pair saw (the minimum filters
queueing, as NTP does). The estimate is that interval's midpoint, the NTP estimate. In ``auto`` mode an
offset is applied only when the interval excludes zero (a negative one-way delay: the clocks disagree
for sure), so points that share a clock keep their timestamps even under asymmetric delay. Offsets
spread from a reference point (the one that most often is a segment's first hop) along the pairs with
the most evidence.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hopscope.correlate.settings import ClockMode, CorrelateSettings

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class PairEvidence:
    """Delays between the clocks of two points ``a`` < ``b`` (names), over all requests seen by both."""

    a: str
    b: str
    min_fwd_ns: int  # smallest (time at b) - (time at a) of a packet going a to b
    min_back_ns: int  # smallest (time at a) - (time at b) of a packet going b to a
    count: int

    def interval_ns(self) -> tuple[int, int]:
        """Offsets of b's clock against a's that keep both one-way delays non-negative."""
        return -self.min_back_ns, self.min_fwd_ns


def pair_evidence(
    dom_a: list[str], dom_b: list[str], fwd_ns: I64, back_ns: I64
) -> list[PairEvidence]:
    """Reduce per-request delays to the minimum per pair of points (in either orientation)."""
    best: dict[tuple[str, str], list[int]] = {}
    for a, b, f, k in zip(dom_a, dom_b, fwd_ns.tolist(), back_ns.tolist(), strict=True):
        if a == b:
            continue
        if a > b:
            a, b, f, k = b, a, k, f
        cur = best.get((a, b))
        if cur is None:
            best[(a, b)] = [f, k, 1]
        else:
            cur[0] = min(cur[0], f)
            cur[1] = min(cur[1], k)
            cur[2] += 1
    return [PairEvidence(a, b, v[0], v[1], v[2]) for (a, b), v in sorted(best.items())]


def solve_offsets(
    evidence: list[PairEvidence], first_hop_votes: dict[str, int], settings: CorrelateSettings
) -> dict[str, int]:
    """Offset (ns) to subtract from each point's timestamps; points without evidence are absent (0)."""
    edges: dict[str, list[tuple[int, str, tuple[int, int]]]] = defaultdict(list)
    for ev in evidence:
        lo, hi = ev.interval_ns()
        edges[ev.a].append((ev.count, ev.b, (lo, hi)))
        edges[ev.b].append((ev.count, ev.a, (-hi, -lo)))
    offsets: dict[str, int] = {}
    nodes = sorted(edges, key=lambda n: (-first_hop_votes.get(n, 0), n))
    for root in nodes:
        if root in offsets:
            continue
        offsets[root] = 0
        frontier = [root]
        while frontier:  # widest evidence first: a small Prim over the counts
            frontier.sort(key=lambda n: -max((c for c, m, _ in edges[n] if m not in offsets), default=0))
            node = frontier[0]
            nxt = [(c, m, th) for c, m, th in edges[node] if m not in offsets]
            if not nxt:
                frontier.pop(0)
                continue
            _, m, interval = max(nxt)
            offsets[m] = _choose(offsets[node], interval, settings)
            frontier.append(m)
    return offsets


def _choose(base_ns: int, interval: tuple[int, int], settings: CorrelateSettings) -> int:
    """Offset of a point reached from one with offset ``base_ns`` over a pair with ``interval``."""
    if settings.clock_mode is ClockMode.NONE:
        return 0
    lo, hi = base_ns + interval[0], base_ns + interval[1]
    jitter = settings.clock_jitter_us * 1000
    if settings.clock_mode is ClockMode.AUTO and lo - jitter <= 0 <= hi + jitter:
        return 0  # its own clock is consistent with causality: keep it
    return (lo + hi) // 2
