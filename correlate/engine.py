"""The correlator: request and flow records from many capture points in, spans and traces out.

``Correlator.stitch`` runs the steps in order: match observations into segments per correlation key
(``matchers``, ``segments``), estimate clock offsets from the segments (``clock``), order each
segment's hops along the path (``order``), link segments across proxies (``proxy``), then assemble
traces (``assemble``). Requests make L7 traces; connections whose flows carried no request we parse
(raw TCP, TLS) make L4 traces from their flow records.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from hopscope.correlate import clock, proxy
from hopscope.correlate.assemble import Assembler, Times, correct
from hopscope.correlate.matchers import (
    empty_batch,
    flow_table,
    latest_flows,
    request_table,
    window_of,
)
from hopscope.correlate.observations import ObsTable
from hopscope.correlate.order import SegmentOrder, adjacent_pairs, order_segments
from hopscope.correlate.relations import Reason
from hopscope.correlate.segments import cluster
from hopscope.correlate.settings import ClockDomain, ClockMode, CorrelateSettings
from hopscope.records import Batch, FlowRecord, RequestRecord, Span, Trace

I64 = npt.NDArray[np.int64]


@dataclass(slots=True)
class StitchResult:
    """Output of one stitch: spans and traces as batches, clock offsets, counters."""

    spans: Batch
    traces: Batch
    #: offset (µs) subtracted from each capture point's timestamps
    clock_offsets_us: dict[str, int]
    stats: dict[str, int] = field(default_factory=dict)
    #: trace id of each input request record ('' when it joined no trace)
    request_trace: list[str] = field(default_factory=list)
    #: trace id of each input flow record ('' when none; interim reports share their flow's)
    flow_trace: list[str] = field(default_factory=list)
    #: each clock domain's offset, what it is (host or point) and how sure the estimate is
    clocks: list[clock.ClockEstimate] = field(default_factory=list)


@dataclass(slots=True)
class _Stage:
    """One observation table on its way through the steps."""

    obs: ObsTable
    seg: I64
    nseg: int
    order: SegmentOrder | None = None


class Correlator:
    """Stitches records into traces. ``kinds`` overrides the hop kind of capture points by name;
    ``clocks`` puts capture points into clock groups by name (points of one group share a clock,
    whatever their hosts and the clock domain setting)."""

    def __init__(self, settings: CorrelateSettings | None = None, kinds: Mapping[str, str] | None = None,
                 clocks: Mapping[str, str] | None = None):
        self.settings = settings or CorrelateSettings()
        self.kinds = dict(kinds or {})
        self.clocks = dict(clocks or {})

    def stitch(self, requests: Batch | None = None, flows: Batch | None = None,
               version_ns: int | None = None) -> StitchResult:
        """Stitch everything given at once (the offline path; streaming calls it per window)."""
        requests = requests if requests is not None else empty_batch(RequestRecord)
        all_flows = flows if flows is not None else empty_batch(FlowRecord)
        latest, superseded_by = latest_flows(all_flows)
        flows = all_flows.take(latest)
        stats: dict[str, int] = {"requests_in": len(requests), "flows_in": len(all_flows)}
        l4_rows = _flows_without_l7(flows, requests)
        by_host = self.settings.clock_domain is ClockDomain.HOST
        req = self._segment(request_table(requests, self.kinds, by_host, self.clocks), stats, "requests")
        l4 = self._segment(flow_table(flows.take(l4_rows), self.kinds, by_host, self.clocks), stats, "flows")
        evidence, votes, raw_orders = self._clock_evidence([req, l4])
        offsets = clock.solve_offsets(evidence, votes, self.settings) if evidence else {}
        groups = clock.clock_groups(evidence, [d for st in (req, l4) for d in st.obs.domains])
        used = evidence
        version = version_ns if version_ns is not None else time.time_ns()
        close = _flow_close(flows)
        spans: list[Batch] = []
        traces: list[Batch] = []
        row_traces: list[list[str]] = [[""] * len(requests), [""] * len(flows)]
        for stage, with_proxies, raw in ((req, True, raw_orders[0]), (l4, False, raw_orders[1])):
            if stage.nseg == 0:
                continue
            times = _times(stage.obs, offsets)
            shifted = any(offsets.get(d, 0) for d in stage.obs.domains)
            stage.order = (order_segments(stage.obs, stage.seg, stage.nseg, times.req_first)
                           if shifted or raw is None else raw)
            links = _links(stage, times, self.settings, stats, with_proxies, groups)
            if with_proxies and self.settings.clock_mode is not ClockMode.NONE:
                extra = _proxy_evidence(stage, links, groups)  # proxy links across clock groups
                again = clock.solve_offsets(evidence + extra, votes, self.settings) if extra else offsets
                if again != offsets:  # proxy links showed an offset no connection could: redo with it
                    offsets, used = again, evidence + extra
                    groups = clock.clock_groups(evidence + extra, list(groups))
                    times = _times(stage.obs, offsets)
                    stage.order = order_segments(stage.obs, stage.seg, stage.nseg, times.req_first)
                    links = _links(stage, times, self.settings, stats, with_proxies, groups)
            asm = Assembler(stage.obs, stage.order, times, links, version, close)
            asm.run()
            if stage is req:
                row_traces[0] = asm.row_trace_ids
            else:
                for i, t in zip(l4_rows.tolist(), asm.row_trace_ids, strict=True):
                    row_traces[1][i] = t
            if asm.spans:
                spans.append(Batch(Span, asm.spans, len(asm.spans["trace_id"])))
                traces.append(Batch(Trace, asm.traces, len(asm.traces["trace_id"])))
        stats["spans"] = sum(len(b) for b in spans)
        stats["traces"] = sum(len(b) for b in traces)
        return StitchResult(
            spans=Batch.concat(spans) if spans else Batch(Span, {}, 0),
            traces=Batch.concat(traces) if traces else Batch(Trace, {}, 0),
            clock_offsets_us={k: v // 1000 for k, v in sorted(offsets.items()) if v},
            stats=stats,
            request_trace=row_traces[0],
            flow_trace=[row_traces[1][i] for i in superseded_by.tolist()],
            clocks=clock.estimates(clock.solve(used, votes, self.settings), clock.domain_points([req.obs, l4.obs]),
                                   "host" if by_host else "point"),
        )

    def _segment(self, obs: ObsTable, stats: dict[str, int], name: str) -> _Stage:
        s = self.settings
        seg, nseg, cstats = cluster(obs, window_of(obs, s.request_window_ns, s.dns_window_ns))
        stats[f"{name}_segments"] = nseg
        stats[f"{name}_unmatchable"] = cstats.ineligible
        stats[f"{name}_split_buckets"] = cstats.split_buckets
        return _Stage(obs, seg, nseg)

    def _clock_evidence(self, stages: list[_Stage]) -> tuple[list[clock.PairEvidence], dict[str, int],
                                                             list[SegmentOrder | None]]:
        """Clock evidence between points from segments whose every hop saw the response, the votes
        for the reference point, and each stage's clock-free ordering (reused when no offset applies)."""
        names: dict[str, int] = {}
        parts: list[tuple[I64, I64, I64, I64]] = []
        votes: dict[str, int] = {}
        raws: list[SegmentOrder | None] = []
        for st in stages:
            if st.nseg == 0:
                raws.append(None)
                continue
            raw = order_segments(st.obs, st.seg, st.nseg, st.obs.t_req)
            raws.append(raw)
            a, b = adjacent_pairs(raw, only_full=True)
            remap = np.array([names.setdefault(d, len(names)) for d in st.obs.domains] or [0], dtype=np.int64)
            parts.append((remap[st.obs.domain[a]], remap[st.obs.domain[b]],
                          st.obs.t_req[b] - st.obs.t_req[a], st.obs.t_resp[a] - st.obs.t_resp[b]))
            firsts = np.bincount(st.obs.domain[raw.first()], minlength=len(st.obs.domains))
            for d, n in enumerate(firsts.tolist()):
                votes[st.obs.domains[d]] = votes.get(st.obs.domains[d], 0) + n
        if not parts:
            return [], votes, raws
        cat = [np.concatenate([p[i] for p in parts]) for i in range(4)]
        return clock.pair_evidence(list(names), cat[0], cat[1], cat[2], cat[3]), votes, raws


