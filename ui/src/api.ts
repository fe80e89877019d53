// The API client. A server with a token file answers /api with 401 until the page sends a token: the
// page then asks for one, keeps it in sessionStorage (this tab only) and sends it as a bearer token.
import { $ } from "./dom";

const TOKEN_KEY = "hopscope.token";
export class AuthRequired extends Error {}
export class ApiError extends Error {
  constructor(readonly status: number, message: string) { super(message); }
}

let onAuth: () => void = () => {};
export const setOnAuth = (f: () => void): void => { onAuth = f; };
export const token = (): string | null => sessionStorage.getItem(TOKEN_KEY);

export function askToken(message: string): void {
  sessionStorage.removeItem(TOKEN_KEY);
  $("#login").hidden = false;
  $("#login-error").textContent = message;
}

export function useToken(event: Event): void {
  event.preventDefault();
  const input = $<HTMLInputElement>("#token");
  const value = input.value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  input.value = "";
  $("#login").hidden = true;
  onAuth();
}

async function request(path: string): Promise<Response> {
  const t = token();
  const r = await fetch(path, { headers: t ? { Authorization: `Bearer ${t}` } : {} });
  if (r.status === 401) { askToken(t ? "the token was not accepted" : ""); throw new AuthRequired(); }
  if (!r.ok) {
    let message = r.statusText;
    try { message = (await r.json()).error?.message ?? message; } catch { /* not JSON */ }
    throw new ApiError(r.status, `${r.status}: ${message}`);
  }
  return r;
}

export const api = async <T>(path: string): Promise<T> => (await request(path)).json() as Promise<T>;
export const apiBlob = async (path: string): Promise<Blob> => (await request(path)).blob();

// --- the shapes the API answers (ns times and 64-bit ids as strings) -----------------------------------

export interface Trace {
  trace_id: string; kind: string; start_ns: string; end_ns: string; duration_us: number; l7_proto: string;
  method: string; http_host: string; path: string; status: number; dns_qname: string; x_request_id: string;
  traceparent: string; client_h: string; client_p: number; server_h: string; server_p: number; hop_count: number;
  points: string; error: number; lost_pkts: number; loss_link: string; slowest_link: string; slowest_link_us: number;
  min_confidence: number;
}
export interface Span {
  trace_id: string; span_id: string; parent_span_id: string; hop_index: number; point: string; host: string;
  hop_kind: string; side: string; orig_h: string; orig_p: number; resp_h: string; resp_p: number;
  request_first_ns: string; request_last_ns: string; response_first_ns: string; response_last_ns: string;
  req_link_us: number; resp_link_us: number; clock_offset_us: number; link_reason: string; link_confidence: number;
  lost_pkts: number; retrans_pkts: number;
}
export interface Graph<N, L> { graph: Record<string, unknown>; nodes: N[]; links: L[] }
export interface PointNode { id: string; host: string; hop_kind: string; traces: number; layer: number }
export interface PointLink {
  source: string; target: string; traces: number; req_p50_us: number; req_p90_us: number; req_p99_us: number;
  resp_p50_us: number; resp_p90_us: number; resp_p99_us: number; lost_pkts: number; loss_traces: number;
  reasons: Record<string, number>; min_confidence: number;
}
export interface ServiceNode { id: string; kind: string; label: string; node?: string; layer: number }
export interface ServiceLink {
  source: string; target: string; requests: number; errors: number; error_rate: number; rate_per_s: number | null;
  latency_p50_us: number; latency_p90_us: number; latency_p99_us: number; protocols: string[];
}
export interface Entity { id: string; kind: string; label: string; addresses: string[] }
export interface Packet {
  ts_ns: string; dir: "c2s" | "s2c"; src: string; dst: string; sport: number; dport: number; flags: string;
  seq: number; ack: number; len: number; retransmission: boolean;
}
export interface PointPackets { point: string; hop_kind: string; packets: Packet[] }
