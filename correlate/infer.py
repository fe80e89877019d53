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
                   vice versa (one pair, no third point on either side between them), the pair is one
                   kernel rewriting what it forwards: one host, one clock; both are kind ``nat``
``proxy:nested``   a point that shares no connection with any other, whose requests nest in time
                   inside another point's requests on other connections (request later, response
                   earlier: a sidecar's upstream leg to its app), or enclose them (an egress sidecar's
                   leg from the app), is a proxy leg on that point's host; of the points it nests in,
                   the tightest (least time around the nested exchange) is the proxy's own NIC
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

import itertools
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from hopscope.correlate.offline import PlannedPoint
from hopscope.records import Batch, HopKind

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

#: Share of a point's requests that must nest in (or enclose) another point's for a proxy link.
NEST_SHARE = 0.8
#: Share of the shared connections one point must see first to come before the other.
ORDER_SHARE = 0.8
#: How many of the other point's latest-starting requests are tried as the enclosing one.
NEST_CANDIDATES = 16
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
    #: of those, how many carried other addresses at ``b`` than at ``a``
    translated: int


@dataclass(frozen=True, slots=True)
class Nesting:
    """Requests of the proxy leg ``leg`` nest in (``inside``) or enclose requests of ``at``."""

    leg: str
    at: str
    inside: bool
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
    #: time each key's first byte passed, and its address tuple (orig, orig port, resp, resp port)
    key_t: I64
    key_addr: list[tuple[str, int, str, int]]
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


def _seen(flows: Batch, requests: Batch) -> _Seen:
    fc, rc = flows.columns, requests.columns
    proto = np.asarray(fc["proto"]).astype(np.int64) if len(flows) else np.zeros(0, np.int64)
    syn = np.asarray(fc["syn_seq"]).astype(np.uint64) if len(flows) else np.zeros(0, np.uint64)
    f_rows = np.flatnonzero((proto == 6) & (syn != 0))
    rseq = np.asarray(rc["req_tcp_seq"]).astype(np.uint64) if len(requests) else np.zeros(0, np.uint64)
    rsyn = np.asarray(rc["syn_seq"]).astype(np.uint64) if len(requests) else np.zeros(0, np.uint64)
    r_rows = np.flatnonzero((rseq != 0) & (rsyn == 0))
    keys = np.concatenate([_TAG_SYN | syn[f_rows], _TAG_REQ | rseq[r_rows]])
    t = np.concatenate([np.asarray(fc["start_ns"]).astype(np.int64)[f_rows] if len(f_rows) else np.zeros(0, np.int64),
                        np.asarray(rc["req_first_ns"]).astype(np.int64)[r_rows] if len(r_rows)
                        else np.zeros(0, np.int64)])
    addr = [_addr(fc, i) for i in f_rows.tolist()] + [_addr(rc, i) for i in r_rows.tolist()]
    keys, first = np.unique(keys, return_index=True)
    has_resp = np.flatnonzero((np.asarray(rc["resp_first_ns"]).astype(np.int64) > 0) & (rseq != 0)) \
        if len(requests) else np.zeros(0, np.int64)
    req_key = np.where(rsyn != 0, _TAG_SYN | rsyn, _TAG_REQ | rseq)[has_resp]
    clients = {fc["orig_h"][i] for i in range(len(flows))} | {rc["orig_h"][i] for i in range(len(requests))}
    servers = {fc["resp_h"][i] for i in range(len(flows))} | {rc["resp_h"][i] for i in range(len(requests))}
    return _Seen(
        keys=keys, key_t=t[first], key_addr=[addr[i] for i in first.tolist()],
        method=np.asarray(rc["method"], dtype=object)[has_resp] if len(requests) else np.zeros(0, object),
        t_req=np.asarray(rc["req_first_ns"]).astype(np.int64)[has_resp] if len(requests) else np.zeros(0, np.int64),
        t_resp=np.asarray(rc["resp_first_ns"]).astype(np.int64)[has_resp] if len(requests) else np.zeros(0, np.int64),
        req_key=req_key, clients=clients, servers=servers,
        loopback=bool(clients | servers) and all(_LOOPBACK.match(a) for a in clients | servers),
    )


