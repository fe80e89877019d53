"""Trace lookup latency: ``Store.get_trace`` (each table read once with PREWHERE on one thread, the
trace row beside its spans, the newest version per key kept in Python) against the same lookup with
FINAL (the plain way to read a ReplacingMergeTree), on the ClickHouse server and chDB.

    .venv/bin/python bench/trace_lookup.py [--spans 1000000] [--hops 8] [--lookups 300]

Loads synthetic traces into a scratch database (``hs_bench_lookup`` / a temp chDB directory), made in
the store itself (``INSERT ... SELECT`` from ``numbers()``, a day's worth of start times), waits for
the merges the load started (a lookup costs per part, and chDB merges in this process; ``--no-settle``
times the lookups while they run), then times random lookups. Prints the load average before and
after (every query waits for a core, so p99 follows the machine's load). DeepFlow's tracing engine
assembles a trace at query time (about 1 s per trace in its paper); hopscope stitches at ingest, so a
lookup is a point query (goal: under 50 ms). Ends with one ``bench:`` line per store and percentile,
beside the FINAL lookup (ratio: FINAL's latency over get_trace's, higher is better).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from _lines import bench_line

from hopscope.records import Span, Trace
from hopscope.store import SqlStore, store_from_url
from hopscope.store.query import BoundQuery, rows_to_records, select_where
from hopscope.store.schema import quote_identifier, table_spec

T0 = 1_790_000_000_000_000_000


#: A trace id as the store makes it from the row number: 32 hex digits (two 64-bit hashes).
TRACE_ID_SQL = "lower(concat(hex(sipHash64(n)), hex(sipHash64(n + 1000000000000))))"
DAY_NS = 86_400_000_000_000


def load(store: SqlStore, traces: int, hops: int) -> None:
    """``traces`` traces of ``hops`` spans each, spread over a day, generated in the store."""
    store.drop_schema()
    store.ensure_schema()
    db = quote_identifier(store.database)
    step = DAY_NS // traces
    store._command(
        f"INSERT INTO {db}.traces (trace_id, kind, start_ns, end_ns, duration_us, version)"
        f" SELECT {TRACE_ID_SQL}, 'l7', {T0} + n * {step}, {T0} + n * {step} + 1000000, 1000, 1"
        f" FROM (SELECT number AS n FROM system.numbers LIMIT {traces})"
    )
    for lo in range(0, traces, 1_000_000):  # a million traces' spans per statement (memory)
        n = min(1_000_000, traces - lo)
        store._command(
            f"INSERT INTO {db}.spans (trace_id, span_id, hop_index, point, request_first_ns, version)"
            f" SELECT {TRACE_ID_SQL}, lower(hex(sipHash64(n * 64 + h))), h, concat('point-', toString(h)),"
            f" {T0} + n * {step} + h * 1000, 1"
            f" FROM (SELECT number + {lo} AS n FROM system.numbers LIMIT {n}) ARRAY JOIN range({hops}) AS h"
        )


def settle(store: SqlStore, timeout_s: float = 600) -> float:
    """Wait until no merge runs in the store's database (at most ``timeout_s``); the seconds waited."""
    started = time.perf_counter()
    query = BoundQuery("SELECT count() FROM system.merges WHERE database = {db:String}", {"db": store.database})
    while store._select(query)[0][0] and time.perf_counter() - started < timeout_s:
        time.sleep(1)
    return time.perf_counter() - started


def parts(store: SqlStore, table: str) -> list[tuple[object, ...]]:
    """The active parts of a table."""
    return store._select(BoundQuery(
        "SELECT name FROM system.parts WHERE database = {db:String} AND table = {t:String} AND active",
        {"db": store.database, "t": table}))


def trace_ids(store: SqlStore, count: int) -> list[str]:
    """``count`` stored trace ids, picked at random."""
    db = quote_identifier(store.database)
    rows = store._select(BoundQuery(f"SELECT trace_id FROM {db}.traces ORDER BY rand() LIMIT {int(count)}", {}))
    return [str(r[0]) for r in rows]


def with_final(store: SqlStore, trace_id: str) -> tuple[list[Trace], list[Span]]:
    key = {"trace_id": trace_id}
    trace_query = select_where(store.database, table_spec("traces"), key, ["trace_id"])
    span_query = select_where(store.database, table_spec("spans"), key, ["hop_index", "span_id"])
    return rows_to_records(Trace, store._select(trace_query)), rows_to_records(Span, store._select(span_query))


def timed(fn: object, ids: list[str], hops: int) -> tuple[float, float]:
    times = []
    for trace_id in ids:
        start = time.perf_counter()
        _, spans = fn(trace_id)  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
        assert len(spans) == hops
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--hops", type=int, default=8)
    parser.add_argument("--lookups", type=int, default=300)
    parser.add_argument("--clickhouse", default="clickhouse://127.0.0.1:9000/hs_bench_lookup")
    parser.add_argument("--no-settle", action="store_true", help="time the lookups while the load's merges run")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="hs-lookup-")
    traces = args.spans // args.hops
    print(f"{traces:,} traces x {args.hops} hops = {traces * args.hops:,} spans; {args.lookups} lookups;"
          f" load average {os.getloadavg()[0]:.1f}")
    print(f"{'store':<12}{'lookup':<34}{'median ms':>10}{'p99 ms':>10}")
    lines = []
    for name, url in (("clickhouse", args.clickhouse), ("chdb", f"chdb://{scratch}")):
        store = store_from_url(url)
        started = time.perf_counter()
        load(store, traces, args.hops)
        print(f"{name}: loaded in {time.perf_counter() - started:.0f} s", end="")
        print("" if args.no_settle else f", merges done {settle(store):.0f} s later", end="")
        print(f"; {len(parts(store, 'spans'))} span parts, {len(parts(store, 'traces'))} trace parts")
        ids = trace_ids(store, args.lookups)
        figures = []
        for label, fn in (("get_trace", store.get_trace),
                          ("the same with FINAL", lambda t, s=store: with_final(s, t))):  # fmt: skip
            median, p99 = timed(fn, ids, args.hops)
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
    print(f"load average {os.getloadavg()[0]:.1f}")
    shutil.rmtree(scratch)  # chDB deletes a dropped database's files minutes later, after this process
    print("\n".join(lines))


if __name__ == "__main__":
    main()
