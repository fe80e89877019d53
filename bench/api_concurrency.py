"""Trace lookups through a real ``hopscope serve`` under 200 concurrent clients, alone and beside
heavy list queries.

    .venv/bin/python bench/api_concurrency.py [--store URL|chdb] [--traces 125000] [--clients 200]
        [--serve-arg=--query-timeout=10 ...]

Loads synthetic traces with ``bench/trace_lookup.py``'s generator into a scratch store (the ClickHouse
server by default, ``--store chdb:///dir`` for chDB; ``--keep`` leaves it for the next run), starts
``hopscope serve`` on a free loopback port, and times with httpx (async, HTTP/1.1, one connection per
client):

- ``lookup_alone``: one client, one trace lookup (``GET /api/v1/traces/{id}``) after another: the peer
  every concurrent figure is compared with;
- ``heavy_alone``: one client, one heavy query (``GET /api/v1/traces?limit=2000``: a range scan with
  dedup over every trace) after another;
- ``lookup_200``: ``--clients`` clients, every one looking traces up;
- ``lookup_beside_heavy`` and ``heavy_beside_lookup``: the same clients, a quarter of them sending heavy
  queries, the rest lookups; refused heavy queries (429, ``Retry-After``) are counted, not timed.

Both run twice: ``one_connection`` serves with one store connection and no bound on heavy queries
(every query waits for that one connection), ``pooled`` with the defaults (a pool of store connections,
at most 4 heavy queries, the rest 429).

Each line is ``bench: <name> <value> <unit> [peer <name> <value> <unit>] [ratio <r>]``; the ratio is the
concurrent latency over the same request's latency alone (lower is better: 1 means no slowdown).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _lines import bench_line

from hopscope.store import store_from_url

HERE = Path(__file__).resolve().parent
HEAVY = "/api/v1/traces?limit=2000"


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("trace_lookup", HERE / "trace_lookup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fill(url: str, traces: int, hops: int) -> list[str]:
    """The trace ids of a freshly loaded scratch store."""
    store = store_from_url(url)
    try:
        ids: list[str] = _generator().load(store, traces, hops)  # type: ignore[attr-defined]
    finally:
        store.close()
    return ids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(url: str, serve_args: list[str]) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hopscope", "serve", "--store", url, "--port", str(port), *serve_args],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("hopscope: serving"):
            raise SystemExit(f"hopscope serve did not start (exit {proc.wait()})")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@dataclass
class Timings:
    ms: list[float] = field(default_factory=list)
    refused: int = 0
    failed: int = 0

    def pct(self, q: float) -> float:
        ordered = sorted(self.ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")

    @property
    def p50(self) -> float:
        return statistics.median(self.ms) if self.ms else float("nan")


async def _client(base: str, paths: list[str], out: Timings) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=1)) as client:
        for path in paths:
            start = time.perf_counter()
            r = await client.get(path)
            if r.status_code == 200:
                out.ms.append((time.perf_counter() - start) * 1000)
            elif r.status_code == 429:
                out.refused += 1
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
            else:
                out.failed += 1


async def run_clients(
    base: str, ids: list[str], clients: int, heavy_clients: int, per_client: int
) -> tuple[Timings, Timings]:
    lookups, heavy = Timings(), Timings()
    tasks = []
    for c in range(clients):
        if c < heavy_clients:
            tasks.append(_client(base, [HEAVY] * per_client, heavy))
        else:
            paths = [f"/api/v1/traces/{ids[(c * per_client + i) * 7919 % len(ids)]}" for i in range(per_client)]
            tasks.append(_client(base, paths, lookups))
    await asyncio.gather(*tasks)
    return lookups, heavy


def line(name: str, value: float, unit: str, peer: tuple[str, float] | None = None) -> str:
    """A bench line; beside a peer, the ratio is value / peer (the slowdown under concurrency)."""
    return bench_line(name, value, unit, peer, value / peer[1] if peer is not None else None)


def measure(config: str, base: str, ids: list[str], clients: int, per_client: int) -> None:
    """Every figure of one serve configuration, each line named ``<config>_<figure>``."""
    alone, _ = asyncio.run(run_clients(base, ids, 1, 0, 100))
    _, heavy_alone = asyncio.run(run_clients(base, ids, 1, 1, 10))
    peers = {"p50": ("lookup_alone_p50", alone.p50), "p99": ("lookup_alone_p99", alone.pct(0.99))}
    print(line(f"{config}_lookup_alone_p50", alone.p50, "ms"))
    print(line(f"{config}_lookup_alone_p99", alone.pct(0.99), "ms"))
    print(line(f"{config}_heavy_alone_p50", heavy_alone.p50, "ms"))
    start = time.perf_counter()
    crowd, _ = asyncio.run(run_clients(base, ids, clients, 0, per_client))
    rate = len(crowd.ms) / (time.perf_counter() - start)
    print(line(f"{config}_lookup_{clients}_clients_p50", crowd.p50, "ms", peers["p50"]))
    print(line(f"{config}_lookup_{clients}_clients_p99", crowd.pct(0.99), "ms", peers["p99"]))
    print(line(f"{config}_lookup_{clients}_clients_rate", rate, "lookups/s"))
    mixed, heavy = asyncio.run(run_clients(base, ids, clients, clients // 4, per_client))
    print(line(f"{config}_lookup_beside_heavy_{clients}_clients_p50", mixed.p50, "ms", peers["p50"]))
    print(line(f"{config}_lookup_beside_heavy_{clients}_clients_p99", mixed.pct(0.99), "ms", peers["p99"]))
    print(line(f"{config}_heavy_beside_lookup_{clients}_clients_p50", heavy.p50, "ms",
               ("heavy_alone_p50", heavy_alone.p50)))  # fmt: skip
    print(f"{config}: {heavy.refused} of {len(heavy.ms) + heavy.refused} heavy queries refused (429)")
    print(line(f"{config}_heavy_refused_429", heavy.refused, "requests"))
    print(line(f"{config}_failed", crowd.failed + mixed.failed + heavy.failed, "requests"))


#: serve configurations compared: one store connection and no bound on heavy queries (every query waits
#: for that one connection), then the defaults.
CONFIGS: dict[str, list[str]] = {
    "one_connection": ["--store-connections", "1", "--max-heavy-queries", "100000"],
    "pooled": [],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="clickhouse://127.0.0.1:9000/hs_bench_api", metavar="URL")
    parser.add_argument("--traces", type=int, default=125_000)
    parser.add_argument("--hops", type=int, default=8)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--per-client", type=int, default=5, help="requests each concurrent client sends")
    parser.add_argument("--serve-arg", action="append", default=[], help="passed to hopscope serve (both runs)")
    parser.add_argument("--keep", action="store_true", help="keep the loaded store afterwards")
    args = parser.parse_args()
    url = args.store if args.store != "chdb" else f"chdb://{tempfile.mkdtemp(prefix='hs-api-bench-')}"
    ids = fill(url, args.traces, args.hops)
    print(f"{args.traces:,} traces x {args.hops} hops in {url}")
    try:
        for config, serve_args in CONFIGS.items():
            with served(url, [*serve_args, *args.serve_arg]) as base:
                measure(config, base, ids, args.clients, args.per_client)
    finally:
        if not args.keep:
            store = store_from_url(url)
            store.drop_schema()
            store.close()


if __name__ == "__main__":
    main()