def _addr(cols: Mapping[str, object], i: int) -> tuple[str, int, str, int]:
    return (cols["orig_h"][i], int(cols["orig_p"][i]), cols["resp_h"][i], int(cols["resp_p"][i]))  # type: ignore[index]


def _split(batch: Batch, points: Iterable[str]) -> dict[str, Batch]:
    column = np.asarray(batch.columns["point"], dtype=object) if len(batch) else np.zeros(0, object)
    return {p: batch.take(np.flatnonzero(column == p)) for p in points}


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
            translated = sum(sa.key_addr[x] != sb.key_addr[y] for x, y in zip(ia.tolist(), ib.tolist(), strict=True))
            out.append(SharedPath(a, b, len(ia), a_first, int(translated)))
    return out


def nat_pairs(seen: Mapping[str, _Seen], order_of: Mapping[str, int]) -> Counter[tuple[str, str]]:
    """``nat:syn_seq``: per connection, the two adjacent points (in path order) between which its
    addresses change; counted over connections."""
    where: dict[int, list[tuple[int, int, str, tuple[str, int, str, int]]]] = defaultdict(list)
    for name, s in seen.items():
        for k, t, a in zip(s.keys.tolist(), s.key_t.tolist(), s.key_addr, strict=True):
            where[k].append((order_of.get(name, 0), t, name, a))
    crossings: Counter[tuple[str, str]] = Counter()
    for views in where.values():
        if len(views) < 2:
            continue
        views.sort()
        for (_, _, x, ax), (_, _, y, ay) in itertools.pairwise(views):
            if ax != ay:
                crossings[(x, y)] += 1
    return crossings


def nestings(seen: Mapping[str, _Seen], alone: Iterable[str]) -> list[Nesting]:
    """``proxy:nested``: for each point in ``alone`` (sharing no connection), how its requests nest in
    (or enclose) the requests of every other point, on connections other than their own."""
    out = []
    for leg in sorted(alone):
        s = seen[leg]
        if len(s.t_req) == 0:
            continue
        for at in sorted(seen):
            if at == leg or len(seen[at].t_req) == 0:
                continue
            for inside in (True, False):
                nested, gaps = _nest_count(s, seen[at], inside)
                if nested:
                    out.append(Nesting(leg, at, inside, nested, len(s.t_req), int(np.median(gaps))))
    return out


def _nest_count(leg: _Seen, at: _Seen, inside: bool) -> tuple[int, I64]:
    """How many of ``leg``'s requests nest in (``inside``) or enclose one of ``at``'s with the same
    method on another connection, and the tightest gap around each."""
    order = np.argsort(at.t_req, kind="stable")
    t_req, t_resp = at.t_req[order], at.t_resp[order]
    method, key = at.method[order], at.req_key[order]
    if inside:  # the enclosing request started before: the latest ones that did
        pos = np.searchsorted(t_req, leg.t_req + NEST_SLACK_NS, side="right") - 1
    else:  # the enclosed request started after: the earliest ones that did
        pos = np.searchsorted(t_req, leg.t_req - NEST_SLACK_NS, side="left")
    best = np.full(len(leg.t_req), np.iinfo(np.int64).max, np.int64)
    for k in range(NEST_CANDIDATES):
        j = pos - k if inside else pos + k
        ok = (j >= 0) & (j < len(t_req))
        jj = np.clip(j, 0, max(len(t_req) - 1, 0))
        if inside:
            gap_req, gap_resp = leg.t_req - t_req[jj], t_resp[jj] - leg.t_resp
        else:
            gap_req, gap_resp = t_req[jj] - leg.t_req, leg.t_resp - t_resp[jj]
        ok &= (gap_req >= -NEST_SLACK_NS) & (gap_resp >= -NEST_SLACK_NS) & (gap_req <= PROXY_GAP_NS)
        ok &= (method[jj] == leg.method) & (key[jj] != leg.req_key)
        best = np.where(ok, np.minimum(best, np.maximum(gap_req, 0) + np.maximum(gap_resp, 0)), best)
    found = best != np.iinfo(np.int64).max
    return int(found.sum()), best[found]


