// hopscope trace lookup: lists traces, shows one trace's hop path, per-link latency and loss.
"use strict";
// A server with a token file answers /api with 401 until the page sends a token: the page then asks for
// one, keeps it in sessionStorage (this tab only, gone when it closes) and sends it as a bearer token.
const TOKEN_KEY = "hopscope.token";
class AuthRequired extends Error {}
const api = (path) => {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return fetch(path, { headers: token ? { Authorization: `Bearer ${token}` } : {} }).then(async (r) => {
    if (r.status === 401) { askToken(token ? "the token was not accepted" : ""); throw new AuthRequired(); }
    if (!r.ok) throw new Error(`${r.status}: ${(await r.json()).error?.message ?? r.statusText}`);
    return r.json();
  });
};
const $ = (sel) => document.querySelector(sel);
const text = (tag, content, cls) => { const e = document.createElement(tag); e.textContent = content; if (cls) e.className = cls; return e; };
const us = (v) => v === null || v === undefined ? "" : (Math.abs(v) >= 1000 ? `${(v / 1000).toFixed(2)} ms` : `${v} µs`);
// ns times are decimal strings (64 bits): BigInt keeps them exact; the ms part becomes a Date.
const when = (ns) => new Date(Number(BigInt(ns) / 1000000n)).toISOString().replace("T", " ").replace("Z", "");

function showError(err) {
  if (err instanceof AuthRequired) return;  // the token form says it
  const e = $("#error"); e.hidden = !err; e.textContent = err ? String(err.message ?? err) : "";
}

function askToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("#login").hidden = false;
  $("#login-error").textContent = message;
}

function useToken(event) {
  event.preventDefault();
  const token = $("#token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#token").value = "";
  $("#login").hidden = true;
  loadAll();
}

async function listTraces(event) {
  if (event) event.preventDefault();
  showError(null);
  const params = new URLSearchParams({ limit: "200" });
  const q = $("#q").value.trim();
  if (/^[0-9a-f]{32}$/.test(q)) return showTrace(q);
  if (q) params.set("q", q);
  const f = $("#filter").value;
  if (f === "error") params.set("error", "1");
  if (f === "slow") params.set("order", "slowest");
  if (f === "loss") params.set("min_lost_pkts", "1");
  try {
    const data = await api(`api/v1/traces?${params}`);
    const body = $("#traces tbody");
    body.replaceChildren();
    for (const t of data.traces) {
      const tr = document.createElement("tr");
      tr.className = "clickable";
      tr.onclick = () => showTrace(t.trace_id);
      const req = t.kind === "l7" ? `${t.method || t.l7_proto} ${t.http_host}${t.path || t.dns_qname}` : `L4 ${t.client_h}:${t.client_p} → ${t.server_h}:${t.server_p}`;
      const start = text("td", when(t.start_ns));
      start.title = `${t.start_ns} ns`;  // ids and ns times arrive as strings: exact, never rounded to a double
      tr.append(start, text("td", req), text("td", t.status || "", t.error ? "err" : ""),
        text("td", us(t.duration_us), "num"), text("td", t.hop_count, "num"),
        text("td", t.slowest_link ? `${t.slowest_link} (${us(t.slowest_link_us)})` : ""),
        text("td", t.lost_pkts ? `${t.lost_pkts} on ${t.loss_link}` : "", t.lost_pkts ? "err" : ""));
      body.append(tr);
    }
    $("#count").textContent = `(${data.traces.length})`;
  } catch (err) { showError(err); }
}

