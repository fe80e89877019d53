"""Clock offsets between capture points, from the same packets seen in both directions.

For two adjacent hops a and b of one connection, the request goes a to b and the response b to a.
With ``theta`` the offset of b's clock against a's, the measured one-way delays are
``fwd = true_fwd + theta`` and ``back = true_back - theta``; true delays are never negative, so
``theta`` lies in ``[-min(back), min(fwd)]`` over all requests the pair saw (the minimum filters
queueing, as NTP does). The estimate is that interval's midpoint, the NTP estimate. In ``auto`` mode an
offset is applied only when the interval excludes zero (a negative one-way delay: the clocks disagree
for sure), so points that share a clock keep their timestamps even under asymmetric delay. Offsets
spread along the pairs with the most evidence from the median point of each connected group (so the
few points whose clocks are off get the correction).
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
    names: list[str], dom_a: I64, dom_b: I64, fwd_ns: I64, back_ns: I64
) -> list[PairEvidence]:
    """Reduce per-request delays to the minimum per pair of points (in either orientation).

    ``dom_a``/``dom_b`` index ``names``; pairs are put in name order, swapping the delays."""
    rank = np.argsort(np.argsort(np.asarray(names, dtype=object))) if names else np.zeros(0, np.int64)
    keep = dom_a != dom_b
    a, b, f, k = dom_a[keep], dom_b[keep], fwd_ns[keep], back_ns[keep]
    swap = rank[a] > rank[b]
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    f, k = np.where(swap, k, f), np.where(swap, f, k)
    if len(a) == 0:
        return []
    pair = a * len(names) + b
    order = np.argsort(pair, kind="stable")
    pair, f, k = pair[order], f[order], k[order]
    starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
    counts = np.diff(np.r_[starts, len(pair)])
    min_f, min_k = np.minimum.reduceat(f, starts), np.minimum.reduceat(k, starts)
    out = []
    for p, mf, mk, c in zip(pair[starts].tolist(), min_f.tolist(), min_k.tolist(), counts.tolist(), strict=True):
        out.append(PairEvidence(names[p // len(names)], names[p % len(names)], mf, mk, c))
    return sorted(out, key=lambda e: (e.a, e.b))


def solve_offsets(
    evidence: list[PairEvidence], first_hop_votes: dict[str, int], settings: CorrelateSettings
) -> dict[str, int]:
    """Offset (ns) to subtract from each point's timestamps; points without evidence are absent (0).

    Solved twice: the first pass spreads offsets from the point that most often is a segment's first
    hop; the second starts each connected group of points from its median point, so the correction
    goes to the few points whose clocks are off, not to the many that agree (and groups that only
    proxy links join, e.g. a sidecar's upstream side, keep a common base)."""
    edges: dict[str, list[tuple[int, str, tuple[int, int]]]] = defaultdict(list)
    for ev in evidence:
        lo, hi = ev.interval_ns()
        edges[ev.a].append((ev.count, ev.b, (lo, hi)))
        edges[ev.b].append((ev.count, ev.a, (-hi, -lo)))
    nodes = sorted(edges, key=lambda n: (-first_hop_votes.get(n, 0), n))
    first = _spread(edges, nodes, settings)
    if settings.clock_mode is ClockMode.NONE:
        return first
    roots = []
    for group in _components(edges, nodes):
        ranked = sorted(group, key=lambda n: (first[n], n))
        roots.append(ranked[(len(ranked) - 1) // 2])
    return _spread(edges, roots + [n for n in nodes if n not in roots], settings)


def _components(edges: dict[str, list[tuple[int, str, tuple[int, int]]]], nodes: list[str]) -> list[list[str]]:
    seen: set[str] = set()
    out = []
    for start in nodes:
        if start in seen:
            continue
        group, stack = [], [start]
        seen.add(start)
        while stack:
            n = stack.pop()
            group.append(n)
            for _, m, _ in edges[n]:
                if m not in seen:
                    seen.add(m)
                    stack.append(m)
        out.append(group)
    return out


def _spread(edges: dict[str, list[tuple[int, str, tuple[int, int]]]], nodes: list[str],
            settings: CorrelateSettings) -> dict[str, int]:
    """Offsets from each still unreached node in ``nodes`` order, along the pairs with most evidence."""
    offsets: dict[str, int] = {}
    for root in nodes:
        if root in offsets:
            continue
        offsets[root] = 0
        frontier = [root]
        while frontier:  # widest evidence first: a small Prim over the counts
            frontier.sort(key=lambda n: -max((c for c, m, _ in edges[n] if m not in offsets), default=0))
            node = frontier[0]
            nxt = [(c, m, iv) for c, m, iv in edges[node] if m not in offsets]
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


def clock_groups(evidence: list[PairEvidence], names: list[str]) -> dict[str, int]:
    """Group number of every point: points joined by shared connections share a group; a point
    with no evidence is a group of its own."""
    edges: dict[str, list[tuple[int, str, tuple[int, int]]]] = defaultdict(list)
    for ev in evidence:
        edges[ev.a].append((ev.count, ev.b, (0, 0)))
        edges[ev.b].append((ev.count, ev.a, (0, 0)))
    out: dict[str, int] = {}
    for gid, group in enumerate(_components(edges, sorted(edges))):
        for n in group:
            out[n] = gid
    for n in names:
        out.setdefault(n, len(out) + 1_000_000)
    return out
