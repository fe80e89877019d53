// The search view: the form (its fields are the URL's state), the duration-over-time scatter of the
// traces found, the result table with its pages, and picking two traces to compare.
import { api, type Entity, type Graph, type PointLink, type PointNode, type Trace } from "./api";
import { $, activate, h, s } from "./dom";
import { showError } from "./errors";
import { go, href } from "./nav";
import { FILTERS, type FilterName, type State, searchParams } from "./state";
import { us, usBetween, when } from "./time";

const TEXT_FIELDS: FilterName[] = [
  "q", "http_host", "method", "path_contains", "status_class", "error", "x_request_id", "traceparent", "client_h",
  "point", "hop_kind", "kind",
];
const picked = new Set<string>();
let lastPage: Trace[] = [];

const IDS: Record<string, string> = { error: "outcome" }; // a form field whose id is not its filter's name
const field = <T extends HTMLInputElement | HTMLSelectElement = HTMLInputElement>(name: string): T => $<T>(`#${IDS[name] ?? name}`);

/** Microseconds from a "ms" text field ("" when blank or not a number). */
function msToUs(text: string): string {
  const v = Number(text.trim());
  return text.trim() && Number.isFinite(v) && v >= 0 ? String(Math.round(v * 1000)) : "";
}
const usToMs = (text: string | undefined): string => (text ? String(Number(text) / 1000) : "");

/** The form shows the state. */
export function fillForm(st: State): void {
  for (const f of TEXT_FIELDS) field(f).value = st.filters[f] ?? "";
  field("min_ms").value = usToMs(st.filters.min_duration_us);
  field("max_ms").value = usToMs(st.filters.max_duration_us);
  field("loss").checked = st.filters.min_lost_pkts === "1";
  const entity = field<HTMLSelectElement>("entity");
  if (st.entity.length === 1 && ![...entity.options].some((o) => o.value === st.entity[0])) {
    entity.append(h("option", { value: st.entity[0] }, st.entity[0]));
  }
  entity.value = st.entity.length === 1 ? st.entity[0] : "";
  field("order").value = st.order;
  field("limit").value = String(st.limit);
  chips(st);
}

/** The filters the form cannot show (a link, several entities from the service map) as removable chips. */
function chips(st: State): void {
  const box = $("#chips");
  box.replaceChildren();
  const chip = (label: string, clear: Partial<State>) =>
    box.append(h("span", { class: "chip" }, label, " ",
      h("button", { type: "button", "aria-label": `remove filter ${label}`, onclick: () => go({ ...clear, offset: 0 }) }, "×")));
  if (st.filters.link) chip(`link ${st.filters.link.replace(">", " → ")}`, { filters: { ...st.filters, link: undefined } });
  if (st.entity.length > 1) chip(`crossed ${st.entity.join(" → ")}`, { entity: [] });
}

function readForm(st: State): Partial<State> {
  const filters: State["filters"] = { link: st.filters.link };
  for (const f of TEXT_FIELDS) {
    const v = field(f).value.trim();
    if (v) filters[f] = v;
  }
  const min = msToUs(field("min_ms").value), max = msToUs(field("max_ms").value);
  if (min) filters.min_duration_us = min;
  if (max) filters.max_duration_us = max;
  if (field("loss").checked) filters.min_lost_pkts = "1";
  const entity = field<HTMLSelectElement>("entity").value;
  return {
    filters, offset: 0, order: field("order").value, limit: Number(field("limit").value),
    entity: entity ? [entity] : st.entity.length > 1 ? st.entity : [],
  };
}

export function wireSearch(current: () => State): void {
  $("#search").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = field("q").value.trim();
    if (/^[0-9a-f]{32}$/.test(q)) { go({ view: "trace", trace: q, hop: "" }); return; }
    go({ ...readForm(current()), view: "search" });
  });
  $("#reset").addEventListener("click", () => go({ filters: {}, entity: [], offset: 0 }));
  $("#prev").addEventListener("click", () => go({ offset: Math.max(0, current().offset - current().limit) }));
  $("#next").addEventListener("click", () => go({ offset: current().offset + current().limit }));
  $("#compare-picked").addEventListener("click", () => {
    const [a, b] = [...picked];
    if (a && b) go({ view: "compare", a, b });
  });
}

let inventoryLoaded = false;
export async function loadChoices(): Promise<void> {
  if (inventoryLoaded) return;
  inventoryLoaded = true;
  try {
    const { entities } = await api<{ entities: Entity[] }>("api/v1/topology/inventory");
    const select = field<HTMLSelectElement>("entity");
    const groups = new Map<string, HTMLOptGroupElement>();
    for (const e of entities) {
      if (!groups.has(e.kind)) groups.set(e.kind, h("optgroup", { label: `${e.kind}s` }));
      groups.get(e.kind)!.append(h("option", { value: e.id }, `${e.label} (${e.kind})`));
    }
    const keep = select.value;
    select.append(...groups.values());
    select.value = keep;
    const points = await api<Graph<PointNode, PointLink>>("api/v1/topology/points?limit=1000");
    $("#points-list").replaceChildren(...points.nodes.map((n) => h("option", { value: n.id })));
  } catch (err) { inventoryLoaded = false; showError(err); }
}

