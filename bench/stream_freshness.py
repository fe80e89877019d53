"""Freshness of the streaming correlator (``hopscope correlate --kafka``): how long after a trace's last
packet the trace is queryable, at 10,000 records/s, with the default settings, beside the previous
defaults (a fixed 2 s lateness, a pass every 500 ms), on the Kafka broker and the ClickHouse server
that deploy/ starts on the local machine.

Each run: a correlator (``taskset -c 0 hopscope correlate``) on fresh topics; the synthetic 9-hop
records of ``bench/correlate_stream.py`` (several server hosts, envoy sidecars, keep-alive connections,
raw TCP connections) stamped with the wall clock and published in 100 ms event-time slices as they
fall due, as probes publishing every 100 ms would; ClickHouse polled every ``--poll-ms`` for traces.
Delay of a trace = first seen in the store minus its newest record's time (the last packet any hop
saw of it). Median and p99 over the traces whose last packet came after the adaptive lateness's first
window (``lateness_window_s``: the cap holds while the input's disorder is not yet known), and over all
traces. The runs alternate (defaults, peer, defaults, ...: ``--rounds``) so both see the same load.

Run after deploy/kafka/start.sh and deploy/clickhouse/start.sh:
    .venv/bin/python bench/stream_freshness.py [--seconds S] [--rate R] [--rounds N]

Figures: docs/DESIGN.md, "Measured figures".
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

import numpy as np
from _lines import bench_line
from _topics import RunTopics
from correlate_stream import (
    CLICKHOUSE,
    KAFKA,
    RECORDS_PER_REQUEST,
    TraceIds,
    correlate,
    load,
    publish_paced,
    slices,
)

from hopscope.correlate import Correlator
from hopscope.correlate.stream import StreamSettings, ensure_relay_topics, event_times
from hopscope.records import Batch
from hopscope.store import store_from_url

FOREVER = 2**63 - 1
#: The previous defaults: a fixed lateness of 2 s, a pass (and a relay release) every 500 ms.
PEER = ("--min-lateness-ms", "2000", "--stitch-every-ms", "500")


def poll_store(url: str, seen: dict[str, int], every_s: float, stop: threading.Event) -> None:
    """Record when each trace was first seen (traces started in the last 30 s, every ``every_s``)."""
    ids = TraceIds(url)  # the ids only: the poller shares the cores with the correlator
    try:
        while not stop.is_set():
            now = time.time_ns()
            for trace_id in ids.since(now - 30 * 10**9):
                seen.setdefault(trace_id, now)
            stop.wait(every_s)
    finally:
        ids.close()


def run(
    args: argparse.Namespace, db: str, extra: tuple[str, ...], topics: RunTopics
) -> tuple[np.ndarray, np.ndarray, str]:
    """One paced run: delays (ms) of the traces after the first lateness window, of all, and the
    correlator's summary line."""
    prefix = topics.prefix("bsf", ("-s1", "-s2"))
    ensure_relay_topics(KAFKA, prefix)
    proc = correlate(prefix, db, "--idle-exit", "8", *extra)
    time.sleep(args.join_s)  # the correlator joins its groups
    start_ns = time.time_ns() + 500_000_000
    spacing_us = int(1e6 * 4 / args.rate * RECORDS_PER_REQUEST) * args.hosts  # 4 requests per connection
    requests, flows = load(int(args.rate * args.seconds), args.hosts, start_ns, spacing_us)
    seen: dict[str, int] = {}
    stop = threading.Event()
    poller = threading.Thread(target=poll_store, args=(db, seen, args.poll_ms / 1000, stop), daemon=True)
    poller.start()
    publish_paced(prefix, slices(requests, flows, 100_000_000))
    _, err = proc.communicate(timeout=300)
    stop.set()
    poller.join()
    res = Correlator().stitch(requests, flows)
    newest = newest_times(res, requests, flows)
    steady_from = start_ns + int(StreamSettings().lateness_window_s * 1e9) + 2 * 10**9
    delays, steady = [], []
    for t, ev in newest.items():
        if t in seen:
            delays.append((seen[t] - ev) / 1e6)
            if ev >= steady_from:
                steady.append(delays[-1])
    missing = len(newest) - len(delays)
    summary = err.strip().splitlines()[-1] if err.strip() else "(no summary)"
    if missing:
        summary += f"; {missing} of {len(newest)} traces never seen by the poller"
    return np.asarray(steady), np.asarray(delays), summary


def newest_times(res: object, requests: Batch, flows: Batch) -> dict[str, int]:
    """Per trace of the offline engine: its newest record's time (ns)."""
    newest: dict[str, int] = {}
    for trace_of, batch in ((res.request_trace, requests), (res.flow_trace, flows)):  # type: ignore[attr-defined]
        for t, ev in zip(trace_of, event_times(batch).tolist(), strict=True):
            if t and ev > newest.get(t, 0):
                newest[t] = ev
    return newest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=30, help="length of each paced run")
    p.add_argument("--rate", type=int, default=10_000, help="records per second")
    p.add_argument("--hosts", type=int, default=4, help="server hosts (stage-2 keys)")
    p.add_argument("--rounds", type=int, default=1, help="runs of each (alternating)")
    p.add_argument("--poll-ms", type=int, default=50)
    p.add_argument("--join-s", type=float, default=5.0, help="wait for the correlator to join before publishing")
    args = p.parse_args()
    db = f"{CLICKHOUSE}/hs_bench_fresh_{uuid.uuid4().hex[:8]}"
    store = store_from_url(db)
    store.ensure_schema()
    got: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"defaults": [], "peer": []}
    try:
        with RunTopics(KAFKA) as topics:
            for _ in range(args.rounds):
                for name, extra in (("defaults", ()), ("peer", PEER)):
                    steady, all_, summary = run(args, db, extra, topics)
                    got[name].append((steady, all_))
                    if not len(steady):
                        raise SystemExit(
                            f"{name}: no trace seen after the first window ({len(all_)} in all); {summary}"
                        )
                    print(f"{name:<9} steady p50 {np.median(steady):6.0f} ms p99 {np.percentile(steady, 99):6.0f} ms | "
                          f"all p50 {np.median(all_):6.0f} ms p99 {np.percentile(all_, 99):6.0f} ms, "
                          f"max {np.max(all_):6.0f} ms ({len(all_):,} traces)\n  correlator: {summary}")
    finally:
        store.drop_schema()
        store.close()
    d = StreamSettings()
    print(f"\n== last packet -> trace queryable in ClickHouse at {args.rate:,} records/s, {args.seconds} s runs, "
          f"store polled every {args.poll_ms} ms")
    print(f"defaults: lateness adaptive {d.min_lateness_us // 1000}-{d.lateness_us // 1000} ms, trace spread "
          f"{d.trace_spread_us // 1000} ms, a pass every {d.stitch_every_s * 1000:.0f} ms; peer: "
          f"lateness {d.lateness_us // 1000} ms fixed, a pass every 500 ms")
    lines = []
    for label, i in (("steady", 0), ("all", 1)):
        ours = np.concatenate([r[i] for r in got["defaults"]])
        peer = np.concatenate([r[i] for r in got["peer"]])
        for q, name in ((50, "p50"), (99, "p99")):
            a, b = float(np.percentile(ours, q)), float(np.percentile(peer, q))
            print(f"{label:<7}{name}: {a:7.0f} ms (peer {b:7.0f} ms)")
            # ratio: peer delay over ours, higher is better
            lines.append(bench_line(f"stream_freshness_{label}_{name}", a, "ms", (f"fixed_lateness_{name}", b),
                                    b / a if a else None))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
