// Times. The API sends ns times and 64-bit ids as decimal strings; here they are BigInt (exact), and
// only differences within one trace (microseconds to seconds) become JS numbers.

export const ns = (v: string | bigint | number): bigint => (typeof v === "bigint" ? v : BigInt(v));
export const NS_PER_MS = 1_000_000n;
export const nowNs = (): bigint => BigInt(Date.now()) * NS_PER_MS;

/** Microseconds between two ns times (b - a), as a number. */
export const usBetween = (a: string | bigint, b: string | bigint): number => Number((ns(b) - ns(a)) / 1000n);

/** A duration in µs as text: "850 µs", "5.12 ms", "1.204 s". */
export function us(v: number | null | undefined): string {
  if (v === null || v === undefined || Number.isNaN(v)) return "";
  const a = Math.abs(v);
  if (a >= 1_000_000) return `${(v / 1_000_000).toFixed(3)} s`;
  if (a >= 1000) return `${(v / 1000).toFixed(a >= 100_000 ? 0 : a >= 10_000 ? 1 : 2)} ms`;
  return `${v} µs`;
}

/** ms with one decimal, as the summary line writes them: "5.4 ms". */
export const ms1 = (v: number): string => `${(v / 1000).toFixed(1)} ms`;

export const ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
const FMT = new Intl.DateTimeFormat("en-CA", {
  year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
  hourCycle: "h23",
});

function parts(ms: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of FMT.formatToParts(new Date(ms))) out[p.type] = p.value;
  return out;
}

/** "2026-11-27 10:20:02.173303472" in the user's time zone: the ns digits are exact. */
export function when(v: string | bigint, digits = 9): string {
  const t = ns(v);
  const msPart = Number(t / NS_PER_MS);
  const sub = (t % 1_000_000_000n).toString().padStart(9, "0").slice(0, digits);
  const p = parts(msPart);
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}${digits ? `.${sub}` : ""}`;
}

/** The value of an <input type="datetime-local" step="0.001"> for an ns time (local zone, ms). */
export function toLocalInput(v: string | bigint): string {
  const t = ns(v);
  const p = parts(Number(t / NS_PER_MS));
  const msDigits = ((t / NS_PER_MS) % 1000n).toString().padStart(3, "0");
  return `${p.year}-${p.month}-${p.day}T${p.hour}:${p.minute}:${p.second}.${msDigits}`;
}

/** An ns time from a datetime-local value (read in the user's zone); null when it is not a time. */
export function fromLocalInput(value: string): bigint | null {
  if (!value) return null;
  const ms = new Date(value).getTime();
  return Number.isFinite(ms) ? BigInt(ms) * NS_PER_MS : null;
}

/** Relative ranges of the search: name -> length in ns. */
export const PRESETS: Record<string, [string, bigint]> = {
  "15m": ["last 15 minutes", 15n * 60n * 1000n * NS_PER_MS],
  "1h": ["last hour", 3600n * 1000n * NS_PER_MS],
  "6h": ["last 6 hours", 6n * 3600n * 1000n * NS_PER_MS],
  "24h": ["last 24 hours", 24n * 3600n * 1000n * NS_PER_MS],
  "7d": ["last 7 days", 7n * 24n * 3600n * 1000n * NS_PER_MS],
};
