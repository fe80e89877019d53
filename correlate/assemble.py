"""Trace assembly: hops in path order, per-link latency each way, loss pinned to links, ids.

Segments linked by proxies form a tree; a trace is one root segment and its descendants, its hops the
depth-first walk (a segment's hops in path order, then its upstream legs). For each hop after the
first, the link from the previous hop gets:

- ``req_link_us``: request first byte here minus at the previous hop (clock-corrected);
- ``resp_link_us``: response first byte at the previous hop minus here;
- ``lost_pkts`` (same connection only): a segment retransmitted upstream whose original never reached
  this hop shows up as a retransmission counted at the upstream hop and not here, so the request
  direction loses ``max(0, retrans(prev) - retrans(here))`` and the response direction
  ``max(0, retrans(here) - retrans(prev))`` on this link.

Ids are deterministic (``hopscope.ids``: ``trace_id_halves``, ``span_id_array``): the trace id is 128
bits mixed (splitmix64) from the root segment's matcher key, its merged anchors and its earliest raw
request time; the span id mixes the trace id with the hop's name (``hop_hash`` of point and interface),
the record's ids and its position. Replaying the same records yields the same ids, so a
ReplacingMergeTree keeps one row. Everything but the walk over
trees that branch is numpy over all hops at once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from hopscope.correlate.matchers import TAG_REASON, TAG_SHIFT
from hopscope.correlate.observations import ObsTable
from hopscope.correlate.order import SegmentOrder
from hopscope.correlate.proxy import Links
from hopscope.correlate.relations import BASE_CONFIDENCE, MISSING_ANCHOR_FACTOR, Reason
from hopscope.ids import (
    TRACE_SEEDS_L4,
    TRACE_SEEDS_L7,
    hop_hash,
    span_id_array,
    span_id_texts,
    trace_id_halves,
    trace_id_texts,
)

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
_OK_L4_STATES = frozenset({"SF", "S1", "S2", "S3", ""})
_REASONS: list[Reason] = list(Reason)
_REASON_CODE = {r.value: i for i, r in enumerate(_REASONS)}
#: How many leading anchors of a matcher confirm a match (see matchers: syn_seq, synack_seq,
#: resp_tcp_seq for requests; synack_seq for connections); payload hash and IP id only break ties.
_CONFIRMING = {Reason.L7_REQ_TCP_SEQ: 3, Reason.NAT_SYN_SEQ: 1}


@dataclass(slots=True)
class Times:
    """Clock-corrected times (ns, 0 where the raw time was 0), one entry per observation."""

    req_first: I64
    resp_first: I64
    req_last: I64
    resp_last: I64
    offset_us: I64


def correct(raw: I64, offset_ns: I64) -> I64:
    return np.where(raw != 0, raw - offset_ns, 0)


def display_names(labels: list[tuple[str, str]]) -> list[str]:
    """The point name of each hop; ``point:iface`` when one capture point (an ``-i any`` capture
    that saw the packet on two interfaces, e.g. before and after NAT) holds several interfaces."""
    ifaces: dict[str, set[str]] = defaultdict(set)
    for point, iface in labels:
        ifaces[point].add(iface)
    return [f"{p}:{i}" if len(ifaces[p]) > 1 and i else p for p, i in labels]


@dataclass(slots=True)
class Walk:
    """All hops of all traces in output order (traces contiguous, hops in path order)."""

    rows: I64  # observation row of each hop
    seg: I64  # segment of each hop
    trace: I64  # trace index of each hop
    trace_start: I64  # position of each trace's first hop
    prev: I64  # position of the previous hop (-1 for a trace's first)
    same_conn: npt.NDArray[np.bool_]  # previous hop is on the same connection
    roots: I64  # root segment of each trace


def _roots_and_depths(parent: I64) -> tuple[I64, I64]:
    """Root and depth of every segment of the forest, by pointer jumping (numpy, depth-many steps)."""
    idx = np.arange(len(parent))
    root, depth = idx.copy(), np.zeros(len(parent), np.int64)
    up = parent.copy()
    while True:
        moving = up >= 0
        if not moving.any():
            return root, depth
        root = np.where(moving, up, root)
        depth += moving
        up = np.where(moving, parent[np.maximum(up, 0)], -1)


def _dfs_positions(roots: list[int], children: dict[int, list[int]], pos: I64) -> None:
    """Depth-first position inside its tree of every segment of trees that branch."""
    for root in roots:
        stack, k = [root], 0
        while stack:
            s = stack.pop()
            pos[s] = k
            k += 1
            stack.extend(reversed(children.get(s, ())))


def walk(order: SegmentOrder, links: Links, t_first: I64) -> Walk:
    """Depth-first walk of the segment forest: trees that are chains (nearly all) are ordered by
    depth with numpy; only trees that branch (fan-out) are walked in Python."""
    nseg = len(order.starts)
    parent = links.parent
    root, depth = _roots_and_depths(parent)
    is_root = parent < 0
    roots = np.flatnonzero(is_root)
    roots = roots[np.lexsort((roots, t_first[roots]))]
    root_rank = np.zeros(nseg, np.int64)
    root_rank[roots] = np.arange(len(roots))
    pos = depth.copy()
    kids = np.bincount(parent[~is_root], minlength=nseg) if nseg else np.zeros(0, np.int64)
    branching = np.unique(root[np.flatnonzero(kids > 1)])
    if len(branching):
        children: dict[int, list[int]] = defaultdict(list)
        in_branching = np.isin(root, branching)
        for s in np.flatnonzero(~is_root & in_branching).tolist():
            children[int(parent[s])].append(s)
        for lst in children.values():
            lst.sort(key=lambda s: (int(t_first[s]), s))
        _dfs_positions(branching.tolist(), children, pos)
    seg_seq = np.lexsort((pos, root_rank[root])) if nseg else np.zeros(0, np.int64)
    trace_of_seg = root_rank[root]
    seg_len = order.ends - order.starts
    lens = seg_len[seg_seq]
    out_start = np.cumsum(lens) - lens
    total = int(lens.sum())
    pos_in_seg = np.arange(total) - np.repeat(out_start, lens)
    rows = order.rows[np.repeat(order.starts[seg_seq], lens) + pos_in_seg]
    seg = np.repeat(seg_seq, lens)
    trace = trace_of_seg[seg]
    trace_start = np.flatnonzero(np.r_[True, trace[1:] != trace[:-1]]) if total else np.zeros(0, np.int64)
    seg_first = np.zeros(nseg, np.int64)
    seg_first[seg_seq] = out_start
    seg_last = seg_first + seg_len - 1
    is_first = pos_in_seg == 0
    par = parent[seg]
    prev = np.where(is_first, np.where(par >= 0, seg_last[np.maximum(par, 0)], -1), np.arange(total) - 1)
    return Walk(rows=rows, seg=seg, trace=trace, trace_start=trace_start.astype(np.int64), prev=prev,
                same_conn=~is_first, roots=roots.astype(np.int64))


def _per_trace_first(mask: npt.NDArray[np.bool_], w: Walk) -> tuple[I64, npt.NDArray[np.bool_]]:
    """Position of the first hop of each trace where ``mask`` holds, and whether there is one."""
    big = np.iinfo(np.int64).max
    pos = np.where(mask, np.arange(len(mask)), big)
    first = np.minimum.reduceat(pos, w.trace_start) if len(pos) else np.zeros(0, np.int64)
    found = first != big
    return np.where(found, first, 0), found


def _per_trace_argmax(values: I64, w: Walk) -> I64:
    """Position of the largest value in each trace (the earliest among ties)."""
    order = np.lexsort((-np.arange(len(values)), values, w.trace))
    ends = np.r_[w.trace_start[1:], len(values)] - 1
    picked: I64 = order[ends]
    return picked


class Assembler:
    """Builds Span and Trace columns for one observation table."""

    def __init__(
        self, obs: ObsTable, order: SegmentOrder, times: Times, links: Links, version_ns: int,
        flow_close: dict[tuple[str, int], str],
    ) -> None:
        self.obs, self.order, self.times, self.links = obs, order, times, links
        self.version_ns = version_ns
        self.flow_close = flow_close
        self.is_l4 = obs.batch.record_type.TABLE == "flows"
        self.spans: dict[str, Any] = {}
        self.traces: dict[str, Any] = {}
        #: trace id of each observation row ('' when it is in no trace)
        self.row_trace_ids: list[str] = [""] * len(obs)

    def run(self) -> None:
        w = walk(self.order, self.links, self.times.req_first[self.order.first()])
        if len(w.rows) == 0:
            return
        trace_ids, trace_h = self._trace_ids(w)
        for row, t in zip(w.rows.tolist(), w.trace.tolist(), strict=True):
            self.row_trace_ids[row] = trace_ids[t]
        self._spans(w, trace_ids, trace_h)
        self._trace_rows(w, trace_ids)

    def _trace_ids(self, w: Walk) -> tuple[list[str], U64]:
        """128 bits mixed (splitmix64, two seeds) from each root segment's matcher key, merged
        anchors and earliest raw request time: the same records always give the same id."""
        obs, order = self.obs, self.order
        rows = order.rows
        anchors = np.maximum.reduceat(obs.anchors[rows], order.starts, axis=0)[w.roots]
        t_min = np.minimum.reduceat(obs.t_req[rows], order.starts)[w.roots].astype(np.uint64)
        keys = obs.key[rows[order.starts[w.roots]]]
        first, second = trace_id_halves(keys, anchors, t_min, TRACE_SEEDS_L4 if self.is_l4 else TRACE_SEEDS_L7)
        return trace_id_texts(first, second), first

    def _reasons(self, w: Walk) -> tuple[list[str], npt.NDArray[np.float64]]:
        obs, links = self.obs, self.links
        tag = (obs.key[w.rows] >> np.uint64(TAG_SHIFT)).astype(np.int64)
        conn_code = np.array([_REASON_CODE[TAG_REASON[t].value] if t in TAG_REASON else 0
                              for t in range(max(TAG_REASON) + 1)], dtype=np.int64)[tag]
        link_code = np.array([_REASON_CODE[r] for r in links.reason], dtype=np.int64)[w.seg]
        code = np.where(w.same_conn, conn_code, link_code)
        base = np.array([BASE_CONFIDENCE[r] for r in _REASONS])[code]
        confirming = np.array([_CONFIRMING.get(r, 0) for r in _REASONS], dtype=np.int64)[code]
        prev_rows = w.rows[np.maximum(w.prev, 0)]
        both = (obs.anchors[w.rows] != 0) & (obs.anchors[prev_rows] != 0)
        missing_upto = np.c_[np.zeros(len(both), np.int64), np.cumsum(~both, axis=1)]
        missing = missing_upto[np.arange(len(both)), np.minimum(confirming, both.shape[1])]
        conf = np.where(w.same_conn, base * MISSING_ANCHOR_FACTOR**missing, links.confidence[w.seg])
        conf = np.where(w.prev < 0, 1.0, np.round(conf, 4))
        names = [r.value for r in _REASONS]
        return [names[c] for c in np.where(w.prev < 0, _REASON_CODE[Reason.ORIGIN.value], code).tolist()], conf

    def _spans(self, w: Walk, trace_ids: list[str], trace_h: U64) -> None:
        obs, t = self.obs, self.times
        cols = obs.batch.columns
        rows, prev = w.rows, w.prev
        has_prev = prev >= 0
        prow = rows[np.maximum(prev, 0)]
        tr, rp = t.req_first, t.resp_first
        req_us = np.where(has_prev, (tr[rows] - tr[prow]) // 1000, 0)
        resp_ok = has_prev & (rp[rows] > 0) & (rp[prow] > 0)
        resp_us = np.where(resp_ok, (rp[prow] - rp[rows]) // 1000, 0)
        rr, sr = obs.req_retrans, obs.resp_retrans
        lost = np.where(w.same_conn, np.maximum(0, rr[prow] - rr[rows]) + np.maximum(0, sr[rows] - sr[prow]), 0)
        reasons, conf = self._reasons(w)
        label = obs.label[rows]
        label_h = np.array([hop_hash(p, i) for p, i in obs.labels], dtype=np.uint64)
        request_id = (np.zeros(len(rows), np.uint64) if self.is_l4
                      else np.asarray(cols["request_id"]).astype(np.uint64)[rows])
        flow_id = np.asarray(cols["flow_id"]).astype(np.uint64)[rows]
        hop_index = np.arange(len(rows)) - w.trace_start[w.trace]
        span_ids = span_id_texts(span_id_array(trace_h[w.trace], label_h[label], request_id, flow_id, hop_index))
        self.hop_lost, self.hop_latency = lost, np.where(has_prev, req_us + resp_us, np.iinfo(np.int64).min)
        self.hop_conf = conf
        row_list, prev_list = rows.tolist(), prev.tolist()
        points = display_names(obs.labels)
        self.spans = {
            "trace_id": [trace_ids[i] for i in w.trace.tolist()], "span_id": span_ids,
            "parent_span_id": [span_ids[p] if p >= 0 else "" for p in prev_list], "hop_index": hop_index,
            "point": [points[i] for i in label.tolist()],
            "host": [obs.label_host[i] for i in label.tolist()],
            "hop_kind": [obs.label_kind[i] for i in label.tolist()],
            "side": ["client" if s < 0 else "server" for s in self.links.parent[w.seg].tolist()],
            "orig_h": [cols["orig_h"][r] for r in row_list],
            "orig_p": np.asarray(cols["orig_p"])[rows],
            "resp_h": [cols["resp_h"][r] for r in row_list],
            "resp_p": np.asarray(cols["resp_p"])[rows],
            "request_first_ns": tr[rows], "request_last_ns": t.req_last[rows],
            "response_first_ns": rp[rows], "response_last_ns": t.resp_last[rows],
            "req_link_us": req_us, "resp_link_us": resp_us, "clock_offset_us": t.offset_us[rows],
            "link_reason": reasons, "link_confidence": conf, "lost_pkts": lost,
            "retrans_pkts": rr[rows] + sr[rows], "flow_id": flow_id, "request_id": request_id,
            "version": np.full(len(rows), self.version_ns, dtype=np.uint64),
        }

    def _trace_rows(self, w: Walk, trace_ids: list[str]) -> None:
        t, cols = self.times, self.obs.batch.columns
        starts = w.trace_start
        ends = np.r_[starts[1:], len(w.rows)]
        first, last = w.rows[starts], w.rows[ends - 1]
        start_ns = t.req_first[first]
        latest = np.maximum.reduceat(np.maximum(t.resp_first[w.rows], t.req_last[w.rows]), starts)
        end_ns = np.maximum(np.where(t.resp_last[first] > 0, t.resp_last[first], latest), start_ns)
        points = self.spans["point"]
        lossiest = _per_trace_argmax(self.hop_lost, w)
        slowest = _per_trace_argmax(self.hop_latency, w)
        lost = np.add.reduceat(self.hop_lost, starts)

        def link(pos: int) -> str:
            p = int(w.prev[pos])
            return f"{points[p]}>{points[pos]}" if p >= 0 else ""

        first_l, last_l = first.tolist(), last.tolist()
        self.traces = {
            "trace_id": trace_ids, "kind": ["l4" if self.is_l4 else "l7"] * len(starts),
            "start_ns": start_ns, "end_ns": end_ns, "duration_us": np.maximum(0, end_ns - start_ns) // 1000,
            "client_h": [cols["orig_h"][r] for r in first_l], "client_p": np.asarray(cols["orig_p"])[first],
            "server_h": [cols["resp_h"][r] for r in last_l], "server_p": np.asarray(cols["resp_p"])[last],
            "hop_count": ends - starts,
            "points": [",".join(points[a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)],
            "lost_pkts": lost,
            "loss_link": [link(p) if n else "" for p, n in zip(lossiest.tolist(), lost.tolist(), strict=True)],
            "slowest_link": [link(p) for p in slowest.tolist()],
            "slowest_link_us": np.maximum(self.hop_latency[slowest], 0),
            "min_confidence": np.minimum.reduceat(self.hop_conf, starts),
            "syn_seq": np.asarray(cols["syn_seq"])[first], "version": np.full(len(starts), self.version_ns),
        }
        self.traces.update(self._l4_fields(w) if self.is_l4 else self._l7_fields(w, first_l))

    def _l7_fields(self, w: Walk, first: list[int]) -> dict[str, Any]:
        cols = self.obs.batch.columns
        rows = w.rows
        status_all = np.asarray(cols["status"]).astype(np.int64)[rows]
        pos, found = _per_trace_first(status_all > 0, w)
        status = np.where(found, status_all[pos], 0)
        out: dict[str, Any] = {}
        row_list = rows.tolist()
        for name in ("x_request_id", "traceparent"):
            column = cols[name]
            values = [column[r] for r in row_list]
            pos, found = _per_trace_first(np.array([bool(v) for v in values], dtype=bool), w)
            out[name] = [values[p] if f else "" for p, f in zip(pos.tolist(), found.tolist(), strict=True)]
        answered = np.maximum.reduceat((self.times.resp_first[rows] > 0).astype(np.int64), w.trace_start) > 0
        reset = np.zeros(len(rows), dtype=np.int64)
        rst = {k for k, v in self.flow_close.items() if "rst" in v}
        if rst:
            fids = np.asarray(cols["flow_id"]).tolist()
            point = cols["point"]
            reset = np.array([(point[r], fids[r]) in rst for r in row_list], dtype=np.int64)
        was_reset = np.maximum.reduceat(reset, w.trace_start) > 0
        protos = [cols["l7_proto"][r] for r in first]
        is_dns = np.array([p == "dns" for p in protos], dtype=bool)
        rcode = np.asarray(cols["dns_rcode"]).astype(np.int64)[np.asarray(first, dtype=np.int64)]
        error = np.where(is_dns, ~answered | (rcode != 0),
                         (status >= 500) | ~answered | (was_reset & (status == 0)))
        out.update({
            "l7_proto": protos, "method": [cols["method"][r] for r in first],
            "http_host": [cols["http_host"][r] for r in first], "path": [cols["path"][r] for r in first],
            "status": status, "dns_qname": [cols["dns_qname"][r] for r in first], "error": error.astype(np.uint8),
        })
        return out

    def _l4_fields(self, w: Walk) -> dict[str, Any]:
        cols = self.obs.batch.columns
        states, closes = cols["conn_state"], cols["close_type"]
        bad = np.array([states[r] not in _OK_L4_STATES or "rst" in closes[r] for r in w.rows.tolist()],
                       dtype=np.int64)
        n = len(w.trace_start)
        empty = [""] * n
        return {"l7_proto": empty, "method": empty, "http_host": empty, "path": empty,
                "status": np.zeros(n, np.int64), "dns_qname": empty, "x_request_id": empty,
                "traceparent": empty, "error": (np.maximum.reduceat(bad, w.trace_start) > 0).astype(np.uint8)}
