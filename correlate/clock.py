"""Clock offsets between capture points, from the same packets seen in both directions.

For two adjacent hops a and b of one connection, the request goes a to b and the response b to a.
With ``theta`` the offset of b's clock against a's, the measured one-way delays are
``fwd = true_fwd + theta`` and ``back = true_back - theta``; true delays are never negative, so
``theta`` lies in ``[-min(back), min(fwd)]`` over all requests the pair saw (the minimum filters
queueing, as NTP does). The estimate is that interval's midpoint, the NTP estimate. In ``auto`` mode an
offset is applied only when the interval excludes zero (a negative one-way delay: the clocks disagree
for sure), so points that share a clock keep their timestamps even under asymmetric delay. Offsets
spread along the pairs with the most evidence from a reference in each connected group, a point with
the median offset (so the few points whose clocks are off get the correction).

A clock domain is the set of captures stamped by one clock: by default the points of one host
(``ClockDomain``). Each domain's ``ClockEstimate`` says how sure the offset is: the interval the
pair it came from allows, and the uncertainty accumulated along the pairs from its group's reference
(an asymmetric delay on those pairs is indistinguishable from an offset within that uncertainty).
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from hopscope.correlate.observations import ObsTable
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


class ClockDecision(enum.StrEnum):
    """What became of a clock domain's timestamps."""

    REFERENCE = "reference"  # the base of its group: kept as it is, the others are measured against it
    CORRECTED = "corrected"  # shifted by the estimated offset
    KEPT = "kept"  # consistent with causality against its neighbour (auto mode): not shifted
    NO_EVIDENCE = "no evidence"  # no packet seen both here and elsewhere: nothing to compare


@dataclass(frozen=True, slots=True)
class ClockStep:
    """How one clock domain's offset was reached, and how sure it is."""

    #: subtracted from the domain's timestamps
    offset_ns: int
    decision: ClockDecision
    #: the domain it was measured against ('' for a reference or without evidence)
    measured_from: str = ""
    #: offsets the pair it was measured over allows (non-negative one-way delays), absolute
    low_ns: int = 0
    high_ns: int = 0
    #: how far the true offset may lie from ``offset_ns``, accumulated from the group's reference
    uncertainty_ns: int = 0
    #: requests and connections seen by both ends of that pair
    evidence: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockEstimate(ClockStep):
    """The offset of one clock domain and how sure it is: its ``ClockStep`` and what the domain is."""

    domain: str
    #: what the domain is: "host" (the points of one host) or "point" (one capture)
    domain_kind: str
    #: the capture points stamped by this clock
    points: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        """The estimate in µs, as the analyze JSON carries it."""
        return {"domain": self.domain, "domain_kind": self.domain_kind, "points": list(self.points),
                "offset_us": round(self.offset_ns / 1000, 1), "decision": self.decision.value,
                "measured_from": self.measured_from, "low_us": round(self.low_ns / 1000, 1),
                "high_us": round(self.high_ns / 1000, 1), "uncertainty_us": round(self.uncertainty_ns / 1000, 1),
                "evidence": self.evidence}


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
    """Offset (ns) to subtract from each point's timestamps; points without evidence are absent (0)."""
    return {d: step.offset_ns for d, step in solve(evidence, first_hop_votes, settings).items()}


_Edges = dict[str, list[tuple[int, str, tuple[int, int]]]]


def solve(
    evidence: list[PairEvidence], first_hop_votes: dict[str, int], settings: CorrelateSettings
) -> dict[str, ClockStep]:
    """Each domain's offset and how it was reached; domains without evidence are absent.

    Solved twice: the first pass spreads offsets from the point that most often is a segment's first
    hop; the second starts each connected group of points from its reference (``_reference``: the
    median clock), so the correction goes to the few points whose clocks are off, not to the many
    that agree (and groups that only proxy links join, e.g. a sidecar's upstream side, keep a common
    base)."""
    edges: _Edges = defaultdict(list)
    for ev in evidence:
        lo, hi = ev.interval_ns()
        edges[ev.a].append((ev.count, ev.b, (lo, hi)))
        edges[ev.b].append((ev.count, ev.a, (-hi, -lo)))
    nodes = sorted(edges, key=lambda n: (-first_hop_votes.get(n, 0), n))
    first = _spread(edges, nodes, settings)
    if settings.clock_mode is ClockMode.NONE:
        return first
    roots = [_reference(edges, group, first, settings) for group in _components(edges, nodes)]
    return _spread(edges, roots + [n for n in nodes if n not in roots], settings)


