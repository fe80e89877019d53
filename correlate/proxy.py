"""Link segments across L7 proxies: a sidecar terminates TCP, so its two legs are two connections.

Two matchers, in this order:

- **by id** (``proxy:x-request-id``, ``proxy:traceparent``, ``proxy:b3``): segments sharing a request
  id, the trace id of a W3C traceparent or a B3 trace id form a group; within a group each segment's
  parent is the latest-starting earlier segment that encloses it in time (request later, response
  earlier, ``nesting_slack_us``) and carries the same method and path.
- **by nesting** (``proxy:nested``): a proxy that generates the request id itself puts it only on the
  upstream leg, so the downstream leg has none. A segment ending at a proxy hop is linked to one
  starting at a proxy hop on the same host with the same method, path and HTTP host, whose exchange
  nests inside it and begins within ``proxy_gap_us``; pairs are assigned one-to-one, nearest first.
  Confidence is lower, and lower still when several candidates competed.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from hopscope.correlate.relations import AMBIGUOUS_NESTED_CONFIDENCE, BASE_CONFIDENCE, Reason
from hopscope.correlate.settings import CorrelateSettings

from hopscope.records import HopKind

I64 = npt.NDArray[np.int64]
_ID_KINDS: tuple[tuple[str, Reason], ...] = (
    ("x_request_id", Reason.PROXY_X_REQUEST_ID),
    ("traceparent", Reason.PROXY_TRACEPARENT),
    ("b3_trace_id", Reason.PROXY_B3),
)


@dataclass(slots=True)
class SegmentView:
    """What proxy linking needs of each segment (arrays indexed by segment)."""

    method: list[str]
    path: list[str]
    http_host: list[str]
    #: per id kind (x_request_id, traceparent, b3_trace_id): the id, '' if none
    ids: dict[str, list[str]]
    #: corrected times at the segment's first (client-end) and last (server-end) hop
    req_first_ns: I64
    resp_first_ns: I64
    req_last_ns: I64
    resp_last_ns: I64
    first_proxy: npt.NDArray[np.bool_]
    last_proxy: npt.NDArray[np.bool_]
    first_host: list[str]
    last_host: list[str]


@dataclass(slots=True)
class Links:
    """Parent segment of each segment (-1: a root), with the reason and confidence of the link."""

    parent: I64
    reason: list[str]
    confidence: npt.NDArray[np.float64]


def trace_id_of_traceparent(value: str) -> str:
    """The trace-id field of a W3C traceparent (version-traceid-parentid-flags), '' if malformed."""
    parts = value.strip().split("-")
    return parts[1].lower() if len(parts) >= 4 and len(parts[1]) == 32 else ""


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.up = list(range(n))

    def find(self, x: int) -> int:
        while self.up[x] != x:
            self.up[x] = self.up[self.up[x]]
            x = self.up[x]
        return x

    def union(self, a: int, b: int) -> None:
        self.up[self.find(a)] = self.find(b)


def _nests(view: SegmentView, p: int, s: int, slack_ns: int) -> bool:
    if view.req_first_ns[s] + slack_ns < view.req_first_ns[p]:
        return False
    rp, rs = int(view.resp_first_ns[p]), int(view.resp_first_ns[s])
    return rp == 0 or rs == 0 or rs <= rp + slack_ns


def _same_request(view: SegmentView, p: int, s: int) -> bool:
    return view.method[p] == view.method[s] and view.path[p] == view.path[s]


def link_by_id(view: SegmentView, settings: CorrelateSettings, links: Links) -> int:
    """Link segments sharing a request id; returns the number of links made."""
    n = len(view.method)
    groups = _UnionFind(n)
    for name, _ in _ID_KINDS:
        first_with: dict[str, int] = {}
        for s, value in enumerate(view.ids[name]):
            if value:
                groups.union(s, first_with.setdefault(value, s))
    members: dict[int, list[int]] = defaultdict(list)
    for s in range(n):
        if any(view.ids[name][s] for name, _ in _ID_KINDS):
            members[groups.find(s)].append(s)
    slack = settings.nesting_slack_us * 1000
    window = settings.proxy_id_window_us * 1000
    made = 0
    for group in members.values():
        if len(group) < 2:
            continue
        group.sort(key=lambda s: (int(view.req_first_ns[s]), s))
        for i, s in enumerate(group):
            for p in reversed(group[:i]):
                if view.req_first_ns[s] - view.req_first_ns[p] > window:
                    break
                reason = _shared_id(view, p, s)
                if reason is not None and _same_request(view, p, s) and _nests(view, p, s, slack):
                    links.parent[s] = p
                    links.reason[s] = reason.value
                    links.confidence[s] = BASE_CONFIDENCE[reason]
                    made += 1
                    break
    return made


def _shared_id(view: SegmentView, p: int, s: int) -> Reason | None:
    for name, reason in _ID_KINDS:
        value = view.ids[name][p]
        if value and value == view.ids[name][s]:
            return reason
    return None


def link_nested(view: SegmentView, settings: CorrelateSettings, links: Links) -> int:
    """Link downstream legs without an id to upstream legs at the same proxy; returns links made."""
    has_child = np.zeros(len(view.method), dtype=bool)
    has_child[links.parent[links.parent >= 0]] = True
    by_key: dict[tuple[str, str, str, str], list[tuple[int, int]]] = defaultdict(list)
    for p in np.flatnonzero(view.last_proxy & ~has_child).tolist():
        key = (view.last_host[p], view.method[p], view.path[p], view.http_host[p])
        by_key[key].append((int(view.req_last_ns[p]), p))
    for plist in by_key.values():
        plist.sort()
    slack = settings.nesting_slack_us * 1000
    gap = settings.proxy_gap_us * 1000
    pairs: list[tuple[int, int, int]] = []
    for s in np.flatnonzero(view.first_proxy & (links.parent < 0)).tolist():
        plist = by_key.get((view.first_host[s], view.method[s], view.path[s], view.http_host[s]), [])
        if not plist:
            continue
        t = int(view.req_first_ns[s])
        lo = bisect.bisect_left(plist, (t - gap, -1))
        hi = bisect.bisect_right(plist, (t + slack, len(view.method)))
        for tp, p in plist[lo:hi]:
            rp, rs = int(view.resp_last_ns[p]), int(view.resp_first_ns[s])
            if p != s and (rp == 0 or rs == 0 or rs <= rp + slack):
                # a proxy forwards after it received: a child that seems to start first (clock
                # jitter within the slack) ranks behind every forward-in-time candidate
                pairs.append((t - tp if t >= tp else gap + tp - t, p, s))
    return _assign_one_to_one(pairs, links)


def _assign_one_to_one(pairs: list[tuple[int, int, int]], links: Links) -> int:
    """Greedy nearest-first one-to-one assignment of (gap, parent, child) candidates."""
    cands_p: dict[int, int] = defaultdict(int)
    cands_s: dict[int, int] = defaultdict(int)
    for _, p, s in pairs:
        cands_p[p] += 1
        cands_s[s] += 1
    groups = _UnionFind(len(links.parent))
    for s, p in enumerate(links.parent.tolist()):
        if p >= 0:
            groups.union(s, p)
    taken_p: set[int] = set()
    made = 0
    for _, p, s in sorted(pairs):
        if p in taken_p or links.parent[s] >= 0 or groups.find(p) == groups.find(s):
            continue
        taken_p.add(p)
        groups.union(s, p)
        links.parent[s] = p
        links.reason[s] = Reason.PROXY_NESTED.value
        ambiguous = cands_p[p] > 1 or cands_s[s] > 1
        base = BASE_CONFIDENCE[Reason.PROXY_NESTED]
        links.confidence[s] = AMBIGUOUS_NESTED_CONFIDENCE if ambiguous else base
        made += 1
    return made


def is_proxy_kind(kind: str) -> bool:
    return kind == HopKind.PROXY.value
