"""What captures given without metadata are: host, hop kind and path order, from their own records.

``hopscope analyze a.pcap b.pcap`` reads each capture once with no metadata; before stitching, the
records say how the points relate. Every rule works on observations the correlator already keeps
(flow records' ``syn_seq``, request records' ``req_tcp_seq``, times and addresses), never on packets:

=================  =====================================================================================
rule               evidence and conclusion
=================  =====================================================================================
``path:shared``    two points see the same connections (client ISN ``syn_seq``, or a request's first
                   TCP seq ``req_tcp_seq``): they lie on one path; which one saw the first byte
                   first, over all shared connections, orders them (``order``)
``nat:syn_seq``    along a connection's path the addresses change between two adjacent points: a NAT
                   between them. When every connection crossing into the one comes from the other and
                   vice versa (at least two), and neither is a path's end (two pods with an uncaptured
                   NAT between them look the same), the pair is one kernel rewriting what it
                   forwards: one host, one clock; both are kind ``nat``
``proxy:nested``   points joined by shared connections form path groups; a group other than the
                   network path (a sidecar's loopback capture, an upstream leg seen at two points)
                   whose requests nest one to one, in arrival order, inside another point's requests
                   on other connections (request later, response earlier: a sidecar's upstream leg to
                   its app), or around them (an egress sidecar's leg from the app), is a proxy leg on
                   that point's host; of the points on one path, the one nearest the proxy
``timing:edge``    the first point of every path it shares, seeing one client address, is the client's
                   NIC; the last, before any proxy leg, seeing one server address, the server's:
                   kind ``pod``
``name``           a transit point's kind cannot be told from its records (a hypervisor tap, a switch
                   mirror and a node NIC see the same packets): a word in the point name (``tap``,
                   ``mirror``, ``node``, ...) is taken as a hint with low confidence
=================  =====================================================================================

Metadata the user gave (``--host``, ``--kind``, a capture-set file) always wins; inference fills only
what is missing, and a given host carries over to the points inferred onto it. Where nothing decides,
``Inference.warnings`` says exactly which option would.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from hopscope.correlate.offline import PlannedPoint
from hopscope.records import Batch, HopKind

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

#: Share of a point's requests that must nest in (or enclose) another point's for a proxy link.
NEST_SHARE = 0.8
#: Share of the shared connections (those the two saw at different times) one point must see first
#: to come before the other.
ORDER_SHARE = 0.8
#: How many of the other point's latest-starting requests are tried as the enclosing one.
NEST_CANDIDATES = 16
#: Requests of a proxy leg tried against each other point (one stretch of time): enough to tell.
NEST_SAMPLE = 2000
#: A request at the proxy's NIC, further from the proxy than this, does not enclose its upstream leg.
PROXY_GAP_NS = 2_000_000_000
#: Slack when checking that one exchange nests inside another (timestamps of two captures).
NEST_SLACK_NS = 20_000
#: Words in a point name that hint at its kind (the name is split at every non-letter).
NAME_HINTS: dict[str, HopKind] = {
    "pod": HopKind.POD, "veth": HopKind.POD, "vm": HopKind.POD, "container": HopKind.POD,
    "node": HopKind.NODE, "host": HopKind.NODE, "nic": HopKind.NODE, "uplink": HopKind.NODE,
    "nat": HopKind.NAT, "snat": HopKind.NAT, "dnat": HopKind.NAT,
    "hv": HopKind.HYPERVISOR, "tap": HopKind.HYPERVISOR, "hypervisor": HopKind.HYPERVISOR,
    "ovs": HopKind.HYPERVISOR, "bridge": HopKind.HYPERVISOR,
    "switch": HopKind.SWITCH, "mirror": HopKind.SWITCH, "span": HopKind.SWITCH, "erspan": HopKind.SWITCH,
    "gw": HopKind.GATEWAY, "gateway": HopKind.GATEWAY, "lb": HopKind.GATEWAY, "slb": HopKind.GATEWAY,
    "vip": HopKind.GATEWAY,
    "proxy": HopKind.PROXY, "envoy": HopKind.PROXY, "sidecar": HopKind.PROXY, "egress": HopKind.PROXY,
    "ingress": HopKind.PROXY, "lo": HopKind.PROXY, "loopback": HopKind.PROXY,
}
_LOOPBACK = re.compile(r"^(127\.|::1$|::ffff:127\.)")


@dataclass(frozen=True, slots=True)
class PointGuess:
    """What one capture point is, as given or inferred, and why."""

    point: str
    file: str
    host: str
    hop_kind: str
    #: relation code of the rule that decided (``given``, ``nat:syn_seq``, ``proxy:nested``, ...)
    reason: str
    #: the evidence in words, for the user
    why: str
    #: 0..1; 1.0 for what the user gave
    confidence: float
    #: clock group ('' : the host's)
    clock: str = ""

    def line(self) -> str:
        """One line of the report: point, host, hop kind, why, confidence."""
        kind = self.hop_kind or "?"
        return (f"{self.point:<18} host={self.host:<16} kind={kind:<11} confidence={self.confidence:.2f}  "
                f"{self.reason}: {self.why}")


@dataclass(frozen=True, slots=True)
class SharedPath:
    """Two points ``a`` < ``b`` that saw the same connections."""

    a: str
    b: str
    #: connections (and requests on connections whose SYN was not seen) both saw
    shared: int
    #: of those, how many ``a`` saw first
    a_first: int
    #: of those, how many ``b`` saw first (the rest: both at the same time, which orders nothing)
    b_first: int
    #: of those, how many carried other addresses at ``b`` than at ``a``
    translated: int


@dataclass(frozen=True, slots=True)
class Nesting:
    """Requests of the proxy leg ``leg`` nest in (``inside``) or enclose requests of ``at``."""

    leg: str
    at: str
    inside: bool
    #: requests of the leg nested (one to one), of ``total`` tried
    nested: int
    total: int
    #: median time around the nested exchange (request gap plus response gap), ns
    median_gap_ns: int

    @property
    def share(self) -> float:
        return self.nested / self.total if self.total else 0.0


@dataclass(slots=True)
class Inference:
    """Every point's guess, the path order, and what the user should add where nothing decided."""

    guesses: list[PointGuess]
    order: list[str]
    shared: list[SharedPath] = field(default_factory=list)
    nestings: list[Nesting] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def by_point(self) -> dict[str, PointGuess]:
        return {g.point: g for g in self.guesses}

    def lines(self) -> list[str]:
        """The report: one line per point, the path order, then the warnings."""
        out = [g.line() for g in self.guesses]
        if self.order:
            out.append("path order (first byte first): " + " -> ".join(self.order))
        out.extend(f"warning: {w}" for w in self.warnings)
        return out

    def plan(self, plan: Sequence[PlannedPoint]) -> list[PlannedPoint]:
        """``plan`` with every point's host and hop kind filled in."""
        got = self.by_point()
        return [replace(p, host=got[p.name].host, hop_kind=got[p.name].hop_kind, clock=p.clock or got[p.name].clock)
                for p in plan]

    def relabel(self, batch: Batch) -> Batch:
        """The records with each point's host and hop kind as inferred (records read without them)."""
        got = self.by_point()
        cols = dict(batch.columns)
        points = cols["point"]
        assert isinstance(points, list)
        cols["host"] = [got[p].host if p in got else h for p, h in zip(points, cols["host"], strict=True)]
        cols["hop_kind"] = [got[p].hop_kind if p in got and got[p].hop_kind else k
                            for p, k in zip(points, cols["hop_kind"], strict=True)]
        return Batch(batch.record_type, cols, len(batch))

    def as_dict(self) -> dict[str, object]:
        return {"points": [{"point": g.point, "file": g.file, "host": g.host, "hop_kind": g.hop_kind,
                            "reason": g.reason, "why": g.why, "confidence": round(g.confidence, 2)}
                           for g in self.guesses],
                "order": self.order, "warnings": self.warnings}