async function showTrace(id) {
  showError(null);
  try {
    const { trace: t, spans } = await api(`api/v1/traces/${id}`);
    $("#detail-section").hidden = false;
    $("#detail-title").textContent = t.kind === "l7" ? `${t.method} ${t.http_host}${t.path || t.dns_qname} → ${t.status}` : `L4 connection ${t.client_h}:${t.client_p}`;
    $("#detail-meta").textContent = `trace ${t.trace_id} · ${when(t.start_ns)} · ${us(t.duration_us)} · x-request-id ${t.x_request_id || "none"} · lowest link confidence ${t.min_confidence.toFixed(2)}`;
    const path = $("#path");
    path.replaceChildren();
    spans.forEach((s, i) => {
      if (i > 0) {
        const link = text("div", `→ ${us(s.req_link_us)}\n← ${us(s.resp_link_us)}`, "link");
        if (s.lost_pkts) link.classList.add("loss");
        if (`${spans[i - 1].point}>${s.point}` === t.slowest_link) link.classList.add("slow");
        link.style.whiteSpace = "pre";
        path.append(link);
      }
      const hop = text("div", s.point, "hop");
      hop.append(text("small", `${s.hop_kind} · ${s.host}`));
      path.append(hop);
    });
    const body = $("#hops tbody");
    body.replaceChildren();
    const t0 = spans.length ? Number(BigInt(spans[0].request_first_ns) / 1000n) : 0;
    for (const s of spans) {
      const tr = document.createElement("tr");
      tr.append(text("td", s.hop_index, "num"), text("td", s.point), text("td", s.hop_kind),
        text("td", `${s.orig_h}:${s.orig_p} → ${s.resp_h}:${s.resp_p}`),
        text("td", `+${us(Number(BigInt(s.request_first_ns) / 1000n) - t0)}`, "num"),
        text("td", us(s.req_link_us), "num"), text("td", us(s.resp_link_us), "num"),
        text("td", s.lost_pkts || "", s.lost_pkts ? "err" : ""),
        text("td", `${s.link_reason} (${s.link_confidence.toFixed(2)})`));
      body.append(tr);
    }
    drawWaterfall(spans);
    drawTraceGraph(id);
    $("#detail-section").scrollIntoView();
  } catch (err) { showError(err); }
}

function drawWaterfall(spans) {
  const box = $("#waterfall");
  box.replaceChildren();
  const starts = spans.map((s) => Number(BigInt(s.request_first_ns) / 1000n));
  const ends = spans.map((s, i) => s.response_last_ns !== "0" ? Number(BigInt(s.response_last_ns) / 1000n) : starts[i]);
  const lo = Math.min(...starts), hi = Math.max(...ends, lo + 1);
  spans.forEach((s, i) => {
    const row = document.createElement("div"); row.className = "bar-row";
    const track = document.createElement("div"); track.className = "bar-track";
    const bar = document.createElement("div"); bar.className = "bar";
    bar.style.left = `${(100 * (starts[i] - lo)) / (hi - lo)}%`;
    bar.style.width = `${Math.max(0.5, (100 * (ends[i] - starts[i])) / (hi - lo))}%`;
    bar.title = `${s.point}: ${us(ends[i] - starts[i])} from request to response end`;
    track.append(bar);
    row.append(text("div", s.point, "bar-label"), track);
    box.append(row);
  });
}

// --- topology views: layered SVG drawings of node-link graphs from /api/v1/topology ---------------
const SVG_NS = "http://www.w3.org/2000/svg";
const svgEl = (tag, attrs, content) => {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (content !== undefined) e.textContent = content;
  return e;
};
const GEOM = { nodeW: 150, nodeH: 40, rowH: 72, pad: 24 };

// Columns from the server's `layer`; rows ordered by the mean row of each node's predecessors.
function layout(graph, colW) {
  const cols = new Map(), pos = new Map(), preds = new Map();
  for (const l of graph.links) { if (!preds.has(l.target)) preds.set(l.target, []); preds.get(l.target).push(l.source); }
  for (const n of graph.nodes) { if (!cols.has(n.layer)) cols.set(n.layer, []); cols.get(n.layer).push(n); }
  const layers = [...cols.keys()].sort((a, b) => a - b);
  const rows = Math.max(1, ...[...cols.values()].map((c) => c.length));
  for (const layer of layers) {
    const col = cols.get(layer);
    const key = (n) => { const ps = (preds.get(n.id) || []).filter((p) => pos.has(p)); return ps.length ? ps.reduce((a, p) => a + pos.get(p).row, 0) / ps.length : 0; };
    col.sort((a, b) => key(a) - key(b) || String(a.id).localeCompare(String(b.id)));
    const offset = (rows - col.length) / 2;
    col.forEach((n, i) => pos.set(n.id, { row: i + offset, x: GEOM.pad + layer * colW, y: GEOM.pad + (i + offset) * GEOM.rowH }));
  }
  const width = GEOM.pad * 2 + (Math.max(0, ...layers) * colW) + GEOM.nodeW;
  return { pos, width, height: GEOM.pad * 2 + (rows - 1) * GEOM.rowH + GEOM.nodeH + 16 };
}