def _proxy_evidence(stage: _Stage, links: proxy.Links, groups: dict[str, int]) -> list[clock.PairEvidence]:
    """Clock evidence from proxy links between points in different clock groups: the upstream
    exchange nests in the downstream one (request after request, response before response), which
    bounds the offset between the proxy's two sides as a network link bounds its two ends."""
    if stage.order is None:
        return []
    obs = stage.obs
    child = np.flatnonzero(links.parent >= 0)
    if len(child) == 0:
        return []
    a = stage.order.last()[links.parent[child]]
    b = stage.order.first()[child]
    names = obs.domains
    group_of = np.array([groups.get(d, -1) for d in names], dtype=np.int64)
    keep = (group_of[obs.domain[a]] != group_of[obs.domain[b]]) & (obs.t_resp[a] > 0) & (obs.t_resp[b] > 0)
    a, b = a[keep], b[keep]
    if len(a) == 0:
        return []
    return clock.pair_evidence(list(names), obs.domain[a], obs.domain[b], obs.t_req[b] - obs.t_req[a],
                               obs.t_resp[a] - obs.t_resp[b])


def _times(obs: ObsTable, offsets: dict[str, int]) -> Times:
    per_domain = np.array([offsets.get(d, 0) for d in obs.domains] or [0], dtype=np.int64)
    off = per_domain[obs.domain] if len(obs) else np.zeros(0, np.int64)
    cols = obs.batch.columns
    if obs.batch.record_type is RequestRecord:
        req_last = np.asarray(cols["req_last_ns"]).astype(np.int64)
        resp_last = np.asarray(cols["resp_last_ns"]).astype(np.int64)
    else:  # a connection: its last packet; no response-last time
        req_last = np.asarray(cols["end_ns"]).astype(np.int64)
        resp_last = np.zeros(len(obs), np.int64)
    return Times(
        req_first=correct(obs.t_req, off), resp_first=correct(obs.t_resp, off),
        req_last=correct(req_last, off), resp_last=correct(resp_last, off), offset_us=off // 1000,
    )