# --- what each point saw ----------------------------------------------------------------------


@dataclass(slots=True)
class _Seen:
    """One point's connections and requests, as the rules need them."""

    #: connection keys (tagged: SYN ISN, or a request's first seq where no SYN was seen), sorted unique
    keys: U64
    #: time each key's first byte passed, and the id of its address tuple (``_address_ids``)
    key_t: I64
    key_addr: U64
    #: requests with a response: method, request and response first-byte times, connection key
    method: npt.NDArray[np.object_]
    t_req: I64
    t_resp: I64
    req_key: U64
    clients: set[str]
    servers: set[str]
    loopback: bool


_TAG_SYN = np.uint64(1 << 40)
_TAG_REQ = np.uint64(2 << 40)
_Cols = dict[str, npt.NDArray[Any]]
_FLOW_COLS = ("point", "proto", "syn_seq", "start_ns", "orig_h", "orig_p", "resp_h", "resp_p")
_REQUEST_COLS = ("point", "syn_seq", "req_tcp_seq", "req_first_ns", "resp_first_ns", "method",
                 "orig_h", "orig_p", "resp_h", "resp_p")


def _columns(batch: Batch, names: Sequence[str]) -> _Cols:
    """The columns the rules read, as arrays, plus ``addr``: an id per distinct address tuple
    (orig, orig port, resp, resp port), the same across the flow and the request columns."""
    out: _Cols = {}
    for name in names:
        values = batch.columns[name]
        out[name] = np.asarray(values, dtype=object) if isinstance(values, list) else np.asarray(values)
    return out


