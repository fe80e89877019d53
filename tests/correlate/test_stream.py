"""Streaming correlation over a replayable in-process log into chDB: same traces as offline, and a
correlator dropped mid-stream then restarted writes nothing twice and loses nothing."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from hopscope.correlate import Correlator
from hopscope.correlate.stream import StreamCorrelator, StreamSettings, event_times
from hopscope.correlate.synthetic import Scenario, generate
from hopscope.records import Batch
from hopscope.store.embedded import EmbeddedStore
from hopscope.transport.base import TOPICS, Delivery, TransportStats, split_by_partition

FOREVER = 2**63 - 1


@dataclass
class Log:
    """Kafka's contract in-process: an append-only log per partition; consumers resume after the
    group's committed offset."""

    entries: list[Delivery] = field(default_factory=list)
    committed: dict[tuple[str, int], int] = field(default_factory=dict)

    def append(self, batch: Batch, partitions: int = 2) -> None:
        for part, chunk in split_by_partition(batch, partitions):
            topic = TOPICS[batch.record_type.TABLE]
            offset = sum(1 for d in self.entries if (d.topic, d.partition) == (topic, part))
            self.entries.append(Delivery(chunk, topic, part, offset))


class LogConsumer:
    def __init__(self, log: Log, per_poll: int = 3) -> None:
        self.log, self.per_poll, self.stats = log, per_poll, TransportStats()
        self.queue = [d for d in log.entries if d.offset > log.committed.get((d.topic, d.partition), -1)]

    def poll(self, timeout_s: float = 1.0, max_records: int = 100_000) -> list[Delivery]:
        out, self.queue = self.queue[: self.per_poll], self.queue[self.per_poll :]
        return out

    def commit(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            key = (d.topic, d.partition)
            self.log.committed[key] = max(self.log.committed.get(key, -1), d.offset)


def _stream_log(sc: Scenario, chunk: int = 700) -> tuple[Log, Batch, Batch]:
    """Records in event-time order, in chunks mixing all points, neighbours swapped (out of order)."""
    syn = generate(sc)
    log = Log()
    parts = []
    for batch in (syn.requests, syn.flows):
        order = np.argsort(event_times(batch), kind="stable")
        parts += [(int(event_times(batch)[idx[0]]), batch.take(idx))
                  for idx in np.array_split(order, max(1, len(batch) // chunk))]
    parts.sort(key=lambda p: p[0])
    for i in range(0, len(parts) - 1, 2):
        parts[i], parts[i + 1] = parts[i + 1], parts[i]
    for _, batch in parts:
        log.append(batch)
    return log, syn.requests, syn.flows


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedStore]:
    s = EmbeddedStore(str(tmp_path / "chdb"), f"hs_stream_{uuid.uuid4().hex[:8]}")
    s.ensure_schema()
    try:
        yield s
    finally:
        s.close()


SETTINGS = StreamSettings(lateness_us=30_000, stitch_every_s=0.0, idle_flush_s=0.2, poll_timeout_s=0.0)


def _stored(store: EmbeddedStore) -> set[tuple[str, str]]:
    return {(t.trace_id, t.points) for t in store.query_traces(0, FOREVER, limit=1_000_000)}


def _offline(requests: Batch, flows: Batch) -> set[tuple[str, str]]:
    res = Correlator().stitch(requests, flows)
    return set(zip(res.traces.columns["trace_id"], res.traces.columns["points"], strict=True))


def test_streaming_equals_offline(store: EmbeddedStore) -> None:
    log, requests, flows = _stream_log(Scenario(requests=1500, l4_connections=20, conn_spacing_us=200))
    consumer = LogConsumer(log)
    sc = StreamCorrelator(consumer, store, stream=SETTINGS)
    sc.run(threading.Event(), exit_when_idle=True)
    want = _offline(requests, flows)
    assert _stored(store) == want
    assert store.count("traces") == len(want)
    assert sc.stats.traces_out == len(want) and sc.stats.commits > 1
    assert sum(1 for d in log.entries if d.offset <= log.committed.get((d.topic, d.partition), -1)) \
        == len(log.entries)  # every delivery committed at the end


def test_restart_after_a_crash_writes_nothing_twice(store: EmbeddedStore) -> None:
    log, requests, flows = _stream_log(Scenario(requests=1500, l4_connections=20, conn_spacing_us=200))
    stop = threading.Event()
    first = StreamCorrelator(LogConsumer(log), store, stream=SETTINGS)
    for _ in range(len(log.entries) // 6):  # half the log, then the process "dies": no drain, no flush
        first.poll_once()
        first.maybe_stitch(stop)
    assert first.stats.traces_out > 0 and log.committed
    second = StreamCorrelator(LogConsumer(log), store, stream=SETTINGS)
    second.run(stop, exit_when_idle=True)
    assert second.stats.replayed_skipped > 0  # replayed records of traces already stored were recognised
    want = _offline(requests, flows)
    assert _stored(store) == want
    assert store.count("traces") == len(want)
    assert store.count("spans") == sum(int(p.count(",")) + 1 for _, p in want)
