"""The store on a ClickHouse cluster beside the single server: span inserts until readable, and trace
lookups, through the Distributed tables of ``clickhouse://127.0.0.1:9101/DB?cluster=hopscope``
(deploy/clickhouse-cluster/start.sh, two shards on this machine) against the server of
deploy/clickhouse/start.sh (``clickhouse://127.0.0.1:9000/DB``).

    .venv/bin/python bench/store_cluster.py [--traces 20000] [--hops 8] [--lookups 200]

Inserts go through the Distributed tables, which send the other shard's rows asynchronously: the
insert figure is rows per second until ``count()`` sees every row. Both stores run on one machine's
cores, so the cluster cannot be faster here; the figures show what the extra hop costs. Ends with
one ``bench:`` line per figure, the single server as the peer (ratio: cluster over single server for
rows/s, single server over cluster for latency, so higher is better for the cluster either way).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _lines import bench_line

from hopscope.records import Batch, Span, Trace
from hopscope.store import SqlStore, store_from_url

T0 = 1_790_000_000_000_000_000
BATCH = 5_000  # traces per insert


def load(store: SqlStore, traces: int, hops: int) -> tuple[list[str], float]:
    """Insert synthetic traces; seconds until the store counts every span."""
    store.drop_schema()
    store.ensure_schema()
    rng = np.random.default_rng(1)
    ids = [f"{x:032x}" for x in rng.integers(0, 2**63, traces)]
    started = time.perf_counter()
    for lo in range(0, traces, BATCH):
        chunk = ids[lo : lo + BATCH]
        n = len(chunk)
        starts = np.arange(lo, lo + n, dtype=np.uint64) * 1000 + T0
        store.insert("traces", Batch(Trace, {"trace_id": chunk, "start_ns": starts, "kind": ["l7"] * n,
                                             "version": np.ones(n, np.uint64)}, n))  # fmt: skip
        store.insert("spans", Batch(Span, {
            "trace_id": [t for t in chunk for _ in range(hops)],
            "span_id": [f"{lo * hops + i:016x}" for i in range(n * hops)],
            "hop_index": np.tile(np.arange(hops), n), "request_first_ns": np.repeat(starts, hops),
            "version": np.ones(n * hops, np.uint64)}, n * hops))  # fmt: skip
    while store.count("spans") < traces * hops:
        time.sleep(0.05)
    return ids, time.perf_counter() - started


def lookups(store: SqlStore, ids: list[str], count: int, hops: int) -> tuple[float, float]:
    """Median and p99 of ``get_trace`` over random ids (ms)."""
    rng = np.random.default_rng(2)
    times = []
    for i in rng.integers(0, len(ids), count):
        t = time.perf_counter()
        trace, spans = store.get_trace(ids[i])
        times.append((time.perf_counter() - t) * 1000)
        assert trace is not None and len(spans) == hops, ids[i]
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=20_000)
    parser.add_argument("--hops", type=int, default=8)
    parser.add_argument("--lookups", type=int, default=200)
    args = parser.parse_args()
    urls = {
        "cluster": "clickhouse://127.0.0.1:9101/hs_bench_cluster?cluster=hopscope",
        "single": "clickhouse://127.0.0.1:9000/hs_bench_cluster",
    }
    figures: dict[str, dict[str, float]] = {}
    for name, url in urls.items():
        store = store_from_url(url)
        try:
            ids, seconds = load(store, args.traces, args.hops)
            rows = args.traces * (args.hops + 1)
            p50, p99 = lookups(store, ids, args.lookups, args.hops)
            figures[name] = {"rows_s": rows / seconds, "p50": p50, "p99": p99}
            print(f"{name:8} {url}: {rows:,} rows readable in {seconds:.2f} s ({rows / seconds:,.0f} rows/s); "
                  f"get_trace p50 {p50:.1f} ms, p99 {p99:.1f} ms")  # fmt: skip
        finally:
            store.drop_schema()
            store.close()
    c, s = figures["cluster"], figures["single"]
    # ratio: the cluster over the single server for rows/s; the single server over the cluster for latency.
    print(bench_line("cluster_insert_until_readable", c["rows_s"], "rows/s", ("single_server", s["rows_s"]),
                     c["rows_s"] / s["rows_s"]))  # fmt: skip
    print(bench_line("cluster_get_trace_p50", c["p50"], "ms", ("single_server", s["p50"]), s["p50"] / c["p50"]))
    print(bench_line("cluster_get_trace_p99", c["p99"], "ms", ("single_server", s["p99"]), s["p99"] / c["p99"]))


if __name__ == "__main__":
    main()
