"""The windowed stitcher (``StreamCorrelator``) over a replayable in-process log into chDB: the same
traces as the offline engine, with windows that really split the input; a correlator dropped mid-stream
and restarted writes nothing twice and loses nothing; duplicates never split a request; the relay's
rendezvous host is the server end of each leg."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from hopscope.correlate import Correlator
from hopscope.correlate.stream import StreamCorrelator, StreamSettings, event_times, rendezvous_hosts
from hopscope.correlate.synthetic import Scenario, generate
from hopscope.records import Batch
from hopscope.store.embedded import EmbeddedStore
from hopscope.transport.base import TOPICS, Delivery, TransportStats, split_by_partition

FOREVER = 2**63 - 1


@dataclass
class Log:
    """Kafka's contract in-process: an append-only log per partition; a consumer resumes after the
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
            assert d.offset >= self.log.committed.get(key, -1), "commits never go back"
            self.log.committed[key] = d.offset


def stream_log(sc: Scenario, chunk: int = 700, duplicate_every: int = 0) -> tuple[Log, Batch, Batch]:
    """Records in event-time order, in chunks mixing all points, neighbours swapped (out of order);
    with ``duplicate_every``, every n-th chunk is sent twice (at-least-once delivery)."""
    syn = generate(sc)
    log = Log()
    parts = []
    for batch in (syn.requests, syn.flows):
        times = event_times(batch)
        order = np.argsort(times, kind="stable")
        parts += [(int(times[idx[0]]), batch.take(idx)) for idx in np.array_split(order, max(1, len(batch) // chunk))]
    parts.sort(key=lambda p: p[0])
    for i in range(0, len(parts) - 1, 2):
        parts[i], parts[i + 1] = parts[i + 1], parts[i]
    for i, (_, batch) in enumerate(parts):
        log.append(batch)
        if duplicate_every and i % duplicate_every == 0:
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


SETTINGS = StreamSettings(lateness_us=30_000, trace_spread_us=5_000, stitch_every_s=0.0, idle_flush_s=0.2,
                          poll_timeout_s=0.0)
SCENARIO = Scenario(requests=1500, l4_connections=20, conn_spacing_us=200)


def stored(store: EmbeddedStore) -> set[tuple[str, str]]:
    return {(t.trace_id, t.points) for t in store.query_traces(0, FOREVER, limit=1_000_000)}


def offline(requests: Batch, flows: Batch) -> set[tuple[str, str]]:
    res = Correlator().stitch(requests, flows)
    return set(zip(res.traces.columns["trace_id"], res.traces.columns["points"], strict=True))


@pytest.mark.parametrize("duplicate_every", [0, 3])
def test_streaming_equals_offline(store: EmbeddedStore, duplicate_every: int) -> None:
    log, requests, flows = stream_log(SCENARIO, duplicate_every=duplicate_every)
    sc = StreamCorrelator(LogConsumer(log), store, stream=SETTINGS)
    sc.run(threading.Event(), exit_when_idle=True)
    want = offline(requests, flows)
    assert sc.stats.commits > 3, "the windows must really split the input"
    assert stored(store) == want
    assert store.count("traces") == len(want)
    assert store.count("requests") == len(requests) and store.count("flows") == len(flows)
    assert (sc.stats.duplicates > 0) == bool(duplicate_every)
    assert all(d.offset <= log.committed[(d.topic, d.partition)] for d in log.entries)  # all committed


def test_records_of_a_pass_are_held_until_its_traces_are_written(store: EmbeddedStore) -> None:
    """What a scrape of ``records_held`` from another thread sees: the records a pass took out of the
    buffers count as held while its rows go in, so no record is neither held nor written."""
    log, requests, flows = stream_log(SCENARIO)
    sc = StreamCorrelator(LogConsumer(log), store, stream=SETTINGS)
    seen: list[tuple[str, int, int]] = []  # (table, records held, traces written) at each insert
    insert = store.insert

    def observed(table: str, batch: Batch) -> int:
        seen.append((table, sc.held(), sc.stats.traces_out))
        return insert(table, batch)

    store.insert = observed  # type: ignore[method-assign]
    sc.run(threading.Event(), exit_when_idle=True)
    assert sc.held() == 0 and sc.stats.traces_out == len(offline(requests, flows))
    assert all(held > 0 for _, held, _ in seen), seen  # the last pass's records too, until its traces are in


def test_restart_after_a_crash_writes_nothing_twice(store: EmbeddedStore) -> None:
    log, requests, flows = stream_log(SCENARIO)
    stop = threading.Event()
    first = StreamCorrelator(LogConsumer(log), store, stream=SETTINGS)
    for _ in range(len(log.entries) // 6):  # half the log, then the process "dies": no drain, no flush
        first.poll_once()
        first.maybe_stitch(stop)
    assert first.stats.traces_out > 0 and log.committed
    second = StreamCorrelator(LogConsumer(log), store, stream=SETTINGS)
    second.run(stop, exit_when_idle=True)
    assert second.stats.replayed_skipped > 0  # replayed records of traces already stored were recognised
    want = offline(requests, flows)
    assert stored(store) == want
    assert store.count("traces") == len(want)
    assert store.count("spans") == sum(int(p.count(",")) + 1 for _, p in want)


def test_bounded_buffer_forces_the_oldest_out(store: EmbeddedStore) -> None:
    log, requests, _ = stream_log(SCENARIO)
    tight = StreamSettings(lateness_us=10_000_000, stitch_every_s=0.0, idle_flush_s=0.2, poll_timeout_s=0.0,
                           max_buffer_records=2000)
    sc = StreamCorrelator(LogConsumer(log), store, stream=tight)
    peak = 0
    stop = threading.Event()
    while sc.poll_once() or sc.held():
        sc.maybe_stitch(stop)
        peak = max(peak, sc.held())
        if sc.idle() and not sc.held():
            break
    assert sc.stats.forced_traces > 0
    assert peak <= 2000 + 3 * 700  # the bound plus one poll
    assert store.count("requests") == len(requests)  # forced out, never lost


def test_rendezvous_is_the_server_end_of_each_leg() -> None:
    syn = generate(Scenario(requests=40))
    hosts = rendezvous_hosts(syn.requests, syn.flows)
    assert set(hosts.values()) == {"node-b"}  # leg 0 ends at the sidecar on node-b, leg 1 at the app
    moved = generate(Scenario(requests=40, path=tuple(
        h if h.leg == 0 else dataclasses.replace(h, host="node-c") for h in Scenario().path)))
    hosts = rendezvous_hosts(moved.requests, moved.flows)
    assert set(hosts.values()) == {"node-b", "node-c"}
