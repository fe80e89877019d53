"""Link segments across L7 proxies: a sidecar terminates TCP, so its two legs are two connections.

A proxy rewrites Host (nginx sends the upstream's name), strips or adds path prefixes, adds and
removes headers (its own X-Request-ID upstream only), pools upstream keep-alive connections, retries,
and answers errors itself. So no matcher here requires Host or path to agree; what survives a proxy
is: the method, the upstream exchange nested in the downstream one in time, the status (unless the
proxy answered itself), the body lengths (``req_body_bytes``, ``resp_body_bytes``: the proxy rewrites
the header block, not the body), and ids where the proxy passes them on. Path agreement (equal, or
one a suffix of the other: a stripped or added prefix) is a preference that orders candidates and
raises confidence, never a requirement. Three matchers, in this order:

- **by id** (``proxy:x-request-id``, ``proxy:traceparent``, ``proxy:b3``): segments sharing a request
  id, the trace id of a W3C traceparent or a B3 trace id form a group; within a group each segment's
  parent is the latest-starting earlier segment that encloses it in time (request later, response
  earlier, ``nesting_slack_us``), carries the same method and does not pass where the candidate
  parent ended (two attempts of a retry are siblings, not parent and child).
- **by nesting** (``proxy:nested``): a proxy that generates the request id itself puts it only on the
  upstream leg, so the downstream leg has none. A segment ending at a hop is linked to one starting
  at a hop on the same host (one of the two hops of kind ``proxy``: the proxy's listener or its
  upstream side) with the same method, whose exchange nests inside it (request after request,
  response first *and last* byte before the downstream response's), whose status and body lengths
  agree (``_child_fits``), and that begins within ``proxy_gap_us``; pairs are assigned one-to-one in
  arrival order (a proxy forwards first come, first served; the nesting checks catch its
  exceptions), a downstream leg whose path agrees before an older one whose path does not,
  leftovers placed by moving one earlier pair. Confidence is lower, and lower still when the order
  was a guess (another candidate arrived within ``proxy_order_jitter_us`` of the chosen one, or one
  as good was waiting at the proxy when the upstream leg left: a busy proxy forwards what it holds in
  an order of its own) or the paths disagree.
- **retries** (``proxy:retry``): an upstream leg left over after both, that failed (no response, or
  a 5xx) or followed a failed one, joins the downstream leg whose linked upstream leg it runs beside
  one after the other (one attempt ended before the other began), both inside the downstream
  exchange.

Between two mutual-TLS sidecars the probe sees TLS exchanges (``l7_proto`` ``tls``: a client burst
of records and the server burst answering it, ``hopscope.probes.l7.tls``), with no method, path,
status, id or body length. ``link_tls`` runs first (so that an id shared by the plaintext legs on
either side of the TLS hop does not join them past it). A TLS link joins an exchange and a plaintext
leg on one side of it: the client side (a plaintext leg ending at a proxy hop, the exchange starting
on that host: the client sidecar encrypting the request it received) or the server side (the
exchange ending on a host, a plaintext leg starting at a proxy hop there: the server sidecar
forwarding what it decrypted). It must nest as above, and the exchange's bytes in each direction
must hold the plaintext body lengths (encryption adds, never removes). In this order:

- **chains** (``tls:nested+id`` 0.95, ``tls:nested+path`` 0.9): a client-side leg and a server-side
  leg showing the same request id (a server sidecar that keeps the client's), or the same path that
  no other leg on either side has (a leading segment may be stripped), with the same status and
  bodies, and exactly one exchange between their hosts nesting in the first and around the second:
  both links at once. A different id proves nothing (nginx and haproxy replace it).
- **server side, then client side, by timing** (``tls:nested`` 0.8, 0.6 when the order was a
  guess): one-to-one, first in the order the responses passed the sidecar (each child takes the open
  parent whose response left first after its own), then what is left in arrival order as
  ``proxy:nested`` does. A client sidecar setting up a TLS connection per queued request sends the
  requests on in the order its handshakes finish, but passes each answer back as it comes. Once the
  server side is linked, each exchange carries its server-side leg: its status and bodies must be the
  client-side leg's (or a gateway error), its path stands for the exchange's, and a client-side leg
  whose id is the one the exchange carries is linked first (``tls:nested+id``).
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hopscope.correlate.relations import (
    AMBIGUOUS_NESTED_CONFIDENCE,
    BASE_CONFIDENCE,
    PATH_DISAGREES_FACTOR,
    Reason,
)
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
    #: body lengths of the request and the response (0: none, or a probe that does not count them)
    req_body: I64 | None = None
    resp_body: I64 | None = None
    #: clock group of each segment's first hop (points tied by shared connections); two segments in
    #: different groups have no trustworthy relative timing yet, so an id link between them skips the
    #: nesting check (``None``: one group)
    clock_group: I64 | None = None
    #: TLS exchange segments (``l7_proto`` tls: no method, path, status, ids or body lengths), with
    #: their request and response bytes (records included); ``None``: no TLS segment
    tls: npt.NDArray[np.bool_] | None = None
    req_bytes: I64 | None = None
    resp_bytes: I64 | None = None
    #: per TLS segment, the plaintext leg the server sidecar sent for it (-1: none known) and that
    #: leg's request id (x-request-id, else a traceparent's trace id; '' none): what the exchange
    #: carried encrypted (filled by ``link_tls``)
    tls_child: list[int] | None = None
    tls_ids: list[str] | None = None


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


def _cross_clock(view: SegmentView, p: int, s: int) -> bool:
    return view.clock_group is not None and bool(view.clock_group[p] != view.clock_group[s])


def _proxy_shape(view: SegmentView, p: int, s: int) -> bool:
    """``s`` starts at a proxy hop on the host where ``p`` ends: the shape of a proxy's two legs."""
    return bool(view.first_proxy[s]) and view.last_host[p] == view.first_host[s]