def _address_ids(*tables: _Cols) -> None:
    """Add ``addr`` to every table: a 64-bit mix of (orig, orig port, resp, resp port), equal for
    equal address tuples across the tables (hosts numbered by a dict: no sort of the strings)."""
    number: dict[str, int] = {}
    for t in tables:
        oh = np.fromiter((number.setdefault(h, len(number)) for h in t["orig_h"].tolist()), np.uint64, len(t["orig_h"]))
        rh = np.fromiter((number.setdefault(h, len(number)) for h in t["resp_h"].tolist()), np.uint64, len(t["resp_h"]))
        op, rp = t["orig_p"].astype(np.uint64), t["resp_p"].astype(np.uint64)
        with np.errstate(over="ignore"):
            t["addr"] = ((oh * np.uint64(0x9E3779B97F4A7C15)) ^ (rh * np.uint64(0xC2B2AE3D27D4EB4F))
                         ^ (op << np.uint64(48)) ^ (rp << np.uint64(32)))


def _seen(fc: _Cols, rc: _Cols) -> _Seen:
    """One point's ``_Seen`` from its rows of the flow and request columns."""
    syn = fc["syn_seq"].astype(np.uint64)
    f_rows = np.flatnonzero((fc["proto"].astype(np.int64) == 6) & (syn != 0))
    rseq, rsyn = rc["req_tcp_seq"].astype(np.uint64), rc["syn_seq"].astype(np.uint64)
    r_rows = np.flatnonzero((rseq != 0) & (rsyn == 0))
    keys = np.concatenate([_TAG_SYN | syn[f_rows], _TAG_REQ | rseq[r_rows]])
    t = np.concatenate([fc["start_ns"].astype(np.int64)[f_rows], rc["req_first_ns"].astype(np.int64)[r_rows]])
    addr = np.concatenate([fc["addr"][f_rows], rc["addr"][r_rows]])
    keys, first = np.unique(keys, return_index=True)
    has_resp = np.flatnonzero((rc["resp_first_ns"].astype(np.int64) > 0) & (rseq != 0))
    clients = set(fc["orig_h"].tolist()) | set(rc["orig_h"].tolist())
    servers = set(fc["resp_h"].tolist()) | set(rc["resp_h"].tolist())
    return _Seen(
        keys=keys, key_t=t[first], key_addr=addr[first],
        method=rc["method"][has_resp], t_req=rc["req_first_ns"].astype(np.int64)[has_resp],
        t_resp=rc["resp_first_ns"].astype(np.int64)[has_resp],
        req_key=np.where(rsyn != 0, _TAG_SYN | rsyn, _TAG_REQ | rseq)[has_resp], clients=clients, servers=servers,
        loopback=bool(clients | servers) and all(_LOOPBACK.match(a) for a in clients | servers),
    )


def _per_point(flows: Batch, requests: Batch, names: Sequence[str]) -> dict[str, _Seen]:
    fc, rc = _columns(flows, _FLOW_COLS), _columns(requests, _REQUEST_COLS)
    _address_ids(fc, rc)
    out = {}
    for name in names:
        f_rows, r_rows = np.flatnonzero(fc["point"] == name), np.flatnonzero(rc["point"] == name)
        out[name] = _seen({k: v[f_rows] for k, v in fc.items()}, {k: v[r_rows] for k, v in rc.items()})
    return out


# --- the rules --------------------------------------------------------------------------------