def _links(stage: _Stage, times: Times, settings: CorrelateSettings, stats: dict[str, int],
           with_proxies: bool, groups: dict[str, int]) -> proxy.Links:
    links = proxy.Links(parent=np.full(stage.nseg, -1, np.int64), reason=[Reason.ORIGIN.value] * stage.nseg,
                        confidence=np.ones(stage.nseg))
    if not with_proxies or stage.order is None:
        return links
    view = _segment_view(stage.obs, stage.order, times)
    group_of = np.array([groups.get(d, -1) for d in stage.obs.domains] or [0], dtype=np.int64)
    first_groups = group_of[stage.obs.domain[stage.order.first()]]
    view.clock_group = first_groups if len(np.unique(first_groups)) > 1 else None
    stats["tls_links"] = proxy.link_tls(view, settings, links)
    stats["proxy_id_links"] = proxy.link_by_id(view, settings, links)
    stats["proxy_nested_links"] = proxy.link_nested(view, settings, links)
    stats["proxy_retry_links"] = proxy.link_retries(view, settings, links)
    return links


def _segment_view(obs: ObsTable, order: SegmentOrder, times: Times) -> proxy.SegmentView:
    cols = obs.batch.columns
    first, last = order.first(), order.last()
    ids: dict[str, list[str]] = {}
    big = np.iinfo(np.int64).max
    for name in ("x_request_id", "traceparent", "b3_trace_id"):
        column = np.asarray(cols[name], dtype=object)
        present = (column != "")[order.rows]
        if not present.any():
            ids[name] = [""] * len(order.starts)
            continue
        pos = np.minimum.reduceat(np.where(present, np.arange(len(present)), big), order.starts)
        found = pos != big
        rows = order.rows[np.where(found, pos, 0)]
        values = [str(column[r]) if f else "" for r, f in zip(rows.tolist(), found.tolist(), strict=True)]
        if name == "traceparent":
            values = [proxy.trace_id_of_traceparent(v) if v else "" for v in values]
        else:
            values = [v.lower() for v in values]
        ids[name] = values
    kinds = np.array([proxy.is_proxy_kind(k) for k in obs.label_kind] or [False])
    hosts = obs.label_host
    first_l, last_l = obs.label[first].tolist(), obs.label[last].tolist()
    label_rows = obs.label[order.rows].tolist()
    pick = [first.tolist()]
    tls = np.array([cols["l7_proto"][r] == "tls" for r in pick[0]], dtype=bool)
    return proxy.SegmentView(
        method=[cols["method"][r] for r in pick[0]], path=[cols["path"][r] for r in pick[0]],
        http_host=[cols["http_host"][r].lower() for r in pick[0]],
        ids=ids, req_first_ns=times.req_first[first], resp_first_ns=times.resp_first[first],
        req_last_ns=times.req_first[last], resp_last_ns=times.resp_first[last],
        resp_end_first_ns=times.resp_last[first], resp_end_last_ns=times.resp_last[last],
        status=np.asarray(cols["status"]).astype(np.int64)[first],
        req_body=np.asarray(cols["req_body_bytes"]).astype(np.int64)[first],
        resp_body=np.asarray(cols["resp_body_bytes"]).astype(np.int64)[first],
        first_proxy=kinds[obs.label[first]], last_proxy=kinds[obs.label[last]],
        first_host=[hosts[x] for x in first_l], last_host=[hosts[x] for x in last_l],
        labels=[tuple(label_rows[a:b]) for a, b in zip(order.starts.tolist(), order.ends.tolist(), strict=True)],
        last_label=last_l,
        tls=tls if tls.any() else None,
        req_bytes=np.asarray(cols["req_bytes"]).astype(np.int64)[first],
        resp_bytes=np.asarray(cols["resp_bytes"]).astype(np.int64)[first],
    )