const describe = (t: Trace): string =>
  t.kind === "l7" ? `${t.method || t.l7_proto} ${t.http_host}${t.path || t.dns_qname}`
    : `L4 ${t.client_h}:${t.client_p} → ${t.server_h}:${t.server_p}`;
export { describe };

export async function renderSearch(st: State): Promise<void> {
  fillForm(st);
  const body = $("#traces tbody");
  try {
    const data = await api<{ count: number; traces: Trace[] }>(`api/v1/traces?${searchParams(st)}`);
    lastPage = data.traces;
    body.replaceChildren(...data.traces.map((t) => row(t)));
    $("#count").textContent = `(${data.traces.length})`;
    $("#page-info").textContent = data.traces.length
      ? `rows ${st.offset + 1}–${st.offset + data.traces.length}` : st.offset ? "no more rows" : "nothing found";
    $<HTMLButtonElement>("#prev").disabled = st.offset === 0;
    $<HTMLButtonElement>("#next").disabled = data.traces.length < st.limit;
    scatter(data.traces);
    updatePicked();
  } catch (err) { showError(err); }
}

function row(t: Trace): HTMLTableRowElement {
  const box = h("input", { type: "checkbox", "aria-label": `pick trace ${t.trace_id} to compare`, checked: picked.has(t.trace_id) });
  box.addEventListener("change", () => { if (box.checked) picked.add(t.trace_id); else picked.delete(t.trace_id); updatePicked(); });
  const link = h("a", { href: href({ view: "trace", trace: t.trace_id, hop: "" }) }, describe(t));
  link.addEventListener("click", (ev) => { ev.preventDefault(); go({ view: "trace", trace: t.trace_id, hop: "" }); });
  return h("tr", { "data-trace": t.trace_id },
    h("td", {}, box),
    h("td", { title: `${t.start_ns} ns` }, when(t.start_ns, 6)),
    h("td", {}, link),
    h("td", { class: t.error ? "err" : "" }, t.status ? String(t.status) : t.error ? "failed" : ""),
    h("td", { class: "num" }, us(t.duration_us)),
    h("td", { class: "num" }, t.hop_count),
    h("td", {}, t.slowest_link ? `${t.slowest_link.replace(">", " → ")} (${us(t.slowest_link_us)})` : ""),
    h("td", { class: t.lost_pkts ? "err" : "" }, t.lost_pkts ? `${t.lost_pkts} on ${t.loss_link.replace(">", " → ")}` : ""),
  );
}

function updatePicked(): void {
  const button = $<HTMLButtonElement>("#compare-picked");
  button.disabled = picked.size !== 2;
  button.textContent = picked.size === 2 ? "Compare the 2 picked" : `Pick 2 traces to compare (${picked.size} picked)`;
}

/** Duration over start time, one dot per trace; Tab reaches the dots, Enter opens the trace. */
function scatter(traces: Trace[]): void {
  const box = $("#scatter");
  box.replaceChildren();
  if (!traces.length) { box.append(h("p", { class: "help" }, "no traces in this range")); return; }
  const W = 1180, H = 180, L = 64, B = 28, T = 8;
  const t0 = traces.reduce((m, t) => (BigInt(t.start_ns) < m ? BigInt(t.start_ns) : m), BigInt(traces[0].start_ns));
  const xs = traces.map((t) => usBetween(t0, t.start_ns));
  const span = Math.max(1, ...xs);
  const top = Math.max(1, ...traces.map((t) => t.duration_us));
  const x = (v: number) => L + ((W - L - 12) * v) / span;
  const y = (v: number) => T + (H - T - B) * (1 - v / top);
  const svg = s("svg", { id: "scatter-svg", viewBox: `0 0 ${W} ${H}`, width: "100%", role: "group",
    "aria-label": `${traces.length} traces: duration over start time` });
  svg.append(s("line", { x1: L, y1: H - B, x2: W - 12, y2: H - B, class: "axis" }),
    s("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  for (const f of [0, 0.5, 1]) {
    svg.append(s("text", { x: L - 6, y: y(top * f) + 4, "text-anchor": "end", class: "tick" }, us(Math.round(top * f))));
    svg.append(s("text", { x: x(span * f), y: H - 8, "text-anchor": f === 0 ? "start" : f === 1 ? "end" : "middle", class: "tick" },
      when(t0 + BigInt(Math.round(span * f)) * 1000n, 3)));
  }
  traces.forEach((t, i) => {
    const dot = s("circle", { cx: x(xs[i]), cy: y(t.duration_us), r: 5, class: `dot${t.error ? " err" : ""}`, tabindex: 0,
      role: "link", "data-trace": t.trace_id, "aria-label": `${describe(t)}, ${us(t.duration_us)}, at ${when(t.start_ns, 6)}` },
      s("title", {}, `${describe(t)}\n${us(t.duration_us)} at ${when(t.start_ns, 6)}`));
    activate(dot, () => go({ view: "trace", trace: t.trace_id, hop: "" }));
    svg.append(dot);
  });
  box.append(svg);
}

export const pageTraces = (): Trace[] => lastPage;
export const FILTER_NAMES = FILTERS;
