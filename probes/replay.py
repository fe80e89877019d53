"""Replay capture files into Kafka as live probes would have published them (``hopscope replay``).

Records
    Each capture point's file goes through the same stages as ``hopscope analyze``
    (``correlate.offline.read_points``), so the records are the ones the offline correlator stitches:
    same fields, same ids, same correlation keys.

Batching
    A live probe (``probes.live.LiveProbe``) publishes every ``publish_interval_s`` of its run, one
    batch of flow records, then one of request records, of its own point; more than
    ``publish_max_records`` flow records go in slices of that size. Replay does the same per point,
    in *ticks* of capture time: a record belongs to the tick in which its event time (its latest
    timestamp, ``correlate.stream.event_times``: the earliest a probe could have reported it) falls,
    and is published at the tick's end. The ``KafkaPublisher`` splits each batch by the partition
    of its records' correlation keys and keys every message by it, as for a probe.

Markers
    Probes publish records and nothing else: no watermark or heartbeat message goes to
    ``PREFIX.flows`` / ``PREFIX.requests``. The streaming correlator's first stage takes its
    watermark from the record times of each partition and detects the end of the input by idleness;
    watermark markers exist only between its two stages. So replay publishes records only.

Pacing
    ``speed`` 1 publishes each tick when as much wall time has passed since the start as capture
    time since the first packet of any capture; 10 ten times faster; ``None`` as fast as the broker takes.

Delivery
    After each tick the publisher is flushed and every message of the tick checked as acknowledged
    (``acks=all``; kafka-python's own flush does not report messages that failed). Only then do the
    tick's records count as published: a broker lost half-way raises ``UnavailableError`` naming
    how much was acknowledged, and nothing sent after that is claimed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hopscope.errors import ConfigError, UnavailableError
from hopscope.records import Batch, FlowRecord

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ReplaySettings:
    """How records are batched and paced. The batching defaults are the live probe's
    (``probes.live.ProbeSettings``), so that the correlator sees what it would see from probes."""

    #: Capture-time speed-up: 1 real time, 10 ten times faster; ``None``: as fast as possible.
    speed: float | None = 1.0
    #: Capture time between two publications of one point (``ProbeSettings.publish_interval_s``).
    publish_interval_s: float = 1.0
    #: Flow records of one point per batch at most (``ProbeSettings.publish_max_records``).
    publish_max_records: int = 8192

    def __post_init__(self) -> None:
        if self.speed is not None and not self.speed > 0:
            raise ConfigError(f"replay speed must be positive, got {self.speed}")
        if not self.publish_interval_s > 0 or self.publish_max_records < 1:
            raise ConfigError("replay publish_interval_s must be positive and publish_max_records at least 1")


@dataclass(frozen=True, slots=True)
class Tick:
    """What every probe publishes at one moment of capture time, in publication order."""

    at_ns: int  # capture time of the publication (the tick's end)
    batches: tuple[Batch, ...]  # per point (by name): its flow batches, then its request batch

    def records(self) -> int:
        return sum(len(b) for b in self.batches)


@dataclass(slots=True)
class ReplaySummary:
    """What a replay published; only acknowledged ticks are counted."""

    points: int = 0
    ticks: int = 0
    flow_records: int = 0
    request_records: int = 0
    messages: int = 0  # Kafka messages (batches split by partition)
    capture_span_s: float = 0.0  # capture time from the first record to the last tick's end
    elapsed_s: float = 0.0  # wall time of the publication

    def line(self) -> str:
        """One line for the end of a ``hopscope replay`` run."""
        return (f"{self.flow_records} flow and {self.request_records} request records of {self.points} points "
                f"published in {self.messages} messages ({self.ticks} ticks, {self.capture_span_s:.1f} s of "
                f"capture in {self.elapsed_s:.1f} s)")


class BatchPublisher(Protocol):
    """The part of ``transport.kafka.KafkaPublisher`` replay uses (``AckedPublisher`` in practice)."""

    def publish(self, batch: Batch) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Schedule:
    """Every tick of a replay, and the capture time it counts from (the first packet's)."""

    first_ns: int
    ticks: tuple[Tick, ...]

    def records(self) -> int:
        return sum(t.records() for t in self.ticks)


def schedule(flows: Batch, requests: Batch, settings: ReplaySettings) -> Schedule:
    """The records of every point cut into ticks of ``publish_interval_s`` of capture time, counted
    from the first packet of any capture."""
    from hopscope.correlate.stream import event_times

    times = {"flows": event_times(flows), "requests": event_times(requests)}
    if not len(flows) and not len(requests):
        return Schedule(0, ())
    stamps = np.concatenate([np.asarray(flows.columns["start_ns"], np.int64),
                             np.asarray(requests.columns["req_first_ns"], np.int64), *times.values()])  # fmt: skip
    stamps = stamps[stamps > 0]  # 0: not seen
    first_ns = int(stamps.min()) if len(stamps) else 0
    interval_ns = max(1, round(settings.publish_interval_s * NS_PER_S))
    tick_of = {name: (t.astype(np.int64) - first_ns) // interval_ns for name, t in times.items()}
    ticks = sorted(set(np.concatenate([tick_of["flows"], tick_of["requests"]]).tolist()))
    return Schedule(first_ns, tuple(
        Tick(first_ns + (k + 1) * interval_ns,
             tuple(_tick_batches(flows, requests, tick_of, times, k, settings.publish_max_records)))
        for k in ticks
    ))  # fmt: skip


def _tick_batches(flows: Batch, requests: Batch, tick_of: dict[str, Any], times: dict[str, Any], k: int,
                  max_records: int) -> Iterable[Batch]:  # fmt: skip
    """Tick ``k``'s batches: per point, its flows in slices of ``max_records``, then its requests;
    records in event-time order within a batch."""
    by_point: dict[str, dict[str, Batch]] = {}
    for name, batch in (("flows", flows), ("requests", requests)):
        rows = np.flatnonzero(tick_of[name] == k)
        if len(rows):
            rows = rows[np.argsort(times[name][rows], kind="stable")]
            for point, part in _split_by_point(batch.take(rows)):
                by_point.setdefault(point, {})[name] = part
    for point in sorted(by_point):
        point_flows = by_point[point].get("flows")
        if point_flows is not None:
            for start in range(0, len(point_flows), max_records):
                yield point_flows.slice(start, start + max_records)
        if "requests" in by_point[point]:
            yield by_point[point]["requests"]


def _split_by_point(batch: Batch) -> Iterable[tuple[str, Batch]]:
    """The records of each point, by point name, keeping their order."""
    points = np.asarray(batch.columns["point"], dtype=object)
    for point in sorted(set(points.tolist())):
        yield point, batch.take(np.flatnonzero(points == point))


class Pacer:
    """Waits until a tick's capture time, scaled by the speed, has passed on the wall clock."""

    def __init__(self, speed: float | None, first_ns: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:  # fmt: skip
        self.speed = speed
        self.first_ns = first_ns
        self._clock = clock
        self._sleep = sleep
        self.started = clock()

    def wait(self, at_ns: int) -> None:
        if self.speed is None:
            return
        due = self.started + (at_ns - self.first_ns) / NS_PER_S / self.speed
        delay = due - self._clock()
        if delay > 0:
            self._sleep(delay)


def replay(plan: Schedule, publisher: BatchPublisher, settings: ReplaySettings,
           clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
           messages: Callable[[], int] = lambda: 0) -> ReplaySummary:  # fmt: skip
    """Publish every tick of ``plan`` at its time, flushing after each; ``messages`` reads the publisher's
    message count. A failure raises ``UnavailableError`` saying what was acknowledged before it."""
    ticks = plan.ticks
    summary = ReplaySummary(points=_point_count(ticks))
    pacer = Pacer(settings.speed, plan.first_ns, clock, sleep)
    total = plan.records()
    for tick in ticks:
        pacer.wait(tick.at_ns)
        try:
            for batch in tick.batches:
                publisher.publish(batch)
            publisher.flush()
        except UnavailableError as exc:
            done = summary.flow_records + summary.request_records
            raise UnavailableError(
                f"{exc}; {done} of {total} records acknowledged (ticks up to {summary.ticks} of {len(ticks)}), "
                f"the others may be missing: replay again (the correlator drops duplicates)"
            ) from exc
        _count(summary, tick, plan.first_ns)
        summary.messages = messages()
    summary.elapsed_s = clock() - pacer.started
    return summary


def _count(summary: ReplaySummary, tick: Tick, first_ns: int) -> None:
    summary.ticks += 1
    for batch in tick.batches:
        if batch.record_type is FlowRecord:
            summary.flow_records += len(batch)
        else:
            summary.request_records += len(batch)
    summary.capture_span_s = (tick.at_ns - first_ns) / NS_PER_S


def _point_count(ticks: Sequence[Tick]) -> int:
    return len({p for t in ticks for b in t.batches for p in b.columns["point"]})


class AckedPublisher:
    """``transport.kafka.KafkaPublisher`` as replay uses it: a send the client refuses at once becomes
    ``UnavailableError`` like a message the broker did not acknowledge (``flush``), and closing after a
    failure is best effort."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        from hopscope.transport.kafka import KafkaPublisher

        self._inner = KafkaPublisher(bootstrap, prefix=prefix)

    @property
    def messages(self) -> int:
        return self._inner.stats.messages_out

    def publish(self, batch: Batch) -> None:
        from kafka.errors import KafkaError

        try:
            self._inner.publish(batch)
        except KafkaError as exc:
            raise UnavailableError(f"Kafka broker at {self._inner.bootstrap} failed ({type(exc).__name__}: "
                                   f"{exc})") from exc  # fmt: skip

    def flush(self) -> None:
        """Wait for every message sent; raise ``UnavailableError`` unless the broker acknowledged all."""
        self._inner.flush()

    def close(self) -> None:
        from kafka.errors import KafkaError

        try:
            self._inner.close()
        except KafkaError as exc:  # closing after a failure is best effort
            log.warning("closing the Kafka producer: %s", exc)

