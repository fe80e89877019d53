// The trace view: one time axis for every hop (request first byte, response first byte, the span from
// request to response), per link its latency each way against that link's p50 over the selected range,
// loss and retransmissions on the link where they happened, and the summary of where the time went.
import { api, type Graph, type PointLink, type PointNode, type Span, type Trace } from "./api";
import { $, h } from "./dom";
import { showError } from "./errors";
import { model, type Link, type Model, linkKey, pct } from "./model";
import { go } from "./nav";
import { renderPackets } from "./packets";
import { describe } from "./search";
import { rangeParams, type State } from "./state";
import { ms1, us, usBetween, when } from "./time";

let shown = ""; // trace id + range drawn last, so opening a hop's packets does not redraw the waterfall

export async function renderTrace(st: State): Promise<void> {
  if (!st.trace) {
    $("#detail-title").textContent = "No trace open";
    $("#detail-meta").textContent = "Pick one in Search, or paste a trace id there.";
    for (const id of ["#summary", "#waterfall", "#packets"]) $(id).replaceChildren();
    return;
  }
  const key = `${st.trace}|${rangeParams(st)}`;
  try {
    if (shown !== key) {
      const params = rangeParams(st);
      params.set("limit", "1000");
      const [{ trace, spans }, points] = await Promise.all([
        api<{ trace: Trace; spans: Span[] }>(`api/v1/traces/${st.trace}`),
        api<Graph<PointNode, PointLink>>(`api/v1/topology/points?${params}`),
      ]);
      draw(model(trace, spans), new Map(points.links.map((l) => [linkKey(l.source, l.target), l])), points.graph.traces as number);
      shown = key;
    }
    await renderPackets(st);
  } catch (err) {
    shown = "";
    showError(err);
  }
}

function draw(m: Model, p50: Map<string, PointLink>, foldedTraces: number): void {
  const t = m.trace;
  $("#detail-title").textContent = t.kind === "l7"
    ? `${describe(t)} → ${t.status || (t.error ? "failed" : "")}` : `L4 connection ${t.client_h}:${t.client_p} → ${t.server_h}:${t.server_p}`;
  $("#detail-meta").textContent = `trace ${t.trace_id} · ${when(t.start_ns)} (${Intl.DateTimeFormat().resolvedOptions().timeZone}) · `
    + `${us(t.duration_us)} · x-request-id ${t.x_request_id || "none"}${t.traceparent ? ` · traceparent ${t.traceparent}` : ""}`
    + ` · lowest link confidence ${t.min_confidence.toFixed(2)}`;
  summary(m, p50);
  waterfall(m, p50, foldedTraces);
}

function summary(m: Model, p50: Map<string, PointLink>): void {
  const box = $("#summary");
  box.dataset.totalUs = String(m.totalUs);
  box.dataset.networkUs = String(m.networkUs);
  box.dataset.serverUs = String(m.serverUs);
  const parts = [`network ${ms1(m.networkUs)} (${pct(m.networkUs, m.totalUs)})`, `server ${ms1(m.serverUs)} (${pct(m.serverUs, m.totalUs)})`];
  const rest = m.totalUs - m.networkUs - m.serverUs;
  if (m.totalUs > 0 && Math.abs(rest) * 100 >= m.totalUs) parts.push(`other ${ms1(rest)} (${pct(rest, m.totalUs)})`);
  if (m.slowest) {
    const stats = p50.get(linkKey(m.slowest.from.point, m.slowest.to.point));
    const typical = stats ? ` (p50 of that link: ${ms1(stats.req_p50_us + stats.resp_p50_us)})` : "";
    parts.push(`slowest link ${m.slowest.from.point} → ${m.slowest.to.point} ${ms1(m.slowest.totalUs)}${typical}`);
  }
  box.textContent = parts.join(" · ");
}

function linkCell(l: Link, stats: PointLink | undefined, i: number): HTMLElement {
  const vs = (v: number, p: number | undefined) => {
    const slow = p !== undefined && v > 2 * p && v - p > 100;
    return h("span", { class: slow ? "slow" : "" }, us(v), p !== undefined ? h("small", {}, ` p50 ${us(p)}`) : "");
  };
  const tipId = `link-tip-${i}`;
  const marks: HTMLElement[] = [];
  if (l.to.lost_pkts) marks.push(h("span", { class: "badge loss" }, `lost ${l.to.lost_pkts}`));
  if (l.to.retrans_pkts) marks.push(h("span", { class: "badge retrans" }, `retrans ${l.to.retrans_pkts}`));
  const tip = h("span", { role: "tooltip", id: tipId, class: "tip" },
    `${l.from.point} → ${l.to.point}: linked by ${l.to.link_reason} (confidence ${l.to.link_confidence.toFixed(2)})`,
    stats ? `; over the range: request p50/p99 ${us(stats.req_p50_us)} / ${us(stats.req_p99_us)}, response p50/p99 ${us(stats.resp_p50_us)} / ${us(stats.resp_p99_us)}, ${stats.traces} traces` : "");
  return h("div", { class: "linkinfo", tabindex: 0, "aria-describedby": tipId, "data-link": linkKey(l.from.point, l.to.point) },
    h("span", { class: "dir" }, "→ "), vs(l.reqUs, stats?.req_p50_us), h("span", { class: "dir" }, "  ← "), vs(l.respUs, stats?.resp_p50_us),
    ...marks, tip);
}

