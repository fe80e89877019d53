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

Ids are deterministic: the trace id is blake2b of the root segment's matcher key, its merged anchors
and its earliest raw request time; the span id is blake2b of the trace id, the hop and the record's
id. Replaying the same records yields the same ids, so a ReplacingMergeTree keeps one row.
"""

from __future__ import annotations

import hashlib
import itertools
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

I64 = npt.NDArray[np.int64]
#: (row, index of the previous hop or -1, link reason, confidence, same connection as previous, side)
_Hop = tuple[int, int, str, float, bool, str]
_OK_L4_STATES = frozenset({"SF", "S1", "S2", "S3", ""})
#: How many leading anchors of a matcher confirm a match (see matchers: syn_seq, synack_seq,
#: resp_tcp_seq for requests; synack_seq for connections).
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


def _hexdigest(text: str, size: int) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=size).hexdigest()


def segment_anchor_text(obs: ObsTable, order: SegmentOrder) -> list[str]:
    """Per segment: its key, merged anchors and earliest raw request time, as the trace id's input."""
    if len(order.rows) == 0:
        return []
    rows = order.rows
    anchors = np.maximum.reduceat(obs.anchors[rows], order.starts, axis=0).tolist()
    t_min = np.minimum.reduceat(obs.t_req[rows], order.starts).tolist()
    keys = obs.key[rows[order.starts]].tolist()
    return [f"{k}|{'|'.join(map(str, a))}|{t}" for k, a, t in zip(keys, anchors, t_min, strict=True)]