def _flows_without_l7(flows: Batch, requests: Batch) -> npt.NDArray[np.int64]:
    """Rows of flows of TCP connections that carried no request record (at any point)."""
    if len(flows) == 0:
        return np.zeros(0, np.int64)

    def conn_key(b: Batch) -> npt.NDArray[np.uint64]:
        syn = np.asarray(b.columns["syn_seq"]).astype(np.uint64)
        ack = np.asarray(b.columns["synack_seq"]).astype(np.uint64)
        return (syn << np.uint64(32)) | ack

    fk = conn_key(flows)
    fsyn = np.asarray(flows.columns["syn_seq"]).astype(np.uint64)
    if len(requests) == 0:
        return np.arange(len(flows), dtype=np.int64)
    rsyn = np.asarray(requests.columns["syn_seq"]).astype(np.uint64)
    no_ack = np.asarray(requests.columns["synack_seq"]) == 0
    keep = ~np.isin(fk, conn_key(requests)) & ~np.isin(fsyn, rsyn[no_ack])
    return np.flatnonzero(keep).astype(np.int64)


def _flow_close(flows: Batch) -> dict[tuple[str, int], str]:
    """close_type of each flow closed by a reset, by (point, flow_id): marks requests on reset connections."""
    cols = flows.columns
    close = cols["close_type"]
    rows = [i for i, c in enumerate(close) if "rst" in c]
    fids = np.asarray(cols["flow_id"])
    return {(cols["point"][i], int(fids[i])): close[i] for i in rows}