function waterfall(m: Model, p50: Map<string, PointLink>, foldedTraces: number): void {
  const box = $("#waterfall");
  box.replaceChildren();
  if (!m.spans.length) return;
  const t0 = m.spans[0].request_first_ns;
  const ends = m.spans.map((s) => (s.response_last_ns !== "0" ? usBetween(t0, s.response_last_ns) : usBetween(t0, s.request_last_ns)));
  const spanUs = Math.max(1, m.totalUs, ...ends);
  const at = (v: number) => `${Math.max(0, Math.min(100, (100 * v) / spanUs)).toFixed(3)}%`;
  const linkInto = new Map(m.links.map((l) => [l.to.span_id, l]));
  const axis = h("div", { class: "wf-row wf-axis", "aria-hidden": "true" }, h("div", { class: "wf-label" }, "hop"),
    h("div", { class: "wf-track" }, ...[0, 0.25, 0.5, 0.75, 1].map((f) =>
      h("span", { class: "wf-tick", style: `left:${f * 100}%` }, us(Math.round(spanUs * f))))),
    h("div", { class: "wf-link" }, `link into the hop (vs p50 of ${foldedTraces} traces)`), h("div", { class: "wf-act" }, ""));
  const rows = m.spans.map((s, i) => {
    const req = usBetween(t0, s.request_first_ns);
    const respFirst = s.response_first_ns !== "0" ? usBetween(t0, s.response_first_ns) : null;
    const end = ends[i];
    const last = i === m.spans.length - 1;
    const l = linkInto.get(s.span_id);
    const track = h("div", { class: "wf-track" },
      h("span", { class: "wf-bar", style: `left:${at(req)};width:${at(Math.max(0, end - req))}`,
        title: `${s.point}: request first byte +${us(req)}, response first byte ${respFirst === null ? "none" : `+${us(respFirst)}`}, last byte +${us(end)}` }),
      last && s.response_last_ns !== "0" ? h("span", { class: "wf-server", style: `left:${at(req)};width:${at(end - req)}`, title: `server ${us(end - req)}` }) : "",
      h("span", { class: "wf-mark req", style: `left:${at(req)}`, title: `request first byte +${us(req)}` }),
      respFirst !== null ? h("span", { class: "wf-mark resp", style: `left:${at(respFirst)}`, title: `response first byte +${us(respFirst)}` }) : "");
    const packets = h("button", { type: "button", class: "small", "aria-label": `packets at ${s.point}`, "data-point": s.point,
      onclick: () => go({ hop: s.point }, true) }, "packets");
    return h("div", { class: `wf-row${last ? " last" : ""}`, role: "row", "data-point": s.point, "data-req-us": req,
      "data-resp-us": respFirst ?? "", "data-req-link-us": l ? l.reqUs : "", "data-resp-link-us": l ? l.respUs : "" },
    h("div", { class: "wf-label", role: "rowheader" }, h("b", {}, s.point), h("small", {}, `${s.hop_kind} · ${s.host} · ${s.orig_h}:${s.orig_p} → ${s.resp_h}:${s.resp_p}`)),
    h("div", { role: "cell", class: "wf-cell" }, track, h("small", { class: "wf-times" }, `req +${us(req)}`, respFirst !== null ? ` · resp +${us(respFirst)}` : "", last && s.response_last_ns !== "0" ? ` · server ${us(end - req)}` : "")),
    h("div", { class: "wf-link", role: "cell" }, l ? linkCell(l, p50.get(linkKey(l.from.point, l.to.point)), i) : h("small", { class: "muted" }, "origin")),
    h("div", { class: "wf-act", role: "cell" }, packets));
  });
  box.append(h("div", { class: "wf", role: "table", "aria-label": "hops on one time axis" }, axis, ...rows));
}

export const forgetTrace = (): void => { shown = ""; };
