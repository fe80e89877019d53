// hopscope trace lookup: lists traces, shows one trace's hop path, per-link latency and loss.
"use strict";
const api = (path) => fetch(path).then(async (r) => {
  if (!r.ok) throw new Error(`${r.status}: ${(await r.json()).detail ?? r.statusText}`);
  return r.json();
});
const $ = (sel) => document.querySelector(sel);
const text = (tag, content, cls) => { const e = document.createElement(tag); e.textContent = content; if (cls) e.className = cls; return e; };
const us = (v) => v === null || v === undefined ? "" : (Math.abs(v) >= 1000 ? `${(v / 1000).toFixed(2)} ms` : `${v} µs`);
const when = (ns) => new Date(Number(BigInt(ns) / 1000000n)).toISOString().replace("T", " ").replace("Z", "");

function showError(err) { const e = $("#error"); e.hidden = !err; e.textContent = err ? String(err.message ?? err) : ""; }

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
      tr.append(text("td", when(t.start_ns)), text("td", req), text("td", t.status || "", t.error ? "err" : ""),
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
    $("#detail-section").scrollIntoView();
  } catch (err) { showError(err); }
}

function drawWaterfall(spans) {
  const box = $("#waterfall");
  box.replaceChildren();
  const starts = spans.map((s) => Number(BigInt(s.request_first_ns) / 1000n));
  const ends = spans.map((s, i) => s.response_last_ns !== "0" && s.response_last_ns !== 0 ? Number(BigInt(s.response_last_ns) / 1000n) : starts[i]);
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

$("#search").addEventListener("submit", listTraces);
const initial = new URLSearchParams(location.search).get("trace");
if (initial) showTrace(initial); else listTraces();
