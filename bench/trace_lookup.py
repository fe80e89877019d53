"""Trace lookup latency: ``Store.get_trace`` (newest version per key, LIMIT 1 BY) against the same
lookup with FINAL (the plain way to read a ReplacingMergeTree), on the ClickHouse server and chDB.

    .venv/bin/python bench/trace_lookup.py [--traces 125000] [--hops 8] [--lookups 300]

Loads synthetic traces into a scratch database (``hs_bench_lookup`` / a temp chDB directory), then
times random lookups. DeepFlow's tracing engine assembles a trace at query time (about 1 s per
trace in its paper); hopscope stitches at ingest, so a lookup is a point query (goal: under 50 ms).
Ends with one ``bench:`` line per store and percentile, beside the FINAL lookup (ratio: FINAL's
latency over get_trace's, higher is better).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
from _lines import bench_line

from hopscope.records import Batch, Span, Trace
from hopscope.store import SqlStore, store_from_url
from hopscope.store.query import rows_to_records, select_where
from hopscope.store.schema import table_spec

T0 = 1_790_000_000_000_000_000


def load(store: SqlStore, traces: int, hops: int) -> list[str]:
    store.drop_schema()
    store.ensure_schema()
    rng = np.random.default_rng(1)
    ids = [f"{x:032x}" for x in rng.integers(0, 2**63, traces)]
    for lo in range(0, traces, 25_000):
        chunk = ids[lo : lo + 25_000]
        n = len(chunk)
        starts = np.arange(lo, lo + n, dtype=np.uint64) * 1000 + T0
        store.insert("traces", Batch(Trace, {"trace_id": chunk, "start_ns": starts, "kind": ["l7"] * n,
                                             "version": np.ones(n, np.uint64)}, n))  # fmt: skip
        store.insert("spans", Batch(Span, {
            "trace_id": [t for t in chunk for _ in range(hops)],
            "span_id": [f"{lo * hops + i:016x}" for i in range(n * hops)],
            "hop_index": np.tile(np.arange(hops), n), "request_first_ns": np.repeat(starts, hops),
            "version": np.ones(n * hops, np.uint64)}, n * hops))  # fmt: skip
    return ids


def with_final(store: SqlStore, trace_id: str) -> tuple[list[Trace], list[Span]]:
    key = {"trace_id": trace_id}
    trace_query = select_where(store.database, table_spec("traces"), key, ["trace_id"])
    span_query = select_where(store.database, table_spec("spans"), key, ["hop_index", "span_id"])
    return rows_to_records(Trace, store._select(trace_query)), rows_to_records(Span, store._select(span_query))


def timed(fn: object, ids: list[str], lookups: int, hops: int) -> tuple[float, float]:
    rng = np.random.default_rng(2)
    times = []
    for i in rng.integers(0, len(ids), lookups):
        start = time.perf_counter()
        _, spans = fn(ids[i])  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
        assert len(spans) == hops
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=int, default=125_000)
    parser.add_argument("--hops", type=int, default=8)
    parser.add_argument("--lookups", type=int, default=300)
    parser.add_argument("--clickhouse", default="clickhouse://127.0.0.1:9000/hs_bench_lookup")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="hs-lookup-")
    print(f"{args.traces:,} traces x {args.hops} hops = {args.traces * args.hops:,} spans; {args.lookups} lookups")
    print(f"{'store':<12}{'lookup':<34}{'median ms':>10}{'p99 ms':>10}")
    lines = []
    for name, url in (("clickhouse", args.clickhouse), ("chdb", f"chdb://{scratch}")):
        store = store_from_url(url)
        ids = load(store, args.traces, args.hops)
        figures = []
        for label, fn in (("get_trace (LIMIT 1 BY)", store.get_trace),
                          ("the same with FINAL", lambda t, s=store: with_final(s, t))):  # fmt: skip
            median, p99 = timed(fn, ids, args.lookups, args.hops)
            figures.append((median, p99))
            print(f"{name:<12}{label:<34}{median:>10.1f}{p99:>10.1f}")
        (ours_p50, ours_p99), (final_p50, final_p99) = figures
        # ratio: the FINAL lookup's latency over get_trace's, higher is better
        lines.append(bench_line(f"trace_lookup_{name}_p50", ours_p50, "ms", ("final_p50", final_p50),
                                final_p50 / ours_p50))  # fmt: skip
        lines.append(bench_line(f"trace_lookup_{name}_p99", ours_p99, "ms", ("final_p99", final_p99),
                                final_p99 / ours_p99))  # fmt: skip
        store.drop_schema()
        store.close()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