def shared_paths(seen: Mapping[str, _Seen]) -> list[SharedPath]:
    """``path:shared``: every pair of points that saw common connections, with who saw them first."""
    names = sorted(seen)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sa, sb = seen[a], seen[b]
            _, ia, ib = np.intersect1d(sa.keys, sb.keys, assume_unique=True, return_indices=True)
            if len(ia) == 0:
                continue
            a_first = int((sa.key_t[ia] < sb.key_t[ib]).sum())
            b_first = int((sa.key_t[ia] > sb.key_t[ib]).sum())
            translated = int((sa.key_addr[ia] != sb.key_addr[ib]).sum())
            out.append(SharedPath(a, b, len(ia), a_first, b_first, translated))
    return out


def nat_pairs(seen: Mapping[str, _Seen], order_of: Mapping[str, int]) -> Counter[tuple[str, str]]:
    """``nat:syn_seq``: per connection, the two adjacent points (in path order) between which its
    addresses change; counted over connections."""
    names = sorted(seen)
    parts = [(np.full(len(seen[n].keys), i, np.int64), np.full(len(seen[n].keys), order_of.get(n, 0), np.int64),
              seen[n].keys, seen[n].key_t, seen[n].key_addr) for i, n in enumerate(names)]
    if not parts:
        return Counter()
    point, rank, key, t, addr = (np.concatenate([p[i] for p in parts]) for i in range(5))
    by = np.lexsort((t, rank, key))
    point, key, addr = point[by], key[by], addr[by]
    cross = np.flatnonzero((key[1:] == key[:-1]) & (addr[1:] != addr[:-1]))
    pairs = Counter(zip(point[cross].tolist(), point[cross + 1].tolist(), strict=True))
    return Counter({(names[x], names[y]): n for (x, y), n in pairs.items()})


def path_groups(names: Sequence[str], shared: Sequence[SharedPath]) -> list[list[str]]:
    """Points joined by shared connections (directly or through others): one network path each, or a
    lone capture (a loopback leg). In name order, largest first."""
    up = {n: n for n in names}

    def find(n: str) -> str:
        while up[n] != n:
            n = up[n]
        return n

    for sp in shared:
        up[find(sp.a)] = find(sp.b)
    groups: dict[str, list[str]] = defaultdict(list)
    for n in sorted(names):
        groups[find(n)].append(n)
    return sorted(groups.values(), key=lambda g: (-len(g), g))


def nestings(seen: Mapping[str, _Seen], groups: Sequence[list[str]], shared: Sequence[SharedPath],
             order: Sequence[str]) -> list[Nesting]:
    """``proxy:nested``: how the requests of each possible proxy leg nest in (or enclose) the requests
    of the points of every other group. The legs are the groups other than the one largest (the
    network path; with no single largest, every group): their first points in path order as an
    upstream leg (nested inside), their last ones as an egress leg (around)."""
    rank = {n: i for i, n in enumerate(order)}
    has_before, has_after = set(), set()
    for sp in shared:
        first, second = (sp.a, sp.b) if rank[sp.a] < rank[sp.b] else (sp.b, sp.a)
        has_after.add(first)
        has_before.add(second)
    largest = [g for g in groups if len(g) == len(groups[0])] if groups else []
    legs = groups[1:] if len(largest) == 1 else groups
    out = []
    for group in legs:
        others = [n for n in seen if n not in group and len(seen[n].t_req)]
        for inside, edge in ((True, has_before), (False, has_after)):
            for leg in (n for n in group if n not in edge and len(seen[n].t_req)):
                for at in sorted(others):
                    nested, tried, gaps = _nest_count(seen[leg], seen[at], inside)
                    if nested:
                        out.append(Nesting(leg, at, inside, nested, tried, int(np.median(gaps))))
    return out


def _nest_count(leg: _Seen, at: _Seen, inside: bool) -> tuple[int, int, I64]:
    """How many of ``leg``'s requests nest in (``inside``) or around ``at``'s, one to one, out of
    how many tried (at most ``NEST_SAMPLE``, one stretch of time in the middle of the capture), and
    the time around each nested pair (request gap plus response gap)."""
    if len(leg.t_req) > NEST_SAMPLE:
        times = np.sort(leg.t_req)
        start = (len(times) - NEST_SAMPLE) // 2
        lo, hi = int(times[start]), int(times[start + NEST_SAMPLE - 1])
        # the other point's requests of the same stretch only: one left open from before it would
        # stay open for every later one, as a proxy's oldest waiting request
        leg, at = _during(leg, lo, hi), _during(at, lo, hi)
    inner, outer = (leg, at) if inside else (at, leg)
    pairs = _fifo_pairs(inner, outer)
    if not pairs:
        return 0, len(leg.t_req), np.zeros(0, np.int64)
    i, o = np.array(pairs, dtype=np.int64).T
    return len(pairs), len(leg.t_req), (inner.t_req[i] - outer.t_req[o]) + (outer.t_resp[o] - inner.t_resp[i])


