"""Score a stitch against the lab's ground truth (samples/lab/manifest.json): precision and recall.

The manifest lists what the traffic generator sent (client, socket, method, path, the request id it
sent), what the app received on the sidecar's upstream leg (``upstream_request_id``, and with newer
manifests ``upstream_path`` and ``upstream_host``: the app echoes them), status, server; the server
sidecar (envoy, nginx or haproxy), the capture points (name, host, kind), the impairments (delay and
loss between named points) and the delayer's own overhead. A request is *recalled* when one trace
starts on its client socket at its time and crosses every hop of its path in order; a trace is
*precise* when its upstream leg is the one the sidecar sent for that very request (the upstream
x-request-id matches, and the path the app got where the manifest has it) and its status is the one
the client got.

With an egress sidecar in the client pods (``client_sidecar`` in the manifest), a request's path starts
on the client pod's loopback (``<client>-egress``: the client app's leg, on the socket the generator
records) and its network leg is the sidecar's upstream connection; the sidecar answers with what that
leg carried (``egress_request_id``, ``egress_local``), so a precise trace also has, at the client pod's
NIC, the sidecar's upstream socket for that very request (and its id, where the probe saw one). With
mutual TLS between the sidecars the server sidecar answers with the TLS connection's client socket as
it saw it (``tls.remote``, after node A's NAT), and a precise trace has that socket at the server
pod's NIC.

A run whose captures were skewed per host after the fact (``hopscope.lab.skew``) records the skew as
``clock_skew_ns``; each host's offset found by the correlator is scored against it (``ClockCheck``).
Link latencies need no such adjustment: the correlator reports them clock-corrected, so they are
compared to the injected delays as they are, and a skew it failed to find shows up there too.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hopscope.correlate.engine import StitchResult
from hopscope.correlate.report import link_latencies, traces_json
from hopscope.records import Batch

#: Offsets of one host's points that differ by no more than this are one offset found for the host
#: (with a clock domain per point, each point's estimate carries its own few µs of noise).
SAME_CLOCK_US = 20.0

#: The lab's fixed path between a client pod and a server pod.
CLIENT_SIDE = ("nodeA-pre-nat", "nodeA-post-nat", "hv-tap", "switch-mirror", "nodeB")
#: With an overlay, node A's underlay NIC (the VXLAN-encapsulated packets) follows its overlay device:
#: a hop of the path like any other, where the probe sees the inner flow.
OVERLAY_POINT = "nodeA-underlay"


@dataclass(slots=True)
class DelayCheck:
    """One impaired link: the measured request latency on it against the delay the request really got.

    That truth is, per request, the delayer's own hold of the request's first segment (from the
    packet's arrival to its release: ``held_segments`` in its stats), which carries the delayer's
    lateness on a loaded machine; a request whose segment it did not record is held against the
    injected delay plus the delayer's overhead measured before the run.
    """

    link: str
    injected_us: float
    overhead_us: float
    measured_us: list[int]
    #: per measured request, the delayer's hold of its first segment (None: not recorded)
    held_us: list[float | None] = field(default_factory=list)

    @property
    def tolerance_us(self) -> float:
        return max(100.0, 0.05 * self.injected_us)

    @property
    def truth_us(self) -> list[float]:
        held = self.held_us or [None] * len(self.measured_us)
        return [self.injected_us + self.overhead_us if h is None else h for h in held]

    @property
    def errors_us(self) -> list[float]:
        return [m - t for m, t in zip(self.measured_us, self.truth_us, strict=True)]

    @property
    def held_known(self) -> int:
        return sum(h is not None for h in self.held_us)

    @property
    def within(self) -> int:
        return sum(1 for e in self.errors_us if abs(e) <= self.tolerance_us)


@dataclass(slots=True)
class ClockCheck:
    """One host's clock: the skew applied to its captures against the offset the correlator found."""

    host: str
    applied_us: float
    #: offset found for the host's points (None: they got offsets more than SAME_CLOCK_US apart)
    found_us: float | None
    uncertainty_us: float
    #: found - applied, less the shift common to every host (offsets are relative to a reference)
    error_us: float | None = None


@dataclass(slots=True)
class Evaluation:
    requests: int = 0  # HTTP requests that reached a server
    recalled: int = 0  # of those, stitched across every hop in path order
    matched: int = 0  # of those, with a trace on their socket
    precise: int = 0  # matched traces whose upstream leg and status are this request's
    duplicate_traces: int = 0  # traces matched by two requests (must be 0)
    shared_hops: int = 0  # hop records that appear in two traces (must be 0)
    dns: int = 0
    dns_found: int = 0
    refused: int = 0
    l4_errors: int = 0
    status_5xx: int = 0
    traces_5xx: int = 0
    delays: list[DelayCheck] = field(default_factory=list)
    impaired_loss_links: list[str] = field(default_factory=list)
    lossy_links: list[str] = field(default_factory=list)
    #: data segments of requests the delayer dropped (the lab's per-packet ground truth) ...
    dropped_request_segments: int = 0
    #: ... whose trace pins a loss on the hop right after the impairment
    dropped_pinned: int = 0
    clocks: list[ClockCheck] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.recalled / self.requests if self.requests else 1.0

    @property
    def precision(self) -> float:
        return self.precise / self.matched if self.matched else 1.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("delays", "clocks")}
        out["clocks"] = [{k: getattr(c, k) for k in c.__dataclass_fields__} for c in self.clocks]
        out["recall"], out["precision"] = round(self.recall, 5), round(self.precision, 5)
        out["delays"] = [
            {"link": d.link, "injected_us": d.injected_us, "overhead_us": d.overhead_us, "n": len(d.measured_us),
             "held_known": d.held_known, "median_truth_us": round(float(np.median(d.truth_us)), 1) if d.measured_us
             else None, "within": d.within, "tolerance_us": d.tolerance_us,
             "max_abs_error_us": round(max((abs(e) for e in d.errors_us), default=0.0), 1),
             "median_error_us": round(float(np.median(d.errors_us)), 1) if d.measured_us else None}
            for d in self.delays
        ]
        return out


