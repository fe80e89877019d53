"""Flow records per second into the stores: the ClickHouse server (18.16, clickhouse-driver, columnar)
and chDB, with the same synthetic batch of FlowRecords (all 39 columns).

Run after deploy/clickhouse/start.sh:  .venv/bin/python bench/store_insert.py [--rows N] [--batch B]

Paths timed (rows/s, higher is better; each insert is one batch of B rows, as the correlator sends):
  - server  ServerStore.insert (clickhouse-driver, native protocol, columnar, use_numpy)
  - server  the same, all rows in one INSERT (the peer below also sends one INSERT)
  - server  clickhouse-driver columnar with Python lists (the driver's default path, no numpy)
  - server  peer: clickhouse-client (the server's own C++ client) loading the same rows as
            TabSeparated from a file in one INSERT (TSV written beforehand, not timed)
  - chDB    EmbeddedStore.insert (an Arrow IPC stream through send_insert(..., "ArrowStream"))
  - chDB    the same batches as pyarrow tables read through the Python() table function
Each path inserts into a fresh database that is dropped afterwards. Ends with one ``bench:`` line per
path beside the clickhouse-client peer (ratio: the path's rows/s over the peer's, higher is better).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable

import numpy as np
from _lines import bench_line

from hopscope.records import Batch, ColumnType, FlowRecord
from hopscope.store import SqlStore
from hopscope.store.embedded import EmbeddedStore, batch_to_arrow
from hopscope.store.schema import quote_identifier
from hopscope.store.server import ServerStore

BASE_NS = 1_700_000_000_000_000_000
PEER = "server  peer: clickhouse-client, TSV file, one INSERT"
#: label of each path: its name in the bench lines
TOKENS = {
    "server  ServerStore.insert (driver, columnar numpy)": "store_insert_server",
    "server  ServerStore.insert, all rows in one INSERT": "store_insert_server_one_insert",
    "server  driver columnar, Python lists": "store_insert_server_driver_lists",
    PEER: "clickhouse_client_tsv",
    "chDB    EmbeddedStore.insert (ArrowStream)": "store_insert_chdb",
    "chDB    Python(arrow table) table function": "store_insert_chdb_python_function",
}


def synthetic_flows(n: int, seed: int = 7) -> Batch:
    """n flows over 10 capture points and one minute, random counters, realistic text columns."""
    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {}
    for col in FlowRecord.columns():
        if col.type is ColumnType.STR:
            continue
        high = {ColumnType.U8: 2**8, ColumnType.U16: 2**16, ColumnType.U32: 2**32}.get(col.type, 2**40)
        columns[col.name] = rng.integers(0, high, n, dtype=np.uint64).astype(col.type.dtype)
    start = BASE_NS + np.sort(rng.integers(0, 60 * 10**9, n, dtype=np.uint64))
    columns.update(start_ns=start, end_ns=start + rng.integers(0, 10**9, n, dtype=np.uint64),
                   flow_id=np.arange(n, dtype=np.uint64), proto=np.full(n, 6, np.uint8))  # fmt: skip
    points = [f"node{i % 10}-eth0" for i in range(n)]
    columns.update(
        point=points, host=[p[:5] for p in points], iface=["eth0"] * n, hop_kind=["node"] * n,
        orig_h=[f"10.0.{(i >> 8) & 255}.{i & 255}" for i in range(n)], resp_h=["10.96.0.10"] * n,
        conn_state=["SF"] * n, history=["ShADadFf"] * n, close_type=["normal"] * n,
        community_id=[f"1:{i:027x}=" for i in range(n)], tunnel=[""] * n,
    )  # fmt: skip
    return Batch(FlowRecord, columns, n)  # type: ignore[arg-type]


def chunks(batch: Batch, size: int) -> list[Batch]:
    return [batch.slice(i, i + size) for i in range(0, len(batch), size)]


def store_insert(store: SqlStore, parts: list[Batch]) -> None:
    """The production path of either store."""
    for part in parts:
        store.insert("flows", part)


def driver_lists_insert(store: ServerStore, parts: list[Batch]) -> None:
    """clickhouse-driver columnar without numpy: every column converted to a Python list."""
    names = [c.name for c in FlowRecord.columns()]
    sql = f"INSERT INTO {quote_identifier(store.database)}.`flows` ({', '.join(names)}) VALUES"
    for part in parts:
        data = [c if isinstance(c, list) else c.tolist() for c in (part.columns[n] for n in names)]
        store._execute(sql, data, columnar=True)


def python_function_insert(store: EmbeddedStore, parts: list[Batch]) -> None:
    """INSERT ... SELECT FROM Python(arrow_batch): chDB reads the local variable's Arrow buffers."""
    names = ", ".join(c.name for c in FlowRecord.columns())
    sql = f"INSERT INTO `{store.database}`.`flows` ({names}) SELECT {names} FROM Python(arrow_batch)"
    for part in parts:
        arrow_batch = batch_to_arrow(part)  # noqa: F841 (resolved by name from this frame by chDB)
        with store._pool.lease() as conn:
            conn.query(sql)