def _during(s: _Seen, lo: int, hi: int) -> _Seen:
    """``s`` with only the requests whose first byte passed in ``[lo, hi]``."""
    keep = (s.t_req >= lo) & (s.t_req <= hi)
    return replace(s, method=s.method[keep], t_req=s.t_req[keep], t_resp=s.t_resp[keep], req_key=s.req_key[keep])


def _fifo_pairs(inner: _Seen, outer: _Seen) -> list[tuple[int, int]]:
    """Pairs (inner row, outer row): each inner request, in arrival order, takes the oldest outer one
    still open that encloses it (started before it, answered after it, same method, another
    connection), as a proxy forwards first come, first served. One to one: a long request that many
    unrelated ones happen to nest in is taken once, so busy traffic does not pass for a proxy."""
    o_order = np.argsort(outer.t_req, kind="stable")
    o_req, o_resp = outer.t_req[o_order].tolist(), outer.t_resp[o_order].tolist()
    o_method, o_key = outer.method[o_order].tolist(), outer.req_key[o_order].tolist()
    taken = [False] * len(o_req)
    lo = 0
    out: list[tuple[int, int]] = []
    i_method, i_key = inner.method.tolist(), inner.req_key.tolist()
    for i in np.argsort(inner.t_req, kind="stable").tolist():
        t, r = int(inner.t_req[i]), int(inner.t_resp[i])
        while lo < len(o_req) and (taken[lo] or o_req[lo] < t - PROXY_GAP_NS or o_resp[lo] < t):
            lo += 1  # taken, too old, or answered before this request began: closed for every later one
        j, tried = lo, 0
        while j < len(o_req) and o_req[j] <= t + NEST_SLACK_NS and tried < NEST_CANDIDATES:
            if not taken[j] and o_resp[j] + NEST_SLACK_NS >= r and o_method[j] == i_method[i] and o_key[j] != i_key[i]:
                taken[j] = True
                out.append((i, int(o_order[j])))
                break
            tried += not taken[j]
            j += 1
    return out


def path_order(names: Sequence[str], shared: Sequence[SharedPath]) -> list[str]:
    """Points in path order: ``a`` before ``b`` when it saw at least ``ORDER_SHARE`` of their shared
    connections first (``precedence``); points no pair orders keep their name order (a stable
    topological sort)."""
    after = precedence(shared)
    before: dict[str, int] = dict.fromkeys(names, 0)
    for n in names:
        for m in after.get(n, ()):
            before[m] += 1
    out: list[str] = []
    ready = sorted(n for n in names if before[n] == 0)
    while ready:
        n = ready.pop(0)
        out.append(n)
        for m in sorted(after.get(n, ())):
            before[m] -= 1
            if before[m] == 0:
                ready.append(m)
        ready.sort()
    return out + sorted(n for n in names if n not in out)  # a cycle (clocks off): name order


# --- putting it together ----------------------------------------------------------------------


def infer_points(plan: Sequence[PlannedPoint], flows: Batch, requests: Batch) -> Inference:
    """Host and hop kind of every planned point: given ones kept, missing ones inferred from the
    records (``flows``, ``requests``: read with the plan's metadata, or none)."""
    names = [p.name for p in plan]
    seen = _per_point(flows, requests, names)
    shared = shared_paths(seen)
    partners: dict[str, set[str]] = {n: set() for n in names}
    for sp in shared:
        partners[sp.a].add(sp.b)
        partners[sp.b].add(sp.a)
    order = path_order(names, shared)
    rank = {n: i for i, n in enumerate(order)}
    alone = [n for n in names if not partners[n]]
    groups = path_groups(names, shared)
    nests = nestings(seen, groups, shared, order)
    state = _State({p.name: p for p in plan})
    best = _best_nestings(nests, partners, precedence(shared))
    _apply_proxies(state, _one_way(best, groups, seen), partners, seen)
    edges = path_edges(order, shared, seen, state.proxy_of)
    _apply_nat(state, nat_pairs(seen, rank), edges)
    for point, why in edges.items():
        state.set_kind(point, HopKind.POD.value, "timing:edge", why, 0.6)
    _apply_names(state)
    warnings = state.warnings + [_unmatched(plan_point, len(seen[plan_point.name].keys) > 0)
                                 for plan_point in plan
                                 if plan_point.name in alone and plan_point.name not in state.proxy_of
                                 and not (plan_point.host and plan_point.hop_kind)]
    return Inference(state.guesses(partners), _with_legs(order, groups, state), shared, nests, warnings)