def path_order(names: Sequence[str], shared: Sequence[SharedPath]) -> list[str]:
    """Points in path order: ``a`` before ``b`` when it saw at least ``ORDER_SHARE`` of their shared
    connections first; points no pair orders keep their name order (a stable topological sort)."""
    after: dict[str, set[str]] = {n: set() for n in names}
    before: dict[str, int] = dict.fromkeys(names, 0)
    for sp in shared:
        if sp.a_first >= ORDER_SHARE * sp.shared:
            first, second = sp.a, sp.b
        elif sp.shared - sp.a_first >= ORDER_SHARE * sp.shared:
            first, second = sp.b, sp.a
        else:
            continue
        if second not in after[first]:
            after[first].add(second)
            before[second] += 1
    out: list[str] = []
    ready = sorted(n for n in names if before[n] == 0)
    while ready:
        n = ready.pop(0)
        out.append(n)
        for m in sorted(after[n]):
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
    f_of, r_of = _split(flows, names), _split(requests, names)
    seen = {n: _seen(f_of[n], r_of[n]) for n in names}
    shared = shared_paths(seen)
    partners: dict[str, set[str]] = {n: set() for n in names}
    for sp in shared:
        partners[sp.a].add(sp.b)
        partners[sp.b].add(sp.a)
    order = path_order(names, shared)
    rank = {n: i for i, n in enumerate(order)}
    alone = [n for n in names if not partners[n]]
    nests = nestings(seen, alone)
    state = _State({p.name: p for p in plan})
    _apply_proxies(state, nests, partners, seen)
    _apply_nat(state, nat_pairs(seen, rank), shared)
    _apply_edges(state, order, shared, seen)
    _apply_names(state)
    warnings = state.warnings + [_unmatched(plan_point) for plan_point in plan
                                 if plan_point.name in alone and plan_point.name not in state.proxy_of
                                 and not (plan_point.host and plan_point.hop_kind)]
    return Inference(state.guesses(partners), _with_legs(order, state), shared, nests, warnings)


def _unmatched(p: PlannedPoint) -> str:
    opts = [o for o, missing in ((f"--host {p.name}=HOST", not p.host), (f"--kind {p.name}=KIND", not p.hop_kind))
            if missing]
    return (f"give {' and '.join(opts)} for {os.path.basename(p.file)}: its connections match none of the "
            f"others and its requests nest in none of theirs (it stays a host of its own)")


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
            kind = ("none", f"kind not inferable from its records: give --kind {name}=KIND", 0.0)
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


def _apply_proxies(state: _State, nests: list[Nesting], partners: Mapping[str, set[str]],
                   seen: Mapping[str, _Seen]) -> None:
    """``proxy:nested``: each lone point joins the host of the point its requests nest in most
    tightly (among those most of its requests nest in)."""
    by_leg: dict[str, list[Nesting]] = defaultdict(list)
    for n in nests:
        if n.share >= NEST_SHARE:
            by_leg[n.leg].append(n)
    for leg, cands in sorted(by_leg.items()):
        # a point on a network path (sharing connections) before another lone leg: every leg further
        # along the path nests in (or around) it too, an egress leg around a server sidecar's leg
        on_path = [c for c in cands if partners[c.at]]
        cands = sorted(on_path or cands, key=lambda n: (n.median_gap_ns, -n.nested, n.at))
        best = cands[0]
        # the points further along the same path enclose it too, only less tightly: no rivals
        rival = next((c for c in cands[1:] if c.at != best.at and c.at not in partners[best.at]), None)
        conf = best.share
        if rival is not None and rival.median_gap_ns <= 2 * best.median_gap_ns:
            state.warnings.append(
                f"{leg}: its requests nest about as tightly in {rival.at}'s as in {best.at}'s: put on "
                f"{best.at}'s host; give --host {leg}=HOST if that is wrong")
            conf *= 0.5
        where = "inside" if best.inside else "around"
        why = (f"{best.nested} of {best.total} requests nest {where} {best.at}'s on other connections "
               f"(median {best.median_gap_ns / 1000:.0f} us around them)"
               + (", loopback addresses" if seen[leg].loopback else ""))
        if state.join(leg, best.at, "proxy:nested", why, conf):
            state.proxy_of[leg] = (best.at, best.inside)
            state.set_kind(leg, HopKind.PROXY.value, "proxy:nested", why, conf)


