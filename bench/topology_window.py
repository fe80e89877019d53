"""The service map and the capture-point topology of one busy hour: from the per-minute rollups
(``edges_1m``/``links_1m``, every trace of the hour) beside the build from traces read whole (the
first ``--limit`` traces of the hour, a sample), on the ClickHouse server and chDB.

    .venv/bin/python bench/topology_window.py [--spans 10000000] [--hops 8] [--runs 5] [--keep] [--reuse]

One minute of traffic (``spans / hops / 60`` traces over lab-like 8-hop paths: client pods calling
three Services each, five backend pods per Service, 20 nodes) is generated as columns and written
through ``Store.insert``, which computes that minute's rollup rows (the figure ``rollup_write``: the
rollup's cost per trace on top of the insert). The other 59 minutes are copies made in the store
(``INSERT ... SELECT`` with new trace ids and shifted times, rollup rows copied with their minute), so
the rollups describe exactly the traces and spans the store holds. Each figure is the median of
``--runs`` answers with an inventory of every pod and Service. Ends with one ``bench:`` line per store
and graph, the build from traces as the peer (ratio: its time over the rollup's, higher is better).
``--keep`` leaves the stores filled (the chDB one in ``--chdb-dir``), ``--reuse`` reads stores a
``--keep`` run left with the same ``--spans``, ``--hops`` and ``--minutes`` instead of filling them.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _lines import bench_line

from hopscope.errors import HopscopeError
from hopscope.records import Batch, Span, Trace
from hopscope.store import SqlStore, store_from_url
from hopscope.store.rollup import BLOCK_NS, BLOCK_S, MINUTE_NS, RollupWriter
from hopscope.store.schema import quote_identifier, table_spec
from hopscope.topology.inventory import Inventory, from_data
from hopscope.topology.source import (
    load_point_topology,
    load_point_topology_of_traces,
    load_service_map,
    load_service_map_of_traces,
)

T0 = 1_790_000_040_000_000_000 // MINUTE_NS * MINUTE_NS
CLIENT_PODS, SERVICES, CALLS, BACKENDS, NODES = 300, 40, 3, 5, 20
BATCH = 5_000  # traces per insert, as a correlator's pass


def _client_ip(i: np.ndarray[Any, Any]) -> list[str]:
    return [f"10.1.{x // 250}.{x % 250 + 1}" for x in i.tolist()]


def _backend_ip(i: np.ndarray[Any, Any]) -> list[str]:
    return [f"10.2.{x // 250}.{x % 250 + 1}" for x in i.tolist()]


def inventory() -> Inventory:
    pods = [{"name": f"client{i}", "ip": ip, "labels": {"app": f"client{i % 30}"}}
            for i, ip in enumerate(_client_ip(np.arange(CLIENT_PODS)))]  # fmt: skip
    pods += [{"name": f"svc{i // BACKENDS}-{i % BACKENDS}", "ip": ip, "labels": {"app": f"svc{i // BACKENDS}"}}
             for i, ip in enumerate(_backend_ip(np.arange(SERVICES * BACKENDS)))]  # fmt: skip
    services = [{"name": f"svc{s}", "cluster_ip": f"10.96.0.{s + 1}", "ports": [80], "selector": {"app": f"svc{s}"}}
                for s in range(SERVICES)]  # fmt: skip
    return from_data({"pods": pods, "services": services})


def one_minute(traces: int, hops: int, seed: int = 1) -> tuple[Batch, Batch]:
    """``traces`` traces starting in the minute at T0, as span and trace batches."""
    rng = np.random.default_rng(seed)
    n = traces
    client = rng.integers(0, CLIENT_PODS, n)
    service = (client * 7 + rng.integers(0, CALLS, n) * 13) % SERVICES
    backend = service * BACKENDS + rng.integers(0, BACKENDS, n)
    cnode, snode = client % NODES, backend % NODES
    start = T0 + rng.integers(0, MINUTE_NS, n).astype(np.uint64)
    links_us = rng.lognormal(3, 1, (n, hops)).astype(np.int64)
    links_us[:, 0] = 0
    server_us = rng.lognormal(8, 1.2, n).astype(np.int64) + 1
    first_ns = start[:, None] + np.cumsum(links_us, axis=1).astype(np.uint64) * 1000
    back_ns = first_ns[:, -1] + server_us.astype(np.uint64) * 1000
    last_ns = back_ns[:, None] + (first_ns[:, -1:] - first_ns)  # the response retraces the request's path
    error = (rng.random(n) < 0.02).astype(np.uint8)
    ids = [f"{x:030x}00" for x in rng.integers(0, 2**62, n)]  # copies replace the last two digits
    cip, bip = _client_ip(client), _backend_ip(backend)
    vip = [f"10.96.0.{s + 1}" for s in service.tolist()]
    names = [lambda i: f"pod-c{client[i]}", lambda i: f"n{cnode[i]}-pre-nat", lambda i: f"n{cnode[i]}-post-nat",
             lambda i: f"hv{cnode[i] // 4}", lambda i: "switch", lambda i: f"n{snode[i]}",
             lambda i: f"pod-s{backend[i]}", lambda i: f"app-s{backend[i]}"][:hops]  # fmt: skip
    hop_of = np.tile(np.arange(hops), n)
    trace_of = np.repeat(np.arange(n), hops)
    pairs = list(zip(trace_of.tolist(), hop_of.tolist(), strict=True))
    spans = Batch(Span, {
        "trace_id": [ids[t] for t in trace_of], "span_id": [f"{t:08x}{h:08x}" for t, h in pairs],
        "parent_span_id": [f"{t:08x}{h - 1:08x}" if h else "" for t, h in pairs],
        "hop_index": hop_of, "point": [names[h](t) for t, h in pairs],
        "hop_kind": [("pod", "nat", "nat", "hypervisor", "switch", "node", "pod", "proxy")[h] for h in hop_of],
        "side": ["client" if h < 5 else "server" for h in hop_of],
        "orig_h": [cip[t] if h < 2 else ("127.0.0.1" if h == 7 else f"172.30.0.{cnode[t] + 1}")
                   for t, h in pairs],
        "resp_h": [vip[t] if h < 2 else ("127.0.0.1" if h == 7 else bip[t]) for t, h in pairs],
        "request_first_ns": first_ns.ravel(), "request_last_ns": first_ns.ravel() + 100,
        "response_first_ns": last_ns.ravel() - 1000, "response_last_ns": last_ns.ravel(),
        "req_link_us": links_us.ravel(), "resp_link_us": links_us.ravel(),
        "link_reason": ["origin" if h == 0 else "l7:req_tcp_seq" for h in hop_of], "link_confidence": np.ones(n * hops),
        "lost_pkts": (rng.random(n * hops) < 0.01).astype(np.uint32), "version": np.ones(n * hops, np.uint64),
    }, n * hops)  # fmt: skip
    duration_us = (last_ns[:, 0] - start) // 1000
    trace_batch = Batch(Trace, {
        "trace_id": ids, "kind": ["l7"] * n, "start_ns": start, "end_ns": last_ns[:, 0], "duration_us": duration_us,
        "l7_proto": ["http" if s % 4 else "grpc" for s in service.tolist()], "client_h": cip, "server_h": bip,
        "hop_count": np.full(n, hops), "error": error, "status": np.where(error, 503, 200),
        "version": np.ones(n, np.uint64),
    }, n)  # fmt: skip
    return spans, trace_batch


def _passes(spans: Batch, traces: Batch) -> list[tuple[Batch, Batch]]:
    per_trace = spans.length // traces.length
    return [(spans.slice(lo * per_trace, min(lo + BATCH, traces.length) * per_trace),
             traces.slice(lo, min(lo + BATCH, traces.length))) for lo in range(0, traces.length, BATCH)]  # fmt: skip


def write_minute(store: SqlStore, spans: Batch, traces: Batch) -> float:
    """Insert the minute a correlator pass at a time (spans, then traces: the store writes the
    rollup rows); returns the CPU seconds the rollups took of that (``rollup_cpu_s``)."""
    for span_part, trace_part in _passes(spans, traces):
        store.insert("spans", span_part)
        store.insert("traces", trace_part)
    store.rollups.flush(close_all=True)  # what the writer's timer or close would write
    return rollup_cpu_s(spans, traces)


def rollup_cpu_s(spans: Batch, traces: Batch) -> float:
    """The CPU seconds the rollups of the minute take on the writer (computed without a store)."""
    parts = _passes(spans, traces)
    alone = RollupWriter(lambda table, batch: len(batch), lambda ids: [])
    t = time.process_time()  # CPU time: the machine may be shared
    for span_part, trace_part in parts:
        alone.written("spans", span_part)
        alone.written("traces", trace_part)
    return time.process_time() - t


#: Columns shifted by the copy's offset (0 stays 0: no response).
_SHIFTED = ("start_ns", "end_ns", "request_first_ns", "request_last_ns", "response_first_ns", "response_last_ns")
#: Rollup columns that count traces: a block holds ``BLOCK_S / 60`` copies of minute 0.
_COUNTS = ("requests", "errors", "traces", "lost_pkts", "loss_traces")


def _copy_sql(store: SqlStore, table: str, minutes: int, block_rows: bool) -> str:
    """INSERT ... SELECT making the copies of one table's rows of minute 0 (of its block, for the
    rollups' block rows: each block then holds BLOCK_S / 60 copies, the first replacing the original)."""
    db, spec = quote_identifier(store.database), table_spec(table)
    step_ns = BLOCK_NS if block_rows else MINUTE_NS
    times = BLOCK_S // 60 if block_rows else 1
    exprs = []
    for col in spec.columns():
        name = quote_identifier(col.name)
        if col.name == "trace_id":
            exprs.append(f"concat(substring({name}, 1, 30), lower(hex(toUInt8(m))))")
        elif col.name in _SHIFTED:
            exprs.append(f"if({name} = 0, {name}, {name} + m * {step_ns})")
        elif col.name == "minute_ns":
            exprs.append(f"{name} + m * {step_ns}")
        elif col.name in ("segment", "version"):
            exprs.append(f"{name} + m + {int(block_rows)}")
        elif col.name in _COUNTS:
            exprs.append(f"{name} * {times}")
        elif col.name.endswith("_counts"):
            exprs.append(f"arrayMap(x -> x * {times}, {name})")
        else:
            exprs.append(name)
    columns = ", ".join(quote_identifier(c.name) for c in spec.columns())
    copies = minutes * 60 // BLOCK_S if block_rows else minutes - 1
    first = 0 if block_rows else 1
    where = f"{quote_identifier(spec.time_column)} < {T0 + MINUTE_NS}"
    if table in ("edges_1m", "links_1m"):
        where += f" AND resolution_s = {BLOCK_S if block_rows else 60}"
    return (
        f"INSERT INTO {db}.{quote_identifier(table)} ({columns}) SELECT {', '.join(exprs)}"
        f" FROM {db}.{quote_identifier(table)} ARRAY JOIN arrayMap(x -> x + {first}, range({copies})) AS m"
        f" WHERE {where}"
    )