def _unmatched(p: PlannedPoint, has_connections: bool) -> str:
    opts = [o for o, missing in ((f"--host {p.name}=HOST", not p.host), (f"--hop-kind {p.name}=KIND", not p.hop_kind))
            if missing]
    why = ("its connections match none of the others and its requests nest in none of theirs" if has_connections
           else "it holds no TCP connection or request to compare")
    return f"give {' and '.join(opts)} for {os.path.basename(p.file)}: {why} (it stays a host of its own)"


@dataclass(slots=True)
class _State:
    """Guesses under construction: hosts as a union-find over points, kinds with their reasons."""

    plan: dict[str, PlannedPoint]
    up: dict[str, str] = field(default_factory=dict)
    kind: dict[str, tuple[str, str, str, float]] = field(default_factory=dict)  # kind, reason, why, conf
    host_why: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # reason, why, confidence
    proxy_of: dict[str, tuple[str, bool]] = field(default_factory=dict)  # leg -> (point, leg is upstream)
    warnings: list[str] = field(default_factory=list)

    def find(self, n: str) -> str:
        while self.up.get(n, n) != n:
            n = self.up[n]
        return n

    def given_host(self, n: str) -> str:
        root = self.find(n)
        return next((p.host for name, p in sorted(self.plan.items()) if p.host and self.find(name) == root), "")

    def join(self, a: str, b: str, reason: str, why: str, confidence: float) -> bool:
        """Put ``a`` on ``b``'s host, unless the user gave them different hosts."""
        ha, hb = self.given_host(a), self.given_host(b)
        if ha and hb and ha != hb:
            self.warnings.append(f"{a} and {b} look like one host ({reason}: {why}), but their hosts are given "
                                 f"as {ha} and {hb}: kept apart")
            return False
        self.up[self.find(a)] = self.find(b)
        if not self.plan[a].host:
            self.host_why.setdefault(a, (reason, why, confidence))
        if not self.plan[b].host:
            self.host_why.setdefault(b, (reason, f"shares its host with {a}" if reason != "nat:syn_seq" else why,
                                         confidence))
        return True

    def set_kind(self, n: str, kind: str, reason: str, why: str, confidence: float) -> None:
        if not self.plan[n].hop_kind and n not in self.kind:
            self.kind[n] = (kind, reason, why, confidence)

    def host_name(self, n: str) -> str:
        given = self.given_host(n)
        if given:
            return given
        root = self.find(n)
        members = sorted(m for m in self.plan if self.find(m) == root)
        return _common_name(members)

    def guesses(self, partners: Mapping[str, set[str]]) -> list[PointGuess]:
        return [self._guess(name, bool(partners.get(name))) for name in sorted(self.plan)]

    def _guess(self, name: str, on_a_path: bool) -> PointGuess:
        """One point's guess: the host part and the kind part, each given or with its evidence."""
        p = self.plan[name]
        if p.host:
            host = ("given", "host given", 1.0)
        elif name in self.host_why:
            host = self.host_why[name]
        else:  # nothing ties it to another point's host: plausible when it shares paths, a guess otherwise
            host = ("none", "a host of its own", 0.5 if on_a_path or name in self.proxy_of else 0.0)
        if p.hop_kind:
            kind = ("given", "kind given", 1.0)
        elif name in self.kind:
            kind = self.kind[name][1:]
        else:
            kind = ("none", f"kind not inferable from its records: give --hop-kind {name}=KIND", 0.0)
        codes = [c for c in (host[0], kind[0]) if c not in ("given", "none")]
        reason = "+".join(dict.fromkeys(codes)) or ("given" if p.host and p.hop_kind else "none")
        why = "; ".join(dict.fromkeys(w for w in (host[1], kind[1]) if w))
        hop_kind = p.hop_kind or self.kind.get(name, ("",))[0]
        return PointGuess(name, p.file, self.host_name(name), hop_kind, reason, why, min(host[2], kind[2]), p.clock)


