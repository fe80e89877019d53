// The whole UI state lives in the URL's query string, so every view can be shared and reloaded:
// ?view=search&range=1h&status_class=5xx&order=slowest ..., ?view=trace&trace=ID&hop=POINT,
// ?view=compare&a=ID&b=ID, ?view=topology&range=... . Times stay decimal ns strings.
import { nowNs, PRESETS } from "./time";

export type View = "search" | "trace" | "compare" | "topology";
export const VIEWS: View[] = ["search", "trace", "compare", "topology"];

/** The search filters the API takes as they are (text fields and selects). */
export const FILTERS = [
  "q", "http_host", "method", "path_contains", "status_class", "min_duration_us", "max_duration_us", "error",
  "min_lost_pkts", "x_request_id", "traceparent", "client_h", "point", "hop_kind", "link", "kind",
] as const;
export type FilterName = (typeof FILTERS)[number];

export interface State {
  view: View;
  range: string; // "all", a PRESETS key, or "abs" (start/end)
  start: string; // ns (range=abs)
  end: string;
  filters: Partial<Record<FilterName, string>>;
  entity: string[];
  order: string; // time_desc | time | slowest
  limit: number;
  offset: number;
  trace: string;
  hop: string; // the capture point whose packets the trace view shows
  a: string; // compare
  b: string;
}

export const LIMITS = [20, 50, 100, 200];
const DIGITS = /^[0-9]{1,19}$/;
const TRACE_ID = /^[0-9a-f]{32}$/;

export function parseState(search: string): State {
  const p = new URLSearchParams(search);
  const filters: State["filters"] = {};
  for (const f of FILTERS) {
    const v = p.get(f);
    if (v) filters[f] = v;
  }
  const trace = TRACE_ID.test(p.get("trace") ?? "") ? p.get("trace")! : "";
  const viewParam = p.get("view") as View | null;
  const view: View = viewParam && VIEWS.includes(viewParam) ? viewParam : trace ? "trace" : "search";
  const range = p.get("range") ?? "all";
  const limit = Number(p.get("limit") ?? 50);
  const offset = Number(p.get("offset") ?? 0);
  return {
    view,
    range: range === "abs" || range in PRESETS ? range : "all",
    start: DIGITS.test(p.get("start") ?? "") ? p.get("start")! : "",
    end: DIGITS.test(p.get("end") ?? "") ? p.get("end")! : "",
    filters,
    entity: p.getAll("entity").filter((e) => e),
    order: ["time", "time_desc", "slowest"].includes(p.get("order") ?? "") ? p.get("order")! : "time_desc",
    limit: LIMITS.includes(limit) ? limit : 50,
    offset: Number.isInteger(offset) && offset >= 0 ? offset : 0,
    trace,
    hop: p.get("hop") ?? "",
    a: TRACE_ID.test(p.get("a") ?? "") ? p.get("a")! : "",
    b: TRACE_ID.test(p.get("b") ?? "") ? p.get("b")! : "",
  };
}

export function stateQuery(st: State): string {
  const p = new URLSearchParams();
  p.set("view", st.view);
  if (st.range !== "all") p.set("range", st.range);
  if (st.range === "abs") { if (st.start) p.set("start", st.start); if (st.end) p.set("end", st.end); }
  for (const f of FILTERS) if (st.filters[f]) p.set(f, st.filters[f]!);
  for (const e of st.entity) p.append("entity", e);
  if (st.order !== "time_desc") p.set("order", st.order);
  if (st.limit !== 50) p.set("limit", String(st.limit));
  if (st.offset) p.set("offset", String(st.offset));
  if (st.trace) p.set("trace", st.trace);
  if (st.hop) p.set("hop", st.hop);
  if (st.a) p.set("a", st.a);
  if (st.b) p.set("b", st.b);
  return `?${p}`;
}

/** The range as API parameters (start_ns, end_ns); relative presets end now. */
export function rangeParams(st: State): URLSearchParams {
  const p = new URLSearchParams();
  if (st.range in PRESETS) {
    const end = nowNs();
    p.set("start_ns", String(end - PRESETS[st.range][1]));
    p.set("end_ns", String(end));
  } else if (st.range === "abs") {
    if (st.start) p.set("start_ns", st.start);
    if (st.end) p.set("end_ns", st.end);
  }
  return p;
}

/** The API query of a search state: range, filters, entities, order and page. */
export function searchParams(st: State): URLSearchParams {
  const p = rangeParams(st);
  for (const f of FILTERS) if (st.filters[f]) p.set(f, st.filters[f]!);
  for (const e of st.entity) p.append("entity", e);
  p.set("order", st.order);
  p.set("limit", String(st.limit));
  if (st.offset) p.set("offset", String(st.offset));
  return p;
}