def _xrid_of(requests: Batch, column: str = "x_request_id") -> dict[tuple[str, int], str]:
    cols = requests.columns
    ids = np.asarray(cols["request_id"]).tolist()
    return {(p, i): x for p, i, x in zip(cols["point"], ids, cols[column], strict=True)}


def _upstream_is(r: dict[str, Any], hop: tuple[str, int], xrid: dict[tuple[str, int], str],
                 path: dict[tuple[str, int], str]) -> bool:
    """The app's hop carried the id (and the path, where the manifest has it) the app got for ``r``."""
    return xrid.get(hop) == r["upstream_request_id"] and r.get("upstream_path") in (None, path.get(hop))


def first_point(r: dict[str, Any]) -> str:
    """The capture point where the client app's own connection is seen: the client pod's loopback
    when an egress sidecar forwards the request (the app sent it to 127.0.0.1), else the pod's NIC."""
    return f"{r['client']}-egress" if r.get("egress_local") else f"{r['client']}-pod"


def expected_points(r: dict[str, Any], manifest: dict[str, Any] | None = None) -> list[str]:
    """The capture points a request crosses in order; ``manifest``'s capture points add the overlay's."""
    egress = [f"{r['client']}-egress"] if r.get("egress_local") else []
    side = list(CLIENT_SIDE)
    if manifest is not None and any(cp["name"] == OVERLAY_POINT for cp in manifest.get("capture_points", [])):
        side.insert(side.index("nodeA-post-nat") + 1, OVERLAY_POINT)
    return [*egress, f"{r['client']}-pod", *side, f"{r['server']}-pod", f"{r['server']}-app"]