def _nests(view: SegmentView, p: int, s: int, slack_ns: int) -> bool:
    if _cross_clock(view, p, s):
        # no common clock yet: the shared id, the same request and the proxy's shape decide
        return _proxy_shape(view, p, s)
    if view.req_first_ns[s] + slack_ns < view.req_first_ns[p]:
        return False
    rp, rs = int(view.resp_first_ns[p]), int(view.resp_first_ns[s])
    return rp == 0 or rs == 0 or rs <= rp + slack_ns


def _same_request(view: SegmentView, p: int, s: int) -> bool:
    """Same method, and ``s`` does not pass where ``p`` ended (a retry's two attempts both end at the
    app: siblings). Host and path may differ: proxies rewrite both."""
    return view.method[p] == view.method[s] and view.last_label[p] not in view.labels[s]


def _paths_agree(view: SegmentView, p: int, s: int) -> bool:
    """``path_agrees`` of two segments; a TLS exchange shows no path: the path of the leg it was
    forwarded as stands for it where known, else nothing disagrees with it."""
    if view.tls is not None and (view.tls[p] or view.tls[s]):
        child = _carried_leg(view, s)
        return child < 0 or view.tls[p] or path_agrees(view.path[p], view.path[child])
    return path_agrees(view.path[p], view.path[s])


def _carried_leg(view: SegmentView, s: int) -> int:
    """The plaintext leg the server sidecar sent for exchange ``s`` (-1: not an exchange, or unknown)."""
    if view.tls is None or view.tls_child is None or not view.tls[s]:
        return -1
    return view.tls_child[s]


