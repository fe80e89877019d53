"""What ``hopscope analyze`` and ``hopscope demo`` print: the traces as JSON (schema in
docs/TRACE_SCHEMA.md) or a summary, and one stored trace hop by hop."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from hopscope.correlate.engine import StitchResult
from hopscope.records import Batch, Span, Trace

SCHEMA = "hopscope.traces/1"
_HOP_FIELDS = (
    "hop_index", "point", "host", "hop_kind", "side", "span_id", "parent_span_id",
    "orig_h", "orig_p", "resp_h", "resp_p",
    "request_first_ns", "request_last_ns", "response_first_ns", "response_last_ns",
    "req_link_us", "resp_link_us", "clock_offset_us", "link_reason", "link_confidence",
    "lost_pkts", "retrans_pkts", "flow_id", "request_id",
)
_REQUEST_FIELDS = ("l7_proto", "method", "http_host", "path", "status", "x_request_id", "traceparent",
                   "dns_qname")
_TRACE_FIELDS = ("trace_id", "kind", "start_ns", "end_ns", "duration_us", "error", "hop_count",
                 "lost_pkts", "loss_link", "slowest_link", "slowest_link_us", "min_confidence", "syn_seq")


def _rows(batch: Batch, names: tuple[str, ...]) -> list[dict[str, Any]]:
    cols = {n: (batch.columns[n] if isinstance(batch.columns[n], list) else batch.columns[n].tolist())  # type: ignore[union-attr]
            for n in names}
    out = [dict(zip(names, values, strict=True)) for values in zip(*(cols[n] for n in names), strict=True)]
    for row in out:
        for k, v in row.items():
            if isinstance(v, float):
                row[k] = round(v, 4)
    return out


def traces_json(result: StitchResult) -> dict[str, Any]:
    """The analyze JSON document: traces in start order, each with its request and its hops in path order."""
    hops_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for tid, hop in zip(result.spans.columns["trace_id"], _rows(result.spans, _HOP_FIELDS), strict=True):
        hops_of[tid].append(hop)
    traces = []
    trows = _rows(result.traces, _TRACE_FIELDS + _REQUEST_FIELDS + ("client_h", "client_p", "server_h",
                                                                    "server_p"))
    for row in sorted(trows, key=lambda r: (r["start_ns"], r["trace_id"])):
        trace = {k: row[k] for k in _TRACE_FIELDS}
        trace["request"] = {("host" if k == "http_host" else k): row[k] for k in _REQUEST_FIELDS}
        trace["client"] = {"h": row["client_h"], "p": row["client_p"]}
        trace["server"] = {"h": row["server_h"], "p": row["server_p"]}
        trace["hops"] = sorted(hops_of[row["trace_id"]], key=lambda h: h["hop_index"])
        traces.append(trace)
    return {"schema": SCHEMA, "traces": traces, "clock_offsets_us": result.clock_offsets_us,
            "clocks": [c.as_dict() for c in result.clocks], "stats": result.stats}


def link_latencies(result: StitchResult) -> dict[str, tuple[list[int], list[int], int]]:
    """Per link 'a>b': request latencies, response latencies (µs), segments lost."""
    cols = result.spans.columns
    point_of = dict(zip(cols["span_id"], cols["point"], strict=True))
    out: dict[str, tuple[list[int], list[int], int]] = {}
    req_us, resp_us, lost = (np.asarray(cols[n]).tolist() for n in ("req_link_us", "resp_link_us", "lost_pkts"))
    for i, (parent, point) in enumerate(zip(cols["parent_span_id"], cols["point"], strict=True)):
        if not parent:
            continue
        link = f"{point_of[parent]}>{point}"
        a, b, n = out.get(link, ([], [], 0))
        a.append(req_us[i])
        if resp_us[i]:
            b.append(resp_us[i])
        out[link] = (a, b, n + lost[i])
    return out


def _pct(values: list[int]) -> str:
    if not values:
        return "-"
    p = np.percentile(np.asarray(values), [50, 90, 99])
    return "/".join(f"{v:.0f}" for v in p)


def summary_text(result: StitchResult, top: int = 10) -> str:
    """Human-readable summary: totals, slowest and failed requests, lossy links, per-link percentiles."""
    doc = traces_json(result)
    traces = doc["traces"]
    lines = [f"{len(traces)} traces ({sum(t['kind'] == 'l7' for t in traces)} requests, "
             f"{sum(t['kind'] == 'l4' for t in traces)} L4 connections), "
             f"{sum(len(t['hops']) for t in traces)} hops; clock offsets (us): {doc['clock_offsets_us'] or 'none'}"]

    def describe(t: dict[str, Any]) -> str:
        r = t["request"]
        what = (f"{r['method']} {r['host']}{r['path']} -> {r['status']}" if r["l7_proto"] == "http"
                else f"dns {r['dns_qname']}" if r["l7_proto"] == "dns" else "tcp connection")
        return f"{t['duration_us']:>9} us  {what}  [{len(t['hops'])} hops, {t['hops'][0]['point']} -> " \
               f"{t['hops'][-1]['point']}, min confidence {t['min_confidence']}]"

    lines.append(f"\nslowest {top} requests:")
    lines += ["  " + describe(t) for t in sorted(traces, key=lambda t: -t["duration_us"])[:top]]
    failed = [t for t in traces if t["error"]]
    lines.append(f"\nfailed: {len(failed)}")
    lines += ["  " + describe(t) for t in failed[:top]]
    links = link_latencies(result)
    lossy = {k: v[2] for k, v in links.items() if v[2]}
    lines.append(f"\nlinks with loss: {len(lossy)}")
    lines += [f"  {k}: {n} segments lost" for k, n in sorted(lossy.items(), key=lambda kv: -kv[1])]
    lines.append("\nper-link latency, us (p50/p90/p99)          request          response      n")
    for k, (a, b, _) in sorted(links.items()):
        lines.append(f"  {k:<40} {_pct(a):>16} {_pct(b):>16} {len(a):>6}")
    return "\n".join(lines + clock_lines(doc["clocks"])) + "\n"


def clock_lines(clocks: list[dict[str, Any]]) -> list[str]:
    """One line per clock domain: its points, the offset subtracted, how sure, against what."""
    if not clocks:
        return []
    lines = [f"\nclock domains ({'/'.join(sorted({c['domain_kind'] for c in clocks}))}), offset subtracted, us:"]
    for c in clocks:
        how = c["decision"]
        if c["measured_from"]:
            how += (f" against {c['measured_from']} over {c['evidence']} shared requests/connections,"
                    f" causal range {c['low_us']:.0f}..{c['high_us']:.0f}")
        lines.append(f"  {c['domain']:<12} {c['offset_us']:>9.0f} +-{c['uncertainty_us']:<7.0f} {how}"
                     f"  [{' '.join(c['points'])}]")
    return lines


def evaluation_text(ev: dict[str, Any]) -> str:
    """The ground-truth score (``hopscope.correlate.evaluate``) as summary lines; a host's clock is
    shown when it was skewed or its offset came out wrong."""
    from hopscope.correlate.evaluate import SAME_CLOCK_US

    lines = [
        "\nagainst the manifest:",
        f"  recall    {ev['recalled']}/{ev['requests']} = {ev['recall']:.4f} (requests stitched across every hop)",
        f"  precision {ev['precise']}/{ev['matched']} = {ev['precision']:.4f} (upstream leg and status of the request)",
        f"  traces shared by two requests {ev['duplicate_traces']}, hop records in two traces {ev['shared_hops']}",
        f"  dns {ev['dns_found']}/{ev['dns']}, refused {ev['refused']} (L4 error traces {ev['l4_errors']}), "
        f"5xx {ev['traces_5xx']}/{ev['status_5xx']}",
    ]
    for d in ev["delays"]:
        held = (f"held {d['median_truth_us']:.0f} us (median of the delayer's own, {d['held_known']}/{d['n']} known)"
                if d.get("held_known") else f"+ overhead {d['overhead_us']:.0f} us")
        lines.append(f"  delay {d['link']} (hops without retransmission): injected {d['injected_us']:.0f} us, {held}, "
                     f"{d['within']}/{d['n']} within {d['tolerance_us']:.0f} us "
                     f"(median error {d['median_error_us']} us)")
    skewed = [c for c in ev.get("clocks", []) if c["applied_us"] or c["error_us"] is None
              or abs(c["error_us"]) > SAME_CLOCK_US]
    for c in skewed:
        found = "different offsets on its points" if c["found_us"] is None else (
            f"found {c['found_us']:.0f} us (error {c['error_us']:.0f} us, +-{c['uncertainty_us']:.0f} us)")
        lines.append(f"  clock of {c['host']}: skewed {c['applied_us']:.0f} us, {found}")
    lines.append(f"  loss injected on {ev['impaired_loss_links'] or 'no link'}; "
                 f"attributed to {ev['lossy_links'] or 'none'}; dropped request segments pinned to their "
                 f"link {ev['dropped_pinned']}/{ev['dropped_request_segments']}")
    return "\n".join(lines) + "\n"


#: ``render`` formats: text (``summary_text`` and ``evaluation_text``) or json (``traces_json``).
FORMATS = ("text", "json")


def render(result: StitchResult, evaluation: dict[str, Any] | None = None, fmt: str = "text") -> str:
    """The analyze output in one of ``FORMATS``; the evaluation, when given, is in it."""
    if fmt == "json":
        from hopscope.correlate.json_indent import dumps  # json.dumps(doc, indent=1), through the C encoder

        doc = traces_json(result)
        if evaluation is not None:
            doc["evaluation"] = evaluation
        return dumps(doc, 1) + "\n"
    if fmt == "text":
        return summary_text(result) + (evaluation_text(evaluation) if evaluation is not None else "")
    raise ValueError(f"analyze format {fmt!r}: expected one of {', '.join(FORMATS)}")


def trace_hops_text(trace: Trace, spans: Sequence[Span]) -> list[str]:
    """One stored trace and its spans (in path order), hop by hop: the request, then per hop the point,
    its kind, the addresses seen there, the link latencies and why the correlator linked it."""
    lines = [
        f"{trace.method} {trace.http_host}{trace.path} -> {trace.status}, {trace.duration_us} us, "
        f"x-request-id {trace.x_request_id or '-'}",
        f"{'#':>2}  {'point':<16}{'kind':<11}{'seen as':<42}{'req link':>10}{'resp link':>10}  linked by",
    ]
    for s in spans:
        seen = f"{s.orig_h}:{s.orig_p} > {s.resp_h}:{s.resp_p}"
        lines.append(f"{s.hop_index:>2}  {s.point:<16}{s.hop_kind:<11}{seen:<42}{s.req_link_us:>8}us"
                     f"{s.resp_link_us:>8}us  {s.link_reason} ({s.link_confidence:.2f})")
    return lines
