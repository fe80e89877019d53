// hopscope trace lookup: search (filters, time range, scatter, pages), one trace's waterfall and hop
// packets, two traces compared, and the topology. The state is the URL (nav.ts, state.ts).
import { setOnAuth, useToken } from "./api";
import { renderCompare, wireCompare } from "./compare";
import { $ } from "./dom";
import { showError } from "./errors";
import { fromLocation, go, setRender, state } from "./nav";
import { loadChoices, renderSearch, wireSearch } from "./search";
import { type State, VIEWS } from "./state";
import { fromLocalInput, nowNs, PRESETS, toLocalInput, ZONE } from "./time";
import { renderTopology } from "./topology";
import { renderTrace } from "./trace";

function showRange(st: State): void {
  $<HTMLSelectElement>("#range").value = st.range;
  $("#abs-range").hidden = st.range !== "abs";
  const start = $<HTMLInputElement>("#start"), end = $<HTMLInputElement>("#end");
  start.value = st.start ? toLocalInput(st.start) : "";
  end.value = st.end ? toLocalInput(st.end) : "";
  start.title = st.start ? `${st.start} ns` : "";
  end.title = st.end ? `${st.end} ns` : "";
  $("#zone").textContent = `times in ${ZONE}`;
}

function wireRange(): void {
  $("#range").addEventListener("change", () => {
    const range = $<HTMLSelectElement>("#range").value;
    if (range === "abs") {
      // start from what the range showed: the preset's window, or the last hour
      const st = state();
      const end = nowNs();
      const len = PRESETS[st.range]?.[1] ?? PRESETS["1h"][1];
      go({ range, start: st.start || String(end - len), end: st.end || String(end), offset: 0 });
    } else go({ range, offset: 0 });
  });
  for (const id of ["start", "end"] as const) {
    $(`#${id}`).addEventListener("change", () => {
      const v = fromLocalInput($<HTMLInputElement>(`#${id}`).value);
      if (v !== null) go({ [id]: String(v), offset: 0 } as Partial<State>);
    });
  }
}

function render(st: State): void {
  showError(null);
  showRange(st);
  for (const v of VIEWS) {
    $(`#view-${v}`).hidden = v !== st.view;
    const tab = $(`#tab-${v}`);
    if (v === st.view) tab.setAttribute("aria-current", "page"); else tab.removeAttribute("aria-current");
  }
  document.title = `hopscope: ${st.view}${st.view === "trace" && st.trace ? ` ${st.trace.slice(0, 8)}` : ""}`;
  if (st.view === "search") { void loadChoices(); void renderSearch(st); }
  if (st.view === "trace") void renderTrace(st);
  if (st.view === "compare") void renderCompare(st);
  if (st.view === "topology") void renderTopology(st);
}

for (const v of VIEWS) {
  $(`#tab-${v}`).addEventListener("click", (ev) => { ev.preventDefault(); go({ view: v }); });
}
$("#login").addEventListener("submit", useToken);
setOnAuth(() => render(state()));
setRender(render);
wireSearch(state);
wireCompare();
wireRange();
window.addEventListener("popstate", fromLocation);
render(state());
