"""The in-process transport: order, back-pressure bound, commit bookkeeping."""

from __future__ import annotations

from hopscope.records import Batch, FlowRecord
from hopscope.transport import InProcessTransport


def _batch(n: int, base: int = 0) -> Batch:
    return Batch.from_records(FlowRecord, [FlowRecord(flow_id=base + i, syn_seq=base + i) for i in range(n)])


def test_publish_poll_commit() -> None:
    t = InProcessTransport(max_batches=4)
    t.publish(_batch(3))
    t.publish(_batch(2, base=100))
    t.publish(_batch(0))  # empty batches are not sent
    got = t.poll(timeout_s=0.1)
    assert [len(d.batch) for d in got] == [3, 2]
    assert [d.offset for d in got] == [0, 1]
    assert t.poll(timeout_s=0) == []
    t.commit(got)
    assert t.committed == {"hopscope.flows": 1}
    assert (t.stats.records_out, t.stats.records_in) == (5, 5)


def test_poll_stops_at_max_records() -> None:
    t = InProcessTransport()
    for i in range(5):
        t.publish(_batch(10, base=i * 10))
    first = t.poll(timeout_s=0.1, max_records=20)
    assert sum(len(d.batch) for d in first) == 20
    rest = t.poll(timeout_s=0.1)
    assert sum(len(d.batch) for d in rest) == 30