def _egress_is(r: dict[str, Any], t: dict[str, Any], xrid: dict[tuple[str, int], str]) -> bool:
    """Without an egress sidecar, True; with one, the trace's hop at the client pod's NIC is on the
    sidecar's upstream socket for ``r`` and carried the id it sent upstream (where the probe saw one)."""
    if not r.get("egress_local"):
        return True
    nic = [h for h in t["hops"] if h["point"] == f"{r['client']}-pod"]
    if len(nic) != 1 or f"{nic[0]['orig_h']}:{nic[0]['orig_p']}" != r["egress_local"]:
        return False
    seen = xrid.get((nic[0]["point"], nic[0]["request_id"]), "")
    return not seen or seen == r.get("egress_request_id")


def _tls_leg_is(r: dict[str, Any], t: dict[str, Any]) -> bool:
    """With mutual TLS between the sidecars (``tls`` in the request's truth), the trace's hop at the
    server pod's NIC is on the TLS connection the server sidecar answered ``r`` on (its client socket
    after node A's NAT, where the manifest has it); otherwise True."""
    remote = (r.get("tls") or {}).get("remote")
    if not remote:
        return True
    nic = [h for h in t["hops"] if h["point"] == f"{r['server']}-pod"]
    return len(nic) == 1 and f"{nic[0]['orig_h']}:{nic[0]['orig_p']}" == remote


def match_requests(manifest: dict[str, Any], doc: dict[str, Any]) -> list[tuple[dict[str, Any], Any]]:
    """Each answered HTTP request of the manifest with the trace of it on its socket (None when
    there is none).

    The requests of one socket (a keep-alive connection carries several) pair with its traces in
    order when both count the same; otherwise each takes the trace starting nearest its send time.
    Order first: the generator stamps ``sent_ns`` after the send returned, which a busy machine can
    delay past the next request's first byte on the wire."""
    by_socket: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in doc["traces"]:
        if t["kind"] == "l7" and t["request"]["l7_proto"] == "http":
            first = t["hops"][0]
            by_socket[f"{first['point']}|{first['orig_h']}:{first['orig_p']}"].append(t)
    sent: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in manifest.get("requests", []):
        if r.get("type") == "http" and r.get("local"):
            sent[f"{first_point(r)}|{r['local']}"].append(r)
    trace_of: dict[int, Any] = {}
    for key, rs in sent.items():
        cands = sorted(by_socket.get(key, []), key=lambda t: t["start_ns"])
        rs.sort(key=lambda r: r["start_ns"])
        for r, t in zip(rs, cands, strict=False) if len(rs) == len(cands) else ():
            trace_of[id(r)] = t
        for r in rs if len(rs) != len(cands) else ():
            trace_of[id(r)] = min(cands, key=lambda t: abs(t["start_ns"] - r["sent_ns"]), default=None)
    return [(r, trace_of.get(id(r))) for r in manifest.get("requests", [])
            if r.get("type") == "http" and r.get("status") is not None]


def evaluate(manifest: dict[str, Any], result: StitchResult, requests: Batch) -> Evaluation:
    doc = traces_json(result)
    ev = Evaluation()
    pairs = match_requests(manifest, doc)
    xrid, path = _xrid_of(requests), _xrid_of(requests, "path")
    ev.requests = len(pairs)
    used = [t["trace_id"] for _, t in pairs if t is not None]
    ev.duplicate_traces = len(used) - len(set(used))
    for r, t in pairs:
        if t is None:
            continue
        ev.matched += 1
        ev.recalled += [h["point"] for h in t["hops"]] == expected_points(r, manifest)
        app = [h for h in t["hops"] if h["point"].endswith("-app")]
        ev.precise += (len(app) == 1 and _upstream_is(r, (app[0]["point"], app[0]["request_id"]), xrid, path)
                       and t["request"]["status"] == r["status"] and _egress_is(r, t, xrid) and _tls_leg_is(r, t))
    seen = [(h["point"], h["request_id"]) for t in doc["traces"] if t["kind"] == "l7" for h in t["hops"]]
    ev.shared_hops = len(seen) - len(set(seen))
    _evaluate_other(manifest, doc, ev)
    _evaluate_links(manifest, result, requests, ev)
    _evaluate_drops(manifest, result, requests, ev)
    ev.clocks = check_clocks(manifest, result)
    return ev


