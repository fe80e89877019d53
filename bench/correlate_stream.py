"""The streaming correlator (``hopscope correlate --kafka``) on one core, for real: the Kafka 4.1
broker and the ClickHouse 18.16 server that deploy/ starts on the local machine.

1. Throughput: ``--records`` (default 1,000,000) synthetic flow and request records (several server
   hosts, each with the synthetic path: client pod, NAT, hypervisor, switch, node, envoy sidecar in and
   out, app; keep-alive connections of 4 requests, 9 observations per request, raw TCP connections
   without L7; envoy adds x-request-id upstream only, so proxy legs are linked by nesting) are
   published to fresh topics first; then ``taskset -c 0 hopscope correlate`` stitches them through
   both stages into ClickHouse. Records stitched per second = records / (first record polled .. all
   traces stored). The peer is the offline engine (``Correlator.stitch``) on the same records, same
   core, no Kafka and no store: the price of streaming.
2. End-to-end delay: a paced live stream (records stamped with the wall clock, published in 100 ms
   slices as a probe would); delay = trace first seen in ClickHouse (polled every ``--poll-ms``) minus
   the publish time of the trace's newest record (the stand-in for the packet at the probe; a real
   probe adds its reporting interval). Median and p99; the floor is lateness + trace spread.
3. Point query: ``store.get_trace(id)`` (trace row and its spans, FINAL) for 1,000 stored ids.

Ends with one ``bench:`` line per figure; the throughput line is beside the offline engine (ratio:
streaming over offline records/s, higher is better).

Run after deploy/kafka/start.sh and deploy/clickhouse/start.sh:
    .venv/bin/python bench/correlate_stream.py [--records N] [--live-seconds S]

Figures: docs/DESIGN.md, "Measured figures".
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
from _lines import bench_line
from _topics import RunTopics

from hopscope.correlate import Correlator
from hopscope.correlate.stream import ensure_relay_topics, event_times
from hopscope.correlate.synthetic import Scenario, generate
from hopscope.records import Batch
from hopscope.store import store_from_url
from hopscope.transport.kafka import KafkaPublisher

KAFKA = os.environ.get("HOPSCOPE_KAFKA", "127.0.0.1:9092")
CLICKHOUSE = "clickhouse://127.0.0.1:9000"
FOREVER = 2**63 - 1
RECORDS_PER_REQUEST = 9 + 9 / 4  # 9 request observations, 9 flow records per connection of 4


def load(records: int, hosts: int, start_ns: int, spacing_us: int) -> tuple[Batch, Batch]:
    per_host = int(records / RECORDS_PER_REQUEST / hosts) + 1
    reqs, flows = [], []
    for k in range(hosts):
        path = tuple(dataclasses.replace(h, point=f"{h.point}-{k}", host=f"{h.host}-{k}") for h in Scenario().path)
        syn = generate(Scenario(requests=per_host, per_connection=4, conn_spacing_us=spacing_us,
                                l4_connections=per_host // 100, request_id_mode="generated", path=path,
                                seed=100 + k, start_ns=start_ns))
        ids: list[str] = syn.requests.columns["x_request_id"]  # type: ignore[assignment]
        syn.requests.columns["x_request_id"] = [f"{k}-{x}" if x else "" for x in ids]
        reqs.append(syn.requests)
        flows.append(syn.flows)
    return Batch.concat(reqs), Batch.concat(flows)


def slices(requests: Batch, flows: Batch, slice_ns: int) -> list[tuple[int, list[Batch]]]:
    """Records grouped by event-time slice: (slice end time, batches), in time order."""
    out: dict[int, list[Batch]] = {}
    for batch in (requests, flows):
        t = event_times(batch)
        sl = t // slice_ns
        order = np.argsort(sl, kind="stable")
        bounds = np.flatnonzero(np.diff(sl[order])) + 1
        for rows in np.split(order, bounds):
            out.setdefault(int(sl[rows[0]]), []).append(batch.take(rows))
    return [((k + 1) * slice_ns, v) for k, v in sorted(out.items())]


def publish_paced(prefix: str, plan: list[tuple[int, list[Batch]]]) -> dict[int, int]:
    """Publish each slice of ``plan`` (``slices``) to Kafka once the wall clock reaches its end time, as
    probes publishing live would; the time (ns) each slice was flushed, by its end time."""
    publish_ns: dict[int, int] = {}
    publisher = KafkaPublisher(KAFKA, prefix=prefix, linger_ms=5)
    for end_ns, batches in plan:
        lag = (end_ns - time.time_ns()) / 1e9
        if lag > 0:
            time.sleep(lag)
        for b in batches:
            publisher.publish(b)
        publisher.flush()
        publish_ns[end_ns] = time.time_ns()
    publisher.close()
    return publish_ns


def correlate(prefix: str, url: str, *extra: str) -> subprocess.Popen[str]:
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "hopscope", "correlate", "--kafka", KAFKA, "--store", url,
           "--topic-prefix", prefix, "--group", prefix, *extra]
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)


def wait_for_traces(url: str, want: int, proc: subprocess.Popen[str], timeout_s: float) -> float:
    """Monotonic time at which the store held ``want`` traces."""
    store = store_from_url(url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if store.count("traces") >= want:
                return time.monotonic()
            if proc.poll() is not None:
                raise SystemExit(f"correlator exited early: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.2)
    finally:
        store.close()
    raise SystemExit(f"not all {want} traces stored within {timeout_s} s")


def throughput(args: argparse.Namespace, db: str, topics: RunTopics) -> list[str]:
    prefix = topics.prefix("bcs", ("-s1", "-s2"))
    ensure_relay_topics(KAFKA, prefix)
    requests, flows = load(args.records, args.hosts, 1_700_000_000_000_000_000, 10_000)
    n = len(requests) + len(flows)
    os.sched_setaffinity(0, {0})
    t = time.perf_counter()
    want = len(Correlator().stitch(requests, flows).traces)
    offline_s = time.perf_counter() - t
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    t = time.perf_counter()
    publisher = KafkaPublisher(KAFKA, prefix=prefix, linger_ms=20)
    for _, batches in slices(requests, flows, 500_000_000):
        for b in batches:
            publisher.publish(b)
    publisher.flush()
    publisher.close()
    publish_s = time.perf_counter() - t
    started = time.monotonic()
    proc = correlate(prefix, db, "--idle-exit", "3", "--idle-flush-ms", "1000")
    first = wait_for_traces(db, 1, proc, timeout_s=120)
    done = wait_for_traces(db, want, proc, timeout_s=900)
    _, err = proc.communicate(timeout=120)
    wall = done - started
    print(f"\n== throughput: {n:,} records ({len(requests):,} requests, {len(flows):,} flows), {want:,} traces, "
          f"{args.hosts} server hosts")
    print(f"published to Kafka in {publish_s:.1f} s (not counted)")
    print(f"{'streaming: hopscope correlate, taskset -c 0 (start to all traces stored)':<78}"
          f"{wall:8.1f} s {n / wall:>12,.0f} records/s")
    print(f"{'  the same, first trace stored to all stored (no group join, no start-up)':<78}"
          f"{done - first:8.1f} s")
    print(f"{'peer: offline engine Correlator.stitch, same records, core 0, no Kafka/store':<78}"
          f"{offline_s:8.1f} s {n / offline_s:>12,.0f} records/s")
    print("correlator:", err.strip().splitlines()[-1] if err.strip() else "(no summary)")
    # ratio: streaming over offline records/s, higher is better
    return [bench_line("correlate_stream_rate", n / wall, "records/s", ("offline_stitch", n / offline_s),
                       offline_s / wall),
            bench_line("correlate_stream_first_to_all_stored", done - first, "s")]  # fmt: skip


def live(args: argparse.Namespace, db: str, topics: RunTopics) -> tuple[list[str], list[str]]:
    """The ids of the traces seen in the store, and the bench lines."""
    prefix = topics.prefix("bcl", ("-s1", "-s2"))
    ensure_relay_topics(KAFKA, prefix)
    proc = correlate(prefix, db, "--idle-exit", "6")
    time.sleep(5)  # the correlator joins its groups
    rate = args.live_rate
    start_ns = time.time_ns() + 1_000_000_000
    spacing_us = int(1e6 * 4 / rate * RECORDS_PER_REQUEST) * args.hosts  # 4 requests per connection
    requests, flows = load(int(rate * args.live_seconds), args.hosts, start_ns, spacing_us)
    plan = slices(requests, flows, 100_000_000)
    seen: dict[str, int] = {}
    poller = threading.Thread(target=poll_store, args=(db, seen, args.poll_ms / 1000, proc), daemon=True)
    poller.start()
    publish_ns = publish_paced(prefix, plan)
    _, err = proc.communicate(timeout=300)
    time.sleep(2 * args.poll_ms / 1000)
    res = Correlator().stitch(requests, flows)
    delays = trace_delays(res, requests, flows, publish_ns, seen)
    print(f"\n== end-to-end delay: {len(requests) + len(flows):,} records at {rate:,} records/s for "
          f"{args.live_seconds} s, {len(delays):,} of {len(res.traces):,} traces seen "
          f"(store polled every {args.poll_ms} ms; defaults: lateness 2000 ms, trace spread 500 ms)")
    print(f"publish of the trace's newest record -> queryable in ClickHouse: median "
          f"{np.median(delays):.0f} ms, p99 {np.percentile(delays, 99):.0f} ms, max {np.max(delays):.0f} ms")
    print("correlator:", err.strip().splitlines()[-1] if err.strip() else "(no summary)")
    lines = [bench_line(f"correlate_stream_delay_{name}", float(value), "ms") for name, value in
             (("p50", np.median(delays)), ("p99", np.percentile(delays, 99)), ("max", np.max(delays)))]  # fmt: skip
    return list(seen), lines


class TraceIds:
    """The ids of the traces a ClickHouse store holds that started since some time: one light query
    (``SELECT trace_id``, no ``FINAL``: a row is queryable once it is there). The delay pollers share
    the two cores with the correlator they measure; reading whole traces (``query_traces``) every
    50-100 ms kept a good part of a core busy between the bench and the server."""

    def __init__(self, url: str) -> None:
        from urllib.parse import urlsplit

        from clickhouse_driver import Client

        parts = urlsplit(url)
        self.client = Client(host=parts.hostname or "127.0.0.1", port=parts.port or 9000)
        self.table = f"`{parts.path.strip('/')}`.`traces`"

    def since(self, start_ns: int) -> list[str]:
        rows = self.client.execute(f"SELECT trace_id FROM {self.table} WHERE start_ns >= %(start)s",
                                   {"start": start_ns})
        return [r[0] for r in rows]

    def close(self) -> None:
        self.client.disconnect()


def poll_store(url: str, seen: dict[str, int], every_s: float, proc: subprocess.Popen[str]) -> None:
    ids = TraceIds(url)
    while proc.poll() is None:
        now = time.time_ns()
        for trace_id in ids.since(now - 120 * 10**9):
            seen.setdefault(trace_id, now)
        time.sleep(every_s)
    ids.close()


def trace_delays(res: object, requests: Batch, flows: Batch, publish_ns: dict[int, int],
                 seen: dict[str, int]) -> np.ndarray:
    """Per trace seen: first seen minus the publish time of the slice holding its newest record."""
    newest: dict[str, int] = {}
    for trace_of, batch in ((res.request_trace, requests), (res.flow_trace, flows)):  # type: ignore[attr-defined]
        for t, ev in zip(trace_of, event_times(batch).tolist(), strict=True):
            if t and ev > newest.get(t, 0):
                newest[t] = ev
    ends = np.array(sorted(publish_ns))
    out = []
    for t, ev in newest.items():
        if t in seen:
            slice_end = int(ends[np.searchsorted(ends, ev, side="right")])
            out.append((seen[t] - publish_ns[slice_end]) / 1e6)
    return np.asarray(out)


def lookups(db: str, ids: list[str], count: int = 1000) -> list[str]:
    """get_trace latency as the streaming writes left the tables, then after the parts were merged."""
    from clickhouse_driver import Client

    name = db.rsplit("/", 1)[1]
    client = Client("127.0.0.1", 9000)
    parts_sql = ("SELECT table, count() FROM system.parts WHERE database = %(db)s AND active "
                 "AND table IN ('traces', 'spans') GROUP BY table ORDER BY table")
    store = store_from_url(db)
    rng = np.random.default_rng(3)
    picks = [ids[i] for i in rng.integers(0, len(ids), count)]
    store.get_trace(picks[0])  # connect
    lines = []
    for label, token in (("as written", "as_written"), ("after OPTIMIZE ... FINAL", "optimized")):
        if label != "as written":
            for table in ("traces", "spans"):
                client.execute(f"OPTIMIZE TABLE `{name}`.`{table}` FINAL")
        parts = dict(client.execute(parts_sql, {"db": name}))
        times = []
        for tid in picks:
            t = time.perf_counter()
            trace, spans = store.get_trace(tid)
            times.append((time.perf_counter() - t) * 1000)
            assert trace is not None and spans
        print(f"\n== trace lookup, {label} ({parts.get('traces', 0)} + {parts.get('spans', 0)} active parts in "
              f"traces + spans): store.get_trace (trace row + spans, FINAL) over {count} stored ids: "
              f"median {np.median(times):.1f} ms, p99 {np.percentile(times, 99):.1f} ms (goal < 50 ms)")
        lines.append(bench_line(f"correlate_stream_lookup_{token}_p50", float(np.median(times)), "ms"))
        lines.append(bench_line(f"correlate_stream_lookup_{token}_p99", float(np.percentile(times, 99)), "ms"))
    store.close()
    client.disconnect()
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--hosts", type=int, default=4, help="server hosts (stage-2 keys)")
    p.add_argument("--live-seconds", type=int, default=30)
    p.add_argument("--live-rate", type=int, default=10_000, help="records per second in the live stream")
    p.add_argument("--poll-ms", type=int, default=100)
    args = p.parse_args()
    db = f"{CLICKHOUSE}/hs_bench_stream_{uuid.uuid4().hex[:8]}"
    store = store_from_url(db)
    store.ensure_schema()
    try:
        with RunTopics(KAFKA) as topics:
            lines = throughput(args, db, topics)
            ids, live_lines = live(args, db, topics)
        lines += live_lines
        lines += lookups(db, ids or [t.trace_id for t in store.query_traces(0, FOREVER, limit=10_000)])
        print(f"\nstore after both runs: {store.count('traces'):,} traces, {store.count('spans'):,} spans")
        print("\n".join(lines))
    finally:
        store.drop_schema()
        store.close()


if __name__ == "__main__":
    main()
