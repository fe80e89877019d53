// Two traces side by side: per hop (matched by capture point, else by position) the link latency each
// way and the time at the hop, with the difference B - A; large differences highlighted.
import { api, type Span, type Trace } from "./api";
import { $, h } from "./dom";
import { showError } from "./errors";
import { model, type Model } from "./model";
import { go, href } from "./nav";
import { describe } from "./search";
import type { State } from "./state";
import { us, usBetween } from "./time";

export function wireCompare(): void {
  $("#compare-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const a = $<HTMLInputElement>("#cmp-a").value.trim(), b = $<HTMLInputElement>("#cmp-b").value.trim();
    go({ view: "compare", a, b });
  });
}

/** A difference worth a look: more than 20% and more than 100 µs either way. */
const notable = (a: number, b: number) => Math.abs(b - a) > 100 && Math.abs(b - a) > 0.2 * Math.max(Math.abs(a), 1);

function delta(a: number | null, b: number | null): HTMLElement {
  if (a === null || b === null) return h("td", { class: "num muted" }, "–");
  const d = b - a;
  const cls = notable(a, b) ? (d > 0 ? "worse" : "better") : "";
  return h("td", { class: `num delta ${cls}`.trim(), "data-delta-us": d }, `${d > 0 ? "+" : ""}${us(d)}`);
}

const atHop = (s: Span | undefined): number | null =>
  s && s.response_last_ns !== "0" ? usBetween(s.request_first_ns, s.response_last_ns) : null;

export async function renderCompare(st: State): Promise<void> {
  $<HTMLInputElement>("#cmp-a").value = st.a;
  $<HTMLInputElement>("#cmp-b").value = st.b;
  const box = $("#compare");
  box.replaceChildren();
  if (!st.a || !st.b) { box.append(h("p", { class: "help" }, "Pick two traces in Search (the pick column), or paste two trace ids.")); return; }
  try {
    const [a, b] = await Promise.all([st.a, st.b].map(async (id) => {
      const r = await api<{ trace: Trace; spans: Span[] }>(`api/v1/traces/${id}`);
      return model(r.trace, r.spans);
    }));
    box.append(totals(a, b), hops(a, b));
  } catch (err) { showError(err); }
}

function totals(a: Model, b: Model): HTMLElement {
  const row = (name: string, x: number, y: number) => h("tr", {}, h("th", { scope: "row" }, name),
    h("td", { class: "num" }, us(x)), h("td", { class: "num" }, us(y)), delta(x, y));
  const title = (m: Model, tag: string) => h("a", { href: href({ view: "trace", trace: m.trace.trace_id, hop: "" }) }, `${tag}: ${describe(m.trace)} (${m.trace.status || "–"})`);
  return h("table", { id: "compare-totals", class: "compare" },
    h("caption", {}, title(a, "A"), " vs ", title(b, "B")),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, ""), h("th", { scope: "col" }, "A"), h("th", { scope: "col" }, "B"), h("th", { scope: "col" }, "B − A"))),
    h("tbody", {}, row("duration", a.totalUs, b.totalUs), row("network", a.networkUs, b.networkUs), row("server", a.serverUs, b.serverUs)));
}

function hops(a: Model, b: Model): HTMLElement {
  const names = new Set(a.spans.map((s) => s.point));
  const samePoints = b.spans.every((s) => names.has(s.point));
  const pairs: [Span | undefined, Span | undefined][] = [];
  if (samePoints) {
    const bBy = new Map(b.spans.map((s) => [s.point, s]));
    for (const s of a.spans) pairs.push([s, bBy.get(s.point)]);
  } else {
    for (let i = 0; i < Math.max(a.spans.length, b.spans.length); i++) pairs.push([a.spans[i], b.spans[i]]);
  }
  const v = (s: Span | undefined, f: (s: Span) => number) => (s && s.hop_index > 0 ? f(s) : null);
  const rows = pairs.map(([x, y]) => {
    const name = x && y && x.point !== y.point ? `${x.point} / ${y.point}` : (x ?? y)!.point;
    const cells = (f: (s: Span) => number) => {
      const p = v(x, f), q = v(y, f);
      return [h("td", { class: "num" }, p === null ? "" : us(p)), h("td", { class: "num" }, q === null ? "" : us(q)), delta(p, q)];
    };
    const ha = atHop(x), hb = atHop(y);
    return h("tr", { "data-point": name }, h("th", { scope: "row" }, name),
      ...cells((s) => s.req_link_us), ...cells((s) => s.resp_link_us),
      h("td", { class: "num" }, ha === null ? "" : us(ha)), h("td", { class: "num" }, hb === null ? "" : us(hb)), delta(ha, hb));
  });
  const cols = ["hop", "→ link A", "→ link B", "Δ", "← link A", "← link B", "Δ", "at hop A", "at hop B", "Δ"];
  return h("table", { id: "compare-hops", class: "compare" },
    h("caption", {}, `Per hop (${samePoints ? "matched by capture point" : "matched by position"}); Δ = B − A, red when B is notably slower, green when faster`),
    h("thead", {}, h("tr", {}, ...cols.map((c) => h("th", { scope: "col" }, c)))), h("tbody", {}, ...rows));
}
