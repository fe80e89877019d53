"""Link segments across L7 proxies: a sidecar terminates TCP, so its two legs are two connections.

Two matchers, in this order:

- **by id** (``proxy:x-request-id``, ``proxy:traceparent``, ``proxy:b3``): segments sharing a request
  id, the trace id of a W3C traceparent or a B3 trace id form a group; within a group each segment's
  parent is the latest-starting earlier segment that encloses it in time (request later, response
  earlier, ``nesting_slack_us``) and carries the same method and path.
- **by nesting** (``proxy:nested``): a proxy that generates the request id itself puts it only on the
  upstream leg, so the downstream leg has none. A segment ending at a hop is linked to one starting
  at a hop on the same host (one of the two hops of kind ``proxy``: the proxy's listener or its
  upstream side) with the same method, path and HTTP host, whose exchange
  nests inside it (request after request, response first *and last* byte before the downstream
  response's), has the same status, and begins within ``proxy_gap_us``; pairs are assigned
  one-to-one, those closest to the proxy's typical request and response turnaround first (the sum
  of turnarounds over a complete matching is the same for every matching, so only the deviation
  from the typical can tell pairs apart).
  Confidence is lower, and lower still when another candidate arrived within
  ``proxy_order_jitter_us`` of the chosen one (the proxy may have served them in either order).
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
    #: HTTP status of each segment (0: none seen); a proxy passes the upstream status on
    status: I64
    #: corrected time the response's *last* byte passed the first and the last hop
    resp_end_first_ns: I64
    resp_end_last_ns: I64
    first_proxy: npt.NDArray[np.bool_]
    last_proxy: npt.NDArray[np.bool_]
    first_host: list[str]
    last_host: list[str]
    #: hops (labels) of each segment, and the last one
    labels: list[tuple[int, ...]]
    last_label: list[int]


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
    """Link segments sharing a request id, by id kind in order of strength; returns links made.

    Groups of two (a proxy's two legs: by far the most common) are checked with numpy in one go;
    larger groups (ids propagated over several proxies, retries) are chained one by one."""
    made = 0
    for name, reason in _ID_KINDS:
        values = np.asarray(view.ids[name], dtype=object)
        have = np.flatnonzero(values != "")
        if len(have) < 2:
            continue
        _, group, counts = np.unique(values[have], return_inverse=True, return_counts=True)
        order = np.argsort(group, kind="stable")
        segs, sizes = have[order], counts[group[order]]
        pairs = segs[sizes == 2].reshape(-1, 2)
        made += _link_pairs(view, settings, links, pairs, reason)
        big = segs[sizes > 2]
        bounds = np.flatnonzero(np.diff(group[order][sizes > 2])) + 1
        for members in np.split(big, bounds) if len(big) else []:
            made += _chain_group(view, settings, members.tolist(), links)
    return made


def _link_pairs(view: SegmentView, settings: CorrelateSettings, links: Links, pairs: I64,
                reason: Reason) -> int:
    """Link the later segment of each pair to the earlier one when it nests and is the same request."""
    if len(pairs) == 0:
        return 0
    a, b = pairs[:, 0], pairs[:, 1]
    ta, tb = view.req_first_ns[a], view.req_first_ns[b]
    later = (tb > ta) | ((tb == ta) & (b > a))  # (time, index) order, as in _chain_group: no cycles
    p, s = np.where(later, a, b), np.where(later, b, a)
    slack = settings.nesting_slack_us * 1000
    rp, rs = view.resp_first_ns[p], view.resp_first_ns[s]
    ok = (links.parent[s] < 0) & (view.req_first_ns[s] - view.req_first_ns[p] <= settings.proxy_id_window_us * 1000)
    ok &= (rp == 0) | (rs == 0) | (rs <= rp + slack)
    method, path = view.method, view.path
    same = np.fromiter((method[x] == method[y] and path[x] == path[y] for x, y in zip(p.tolist(), s.tolist(),
                                                                                     strict=True)),
                       dtype=bool, count=len(p))
    ok &= same
    chosen_s, chosen_p = s[ok], p[ok]
    links.parent[chosen_s] = chosen_p
    for i in chosen_s.tolist():
        links.reason[i] = reason.value
    links.confidence[chosen_s] = BASE_CONFIDENCE[reason]
    return int(ok.sum())


def _chain_group(view: SegmentView, settings: CorrelateSettings, group: list[int], links: Links) -> int:
    """Within one id group, each segment's parent is the tightest earlier one enclosing it."""
    slack = settings.nesting_slack_us * 1000
    window = settings.proxy_id_window_us * 1000
    group.sort(key=lambda s: (int(view.req_first_ns[s]), s))
    made = 0
    for i, s in enumerate(group):
        if links.parent[s] >= 0:
            continue  # linked already by a stronger id
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
    parents: dict[tuple[str, str, str, str], list[tuple[int, int]]] = defaultdict(list)
    for p in np.flatnonzero(~has_child).tolist():
        key = (view.last_host[p], view.method[p], view.path[p], view.http_host[p])
        parents[key].append((int(view.req_last_ns[p]), p))
    children: dict[tuple[str, str, str, str], list[tuple[int, int]]] = defaultdict(list)
    for s in np.flatnonzero(links.parent < 0).tolist():
        key = (view.first_host[s], view.method[s], view.path[s], view.http_host[s])
        if key in parents:
            children[key].append((int(view.req_first_ns[s]), s))
    groups = _UnionFind(len(links.parent))
    for s, p in enumerate(links.parent.tolist()):
        if p >= 0:
            groups.union(s, p)
    made = 0
    for key, kids in children.items():
        made += _assign_nested(view, settings, sorted(parents[key]), sorted(kids), links, groups)
    return made


def _assign_nested(view: SegmentView, settings: CorrelateSettings, plist: list[tuple[int, int]],
                   kids: list[tuple[int, int]], links: Links, groups: _UnionFind) -> int:
    """One-to-one assignment of children to parents at one proxy, most typical turnaround first.

    A candidate parent received the request at most ``proxy_gap_us`` before the child left (the
    ``NESTED_CANDIDATES`` nearest such) and sent its response after the child's came back. A proxy
    adds a fairly constant time each way, so true pairs pile up at one request turnaround and one
    response turnaround while wrong pairs spread out: the cost of a pair is its distance from the
    most common turnarounds (histogram modes over all candidates). A link is ambiguous when the
    runner-up of its parent or child costs less than ``proxy_order_jitter_us`` more.
    """
    slack = settings.nesting_slack_us * 1000
    gap = settings.proxy_gap_us * 1000
    times = [t for t, _ in plist]
    cands: list[tuple[int, int, int, int]] = []  # (req turnaround, resp turnaround or -1, p, s)
    for t, s in kids:
        i = bisect.bisect_right(times, t + slack) - 1
        found = 0
        while i >= 0 and times[i] >= t - gap and found < NESTED_CANDIDATES:
            p = plist[i][1]
            if _child_fits(view, p, s, slack) and groups.find(p) != groups.find(s):
                rp, rs = int(view.resp_last_ns[p]), int(view.resp_first_ns[s])
                cands.append((t - times[i], rp - rs if rp and rs else -1, p, s))
                found += 1
            i -= 1
    if not cands:
        return 0
    bin_ns = max(1, settings.proxy_order_jitter_us * 1000 // 4)
    mode_req = _mode([c[0] for c in cands], bin_ns)
    mode_resp = _mode([c[1] for c in cands if c[1] >= 0], bin_ns)
    pairs = [(abs(rq - mode_req) + (abs(rs - mode_resp) if rs >= 0 else abs(rq - mode_req)), p, s)
             for rq, rs, p, s in cands]
    return _assign_cheapest(pairs, links, groups, settings.proxy_order_jitter_us * 1000)


NESTED_CANDIDATES = 64


def _mode(values: list[int], bin_ns: int) -> int:
    """The most common value, to within a fraction of ``bin_ns`` (0 for no values)."""
    if not values:
        return 0
    arr = np.asarray(values, dtype=np.int64)
    counts = np.bincount((arr - arr.min()) // bin_ns)
    centre = int(arr.min()) + int(np.argmax(counts)) * bin_ns + bin_ns // 2
    near = arr[np.abs(arr - centre) <= bin_ns]  # refine: the median of the peak
    return int(np.median(near))


def _assign_cheapest(pairs: list[tuple[int, int, int]], links: Links, groups: _UnionFind,
                     jitter_ns: int) -> int:
    costs_p: dict[int, list[int]] = defaultdict(list)
    costs_s: dict[int, list[int]] = defaultdict(list)
    for cost, p, s in pairs:
        costs_p[p].append(cost)
        costs_s[s].append(cost)
    taken: set[int] = set()
    made = 0
    for cost, p, s in sorted(pairs):
        if p in taken or links.parent[s] >= 0 or groups.find(p) == groups.find(s):
            continue
        taken.add(p)
        groups.union(s, p)
        links.parent[s] = p
        links.reason[s] = Reason.PROXY_NESTED.value
        ambiguous = _runner_up_close(costs_p[p], cost, jitter_ns) or _runner_up_close(costs_s[s], cost, jitter_ns)
        base = BASE_CONFIDENCE[Reason.PROXY_NESTED]
        links.confidence[s] = AMBIGUOUS_NESTED_CONFIDENCE if ambiguous else base
        made += 1
    return made


def _runner_up_close(costs: list[int], cost: int, jitter_ns: int) -> bool:
    """Another candidate cost within ``jitter_ns`` of the chosen ``cost``."""
    return sum(1 for c in costs if c - cost <= jitter_ns) > 1


def _child_fits(view: SegmentView, p: int, s: int, slack_ns: int) -> bool:
    if p == s or not (view.last_proxy[p] or view.first_proxy[s]):
        return False  # one of the two legs must touch a proxy hop
    sp, ss = int(view.status[p]), int(view.status[s])
    if sp and ss and sp != ss:
        return False  # the proxy answers with the upstream's status
    if view.last_label[p] in view.labels[s]:
        return False  # the upstream leg never passes where the downstream leg ended
    rp, rs = int(view.resp_last_ns[p]), int(view.resp_first_ns[s])
    if rp and rs and rs > rp + slack_ns:
        return False  # the upstream response must reach the proxy before it answers downstream
    ep, es = int(view.resp_end_last_ns[p]), int(view.resp_end_first_ns[s])
    return ep == 0 or es == 0 or es <= ep + slack_ns  # ... and so must its last byte


def is_proxy_kind(kind: str) -> bool:
    return kind == HopKind.PROXY.value