const bezier = (t, p0, p1, p2, p3) => (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3 * p3;

// An edge from a's right side to b's left side. The label of b's only incoming edge sits above the
// middle of the curve; the labels of several edges into b are stacked (the k-th of n) near b.
function drawEdge(svg, markerId, a, b, k, n, label, cls, title) {
  const x1 = a.x + GEOM.nodeW, y1 = a.y + GEOM.nodeH / 2, x2 = b.x, y2 = b.y + GEOM.nodeH / 2;
  const lines = Array.isArray(label) ? label : [label];
  let d, mx, my;
  if (x2 > x1) {
    const c = (x2 - x1) / 2;
    d = `M${x1},${y1} C${x1 + c},${y1} ${x2 - c},${y2} ${x2},${y2}`;
    mx = bezier(n > 1 ? 0.72 : 0.5, x1, x1 + c, x2 - c, x2);
    my = n > 1 ? y2 + 13 * lines.length / 2 + (k - (n - 1) / 2) * (13 * lines.length + 3) : (y1 + y2) / 2;
  } else {  // a link backwards or within a column: loop below the nodes
    const low = Math.max(y1, y2) + GEOM.nodeH;
    d = `M${x1},${y1} C${x1 + 60},${low} ${x2 - 60},${low} ${x2},${y2}`;
    mx = (x1 + x2) / 2; my = low - 8;
  }
  const g = svgEl("g", { class: `edge ${cls}`.trim() });
  g.append(svgEl("title", {}, title), svgEl("path", { d, "marker-end": `url(#${markerId})` }));
  const caption = svgEl("text", { x: mx, y: my - 4 - 13 * (lines.length - 1), "text-anchor": "middle", class: "edge-label" });
  lines.forEach((line, i) => caption.append(svgEl("tspan", { x: mx, dy: i ? 13 : 0 }, line)));
  g.append(caption);
  svg.append(g);
}

function drawNode(svg, p, n, lines) {
  const g = svgEl("g", { class: `node kind-${n.kind || n.hop_kind || "other"}`, "data-id": n.id });
  g.append(svgEl("title", {}, `${n.id}\n${lines.slice(1).join("\n")}`));
  g.append(svgEl("rect", { x: p.x, y: p.y, width: GEOM.nodeW, height: GEOM.nodeH, rx: 5 }));
  g.append(svgEl("text", { x: p.x + GEOM.nodeW / 2, y: p.y + 16, "text-anchor": "middle", class: "node-name" }, lines[0]));
  g.append(svgEl("text", { x: p.x + GEOM.nodeW / 2, y: p.y + 31, "text-anchor": "middle", class: "node-sub" }, lines[1] || ""));
  svg.append(g);
}

// Draws a node-link graph into `box`: nodeLines(n) -> [name, subtitle]; edgeInfo(l) -> {label, cls, title}.
function drawLayered(box, graph, nodeLines, edgeInfo, gap = 120) {
  box.replaceChildren();
  if (!graph.nodes.length) { box.append(text("p", "nothing to draw yet", "help")); return; }
  const { pos, width, height } = layout(graph, GEOM.nodeW + gap);
  const svg = svgEl("svg", { id: `${box.id}-svg`, class: "topology", width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  const markerId = `${box.id}-arrow`;
  const marker = svgEl("marker", { id: markerId, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" });
  marker.append(svgEl("path", { d: "M0,0 L10,5 L0,10 z" }));
  const defs = svgEl("defs"); defs.append(marker); svg.append(defs);
  const into = new Map();
  for (const l of graph.links) { if (!into.has(l.target)) into.set(l.target, []); into.get(l.target).push(l); }
  for (const links of into.values()) {
    links.sort((p, q) => pos.get(p.source).y - pos.get(q.source).y);
    links.forEach((l, k) => {
      const e = edgeInfo(l);
      drawEdge(svg, markerId, pos.get(l.source), pos.get(l.target), k, links.length, e.label, e.cls, e.title);
    });
  }
  for (const n of graph.nodes) drawNode(svg, pos.get(n.id), n, nodeLines(n));
  box.append(svg);
}

const pointLines = (n) => [n.id, `${n.hop_kind || "?"} · ${n.host}`];

async function loadTopology() {
  const params = new URLSearchParams({ limit: "1000" });
  try {
    const points = await api(`api/v1/topology/points?${params}`);
    $("#points-meta").textContent = `(${points.graph.traces} traces, ${points.nodes.length} capture points)`;
    drawLayered($("#points-graph"), points, (n) => [n.id, `${n.hop_kind || "?"} · ${n.host} · ${n.traces}`], (l) => ({
      label: [`→ ${us(l.req_p50_us)}  ← ${us(l.resp_p50_us)}`, `${l.traces} traces${l.lost_pkts ? ` · loss ${l.lost_pkts}` : ""}`],
      cls: l.lost_pkts ? "loss" : "",
      title: `${l.source} → ${l.target}: ${l.traces} traces\nrequest p50/p90/p99 ${us(l.req_p50_us)} / ${us(l.req_p90_us)} / ${us(l.req_p99_us)}\nresponse p50/p90/p99 ${us(l.resp_p50_us)} / ${us(l.resp_p90_us)} / ${us(l.resp_p99_us)}\nlost ${l.lost_pkts} in ${l.loss_traces} traces\n${Object.entries(l.reasons).map(([r, c]) => `${r} ×${c}`).join(", ")}`,
    }));
    const services = await api(`api/v1/topology/services?${params}`);
    $("#services-meta").textContent = `(${services.graph.traces} traces over ${services.graph.window_s.toFixed(3)} s)`;
    drawLayered($("#services-graph"), services, (n) => [n.label, n.kind === "pod" && n.node ? `pod · ${n.node}` : n.kind], (l) => ({
      label: [`${l.requests} req${l.errors ? ` · ${l.errors} err` : ""}`, `p50 ${us(l.latency_p50_us)}`],
      cls: l.errors ? "err" : "",
      title: `${l.source} → ${l.target}: ${l.requests} requests (${l.rate_per_s}/s), ${l.errors} errors\nlatency p50/p90/p99 ${us(l.latency_p50_us)} / ${us(l.latency_p90_us)} / ${us(l.latency_p99_us)}\n${l.protocols.join(", ")}`,
    }), 300);
  } catch (err) { showError(err); }
}

async function drawTraceGraph(id) {
  try {
    const g = await api(`api/v1/topology/traces/${id}`);
    drawLayered($("#trace-graph"), g, pointLines, (l) => ({
      label: [`→ ${us(l.req_link_us)}  ← ${us(l.resp_link_us)}`, l.lost_pkts ? `loss ${l.lost_pkts}` : l.link_reason],
      cls: [l.lost_pkts ? "loss" : "", l.slowest ? "slow" : ""].join(" "),
      title: `${l.source} → ${l.target}: ${l.link_reason} (${l.link_confidence})`,
    }));
  } catch (err) { showError(err); }
}

function loadAll() {
  const initial = new URLSearchParams(location.search).get("trace");
  listTraces();
  if (initial) showTrace(initial);
  loadTopology();
}

$("#search").addEventListener("submit", listTraces);
$("#login").addEventListener("submit", useToken);
loadAll();