class Assembler:
    """Builds Span and Trace columns for one observation table."""

    def __init__(
        self, obs: ObsTable, order: SegmentOrder, times: Times, links: Links, version_ns: int,
        flow_close: dict[tuple[str, int], str],
    ) -> None:
        self.obs, self.order, self.times, self.links = obs, order, times, links
        self.version_ns = version_ns
        self.flow_close = flow_close
        cols = obs.batch.columns
        self.is_l4 = obs.batch.record_type.TABLE == "flows"
        self.text = {n: cols[n] for n in ("orig_h", "resp_h", "iface")}
        self.num = {n: np.asarray(cols[n]).tolist() for n in ("orig_p", "resp_p", "flow_id")}
        self.request_id = [0] * len(obs) if self.is_l4 else np.asarray(cols["request_id"]).tolist()
        self.rows_of = [order.rows[a:b].tolist() for a, b in zip(order.starts, order.ends, strict=True)]
        self.seg_tag = (obs.key[order.first()] >> np.uint64(TAG_SHIFT)).astype(np.int64).tolist()
        self.anchor_text = segment_anchor_text(obs, order)
        self.lists = {
            "t_req": times.req_first.tolist(), "t_resp": times.resp_first.tolist(),
            "req_last": times.req_last.tolist(), "resp_last": times.resp_last.tolist(),
            "offset_us": times.offset_us.tolist(), "label": obs.label.tolist(),
            "rr": obs.req_retrans.tolist(), "sr": obs.resp_retrans.tolist(),
        }
        self.anchors = obs.anchors.tolist()
        self.spans: dict[str, list[Any]] = defaultdict(list)
        self.traces: dict[str, list[Any]] = defaultdict(list)

    def run(self) -> None:
        children: dict[int, list[int]] = defaultdict(list)
        roots: list[int] = []
        t_first = [self.lists["t_req"][r[0]] for r in self.rows_of]
        for s, p in enumerate(self.links.parent.tolist()):
            (children[p] if p >= 0 else roots).append(s)
        for kids in children.values():
            kids.sort(key=lambda s: (t_first[s], s))
        for root in roots:
            self._trace(root, children)

    def _walk(self, root: int, children: dict[int, list[int]]) -> list[_Hop]:
        """(row, index of the previous hop, reason, confidence, same connection, side) in path order."""
        hops: list[_Hop] = []
        stack: list[tuple[int, int]] = [(root, -1)]
        while stack:
            seg, parent_hop = stack.pop()
            rows = self.rows_of[seg]
            side = "client" if seg == root else "server"
            if parent_hop < 0:
                hops.append((rows[0], -1, Reason.ORIGIN.value, 1.0, False, side))
            else:
                hops.append((rows[0], parent_hop, self.links.reason[seg],
                             float(self.links.confidence[seg]), False, side))
            reason = TAG_REASON[self.seg_tag[seg]]
            for prev, row in itertools.pairwise(rows):
                conf = self._confidence(reason, prev, row)
                hops.append((row, len(hops) - 1, reason.value, conf, True, side))
            last = len(hops) - 1
            stack.extend((kid, last) for kid in reversed(children.get(seg, [])))
        return hops

    def _confidence(self, reason: Reason, prev: int, row: int) -> float:
        # anchors that confirm a match (payload hash and IP id only break ties): missing ones cost
        confirming = _CONFIRMING.get(reason, 0)
        pairs = zip(self.anchors[prev][:confirming], self.anchors[row][:confirming], strict=True)
        missing = sum(1 for a, b in pairs if not (a and b))
        return round(BASE_CONFIDENCE[reason] * MISSING_ANCHOR_FACTOR**missing, 4)

    def _trace(self, root: int, children: dict[int, list[int]]) -> None:
        hops = self._walk(root, children)
        trace_id = _hexdigest(("l4|" if self.is_l4 else "l7|") + self.anchor_text[root], 16)
        span_ids: list[str] = []
        summary = _LinkSummary()
        for pos, hop in enumerate(hops):
            span_ids.append(self._span(trace_id, pos, hop, hops, span_ids, summary))
        self._trace_row(trace_id, hops, summary)

    def _span(self, trace_id: str, pos: int, hop: _Hop, hops: list[_Hop], span_ids: list[str],
              summary: _LinkSummary) -> str:
        row, prev_pos, reason, conf, same_conn, side = hop
        prev = hops[prev_pos][0] if prev_pos >= 0 else -1
        lst, sp = self.lists, self.spans
        point, iface = self.obs.labels[lst["label"][row]]
        span_id = _hexdigest(f"{trace_id}|{point}|{iface}|{self.request_id[row]}|{self.num['flow_id'][row]}"
                             f"|{pos}", 8)
        req_us = resp_us = lost = 0
        if prev >= 0:
            req_us = (lst["t_req"][row] - lst["t_req"][prev]) // 1000
            if lst["t_resp"][row] and lst["t_resp"][prev]:
                resp_us = (lst["t_resp"][prev] - lst["t_resp"][row]) // 1000
            if same_conn:
                lost = max(0, lst["rr"][prev] - lst["rr"][row]) + max(0, lst["sr"][row] - lst["sr"][prev])
            prev_point = self.obs.labels[lst["label"][prev]][0]
            summary.add(f"{prev_point}>{point}", req_us + resp_us, lost)
        summary.confidence = min(summary.confidence, conf)
        lab = lst["label"][row]
        values = {
            "trace_id": trace_id, "span_id": span_id,
            "parent_span_id": span_ids[prev_pos] if prev_pos >= 0 else "", "hop_index": pos,
            "point": point, "host": self.obs.label_host[lab], "hop_kind": self.obs.label_kind[lab],
            "side": side,
            "orig_h": self.text["orig_h"][row], "orig_p": self.num["orig_p"][row],
            "resp_h": self.text["resp_h"][row], "resp_p": self.num["resp_p"][row],
            "request_first_ns": lst["t_req"][row], "request_last_ns": lst["req_last"][row],
            "response_first_ns": lst["t_resp"][row], "response_last_ns": lst["resp_last"][row],
            "req_link_us": req_us, "resp_link_us": resp_us, "clock_offset_us": lst["offset_us"][row],
            "link_reason": reason, "link_confidence": conf, "lost_pkts": lost,
            "retrans_pkts": lst["rr"][row] + lst["sr"][row], "flow_id": self.num["flow_id"][row],
            "request_id": self.request_id[row], "version": self.version_ns,
        }
        for name, value in values.items():
            sp[name].append(value)
        return span_id

    def _trace_row(self, trace_id: str, hops: list[_Hop],
                   summary: _LinkSummary) -> None:
        rows = [h[0] for h in hops]
        first, last = rows[0], rows[-1]
        lst, cols = self.lists, self.obs.batch.columns
        start = lst["t_req"][first]
        end = lst["resp_last"][first] or max(max(lst["t_resp"][r], lst["req_last"][r]) for r in rows)
        row = {
            "trace_id": trace_id, "kind": "l4" if self.is_l4 else "l7",
            "start_ns": start, "end_ns": max(end, start), "duration_us": max(0, end - start) // 1000,
            "client_h": self.text["orig_h"][first], "client_p": self.num["orig_p"][first],
            "server_h": self.text["resp_h"][last], "server_p": self.num["resp_p"][last],
            "hop_count": len(rows), "points": ",".join(self.obs.labels[lst["label"][r]][0] for r in rows),
            "lost_pkts": summary.lost, "loss_link": summary.loss_link,
            "slowest_link": summary.slowest_link, "slowest_link_us": summary.slowest_us,
            "min_confidence": summary.confidence, "version": self.version_ns,
            "syn_seq": int(cols["syn_seq"][first]),
        }
        row.update(self._l4_fields(rows) if self.is_l4 else self._l7_fields(rows))
        for name, value in row.items():
            self.traces[name].append(value)

    def _l7_fields(self, rows: list[int]) -> dict[str, Any]:
        cols = self.obs.batch.columns
        first = rows[0]

        def first_text(name: str) -> str:
            return next((v for v in (cols[name][r] for r in rows) if v), "")

        status = next((int(cols["status"][r]) for r in rows if cols["status"][r]), 0)
        proto = cols["l7_proto"][first]
        answered = any(self.lists["t_resp"][r] for r in rows)
        reset = any("rst" in self.flow_close.get((self.obs.labels[self.lists["label"][r]][0],
                                                  self.num["flow_id"][r]), "") for r in rows)
        if proto == "dns":
            error = int(not answered or int(cols["dns_rcode"][first]) != 0)
        else:
            error = int(status >= 500 or not answered or (reset and status == 0))
        return {
            "l7_proto": proto, "method": cols["method"][first], "http_host": cols["http_host"][first],
            "path": cols["path"][first], "status": status, "dns_qname": cols["dns_qname"][first],
            "x_request_id": first_text("x_request_id"), "traceparent": first_text("traceparent"),
            "error": error,
        }

    def _l4_fields(self, rows: list[int]) -> dict[str, Any]:
        cols = self.obs.batch.columns
        bad = any(cols["conn_state"][r] not in _OK_L4_STATES or "rst" in cols["close_type"][r]
                  for r in rows)
        return {"l7_proto": "", "method": "", "http_host": "", "path": "", "status": 0, "dns_qname": "",
                "x_request_id": "", "traceparent": "", "error": int(bad)}


class _LinkSummary:
    """Running worst link of a trace: most loss, slowest, lowest confidence."""

    __slots__ = ("confidence", "loss_link", "lost", "lost_max", "slowest_link", "slowest_us")

    def __init__(self) -> None:
        self.confidence = 1.0
        self.loss_link = ""
        self.lost = 0
        self.lost_max = 0
        self.slowest_link = ""
        self.slowest_us = 0

    def add(self, link: str, latency_us: int, lost: int) -> None:
        self.lost += lost
        if lost > self.lost_max:
            self.lost_max, self.loss_link = lost, link
        if latency_us > self.slowest_us or not self.slowest_link:
            self.slowest_us, self.slowest_link = latency_us, link