def copy_minutes(store: SqlStore, minutes: int) -> None:
    """Minutes 1..minutes-1 as copies of minute 0, made in the store (``minutes``: whole blocks)."""
    for table in ("spans", "traces", "edges_1m", "links_1m"):
        store._command(_copy_sql(store, table, minutes, block_rows=False))
        if table.endswith("_1m"):
            store._command(_copy_sql(store, table, minutes, block_rows=True))


def _holds(store: SqlStore, traces: int, spans: int) -> bool:
    """Whether a store left by ``--keep`` holds this plan (its schema current, its counts these)."""
    try:
        store.check_schema()
        return store.count("traces") == traces and store.count("spans") == spans
    except HopscopeError:
        return False


def median_s(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=10_000_000, help="spans in the hour")
    parser.add_argument("--hops", type=int, default=8, choices=range(2, 9))
    parser.add_argument("--minutes", type=int, default=60, help="a multiple of 10")
    parser.add_argument("--limit", type=int, default=10_000, help="traces the peer reads (the API's most)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clickhouse", default="clickhouse://127.0.0.1:9000/hs_bench_topology")
    parser.add_argument("--stores", default="clickhouse,chdb", help="which stores, comma-separated")
    parser.add_argument("--keep", action="store_true", help="leave the stores filled (to profile their reads)")
    parser.add_argument("--reuse", action="store_true", help="read the stores --keep left, if they hold this plan")
    parser.add_argument("--chdb-dir", help="the chDB store's directory (default: a new temporary one)")
    args = parser.parse_args()
    per_minute = args.spans // args.hops // args.minutes
    spans, traces = one_minute(per_minute, args.hops)
    inv = inventory()
    start, end = T0, T0 + args.minutes * MINUTE_NS
    print(f"{per_minute * args.minutes:,} traces x {args.hops} hops = {per_minute * args.minutes * args.hops:,} spans"
          f" over {args.minutes} min; peer reads the first {args.limit:,} traces")  # fmt: skip
    print(f"{'store':<12}{'graph':<10}{'rollup ms':>10}{'traces ms':>11}{'requests':>11}{'(peer)':>9}")
    lines = []
    scratch = args.chdb_dir or tempfile.mkdtemp(prefix="hs-topology-")
    urls = {"clickhouse": args.clickhouse, "chdb": f"chdb://{scratch}"}
    for name, url in ((n, urls[n]) for n in args.stores.split(",")):
        store = store_from_url(url)
        if args.reuse and _holds(store, per_minute * args.minutes, per_minute * args.minutes * args.hops):
            rollup_s = rollup_cpu_s(spans, traces)
            print(f"{name}: reusing {store.url}")
        else:
            store.drop_schema()
            store.ensure_schema()
            rollup_s = write_minute(store, spans, traces)
            t = time.perf_counter()
            copy_minutes(store, args.minutes)
            print(f"{name}: loaded ({time.perf_counter() - t:.0f} s to copy)")
        print(f"{name}: rollup rows {store.count('edges_1m'):,} edges_1m, {store.count('links_1m'):,} links_1m")
        services = load_service_map(store, start, end, args.limit, inv)
        sample = load_service_map_of_traces(store, start, end, args.limit, inv)
        assert services.graph["traces"] == per_minute * args.minutes
        for graph, ours, peer in (
            ("services", lambda s=store: load_service_map(s, start, end, args.limit, inv),
             lambda s=store: load_service_map_of_traces(s, start, end, args.limit, inv)),
            ("points", lambda s=store: load_point_topology(s, start, end),
             lambda s=store: load_point_topology_of_traces(s, start, end, args.limit)),
        ):  # fmt: skip
            ours_s, peer_s = median_s(ours, args.runs), median_s(peer, max(1, args.runs // 2))
            counted = (ours() if graph == "points" else services).graph["traces"]  # type: ignore[attr-defined]
            print(f"{name:<12}{graph:<10}{ours_s * 1000:>10.0f}{peer_s * 1000:>11.0f}{counted:>11,}"
                  f"{sample.graph['traces']:>9,}")  # fmt: skip
            # ratio: the build from traces' time over the rollup's (it counts only the sample)
            lines.append(bench_line(f"topology_{graph}_hour_{name}", ours_s * 1000, "ms",
                                    (f"traces_limit_{args.limit}", peer_s * 1000), peer_s / ours_s))  # fmt: skip
        # no peer: the rollup's cost per trace on the writer's path
        lines.append(bench_line(f"rollup_write_{name}", rollup_s / per_minute * 1e6, "us/trace"))
        if args.keep:
            print(f"{name}: kept at {store.url}")
        else:
            store.drop_schema()
        store.close()
    if not args.keep and not args.chdb_dir:
        shutil.rmtree(scratch)  # chDB deletes a dropped database's files later, after this process
    print("\n".join(lines))


if __name__ == "__main__":
    main()