def _common_name(members: list[str]) -> str:
    """A host name for points inferred onto one host: their common name prefix, cut after a word
    (``server1-pod``, ``server1-app`` -> ``server1``), else the names joined by ``+``."""
    if len(members) == 1:
        return members[0]
    prefix = members[0]
    for m in members[1:]:
        while not m.startswith(prefix):
            prefix = prefix[:-1]
    cut = re.match(r"^(.*[A-Za-z0-9])[^A-Za-z0-9]", prefix) if prefix else None
    if cut and all(m == cut.group(1) or not m[len(cut.group(1))].isalnum() for m in members):
        return cut.group(1)
    return "+".join(members)


def _best_nestings(nests: list[Nesting], partners: Mapping[str, set[str]],
                   after: Mapping[str, set[str]]) -> dict[str, list[Nesting]]:
    """Per leg, the points most of its requests nest in (or around), nearest first. Every point
    further along a path nests the same requests, less tightly, so of the points on one path only
    the one nearest the proxy counts: the last in path order for an upstream leg (nested inside),
    the first for an egress leg (around); the rest, on other paths, by the time around the pairs.
    Points on a network path come before other lone legs (an egress leg is around a server
    sidecar's leg too)."""
    by_leg: dict[tuple[str, bool], list[Nesting]] = defaultdict(list)
    for n in nests:
        if n.share >= NEST_SHARE:
            by_leg[(n.leg, n.inside)].append(n)
    out: dict[str, list[Nesting]] = {}
    for (leg, inside), cands in sorted(by_leg.items()):
        cands = [c for c in cands if partners[c.at]] or cands
        ats = {c.at for c in cands}
        # upstream leg: drop a point with another candidate after it; egress leg: before it
        near = [c for c in cands if not (after[c.at] & ats if inside else {a for a in ats if c.at in after[a]})]
        ranked = sorted(near or cands, key=lambda n: (n.median_gap_ns, -n.nested, n.at))
        if leg not in out or ranked[0].median_gap_ns < out[leg][0].median_gap_ns:
            out[leg] = ranked
    return out


def precedence(shared: Sequence[SharedPath]) -> dict[str, set[str]]:
    """``after[a]``: the points that saw at least ``ORDER_SHARE`` of the connections they share with
    ``a`` after it."""
    after: dict[str, set[str]] = defaultdict(set)
    for sp in shared:
        # connections both saw at the same time (to the capture's resolution) order neither: counted
        # for one side, they made a point seen a microsecond later look first
        ordered = sp.a_first + sp.b_first
        if ordered and sp.a_first >= ORDER_SHARE * ordered:
            after[sp.a].add(sp.b)
        elif ordered and sp.b_first >= ORDER_SHARE * ordered:
            after[sp.b].add(sp.a)
    return after


def _one_way(best: dict[str, list[Nesting]], groups: Sequence[list[str]],
             seen: Mapping[str, _Seen]) -> dict[str, list[Nesting]]:
    """Drop the reverse of each proxy link: when a leg of group A nests in group B's requests, B's
    edge is found around A's (or inside) too. The leg is the loopback one, else the upstream one
    (nested inside), else the one of the smaller group."""
    group_of = {n: i for i, g in enumerate(groups) for n in g}
    out = dict(best)
    for leg, cands in best.items():
        at = cands[0].at
        back = best.get(at)
        if back is None or group_of[back[0].at] != group_of[leg] or leg not in out or at not in out:
            continue
        mine = (seen[leg].loopback, cands[0].inside, -len(groups[group_of[leg]]))
        theirs = (seen[at].loopback, back[0].inside, -len(groups[group_of[at]]))
        del out[at if mine >= theirs else leg]
    return out


