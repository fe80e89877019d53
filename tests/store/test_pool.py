"""The connection pool, and both stores under several threads: one connection per thread at a time,
a slow query beside fast ones, a per-query time limit."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hopscope.records import Batch, Span, Trace
from hopscope.store import QueryTimeoutError, store_from_url
from hopscope.store.base import BoundQuery
from hopscope.store.pool import ConnectionPool, PoolClosedError
from tests.conftest import CLICKHOUSE_URL, require_service


class Conn:
    def __init__(self) -> None:
        self.users = 0
        self.closed = False


def test_pool_lends_each_connection_to_one_caller() -> None:
    made: list[Conn] = []
    pool = ConnectionPool(lambda: made.append(Conn()) or made[-1], lambda c: setattr(c, "closed", True), size=3)
    overlap = threading.Event()
    barrier = threading.Barrier(6)

    def use(_: int) -> None:
        barrier.wait()
        for _ in range(50):
            with pool.lease() as conn:
                conn.users += 1
                if conn.users > 1:
                    overlap.set()
                conn.users -= 1

    with ThreadPoolExecutor(6) as workers:
        list(workers.map(use, range(6)))
    assert not overlap.is_set()
    assert 1 <= len(made) <= 3


def test_pool_waits_for_a_connection_beyond_its_size() -> None:
    pool = ConnectionPool(Conn, lambda c: None, size=1)
    got: list[Conn] = []
    with pool.lease() as first:
        waiter = threading.Thread(target=lambda: got.append(pool.lease().__enter__()))
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive() and not got  # waits while the only connection is out
    waiter.join(10)
    assert got == [first]


def test_closed_pool() -> None:
    conns: list[Conn] = []
    pool = ConnectionPool(lambda: conns.append(Conn()) or conns[-1], lambda c: setattr(c, "closed", True), size=2)
    with pool.lease() as lent:
        with pool.lease():
            pass
        pool.close()
        assert [c.closed for c in conns] == [False, True]  # the idle one now, the lent one on return
    assert lent.closed
    with pytest.raises(PoolClosedError), pool.lease():
        pass


@pytest.fixture(params=["server", "chdb"])
def url(request: pytest.FixtureRequest, chdb_dir: Path) -> str:
    if request.param == "server":
        require_service("ClickHouse", CLICKHOUSE_URL.split("//")[1].split("/")[0])
        return CLICKHOUSE_URL.rsplit("/", 1)[0] + f"/hs_pool_{uuid.uuid4().hex[:8]}"
    return f"chdb://{chdb_dir}?database=hs_pool"


def test_threads_share_a_store(url: str) -> None:
    store = store_from_url(url, pool_size=3)
    try:
        store.ensure_schema()
        traces = [Trace(trace_id=f"{i:032x}", start_ns=i + 1, version=1) for i in range(20)]
        store.insert("traces", Batch.from_records(Trace, traces))
        with ThreadPoolExecutor(8) as workers:
            found = list(workers.map(lambda t: store.get_trace(t.trace_id)[0], traces * 5))
        assert found == traces * 5
    finally:
        store.drop_schema()
        store.close()


def test_lookups_on_a_single_connection(url: str) -> None:
    """get_trace reads the trace and its spans on two connections at once; with one, the second read
    waits for the first instead of the lookup never ending, from any number of threads."""
    store = store_from_url(url, pool_size=1)
    try:
        store.ensure_schema()
        traces = [Trace(trace_id=f"{i:032x}", start_ns=i + 1, version=1) for i in range(6)]
        spans = [Span(trace_id=t.trace_id, span_id=f"{h:016x}", hop_index=h, request_first_ns=t.start_ns, version=1)
                 for t in traces for h in (1, 0)]  # fmt: skip
        store.insert("traces", Batch.from_records(Trace, traces))
        store.insert("spans", Batch.from_records(Span, spans))
        with ThreadPoolExecutor(4) as workers:
            found = list(workers.map(store.get_trace, [t.trace_id for t in traces * 3]))
        assert [t for t, _ in found] == traces * 3
        assert [[s.hop_index for s in ss] for _, ss in found] == [[0, 1]] * 18
    finally:
        store.drop_schema()
        store.close()


def test_a_slow_query_does_not_hold_up_others(url: str) -> None:
    store = store_from_url(url, pool_size=2)
    slow_done = threading.Event()

    def slow() -> None:
        store._select(BoundQuery("SELECT sleep(2)", {}))
        slow_done.set()

    try:
        thread = threading.Thread(target=slow)
        thread.start()
        assert store._select(BoundQuery("SELECT 1", {})) == [(1,)]
        assert not slow_done.is_set()  # answered while the slow query still ran
        thread.join(30)
    finally:
        store.close()


def test_query_time_limit(url: str) -> None:
    store = store_from_url(url, query_timeout_s=1)
    try:
        with pytest.raises(QueryTimeoutError, match=r"(?i)timeout exceeded"):
            store._select(BoundQuery("SELECT count() FROM numbers(100000000000000)", {}))
        assert store._select(BoundQuery("SELECT 1", {})) == [(1,)]
    finally:
        store.close()




def test_a_connection_whose_query_failed_is_not_reused() -> None:
    conns: list[Conn] = []
    pool = ConnectionPool(lambda: conns.append(Conn()) or conns[-1], lambda c: setattr(c, "closed", True), size=1)
    with pytest.raises(RuntimeError), pool.lease():
        raise RuntimeError("the query failed")
    with pool.lease() as conn:
        assert conn is conns[1] and not conn.closed
    assert conns[0].closed