def path_agrees(down: str, up: str) -> bool:
    """The upstream path is the downstream one, or one is the other with a prefix stripped or added
    (query strings kept): a hint, never a requirement."""
    if down == up:
        return True
    longer, shorter = (down, up) if len(down) > len(up) else (up, down)
    return shorter.startswith("/") and longer.endswith(shorter) and longer[: len(longer) - len(shorter)].startswith("/")


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
    cross = (view.clock_group[a] != view.clock_group[b]) if view.clock_group is not None else np.zeros(len(a), bool)
    # without a common clock, the leg that starts at a proxy hop is the upstream one
    by_kind = cross & (view.first_proxy[a] != view.first_proxy[b])
    later = np.where(by_kind, view.first_proxy[b], later)
    p, s = np.where(later, a, b), np.where(later, b, a)
    slack = settings.nesting_slack_us * 1000
    rp, rs = view.resp_first_ns[p], view.resp_first_ns[s]
    ok = (links.parent[s] < 0) & (cross | (np.abs(view.req_first_ns[s] - view.req_first_ns[p])
                                           <= settings.proxy_id_window_us * 1000))
    ok &= cross | (rp == 0) | (rs == 0) | (rs <= rp + slack)
    if cross.any():
        shape = np.fromiter((not c or _proxy_shape(view, x, y) for c, x, y in zip(cross.tolist(), p.tolist(),
                                                                                    s.tolist(), strict=True)),
                            dtype=bool, count=len(p))
        ok &= shape
    same = np.fromiter((_same_request(view, x, y) for x, y in zip(p.tolist(), s.tolist(), strict=True)),
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
    parents: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    # an upstream leg that ends at a non-proxy hop (sidecar -> app) never carries a request onwards
    upstream_end = view.first_proxy & ~view.last_proxy
    plain = ~view.tls if view.tls is not None else np.ones(len(view.method), dtype=bool)
    for p in np.flatnonzero(~has_child & ~upstream_end & plain).tolist():
        key = (view.last_host[p], view.method[p])  # Host and path: proxies rewrite them
        parents[key].append((int(view.req_last_ns[p]), p))
    children: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for s in np.flatnonzero((links.parent < 0) & plain).tolist():
        key = (view.first_host[s], view.method[s])
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
    """One-to-one, in arrival order: each upstream leg (in the order it left the proxy) takes the
    oldest open downstream leg it fits in; then legs left over are placed by moving one earlier pair.

    A proxy forwards in the order it received unless something holds a request back; the nesting
    checks (``_child_fits``: request after request, response first and last byte before the
    downstream's, same status) catch the exceptions seen in the lab. No sum of turnarounds can
    decide: over a complete matching every such sum is the same. A downstream leg answered before an
    upstream leg left is closed for it and every later one, so a leg the proxy answered itself does
    not shift every later pair. Legs that reached the proxy within ``proxy_order_jitter_us`` of each
    other are in no reliable order: among them the one whose response hand-over (downstream response
    out minus upstream response in) is nearest this proxy's usual one wins, and the link gets the
    ambiguous confidence (so does a pair that had to be moved). An upstream leg takes the oldest
    open downstream leg whose path agrees before an older one whose path does not: after a stall a
    proxy forwards what it read in an order of its own, and requests that differ in their paths are
    then still paired right.
    """
    slack = settings.nesting_slack_us * 1000
    window = (settings.proxy_gap_us * 1000, slack, settings.proxy_order_jitter_us * 1000)
    times = [t for t, _ in plist]
    first_pass = _fifo(view, plist, times, kids, groups, window, None)
    handovers = [h for _, _, h in first_pass if h is not None]
    usual = int(np.median(handovers)) if handovers else None
    owner: dict[int, int] = {}  # plist index -> child segment
    chosen_of = {s: i for s, i, _ in _fifo(view, plist, times, kids, groups, window, usual)}
    queued = _queued(view, plist, times, kids, chosen_of, window)
    left: list[tuple[int, int]] = []
    made = 0
    for t, s in kids:
        i = chosen_of.get(s, -1)
        if i < 0 or groups.find(plist[i][1]) == groups.find(s):
            left.append((t, s))
            continue
        owner[i] = s
        _link_nested(view, links, groups, plist[i][1], s, s in queued or _has_rival(view, plist, times, i, s, window))
        made += 1
    return made + _place_left(view, plist, times, left, owner, links, groups, window)


def _fifo(view: SegmentView, plist: list[tuple[int, int]], times: list[int], kids: list[tuple[int, int]],
          groups: _UnionFind, window: tuple[int, int, int], usual: int | None) -> list[tuple[int, int, int | None]]:
    """(child, plist index, response hand-over ns) of the arrival-order assignment: the oldest open
    downstream leg that fits and whose path agrees (``path_agrees``), else the oldest that fits; ties
    within the jitter go to the hand-over nearest ``usual`` (when known)."""
    gap, slack, _ = window
    free = _NextFree(len(plist))
    out: list[tuple[int, int, int | None]] = []
    for t, s in kids:
        i = free.find(bisect.bisect_left(times, t - gap))
        hi = bisect.bisect_right(times, t + slack)
        chosen, first_fit, skipped = -1, -1, 0
        while i < hi and skipped < NESTED_CANDIDATES:
            p = plist[i][1]
            answered_ns = int(view.resp_last_ns[p])
            if answered_ns and answered_ns < t - slack:
                free.take(i)  # closed for this leg and every later one
            elif _child_fits(view, p, s, slack) and groups.find(p) != groups.find(s):
                if _paths_agree(view, p, s):
                    chosen = i
                    break
                first_fit = i if first_fit < 0 else first_fit
                skipped += 1
            else:
                skipped += 1
            i = free.find(i + 1)
        chosen = chosen if chosen >= 0 else first_fit
        if chosen < 0:
            continue
        chosen = _best_among_ties(view, plist, times, free, chosen, s, window, usual)
        free.take(chosen)
        out.append((s, chosen, _handover(view, plist[chosen][1], s)))
    return out


def _handover(view: SegmentView, p: int, s: int) -> int | None:
    rp, rs = int(view.resp_last_ns[p]), int(view.resp_first_ns[s])
    return rp - rs if rp and rs else None


def _best_among_ties(view: SegmentView, plist: list[tuple[int, int]], times: list[int], free: _NextFree,
                     chosen: int, s: int, window: tuple[int, int, int], usual: int | None) -> int:
    """Among open legs that reached the proxy within the jitter of the oldest fitting one (their
    order is noise), the one whose path agrees with the upstream leg's (``path_agrees``), then the
    one whose response hand-over is nearest the proxy's usual one (when known)."""
    _, slack, jitter = window

    def rank(i: int) -> tuple[bool, int]:
        p = plist[i][1]
        h = _handover(view, p, s)
        return (not _paths_agree(view, p, s),
                abs(h - usual) if h is not None and usual is not None else 0)

    i = free.find(chosen + 1)
    if i >= len(times) or times[i] - times[chosen] > jitter:
        return chosen  # no tie: the common case
    best, best_rank = chosen, rank(chosen)
    if best_rank == (False, 0):
        return chosen  # the path agrees and no usual hand-over to go by (the first pass)
    while i < len(times) and times[i] - times[chosen] <= jitter:
        r = rank(i)
        if r < best_rank and _child_fits(view, plist[i][1], s, slack):
            best, best_rank = i, r
        i = free.find(i + 1)
    return best


def _has_rival(view: SegmentView, plist: list[tuple[int, int]], times: list[int], chosen: int, s: int,
               window: tuple[int, int, int]) -> bool:
    """Another downstream leg that ``s`` fits in reached the proxy within the jitter of the chosen one
    (taken or not): the proxy may have served the two in either order."""
    _, slack, jitter = window
    lo = bisect.bisect_left(times, times[chosen] - jitter)
    hi = bisect.bisect_right(times, times[chosen] + jitter)
    return any(i != chosen and _child_fits(view, plist[i][1], s, slack) for i in range(lo, min(hi, lo + 64)))


def _queued(view: SegmentView, plist: list[tuple[int, int]], times: list[int], kids: list[tuple[int, int]],
            chosen_of: dict[int, int], window: tuple[int, int, int]) -> set[int]:
    """Upstream legs paired by a guess: when one left, another downstream leg it fits in was waiting
    at the proxy (arrived, not yet forwarded, not answered) and the paths cannot tell the two apart.
    A proxy that holds two requests forwards them in an order of its own. Both legs whose downstream
    legs could be swapped are returned."""
    _, slack, _ = window
    forwarded_ns = {i: int(view.req_first_ns[k]) for k, i in chosen_of.items()}
    owner = {i: k for k, i in chosen_of.items()}
    out: set[int] = set()
    for t, s in kids:
        chosen = chosen_of.get(s, -1)
        if chosen < 0:
            continue
        agrees = _paths_agree(view, plist[chosen][1], s)
        hi = bisect.bisect_right(times, t + slack)
        # an equal leg that arrived before the chosen one and was still free would have been chosen
        for i in range(chosen + 1, min(hi, chosen + 1 + NESTED_CANDIDATES)):
            p = plist[i][1]
            answered_ns = int(view.resp_last_ns[p])
            if i == chosen or forwarded_ns.get(i, t + 1) < t or (answered_ns and answered_ns < t - slack):
                continue
            if _paths_agree(view, p, s) == agrees and _child_fits(view, p, s, slack):
                out.add(s)
                if i in owner:
                    out.add(owner[i])
                break
    return out


def _open_candidates(view: SegmentView, plist: list[tuple[int, int]], times: list[int], t: int, s: int,
                     window: tuple[int, int, int]) -> list[int]:
    """plist indexes of downstream legs (taken or not) still open when ``s`` left and that it fits in."""
    gap, slack, _ = window
    out: list[int] = []
    i = bisect.bisect_right(times, t + slack) - 1
    stop = max(-1, i - NESTED_CANDIDATES)
    while i > stop and times[i] >= t - gap and len(out) < REPAIR_CANDIDATES:
        p = plist[i][1]
        answered_ns = int(view.resp_last_ns[p])
        if not (answered_ns and answered_ns < t - slack) and _child_fits(view, p, s, slack):
            out.append(i)
        i -= 1
    return out[::-1]


def _place_left(view: SegmentView, plist: list[tuple[int, int]], times: list[int], left: list[tuple[int, int]],
                owner: dict[int, int], links: Links, groups: _UnionFind, window: tuple[int, int, int]) -> int:
    """An upstream leg that found no open downstream leg takes one from an earlier pair whose upstream
    leg fits another free downstream leg (an augmenting path of length one); both become ambiguous."""
    made = 0
    for t, s in left:
        for i in _open_candidates(view, plist, times, t, s, window):
            other = owner.get(i)
            if other is None or _descends(links, plist[i][1], s):
                continue
            t_other = int(view.req_first_ns[other])
            spare = [j for j in _open_candidates(view, plist, times, t_other, other, window)
                     if j not in owner and not _descends(links, plist[j][1], other)]
            if not spare:
                continue
            j = spare[0]
            _link_nested(view, links, groups, plist[j][1], other, True)
            _link_nested(view, links, groups, plist[i][1], s, True)
            owner[j], owner[i] = other, s
            made += 1
            break
    return made


def link_retries(view: SegmentView, settings: CorrelateSettings, links: Links) -> int:
    """Attach upstream legs left over to the downstream leg they retried; returns links made.

    A leftover ``s`` starting at a proxy hop joins the downstream leg ``p`` (same host and method)
    whose upstream leg ``c`` it ran beside one after the other, the earlier of the two failed (no
    response or a 5xx), the later one answered ``p`` (``_statuses_fit``), and both nest in ``p``.
    Among several such ``p`` the latest-arriving wins, with the ambiguous confidence."""
    slack = settings.nesting_slack_us * 1000
    children: dict[int, list[int]] = defaultdict(list)
    for c, p in enumerate(links.parent.tolist()):
        if p >= 0 and view.first_proxy[c] and links.reason[c].startswith("proxy:"):
            children[p].append(c)
    by_key: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for p in children:
        by_key[(view.last_host[p], view.method[p])].append((int(view.req_last_ns[p]), p))
    for kids in by_key.values():
        kids.sort()
    made = 0
    for s in np.flatnonzero((links.parent < 0) & view.first_proxy).tolist():
        plist = by_key.get((view.first_host[s], view.method[s]), [])
        t = int(view.req_first_ns[s])
        hi = bisect.bisect_right(plist, (t + slack, len(links.parent)))
        lo = bisect.bisect_left(plist, (t - settings.proxy_gap_us * 1000, -1))
        fits = [p for _, p in plist[lo:hi] if _retry_fits(view, p, children[p][0], s, slack)]
        if not fits:
            continue
        p = fits[-1]
        links.parent[s] = p
        links.reason[s] = Reason.PROXY_RETRY.value
        links.confidence[s] = BASE_CONFIDENCE[Reason.PROXY_RETRY] if len(fits) == 1 else AMBIGUOUS_NESTED_CONFIDENCE
        made += 1
    return made


def _failed(view: SegmentView, s: int) -> bool:
    return int(view.status[s]) == 0 or int(view.status[s]) >= 500


def _retry_fits(view: SegmentView, p: int, c: int, s: int, slack_ns: int) -> bool:
    """``s`` and ``c`` are two attempts of ``p``'s request: one after the other, the first failed."""
    if view.last_label[p] in view.labels[s] or not _nested_in(view, p, s, slack_ns):
        return False
    first, later = (c, s) if view.req_first_ns[c] <= view.req_first_ns[s] else (s, c)
    if not _failed(view, first) or view.last_label[first] not in view.labels[later]:
        return False  # a retry goes to the same upstream hop after a failed attempt
    first_end = int(view.resp_end_first_ns[first]) or int(view.req_first_ns[first])
    if int(view.req_first_ns[later]) + slack_ns < first_end:
        return False
    return _statuses_fit(view, p, later) and (
        view.req_body is None or view.req_body[p] == view.req_body[first])


def _nested_in(view: SegmentView, p: int, s: int, slack_ns: int) -> bool:
    """``s``'s exchange lies inside ``p``'s as seen at the proxy."""
    if view.req_first_ns[s] + slack_ns < view.req_last_ns[p]:
        return False
    ep, es = int(view.resp_end_last_ns[p]), int(view.resp_end_first_ns[s])
    return ep == 0 or es == 0 or es <= ep + slack_ns


def _descends(links: Links, p: int, s: int) -> bool:
    """``p`` is ``s`` or below it: linking ``s`` under ``p`` would close a cycle."""
    seen = 0
    while p >= 0 and seen < 64:
        if p == s:
            return True
        p = int(links.parent[p])
        seen += 1
    return False


def _link_nested(view: SegmentView, links: Links, groups: _UnionFind, p: int, s: int, ambiguous: bool) -> None:
    groups.union(s, p)
    links.parent[s] = p
    reason = Reason.PROXY_NESTED
    if view.tls is not None and (view.tls[p] or view.tls[s]):
        reason = Reason.TLS_NESTED_ID if _tls_id_agrees(view, p, s) else Reason.TLS_NESTED
    links.reason[s] = reason.value
    confidence = BASE_CONFIDENCE[reason]
    if ambiguous:
        confidence = min(confidence, AMBIGUOUS_NESTED_CONFIDENCE)
    if not _paths_agree(view, p, s):
        confidence *= PATH_DISAGREES_FACTOR
    links.confidence[s] = confidence


NESTED_CANDIDATES = 64  # open downstream legs tried per upstream leg
CHAIN_GROUP_MAX = 5  # chains assigned jointly at most (their exchanges are tried in every combination)
#: statuses a proxy sends when it answers a request itself (bad gateway, unavailable, timeout)
GATEWAY_ERRORS = frozenset({502, 503, 504})
REPAIR_CANDIDATES = 8  # pairs considered for moving when an upstream leg found none


class _NextFree:
    """Index of the next free slot at or after i (taken slots are skipped in near-constant time)."""

    def __init__(self, n: int) -> None:
        self.next = list(range(n + 1))

    def find(self, i: int) -> int:
        root = i
        while self.next[root] != root:
            root = self.next[root]
        while self.next[i] != root:
            self.next[i], i = root, self.next[i]
        return root

    def take(self, i: int) -> None:
        self.next[i] = i + 1


def proxy_answered(down_status: int, up_status: int) -> bool:
    """The proxy answered the downstream leg itself: a gateway error (502, 503, 504) after an
    upstream leg that got no response or an error of its own."""
    return down_status in GATEWAY_ERRORS and (up_status == 0 or up_status >= 500)


def _statuses_fit(view: SegmentView, p: int, s: int) -> bool:
    """Status and body lengths: the proxy passes the upstream's answer on, unless it answered itself."""
    sp, ss = int(view.status[p]), int(view.status[s])
    if view.req_body is not None and view.req_body[p] != view.req_body[s]:
        return False  # the request body the proxy received is the one it forwards
    if sp and ss and sp != ss:
        return proxy_answered(sp, ss)
    if sp and ss and view.resp_body is not None:
        return bool(view.resp_body[p] == view.resp_body[s])  # ... and so is the response body
    return True


def _child_fits(view: SegmentView, p: int, s: int, slack_ns: int) -> bool:
    if p == s or not (view.last_proxy[p] or view.first_proxy[s]):
        return False  # one of the two legs must touch a proxy hop
    if view.tls is not None and (view.tls[p] or view.tls[s]):
        if not _tls_fits(view, p, s):
            return False
    elif not _statuses_fit(view, p, s):
        return False
    if view.last_label[p] in view.labels[s]:
        return False  # the upstream leg never passes where the downstream leg ended
    rp, rs = int(view.resp_last_ns[p]), int(view.resp_first_ns[s])
    if rp and rs and rs > rp + slack_ns:
        return False  # the upstream response must reach the proxy before it answers downstream
    ep, es = int(view.resp_end_last_ns[p]), int(view.resp_end_first_ns[s])
    return ep == 0 or es == 0 or es <= ep + slack_ns  # ... and so must its last byte


def _tls_fits(view: SegmentView, p: int, s: int) -> bool:
    """A TLS exchange and a plaintext leg on either side of it (never two exchanges): the exchange's
    bytes hold the plaintext's bodies."""
    assert view.tls is not None and view.req_bytes is not None and view.resp_bytes is not None
    if view.tls[p] == view.tls[s]:
        return False
    exchange, plain = (p, s) if view.tls[p] else (s, p)
    carried = _carried_leg(view, s)
    if carried >= 0 and not _statuses_fit(view, p, carried):
        return False  # the client side answers with what the server side did (or a gateway error)
    if view.req_body is not None and view.req_bytes[exchange] < view.req_body[plain]:
        return False
    return view.resp_body is None or bool(view.resp_bytes[exchange] >= view.resp_body[plain])


def _request_id(view: SegmentView, s: int) -> str:
    """A plaintext leg's request id: its x-request-id, else its traceparent's trace id, else ''."""
    return view.ids["x_request_id"][s] or view.ids["traceparent"][s]


def _tls_id_agrees(view: SegmentView, p: int, s: int) -> bool:
    """``s`` is an exchange whose carried id (its server-side leg's) is ``p``'s own."""
    if view.tls_ids is None or view.tls is None or not view.tls[s]:
        return False
    carried = view.tls_ids[s]
    return bool(carried) and carried == _request_id(view, p)


def link_tls(view: SegmentView, settings: CorrelateSettings, links: Links) -> int:
    """Link TLS exchanges to the plaintext legs around them (module docstring); returns links made.

    The server side first (exchange -> the plaintext leg a server sidecar sent for it, starting at a
    proxy hop on the host where the exchange ends): a sidecar forwarding over a warm pool keeps the
    order well. Each exchange then carries that leg's request id. The client side (plaintext leg
    ending at a proxy hop -> exchange starting on that host) pairs legs whose own id is the one an
    exchange carries first (``tls:nested+id``), the rest by timing: a client sidecar setting up TLS
    connections sends queued requests on in the order its handshakes finish."""
    if view.tls is None or not view.tls.any():
        return 0
    return _link_tls_sides(view, settings, links)


def _link_tls_sides(view: SegmentView, settings: CorrelateSettings, links: Links) -> int:
    """Both sides of every TLS hop, over what is not linked yet (``link_tls``); returns links made."""
    assert view.tls is not None
    tls = view.tls
    groups = _UnionFind(len(links.parent))
    made = _link_id_chains(view, settings, links, groups)
    kids = np.flatnonzero(~tls & view.first_proxy & (links.parent < 0)).tolist()
    made += _assign_by_host(view, settings, links, groups, np.flatnonzero(tls & ~_has_child(links)).tolist(), kids)
    view.tls_child = [-1] * len(tls)
    for c in np.flatnonzero(~tls & (links.parent >= 0)).tolist():
        if tls[links.parent[c]]:
            view.tls_child[int(links.parent[c])] = c
    view.tls_ids = [_request_id(view, c) if c >= 0 else "" for c in view.tls_child]
    made += _link_by_carried_id(view, settings, links, groups, _childless_plain_ends(view, links))
    return made + _assign_by_host(view, settings, links, groups, _childless_plain_ends(view, links),
                                  np.flatnonzero(tls & (links.parent < 0)).tolist())


def _has_child(links: Links) -> npt.NDArray[np.bool_]:
    has_child = np.zeros(len(links.parent), dtype=bool)
    has_child[links.parent[links.parent >= 0]] = True
    return has_child


def _childless_plain_ends(view: SegmentView, links: Links) -> list[int]:
    """Plaintext legs ending at a proxy hop that no segment is linked under yet."""
    assert view.tls is not None
    return np.flatnonzero(~view.tls & view.last_proxy & ~_has_child(links)).tolist()


def _link_id_chains(view: SegmentView, settings: CorrelateSettings, links: Links, groups: _UnionFind) -> int:
    """Across the TLS hop by what both plaintext legs show: a leg ending at a proxy hop and one starting
    at a proxy hop on another host share a request id (a server sidecar that keeps the client's:
    ``tls:nested+id``), or else a path that no other leg on either host has (stripped of a leading
    segment, as a sidecar may strip a prefix: ``tls:nested+path``), the same status and bodies, and an
    exchange between those hosts nests in the first and around the second: both links are made. With
    one such exchange, that one; with several, chains sharing them are assigned together
    (``_assign_chain_groups``). Returns links made."""
    assert view.tls is not None
    tls = view.tls
    ends: dict[tuple[str, str], list[int]] = defaultdict(list)
    has_child = _has_child(links)
    client_hosts = {view.first_host[b] for b in np.flatnonzero(tls).tolist()}
    server_hosts = {view.last_host[b] for b in np.flatnonzero(tls).tolist()}
    for p in np.flatnonzero(~tls & view.last_proxy).tolist():
        if view.last_host[p] in client_hosts:
            for key in _chain_keys(view, p, upstream=False):
                ends[key].append(p)
    counts = {key: len(v) for key, v in ends.items()}
    ends = {key: [p for p in v if not has_child[p]] for key, v in ends.items()}
    upstream = [c for c in np.flatnonzero(~tls & view.first_proxy).tolist() if view.first_host[c] in server_hosts]
    starts = Counter(key for c in upstream for key in _chain_keys(view, c, upstream=True))
    exchanges: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for b in np.flatnonzero(tls).tolist():
        exchanges[(view.first_host[b], view.last_host[b])].append((int(view.req_first_ns[b]), b))
    for v in exchanges.values():
        v.sort()
    chains: list[tuple[int, int, Reason, list[int]]] = []  # (client leg, server leg, reason, exchanges)
    for c in upstream:
        if links.parent[c] >= 0:
            continue
        for key in _chain_keys(view, c, upstream=True):
            cands = ends.get(key, [])
            if key[0] == "path" and (counts.get(key) != 1 or starts[key] != 1):
                continue  # a path is a key only where it names one leg on each side
            found = [(a, bs) for a in cands if view.last_host[a] != view.first_host[c] and _statuses_fit(view, a, c)
                     for bs in [_chain_exchanges(view, settings, links, exchanges, a, c)] if bs]
            if len(found) != 1:
                continue
            a, bs = found[0]
            chains.append((a, c, Reason.TLS_NESTED_ID if key[0] == "id" else Reason.TLS_NESTED_PATH, bs))
            for k in _chain_keys(view, a, upstream=False):
                if a in ends.get(k, []):
                    ends[k].remove(a)
            break
    made, pending = 0, chains
    while pending:  # one exchange left between the two legs: that one (taking it may leave one for another)
        rest = []
        for a, c, reason, bs in pending:
            free = [b for b in bs if links.parent[b] < 0]
            if len(free) == 1:
                _link_chain(view, links, groups, (a, free[0], c), reason, False)
                made += 2
            elif free:
                rest.append((a, c, reason, free))
        if len(rest) == len(pending):
            break
        pending = rest
    return made + _assign_chain_groups(view, settings, links, groups, pending)


def _link_chain(view: SegmentView, links: Links, groups: _UnionFind, chain: tuple[int, int, int], reason: Reason,
                ambiguous: bool) -> None:
    a, b, c = chain
    for parent, child in ((a, b), (b, c)):
        _link_nested(view, links, groups, parent, child, False)
        links.reason[child] = reason.value
        links.confidence[child] = AMBIGUOUS_NESTED_CONFIDENCE if ambiguous else BASE_CONFIDENCE[reason]


def _chain_times(view: SegmentView, a: int, b: int, c: int) -> tuple[int, ...]:
    """When a chain passed each sidecar, in pairs (before, after): the request into and out of the
    client sidecar, into and out of the server sidecar, and the answer likewise on the way back."""
    return (int(view.req_last_ns[a]), int(view.req_first_ns[b]), int(view.req_last_ns[b]), int(view.req_first_ns[c]),
            int(view.resp_first_ns[c]), int(view.resp_last_ns[b]), int(view.resp_first_ns[b]),
            int(view.resp_last_ns[a]))


def _orders_kept(times: list[tuple[int, ...]], jitter_ns: int) -> int:
    """Over every two chains and each of the four passages through a sidecar (``_chain_times``), how
    often the two left in the order they came (a passage where both gaps are within ``jitter_ns``
    says nothing)."""
    kept = 0
    for x, y in itertools.combinations(times, 2):
        for k in range(0, 8, 2):
            came, left = y[k] - x[k], y[k + 1] - x[k + 1]
            if max(abs(came), abs(left)) > jitter_ns:
                kept += (came > 0) == (left > 0)
    return kept


def _assign_chain_groups(view: SegmentView, settings: CorrelateSettings, links: Links, groups: _UnionFind,
                         pending: list[tuple[int, int, Reason, list[int]]]) -> int:
    """Chains with several exchanges between their legs, in groups that share candidates and have
    exactly as many candidates as chains (no other request can own one): the one-to-one assignment
    that keeps the most orders at the sidecars (``_orders_kept``: a sidecar mostly passes requests
    and answers on in the order they came, though a starved one swaps some); ambiguous unless it
    keeps more than every other. Other groups, and groups beyond ``CHAIN_GROUP_MAX`` chains, are left
    to the timing rule."""
    jitter = settings.proxy_order_jitter_us * 1000
    made = 0
    for members in _shared_candidate_groups(pending):
        if len(members) > CHAIN_GROUP_MAX or len({b for _, _, _, bs in members for b in bs}) != len(members):
            continue  # too many to try, or exchanges other requests may own: the timing rule decides
        scored = []
        for combo in itertools.product(*(bs for _, _, _, bs in members)):
            if len(set(combo)) == len(combo):
                times = [_chain_times(view, a, b, c) for (a, c, _, _), b in zip(members, combo, strict=True)]
                scored.append((-_orders_kept(times, jitter), combo))
        if not scored:
            continue
        scored.sort()
        ambiguous = len(scored) > 1 and scored[1][0] == scored[0][0]
        for (a, c, reason, _), b in zip(members, scored[0][1], strict=True):
            _link_chain(view, links, groups, (a, b, c), reason, ambiguous)
            made += 2
    return made


def _shared_candidate_groups(pending: list[tuple[int, int, Reason, list[int]]],
                             ) -> list[list[tuple[int, int, Reason, list[int]]]]:
    """Pending chains grouped so that chains sharing a candidate exchange are in one group."""
    uf = _UnionFind(len(pending))
    owner: dict[int, int] = {}
    for i, (_, _, _, bs) in enumerate(pending):
        for b in bs:
            if b in owner:
                uf.union(i, owner[b])
            owner[b] = i
    out: dict[int, list[tuple[int, int, Reason, list[int]]]] = defaultdict(list)
    for i, chain in enumerate(pending):
        out[uf.find(i)].append(chain)
    return list(out.values())


def _chain_keys(view: SegmentView, s: int, upstream: bool) -> list[tuple[str, str]]:
    """What a plaintext leg shows that the leg on the other side of a TLS hop may show too: its request
    id, its path, and (a client-side leg) its path without the first segment."""
    keys = []
    rid = _request_id(view, s)
    if rid:
        keys.append(("id", rid))
    path = view.path[s]
    if path:
        keys.append(("path", path))
        rest = path.find("/", 1)
        if not upstream and rest > 0:
            keys.append(("path", path[rest:]))
    return keys


def _chain_exchanges(view: SegmentView, settings: CorrelateSettings, links: Links,
                     exchanges: dict[tuple[str, str], list[tuple[int, int]]], a: int, c: int) -> list[int]:
    """The unlinked exchanges nested in ``a`` and around ``c``."""
    slack = settings.nesting_slack_us * 1000
    between = exchanges.get((view.last_host[a], view.first_host[c]), [])
    lo = bisect.bisect_left(between, (int(view.req_last_ns[a]) - slack, -1))
    hi = bisect.bisect_right(between, (int(view.req_first_ns[c]) + slack, len(links.parent)))
    return [b for _, b in between[lo:hi][:NESTED_CANDIDATES] if links.parent[b] < 0
            and _child_fits(view, a, b, slack) and _child_fits(view, b, c, slack)]


def _link_by_carried_id(view: SegmentView, settings: CorrelateSettings, links: Links, groups: _UnionFind,
                        parents: list[int]) -> int:
    """Client side by what the exchange carries: an exchange whose server-side leg shows the own id
    of exactly one plaintext leg on its host that it fits in (nesting, bytes, status), or a path
    that exactly one such leg has and no other leg there (``_chain_keys``), is linked under it
    (``tls:nested+id``, ``tls:nested+path``)."""
    assert view.tls is not None and view.tls_child is not None
    slack = settings.nesting_slack_us * 1000
    by_key: dict[tuple[str, tuple[str, str]], list[int]] = defaultdict(list)
    for p in np.flatnonzero(~view.tls & view.last_proxy).tolist():
        for key in _chain_keys(view, p, upstream=False):
            by_key[(view.last_host[p], key)].append(p)
    open_ends = set(parents)
    made = 0
    for s in np.flatnonzero(view.tls & (links.parent < 0)).tolist():
        carried = view.tls_child[s]
        for key in _chain_keys(view, carried, upstream=True) if carried >= 0 else []:
            cands = by_key.get((view.first_host[s], key), [])
            if key[0] == "path" and len(cands) != 1:
                continue  # a path is a key only where it names one leg
            fits = [p for p in cands if p in open_ends and groups.find(p) != groups.find(s)
                    and _child_fits(view, p, s, slack) and view.req_last_ns[p] <= view.req_first_ns[s] + slack]
            if len(fits) == 1:
                _link_nested(view, links, groups, fits[0], s, False)
                reason = Reason.TLS_NESTED_ID if key[0] == "id" else Reason.TLS_NESTED_PATH
                links.reason[s], links.confidence[s] = reason.value, BASE_CONFIDENCE[reason]
                open_ends.discard(fits[0])
                made += 1
                break
    return made


def _assign_by_host(view: SegmentView, settings: CorrelateSettings, links: Links, groups: _UnionFind,
                    parents: list[int], children: list[int]) -> int:
    """Per host (parents by the host they end on, children by the one they start on): first in the
    order the responses passed the proxy (``_assign_by_response``), then what is left in the order
    the requests did (``_assign_nested``)."""
    by_host: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for p in parents:
        by_host[view.last_host[p]].append((int(view.req_last_ns[p]), p))
    kids: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for s in children:
        if view.first_host[s] in by_host:
            kids[view.first_host[s]].append((int(view.req_first_ns[s]), s))
    made = 0
    for h, k in kids.items():
        plist = sorted(by_host[h])
        made += _assign_by_response(view, settings, plist, sorted(k), links, groups)
        taken = {int(p) for p in links.parent[[s for _, s in k]].tolist() if p >= 0}
        made += _assign_nested(view, settings, [x for x in plist if x[1] not in taken],
                               sorted(x for x in k if links.parent[x[1]] < 0), links, groups)
    return made


def _assign_by_response(view: SegmentView, settings: CorrelateSettings, plist: list[tuple[int, int]],
                        kids: list[tuple[int, int]], links: Links, groups: _UnionFind) -> int:
    """One-to-one in the order the responses passed the proxy: each upstream leg with a response, in
    the order its response reached the proxy, takes the open downstream leg it fits in whose path
    agrees (``_paths_agree``), else any it fits in, whose response left the proxy first after it
    (the smallest hand-over).

    A proxy that sets up a TLS connection per queued request (a handshake of its own per connection)
    sends the requests on in the order the handshakes finish, not the order they came; it passes each
    response on as soon as it has it. So the responses keep an order the requests lose. A hand-over
    within ``proxy_order_jitter_us`` of the next best is a guess (ambiguous confidence)."""
    slack = settings.nesting_slack_us * 1000
    gap, jitter = settings.proxy_gap_us * 1000, settings.proxy_order_jitter_us * 1000
    times = [t for t, _ in plist]
    taken: set[int] = set()
    made = 0
    answered = sorted((int(view.resp_first_ns[s]), t, s) for t, s in kids if view.resp_first_ns[s])
    for rs, t, s in answered:
        lo, hi = bisect.bisect_left(times, t - gap), bisect.bisect_right(times, t + slack)
        fits = []
        for i in range(max(lo, hi - NESTED_CANDIDATES), hi):
            p = plist[i][1]
            answered_ns = int(view.resp_last_ns[p])
            if i in taken or (answered_ns and answered_ns < t - slack) or not answered_ns:
                continue
            if groups.find(p) != groups.find(s) and _child_fits(view, p, s, slack):
                fits.append((not _paths_agree(view, p, s), answered_ns - rs, i))
        if not fits:
            continue
        fits.sort()
        (_, best, i), rival = fits[0], fits[1][1] if len(fits) > 1 and fits[1][0] == fits[0][0] else None
        taken.add(i)
        _link_nested(view, links, groups, plist[i][1], s, rival is not None and rival - best <= jitter)
        made += 1
    return made


def is_proxy_kind(kind: str) -> bool:
    return kind == HopKind.PROXY.value