def _apply_proxies(state: _State, best: dict[str, list[Nesting]], partners: Mapping[str, set[str]],
                   seen: Mapping[str, _Seen]) -> None:
    """``proxy:nested``: each leg joins the host of the point its requests nest in most tightly."""
    for leg, cands in sorted(best.items()):
        first = cands[0]
        # the points further along the same path enclose it too, only less tightly: no rivals
        rival = next((c for c in cands[1:] if c.at != first.at and c.at not in partners[first.at]), None)
        conf = first.share
        if rival is not None and rival.median_gap_ns <= 2 * first.median_gap_ns:
            state.warnings.append(
                f"{leg}: its requests nest about as tightly in {rival.at}'s as in {first.at}'s: put on "
                f"{first.at}'s host; give --host {leg}=HOST if that is wrong")
            conf *= 0.5
        where = "inside" if first.inside else "around"
        why = (f"{first.nested} of {first.total} requests nest {where} {first.at}'s on other connections "
               f"(median {first.median_gap_ns / 1000:.0f} us around them)"
               + (", loopback addresses" if seen[leg].loopback else ""))
        if state.join(leg, first.at, "proxy:nested", why, conf):
            state.proxy_of[leg] = (first.at, first.inside)
            state.set_kind(leg, HopKind.PROXY.value, "proxy:nested", why, conf)


#: Connections that must cross a NAT between two points before they count as a NAT pair.
NAT_MIN_CONNECTIONS = 2


def _apply_nat(state: _State, crossings: Counter[tuple[str, str]], edges: Mapping[str, str]) -> None:
    """``nat:syn_seq``: a pair of points across which connections change addresses, the only pair
    either point crosses a NAT with, neither of them a path's end (an endpoint's NIC, where a NAT
    captured nowhere lies between two pods): one kernel rewriting what it forwards, so both are kind
    ``nat`` on one host. Any other crossing says only that a NAT lies somewhere between."""
    outs: dict[str, set[str]] = defaultdict(set)
    ins: dict[str, set[str]] = defaultdict(set)
    for (x, y), n in crossings.items():
        if n >= NAT_MIN_CONNECTIONS:
            outs[x].add(y)
            ins[y].add(x)
    for (x, y), n in sorted(crossings.items()):
        if outs[x] != {y} or ins[y] != {x} or x in edges or y in edges:
            continue
        why = f"{n} connections change addresses from {x} to {y} (same client ISN)"
        for p in (x, y):
            state.set_kind(p, HopKind.NAT.value, "nat:syn_seq", why, 0.8)
        state.join(x, y, "nat:syn_seq", f"the only NAT pair of either, {x} and {y}: one host's kernel", 0.7)


def path_edges(order: Sequence[str], shared: Sequence[SharedPath], seen: Mapping[str, _Seen],
               legs: Mapping[str, object]) -> dict[str, str]:
    """``timing:edge``: the client's and the server's NIC at either end of the paths, with why: the
    first of the points on its connections seeing one client address, or the last seeing one server
    address (proxy legs aside)."""
    follows: dict[str, set[str]] = defaultdict(set)
    precedes: dict[str, set[str]] = defaultdict(set)
    rank = {n: i for i, n in enumerate(order)}
    for sp in shared:
        first, second = (sp.a, sp.b) if rank[sp.a] < rank[sp.b] else (sp.b, sp.a)
        precedes[first].add(second)
        follows[second].add(first)
    out = {}
    for n in order:
        if not (precedes[n] or follows[n]) or n in legs:
            continue
        if not follows[n] and len(seen[n].clients) == 1:
            out[n] = f"first of the {len(precedes[n]) + 1} points on its connections, one client address"
        elif not precedes[n] and len(seen[n].servers) == 1:
            out[n] = f"last of the {len(follows[n]) + 1} points on its connections, one server address"
    return out


def _apply_names(state: _State) -> None:
    """``name``: a word of the point name (split at non-letters and at capitals: ``nodeB`` is
    node, B) as a low-confidence hint where the records said nothing."""
    for n in sorted(state.plan):
        words = [w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", n) if w.lower() in NAME_HINTS]
        if words:  # the last word: "nodeA-pre-nat" is a NAT point on a node
            state.set_kind(n, NAME_HINTS[words[-1]].value, "name", f"the word '{words[-1]}' in its name", 0.3)


def _with_legs(order: Sequence[str], groups: Sequence[list[str]], state: _State) -> list[str]:
    """The path order with each proxy leg's path beside its point: after it when the leg is upstream."""
    group_of = {n: g for g in groups for n in g}
    moved = {n for leg in state.proxy_of for n in group_of[leg]}
    out = [n for n in order if n not in moved]
    for leg, (at, upstream) in sorted(state.proxy_of.items()):
        path = [n for n in order if n in group_of[leg]]
        i = out.index(at) if at in out else len(out)
        out[i + 1 if upstream else i:i + 1 if upstream else i] = path
    return out
