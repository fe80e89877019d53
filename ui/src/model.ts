// What a trace's numbers are, computed once for the trace view, the compare view and the tests' checks:
// network time is the sum of every link's latency (request and response direction), server time the
// time behind the last hop (its request's first byte to its response's last byte: a server that sends
// its headers at once and its body late is slow, not the network).
import type { Span, Trace } from "./api";
import { usBetween } from "./time";

export interface Link { from: Span; to: Span; reqUs: number; respUs: number; totalUs: number }
export interface Model {
  trace: Trace; spans: Span[]; links: Link[]; totalUs: number; networkUs: number; serverUs: number;
  slowest: Link | null;
}

export const linkKey = (a: string, b: string): string => `${a}>${b}`;

export function model(trace: Trace, spans: Span[]): Model {
  const ordered = [...spans].sort((a, b) => a.hop_index - b.hop_index);
  const byId = new Map(ordered.map((s) => [s.span_id, s]));
  const links: Link[] = [];
  ordered.forEach((s, i) => {
    const from = s.parent_span_id ? byId.get(s.parent_span_id) ?? ordered[i - 1] : ordered[i - 1];
    if (!from || from === s) return;
    links.push({ from, to: s, reqUs: s.req_link_us, respUs: s.resp_link_us, totalUs: s.req_link_us + s.resp_link_us });
  });
  const last = ordered[ordered.length - 1];
  const serverUs = last && last.response_last_ns !== "0" ? usBetween(last.request_first_ns, last.response_last_ns) : 0;
  const networkUs = links.reduce((a, l) => a + l.totalUs, 0);
  const slowest = links.reduce<Link | null>((m, l) => (!m || l.totalUs > m.totalUs ? l : m), null);
  return { trace, spans: ordered, links, totalUs: trace.duration_us, networkUs, serverUs, slowest };
}

export const pct = (part: number, whole: number): string => (whole > 0 ? `${Math.round((100 * part) / whole)}%` : "–");