def client_insert_prepared(store: ServerStore, batch: Batch) -> Callable[[], None]:
    """The peer: clickhouse-client reads the rows as TabSeparated (file written now, load timed later)."""
    names = [c.name for c in FlowRecord.columns()]
    lists = [c if isinstance(c, list) else c.tolist() for c in (batch.columns[n] for n in names)]
    tsv = tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False)  # noqa: SIM115 (closed below)
    with tsv:
        for row in zip(*lists, strict=True):
            tsv.write("\t".join(map(str, row)) + "\n")
    query = f"INSERT INTO {quote_identifier(store.database)}.`flows` ({', '.join(names)}) FORMAT TabSeparated"
    command = ["clickhouse-client", "--host", store.host, "--port", str(store.port), "--query", query]

    def run() -> None:
        try:
            with open(tsv.name, "rb") as stdin:
                subprocess.run(command, stdin=stdin, check=True)
        finally:
            os.unlink(tsv.name)

    return run


def measure(label: str, store: SqlStore, rows: int, run: Callable[[], None]) -> tuple[str, float]:
    """Rows per second of ``run`` into a fresh schema, checked by a count afterwards."""
    t0 = time.perf_counter()
    run()
    rate = rows / (time.perf_counter() - t0)
    if store.count("flows") != rows:
        raise SystemExit(f"{label}: {store.count('flows')} rows stored, {rows} sent")
    return label, rate


def bench_server(batch: Batch, parts: list[Batch], host: str, port: int) -> list[tuple[str, float]]:
    results = []
    for label in [label for label in TOKENS if label.startswith("server")]:
        store = ServerStore(host, port, f"hopscope_bench_{uuid.uuid4().hex[:8]}")
        store.ensure_schema()
        try:
            run: Callable[[], None]
            if "one INSERT" in label and "ServerStore" in label:
                run = functools.partial(store_insert, store, [batch])
            elif "ServerStore" in label:
                run = functools.partial(store_insert, store, parts)
            elif "lists" in label:
                run = functools.partial(driver_lists_insert, store, parts)
            else:
                run = client_insert_prepared(store, batch)
            results.append(measure(label, store, len(batch), run))
        finally:
            store.drop_schema()
            store.close()
    return results


def bench_chdb(batch: Batch, parts: list[Batch]) -> list[tuple[str, float]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="hopscope-bench-chdb-") as path:
        for label in [label for label in TOKENS if label.startswith("chDB")]:
            store = EmbeddedStore(path, f"bench_{uuid.uuid4().hex[:8]}")
            store.ensure_schema()
            try:
                insert = store_insert if "EmbeddedStore" in label else python_function_insert
                results.append(measure(label, store, len(batch), functools.partial(insert, store, parts)))
            finally:
                store.drop_schema()
                store.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="flow records in total")
    parser.add_argument("--batch", type=int, default=10_000, help="rows per insert")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    batch = synthetic_flows(args.rows)
    print(f"{args.rows:,} FlowRecords ({len(FlowRecord.columns())} columns), {args.batch:,} rows per insert")
    parts = chunks(batch, args.batch)
    logging.basicConfig(level=logging.ERROR)  # the schema degradation warning is not a result
    results = bench_server(batch, parts, args.host, args.port) + bench_chdb(batch, parts)
    for label, rate in results:
        print(f"  {label:<55} {rate:>12,.0f} rows/s")
    rates = dict(results)
    peer = rates.pop(PEER)
    for label, rate in rates.items():  # ratio: the path's rows/s over clickhouse-client's, higher is better
        print(bench_line(TOKENS[label], rate, "rows/s", (TOKENS[PEER], peer), rate / peer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