def _reference(edges: _Edges, group: list[str], first: dict[str, ClockStep], settings: CorrelateSettings) -> str:
    """The base of one group: a domain with the median offset of the first pass (the clock most
    domains agree with), and among those that agree with it, the one measured most tightly against
    a neighbour (its narrowest causal range), so the spread does not start behind a link whose
    delay in one direction hides offsets."""
    ranked = sorted(group, key=lambda n: (first[n].offset_ns, n))
    median = first[ranked[(len(ranked) - 1) // 2]].offset_ns
    jitter = settings.clock_jitter_us * 1000
    agree = [n for n in group if abs(first[n].offset_ns - median) <= jitter]
    return min(agree, key=lambda n: (min((hi - lo for _, _, (lo, hi) in edges[n]), default=0), n))


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


def _spread(edges: _Edges, nodes: list[str], settings: CorrelateSettings) -> dict[str, ClockStep]:
    """Offsets from each still unreached node in ``nodes`` order, along the pairs with most evidence."""
    steps: dict[str, ClockStep] = {}
    for root in nodes:
        if root in steps:
            continue
        steps[root] = ClockStep(0, ClockDecision.REFERENCE)
        frontier = [root]
        while frontier:  # widest evidence first: a small Prim over the counts
            frontier.sort(key=lambda n: -max((c for c, m, _ in edges[n] if m not in steps), default=0))
            node = frontier[0]
            nxt = [(c, m, iv) for c, m, iv in edges[node] if m not in steps]
            if not nxt:
                frontier.pop(0)
                continue
            count, m, interval = max(nxt)
            steps[m] = _choose(steps[node], node, count, interval, settings)
            frontier.append(m)
    return steps


def _choose(base: ClockStep, name: str, count: int, interval: tuple[int, int],
            settings: CorrelateSettings) -> ClockStep:
    """The step to a point reached from ``base`` (named ``name``) over a pair with ``interval``."""
    lo, hi = base.offset_ns + interval[0], base.offset_ns + interval[1]
    jitter = settings.clock_jitter_us * 1000
    if settings.clock_mode is ClockMode.NONE or (
            settings.clock_mode is ClockMode.AUTO and lo - jitter <= 0 <= hi + jitter):
        # its own clock is consistent with causality: keep it (the truth lies anywhere in [lo, hi])
        return ClockStep(0, ClockDecision.KEPT, name, lo, hi, base.uncertainty_ns + max(-lo, hi, 0), count)
    return ClockStep((lo + hi) // 2, ClockDecision.CORRECTED, name, lo, hi, base.uncertainty_ns + (hi - lo) // 2, count)


def estimates(steps: Mapping[str, ClockStep], points_of: Mapping[str, Iterable[str]],
              domain_kind: str) -> list[ClockEstimate]:
    """One estimate per domain of ``points_of`` (domain -> its capture points), in domain order."""
    out = []
    for domain in sorted(points_of):
        step = steps.get(domain, ClockStep(0, ClockDecision.NO_EVIDENCE))
        out.append(ClockEstimate(**asdict(step), domain=domain, domain_kind=domain_kind,
                                 points=tuple(sorted(points_of[domain]))))
    return out


def domain_points(tables: Iterable[ObsTable]) -> dict[str, set[str]]:
    """The capture points of every clock domain of the observation tables."""
    out: dict[str, set[str]] = defaultdict(set)
    for t in tables:
        if len(t) == 0:
            continue
        pairs = np.unique(np.stack([t.label, t.domain], axis=1), axis=0)
        for label, domain in pairs.tolist():
            out[t.domains[domain]].add(t.labels[label][0])
    return dict(out)


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
