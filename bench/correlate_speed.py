"""Correlator speed: records stitched per second on one core, on a synthetic multi-hop load.

Run: .venv/bin/python bench/correlate_speed.py [--requests N] [--store-lookup]

The load (hopscope.correlate.synthetic): keep-alive HTTP requests over a 9-hop path (client pod, node
before/after NAT, hypervisor, switch mirror, node B, envoy inbound; envoy upstream leg and app on a
second TCP connection), x-request-id on every leg, plus the flow records of every connection and some
raw TCP connections (L4 traces). 111,112 requests make 1,000,008 request records plus flow records.

Compared in the same run, same input, same core:
  - hopscope ``Correlator.stitch`` (all checks: anchors, windows, hop repeats, proxies, clocks, loss);
  - a naive baseline: one dict keyed by req_tcp_seq, no collision checks, no ordering, no proxies
    (what a first attempt looks like; it is the floor of Python grouping cost, not a correct stitcher).
With --store-lookup: inserts spans and traces into an embedded chDB store in a temporary directory and
times point lookups of a trace (``Store.get_trace``), median and p99 over 200 random trace ids.

Figures: docs/DESIGN.md, "Measured figures".
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict

import numpy as np
from _lines import bench_line

from hopscope.correlate import Correlator
from hopscope.correlate.synthetic import Scenario, generate
from hopscope.records import Batch


def pin_one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def naive_baseline(requests: Batch) -> int:
    groups: dict[int, list[int]] = defaultdict(list)
    seqs = np.asarray(requests.columns["req_tcp_seq"]).tolist()
    for i, s in enumerate(seqs):
        groups[s].append(i)
    return len(groups)


def lookup_latency(spans: Batch, traces: Batch) -> tuple[float, float]:
    from hopscope.store import store_from_url

    with tempfile.TemporaryDirectory(prefix="hopscope-bench-") as tmp:
        store = store_from_url(f"chdb://{tmp}")
        try:
            store.ensure_schema()
            store.insert("spans", spans)
            store.insert("traces", traces)
            ids = traces.columns["trace_id"]
            rng = np.random.default_rng(1)
            times = []
            for i in rng.integers(0, len(ids), 200).tolist():
                t = time.perf_counter()
                trace, hops = store.get_trace(ids[i])
                times.append(time.perf_counter() - t)
                assert trace is not None and hops
        finally:
            store.close()
    ms = np.asarray(times) * 1000
    return float(np.median(ms)), float(np.percentile(ms, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=111_112)
    ap.add_argument("--store-lookup", action="store_true")
    ap.add_argument("--ids", choices=("client", "generated", "none"), default="client",
                    help="x-request-id on every leg (client), upstream only (generated: proxy:nested), none")
    args = ap.parse_args()
    pin_one_core()
    syn = generate(Scenario(requests=args.requests, per_connection=4, l4_connections=1000, request_id_mode=args.ids))
    n_req, n_flow = len(syn.requests), len(syn.flows)
    total = n_req + n_flow
    print(f"load: {n_req:,} request records + {n_flow:,} flow records = {total:,} records, "
          f"{args.requests:,} requests x {len(syn.expected_points)} hops")
    t = time.perf_counter()
    result = Correlator().stitch(syn.requests, syn.flows)
    offline_s = dt = time.perf_counter() - t
    full = sum(1 for p in result.traces.columns["points"] if p.split(",") == syn.expected_points)
    print(f"hopscope offline : {dt:7.2f} s  {total / dt:>10,.0f} records/s  "
          f"({len(result.traces):,} traces, {full:,} complete, {len(result.spans):,} spans)")
    t = time.perf_counter()
    naive_baseline(syn.requests)
    naive_s = dt = time.perf_counter() - t
    print(f"naive dict group : {dt:7.2f} s  {n_req / dt:>10,.0f} records/s  (request records only, no checks)")
    if args.store_lookup:
        med, p99 = lookup_latency(result.spans, result.traces)
        print(f"trace lookup (chDB, {len(result.traces):,} traces): median {med:.1f} ms, p99 {p99:.1f} ms")
    # ratio: hopscope's rate over the naive grouping's (higher is better; below 1 is the price of the checks)
    ours, naive = total / offline_s, n_req / naive_s
    print(bench_line("correlate_offline_rate", ours, "records/s", ("naive_dict_group", naive), ours / naive))
    if args.store_lookup:
        print(bench_line("correlate_lookup_chdb_p50", med, "ms"))
        print(bench_line("correlate_lookup_chdb_p99", p99, "ms"))


if __name__ == "__main__":
    main()