def check_clocks(manifest: dict[str, Any], result: StitchResult) -> list[ClockCheck]:
    """Every host of the run: the recorded skew (0 when none) against the offset found."""
    skew = manifest.get("clock_skew_ns") or {}
    host_of = {cp["name"]: cp.get("host", cp["name"]) for cp in manifest.get("capture_points", [])}
    found: dict[str, set[float]] = defaultdict(set)
    uncertainty: dict[str, float] = defaultdict(float)
    for est in result.clocks:
        for point in est.points:
            host = host_of.get(point, point)
            found[host].add(est.offset_ns / 1000)
            uncertainty[host] = max(uncertainty[host], est.uncertainty_ns / 1000)
    checks = [ClockCheck(h, skew.get(h, 0) / 1000, (min(v) + max(v)) / 2 if max(v) - min(v) <= SAME_CLOCK_US
                         else None, uncertainty[h]) for h, v in sorted(found.items())]
    diffs = [c.found_us - c.applied_us for c in checks if c.found_us is not None]
    common = float(np.median(diffs)) if diffs else 0.0
    for c in checks:
        if c.found_us is not None:
            c.error_us = round(c.found_us - c.applied_us - common, 1)
    return checks


def _evaluate_other(manifest: dict[str, Any], doc: dict[str, Any], ev: Evaluation) -> None:
    traces = doc["traces"]
    dns = {(t["request"]["dns_qname"].rstrip("."), t["hops"][0]["point"]): t for t in traces
           if t["request"]["l7_proto"] == "dns"}
    for q in manifest.get("dns", []):
        ev.dns += 1
        t = dns.get((q["name"], f"{q['client']}-pod"))
        ev.dns_found += t is not None and t["error"] == int(q["rcode"] != 0)
    ev.refused = sum(1 for r in manifest.get("requests", []) if r.get("error") == "refused")
    ev.l4_errors = sum(1 for t in traces if t["kind"] == "l4" and t["error"])
    ev.status_5xx = sum(1 for r in manifest.get("requests", []) if (r.get("status") or 0) >= 500)
    ev.traces_5xx = sum(1 for t in traces if t["request"]["status"] >= 500 and t["error"])


def _clean_request_latency(result: StitchResult, requests: Batch) -> dict[str, list[tuple[int, int]]]:
    """(request latency, TCP seq of the request's first byte) per link 'a>b' over hops whose request was
    not retransmitted (a retransmission adds the sender's timeout, not the link's delay)."""
    rcols = requests.columns
    seq_of = {(p, r): s for p, r, s in zip(rcols["point"], np.asarray(rcols["request_id"]).tolist(),
                                            np.asarray(rcols["req_tcp_seq"]).tolist(), strict=True)}
    cols = result.spans.columns
    point_of = dict(zip(cols["span_id"], cols["point"], strict=True))
    req_us, lost, retrans, rid = (np.asarray(cols[n]).tolist()
                                  for n in ("req_link_us", "lost_pkts", "retrans_pkts", "request_id"))
    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, (parent, point) in enumerate(zip(cols["parent_span_id"], cols["point"], strict=True)):
        if parent and not lost[i] and not retrans[i]:
            out[f"{point_of[parent]}>{point}"].append((req_us[i], seq_of.get((point, rid[i]), -1)))
    return out


