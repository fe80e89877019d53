// The topology view: the capture-point topology and the service map, laid out by dagre (ranks left to
// right, edge labels placed as graph elements so they do not overlap nodes or each other). Edges are
// coloured by health; selecting one (click, or Tab then Enter) lists the traces that crossed it.
import dagre from "@dagrejs/dagre";
import { api, type Graph, type PointLink, type PointNode, type ServiceLink, type ServiceNode } from "./api";
import { $, activate, h, s } from "./dom";
import { showError } from "./errors";
import { go } from "./nav";
import { rangeParams, type State } from "./state";
import { us } from "./time";

const CHAR_W = 6.6, LINE_H = 14;

interface Drawn { id: string; lines: string[]; cls: string; title: string }
interface DrawnEdge { source: string; target: string; lines: string[]; cls: string; title: string; label: string; open: () => void }

const textWidth = (lines: string[]) => Math.max(...lines.map((l) => l.length)) * CHAR_W;

function draw(box: HTMLElement, nodes: Drawn[], edges: DrawnEdge[]): void {
  box.replaceChildren();
  if (!nodes.length) { box.append(h("p", { class: "help" }, "nothing to draw for this range")); return; }
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: "LR", nodesep: 28, ranksep: 70, edgesep: 16, marginx: 16, marginy: 16 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const n of nodes) g.setNode(n.id, { width: Math.max(120, textWidth(n.lines) * 1.15 + 20), height: n.lines.length * LINE_H + 14 });
  for (const e of edges) g.setEdge(e.source, e.target, { width: textWidth(e.lines) + 8, height: e.lines.length * LINE_H + 4, labelpos: "c" });
  dagre.layout(g);
  const { width = 400, height = 200 } = g.graph();
  const markerId = `${box.id}-arrow`;
  const svg = s("svg", { id: `${box.id}-svg`, class: "topology", width: Math.ceil(width), height: Math.ceil(height),
    viewBox: `0 0 ${Math.ceil(width)} ${Math.ceil(height)}`, role: "group", "aria-label": box.dataset.label ?? "graph" },
  s("defs", {}, s("marker", { id: markerId, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
    s("path", { d: "M0,0 L10,5 L0,10 z" }))));
  // the edges first, then their labels over every edge (a label is never crossed by another edge)
  const labels = s("g", { class: "labels" });
  for (const e of edges) {
    const at = g.edge(e.source, e.target);
    const pts: { x: number; y: number }[] = at.points ?? [];
    const d = pts.map((p, i) => `${i ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(" ");
    const x = at.x ?? 0, y = (at.y ?? 0) - ((e.lines.length - 1) * LINE_H) / 2 + 4;
    const edge = s("g", { class: `edge ${e.cls}`.trim(), tabindex: 0, role: "link", "aria-label": e.label, "data-source": e.source, "data-target": e.target },
      s("title", {}, e.title), s("path", { d, "marker-end": `url(#${markerId})` }));
    const label = s("g", { class: `edge-label-box ${e.cls}`.trim(), "data-source": e.source, "data-target": e.target },
      s("title", {}, e.title),
      s("rect", { x: x - (at.width ?? 0) / 2, y: (at.y ?? 0) - (at.height ?? 0) / 2, width: at.width ?? 0, height: at.height ?? 0, rx: 3, class: "label-bg" }),
      s("text", { x, y, "text-anchor": "middle", class: "edge-label" }, ...e.lines.map((line, i) => s("tspan", { x, dy: i ? LINE_H : 0 }, line))));
    activate(edge, e.open);
    label.addEventListener("click", e.open);
    edge.addEventListener("focus", () => label.classList.add("focus"));
    edge.addEventListener("blur", () => label.classList.remove("focus"));
    svg.append(edge);
    labels.append(label);
  }
  svg.append(labels);
  for (const n of nodes) {
    const at = g.node(n.id);
    const w = at.width, ht = at.height, x = at.x - w / 2, y = at.y - ht / 2;
    svg.append(s("g", { class: `node ${n.cls}`, "data-id": n.id },
      s("title", {}, n.title),
      s("rect", { x, y, width: w, height: ht, rx: 5 }),
      ...n.lines.map((line, i) => s("text", { x: at.x, y: y + 17 + i * LINE_H, "text-anchor": "middle", class: i ? "node-sub" : "node-name" }, line))));
  }
  box.append(svg);
}

const health = (errorRate: number) => (errorRate >= 0.05 ? "bad" : errorRate > 0 ? "warn" : "ok");

export async function renderTopology(st: State): Promise<void> {
  const params = rangeParams(st);
  params.set("limit", "1000");
  try {
    const [points, services] = await Promise.all([
      api<Graph<PointNode, PointLink>>(`api/v1/topology/points?${params}`),
      api<Graph<ServiceNode, ServiceLink>>(`api/v1/topology/services?${params}`),
    ]);
    $("#points-meta").textContent = `(${points.graph.traces} traces, ${points.nodes.length} capture points)`;
    draw($("#points-graph"), points.nodes.map((n) => ({
      id: n.id, lines: [n.id, `${n.hop_kind || "?"} · ${n.host} · ${n.traces}`], cls: `kind-${n.hop_kind || "other"}`,
      title: `${n.id}\n${n.hop_kind} on ${n.host}, ${n.traces} traces`,
    })), points.links.map((l) => ({
      source: l.source, target: l.target, cls: `${l.lost_pkts ? "loss bad" : "ok"}`,
      lines: [`→ ${us(l.req_p50_us)}  ← ${us(l.resp_p50_us)}`, `${l.traces} traces${l.lost_pkts ? ` · loss ${l.lost_pkts}` : ""}`],
      label: `link ${l.source} to ${l.target}: ${l.traces} traces, request p50 ${us(l.req_p50_us)}${l.lost_pkts ? `, ${l.lost_pkts} lost` : ""}; list its traces`,
      title: `${l.source} → ${l.target}: ${l.traces} traces\nrequest p50/p90/p99 ${us(l.req_p50_us)} / ${us(l.req_p90_us)} / ${us(l.req_p99_us)}\nresponse p50/p90/p99 ${us(l.resp_p50_us)} / ${us(l.resp_p90_us)} / ${us(l.resp_p99_us)}\nlost ${l.lost_pkts} in ${l.loss_traces} traces\n${Object.entries(l.reasons).map(([r, c]) => `${r} ×${c}`).join(", ")}`,
      open: () => go({ view: "search", filters: { link: `${l.source}>${l.target}` }, entity: [], offset: 0 }),
    })));
    $("#services-meta").textContent = `(${services.graph.traces} traces over ${Number(services.graph.window_s).toFixed(3)} s)`;
    draw($("#services-graph"), services.nodes.map((n) => ({
      id: n.id, lines: [n.label, n.kind === "pod" && n.node ? `pod · ${n.node}` : n.kind], cls: `kind-${n.kind}`, title: n.id,
    })), services.links.map((l) => ({
      source: l.source, target: l.target, cls: health(l.error_rate),
      lines: [`${l.rate_per_s ?? "–"}/s · ${(100 * l.error_rate).toFixed(1)}% err`, `p50 ${us(l.latency_p50_us)} · p99 ${us(l.latency_p99_us)}`],
      label: `${l.source} to ${l.target}: ${l.requests} requests, ${l.errors} errors; list its traces`,
      title: `${l.source} → ${l.target}: ${l.requests} requests (${l.rate_per_s ?? "–"}/s), ${l.errors} errors (${(100 * l.error_rate).toFixed(1)}%)\nlatency p50/p90/p99 ${us(l.latency_p50_us)} / ${us(l.latency_p90_us)} / ${us(l.latency_p99_us)}\n${l.protocols.join(", ")}`,
      open: () => go({ view: "search", filters: {}, entity: [l.source, l.target], offset: 0 }),
    })));
  } catch (err) { showError(err); }
}