def _apply_nat(state: _State, crossings: Counter[tuple[str, str]], shared: Sequence[SharedPath]) -> None:
    """``nat:syn_seq``: a pair of points across which connections change addresses. Joined on one
    host only when it is the only pair either point crosses a NAT with (one kernel)."""
    outs: dict[str, set[str]] = defaultdict(set)
    ins: dict[str, set[str]] = defaultdict(set)
    for (x, y), n in crossings.items():
        if n >= 2 or len(crossings) == 1:
            outs[x].add(y)
            ins[y].add(x)
    for (x, y), n in sorted(crossings.items()):
        if y not in outs[x]:
            continue
        why = f"{n} connections change addresses from {x} to {y} (same client ISN)"
        for p in (x, y):
            state.set_kind(p, HopKind.NAT.value, "nat:syn_seq", why, 0.8)
        if outs[x] == {y} and ins[y] == {x}:
            state.join(x, y, "nat:syn_seq", f"the only NAT pair of either, {x} and {y}: one host's kernel", 0.7)
        else:
            others = sorted((outs[x] | ins[y]) - {x, y})
            state.warnings.append(f"{x} and {y} see a NAT between them, but also pair with {', '.join(others)}: "
                                  f"not put on one host; give --host {x}=HOST --host {y}=HOST if they are")


def _apply_edges(state: _State, order: Sequence[str], shared: Sequence[SharedPath],
                 seen: Mapping[str, _Seen]) -> None:
    """``timing:edge``: the client's and the server's NIC at either end of the paths."""
    follows: dict[str, set[str]] = defaultdict(set)
    precedes: dict[str, set[str]] = defaultdict(set)
    rank = {n: i for i, n in enumerate(order)}
    for sp in shared:
        first, second = (sp.a, sp.b) if rank[sp.a] < rank[sp.b] else (sp.b, sp.a)
        precedes[first].add(second)
        follows[second].add(first)
    for n in order:
        if not (precedes[n] or follows[n]) or n in state.proxy_of:
            continue
        s = seen[n]
        if not follows[n] and len(s.clients) == 1:
            why = f"first of the {len(precedes[n]) + 1} points on its connections, one client address"
            state.set_kind(n, HopKind.POD.value, "timing:edge", why, 0.6)
        elif not precedes[n] and len(s.servers) == 1:
            why = f"last of the {len(follows[n]) + 1} points on its connections, one server address"
            state.set_kind(n, HopKind.POD.value, "timing:edge", why, 0.6)


def _apply_names(state: _State) -> None:
    """``name``: a word of the point name (split at non-letters and at capitals: ``nodeB`` is
    node, B) as a low-confidence hint where the records said nothing."""
    for n in sorted(state.plan):
        words = [w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", n) if w.lower() in NAME_HINTS]
        if words:  # the last word: "nodeA-pre-nat" is a NAT point on a node
            state.set_kind(n, NAME_HINTS[words[-1]].value, "name", f"the word '{words[-1]}' in its name", 0.3)


def _with_legs(order: Sequence[str], state: _State) -> list[str]:
    """The path order with each proxy leg beside its point: after it when the leg is upstream."""
    legs = state.proxy_of
    out = [n for n in order if n not in legs]
    for leg, (at, upstream) in sorted(legs.items()):
        i = out.index(at) if at in out else len(out)
        out.insert(i + 1 if upstream else i, leg)
    return out