def _held_us(stats: dict[str, Any]) -> dict[int, float]:
    """The delayer's hold per TCP seq of a segment it released (a seq it saw twice, a retransmission, is
    left out: which copy a hop's first byte is can't be told)."""
    held: dict[int, float] = {}
    twice: set[int] = set()
    for seq, _payload_len, held_ns in stats.get("held_segments", []):
        if seq in held:
            twice.add(seq)
        held[seq] = held_ns / 1000
    return {k: v for k, v in held.items() if k not in twice}


def _evaluate_links(manifest: dict[str, Any], result: StitchResult, requests: Batch, ev: Evaluation) -> None:
    overhead = float((manifest.get("delayer_overhead") or {}).get("overhead_us", 0.0))
    clean = _clean_request_latency(result, requests)
    for imp in manifest.get("impairments", []):
        pairs = [f"{u}>{d}" for u in imp["between"]["upstream"] for d in imp["between"]["downstream"]]
        if imp.get("loss"):
            ev.impaired_loss_links += pairs
        if imp.get("delay_ms") and imp.get("flow_direction") == "client->server":
            held = _held_us(imp.get("delayer_stats") or {})
            for link in pairs:
                hops = clean.get(link, [])
                ev.delays.append(DelayCheck(link, imp["delay_ms"] * 1000, overhead, [us for us, _ in hops],
                                            [held.get(seq) for _, seq in hops]))
    ev.lossy_links = sorted(k for k, v in link_latencies(result).items() if v[2])


def _carries_data(d: dict[str, Any]) -> bool:
    """Whether a dropped TCP packet carried data: its ``payload_len``, or, in a manifest recorded before
    the delayer wrote that, an IP length beyond the lab's 52 bytes of headers (IPv4, TCP, timestamps)."""
    if d.get("proto") != 6 or not d.get("ack"):
        return False
    return bool(d["payload_len"]) if "payload_len" in d else d.get("ip_len", 0) > 52


def _evaluate_drops(manifest: dict[str, Any], result: StitchResult, requests: Batch, ev: Evaluation) -> None:
    """Every request data segment the delayer dropped must show as loss on the next hop's span.

    A pure ACK carries the sequence number of the next byte its sender will send, which on a keep-alive
    connection is the first byte of the next request. An ACK with a SACK block (the D-SACK a client
    sends for a response segment it got twice) is 64 bytes long, as a data segment of 12 bytes is, so
    a manifest without ``payload_len`` cannot tell it from data by its length; such an ACK left before
    the request it points into, so a drop earlier than that request's first byte at the drop site's
    upstream point is not one of its segments."""
    drops = [(imp["between"]["upstream"], imp["between"]["downstream"], d) for imp in manifest.get("impairments", [])
             for d in (imp.get("delayer_stats") or {}).get("dropped_packets", []) if _carries_data(d)]
    if not drops:
        return
    cols = requests.columns
    seq = np.asarray(cols["req_tcp_seq"]).astype(np.int64)
    end = seq + np.asarray(cols["req_bytes"]).astype(np.int64)
    first = np.asarray(cols["req_first_ns"]).astype(np.int64)
    rid = np.asarray(cols["request_id"]).tolist()
    span_cols = result.spans.columns
    lost_at = {(p, r): n for p, r, n in zip(span_cols["point"], np.asarray(span_cols["request_id"]).tolist(),
                                            np.asarray(span_cols["lost_pkts"]).tolist(), strict=True)}
    points = cols["point"]
    for upstream, downstream, d in drops:
        covering = np.flatnonzero((seq <= d["seq"]) & (d["seq"] < end)).tolist()
        if "payload_len" not in d and any(points[i] in upstream and d["time_ns"] < first[i] for i in covering):
            continue  # an ACK sent before the request it points into
        hit = [i for i in covering if points[i] in downstream]
        if not hit:
            continue  # not a request segment (a response ACK with data, a body segment)
        ev.dropped_request_segments += 1
        ev.dropped_pinned += any(lost_at.get((points[i], rid[i]), 0) > 0 for i in hit)
