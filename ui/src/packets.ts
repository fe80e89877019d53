// The packets of one hop: its TCP sequence view (times from the first packet, direction, relative
// sequence and acknowledgement numbers, flags, length, retransmissions) and the pcapng download.
import { ApiError, api, apiBlob, type PointPackets, token } from "./api";
import { $, h } from "./dom";
import { showError } from "./errors";
import { go } from "./nav";
import type { State } from "./state";
import { us, usBetween, when } from "./time";

export async function renderPackets(st: State): Promise<void> {
  const box = $("#packets");
  box.replaceChildren();
  if (!st.hop) return;
  const point = st.hop;
  const q = new URLSearchParams({ point });
  const pcap = `api/v1/traces/${st.trace}/pcap?${q}`;
  const head = h("h3", { id: "packets-title", tabindex: -1 }, `Packets at ${point}`);
  const close = h("button", { type: "button", class: "small", onclick: () => go({ hop: "" }, true) }, "close");
  box.append(head);
  try {
    const data = await api<{ trace_id: string; points: PointPackets[] }>(`api/v1/traces/${st.trace}/packets?${q}`);
    const download = h("a", { href: pcap, download: `${st.trace}-${point}.pcapng`, id: "pcap-link" }, "download pcapng");
    if (token()) download.addEventListener("click", (ev) => { ev.preventDefault(); void save(pcap, `${st.trace}-${point}.pcapng`); });
    box.append(h("p", {}, download, " ", close));
    for (const p of data.points) box.append(table(p));
  } catch (err) {
    if (err instanceof ApiError && (err.status === 404 || err.status === 403)) {
      box.append(h("p", { class: "muted", id: "packets-missing" },
        err.status === 404 ? "packets not available: " : "packets need a token with the pcap:read scope: ", err.message), close);
    } else showError(err);
  }
  head.focus();
}

async function save(path: string, name: string): Promise<void> {
  try {
    const url = URL.createObjectURL(await apiBlob(path));
    const a = h("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (err) { showError(err); }
}

function table(p: PointPackets): HTMLElement {
  if (!p.packets.length) return h("p", { class: "muted" }, `${p.point}: no packets`);
  const t0 = p.packets[0].ts_ns;
  // relative sequence numbers: from each direction's first sequence number (its SYN's when captured)
  const isn: Record<string, number> = {};
  for (const k of p.packets) if (!(k.dir in isn)) isn[k.dir] = k.seq;
  const rel = (v: number, base: number | undefined) => (base === undefined ? v : (v - base) >>> 0);
  const rows = p.packets.map((k) => h("tr", { class: k.retransmission ? "retrans" : "", "data-dir": k.dir },
    h("td", { class: "num", title: `${k.ts_ns} ns (${when(k.ts_ns)})` }, `+${us(usBetween(t0, k.ts_ns))}`),
    h("td", {}, k.dir === "c2s" ? "→" : "←", h("span", { class: "sr-only" }, k.dir === "c2s" ? " client to server" : " server to client")),
    h("td", {}, `${k.src}:${k.sport} → ${k.dst}:${k.dport}`),
    h("td", { class: "flags" }, k.flags),
    h("td", { class: "num", title: `raw ${k.seq}` }, rel(k.seq, isn[k.dir])),
    h("td", { class: "num", title: `raw ${k.ack}` }, k.flags.includes("A") ? rel(k.ack, isn[k.dir === "c2s" ? "s2c" : "c2s"]) : ""),
    h("td", { class: "num" }, k.len),
    h("td", { class: k.retransmission ? "err" : "" }, k.retransmission ? "retransmission" : "")));
  return h("table", { class: "packets", "data-point": p.point },
    h("caption", {}, `${p.point} (${p.hop_kind}): ${p.packets.length} packets; sequence numbers relative to each direction's first`),
    h("thead", {}, h("tr", {}, ...["time", "dir", "from → to", "flags", "seq", "ack", "len", ""].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, ...rows));
}
