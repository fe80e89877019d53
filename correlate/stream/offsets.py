"""Offsets and commits: which consumed messages may be committed, the group consumer, rebalances."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from hopscope.correlate.stream.buffers import RowBuffer
from hopscope.correlate.stream.settings import (
    I64,
    SESSION_TIMEOUT_MS,
    TP,
    StreamStats,
)
from hopscope.correlate.stream.watermark import (
    Watermark,
)
from hopscope.records import Batch, RequestRecord
from hopscope.transport.base import Delivery

log = logging.getLogger(__name__)


class OffsetBook:
    """Which consumed messages still have records buffered; what may be committed per partition
    (up to, not including, the oldest message with a record still buffered)."""

    def __init__(self) -> None:
        self._next = 0
        self._pending: dict[int, int] = {}  # message id -> records still buffered
        self._where: dict[int, tuple[TP, int]] = {}
        self._seen: dict[TP, int] = {}
        self._committed: dict[TP, int] = {}

    def add(self, d: Delivery, rows: int) -> int:
        mid = self._next
        self._next += 1
        tp = (d.topic, d.partition)
        self._seen[tp] = max(self._seen.get(tp, -1), d.offset)
        if rows:
            self._pending[mid] = rows
            self._where[mid] = (tp, d.offset)
        return mid

    def done(self, mids: I64) -> None:
        if len(mids) == 0:
            return
        ids, counts = np.unique(mids, return_counts=True)
        for m, c in zip(ids.tolist(), counts.tolist(), strict=True):
            left = self._pending.get(m)
            if left is None:
                continue
            if left <= c:
                del self._pending[m], self._where[m]
            else:
                self._pending[m] = left - c

    def commit_points(self) -> dict[TP, int]:
        """Per partition, the last offset that may be committed now, where that moved."""
        low: dict[TP, int] = {}
        for tp, off in self._where.values():
            low[tp] = min(low.get(tp, off), off)
        out: dict[TP, int] = {}
        for tp, seen in self._seen.items():
            upto = low[tp] - 1 if tp in low else seen
            if upto > self._committed.get(tp, -1):
                out[tp] = upto
        return out

    def committed(self, points: dict[TP, int]) -> None:
        self._committed.update(points)

    def forget(self, tps: set[TP]) -> None:
        """Partitions a rebalance took away: their messages are another consumer's now."""
        for mid in [m for m, (tp, _) in self._where.items() if tp in tps]:
            del self._where[mid], self._pending[mid]
        for tp in tps:
            self._seen.pop(tp, None)
            self._committed.pop(tp, None)


class GroupConsumer:
    """A ``KafkaRecordConsumer`` with a short group session (a member killed with -9 is replaced
    after ``SESSION_TIMEOUT_MS``), and partition counts keyed by record table."""

    def __init__(self, bootstrap: str, group: str, tables: Iterable[str], prefix: str) -> None:
        from hopscope.transport.kafka import KafkaRecordConsumer

        self.tables = list(tables)
        self.prefix = prefix
        self.inner = KafkaRecordConsumer(
            bootstrap, group, tables=self.tables, prefix=prefix, session_timeout_ms=SESSION_TIMEOUT_MS
        )
        self.stats = self.inner.stats

    def poll(self, timeout_s: float = 1.0, max_records: int = 100_000) -> list[Delivery]:
        return self.inner.poll(timeout_s=timeout_s, max_records=max_records)

    def commit(self, deliveries: list[Delivery]) -> None:
        """Commit up to the given deliveries (dead letters beyond buffered records wait: the
        transport commits past a dead letter only once the records before it are committed)."""
        self.inner.commit(deliveries)

    def assignment(self) -> set[TP]:
        return self.inner.assignment()

    def partitions(self, prefix: str) -> dict[str, int]:
        """Partition count of each table's topic this consumer reads."""
        return {table.removeprefix("s2."): self.inner.partition_count(table) for table in self.tables}

    def lagging(self) -> set[TP]:
        """Assigned partitions whose position is behind their high watermark (records to come)."""
        return self.inner.lagging()

    def close(self) -> None:
        self.inner.close()


def commit(consumer: Any, book: OffsetBook, stats: StreamStats) -> None:
    """Commit what the book allows; a commit refused by a rebalance is counted (the new owner replays)."""
    from kafka.errors import KafkaError

    points = book.commit_points()
    if not points:
        return
    marks = [Delivery(Batch(RequestRecord, {}, 0), t, p, off) for (t, p), off in points.items()]
    try:
        consumer.commit(marks)
    except KafkaError as exc:
        stats.commit_failures += 1
        log.warning("commit of %s refused (%s); those records will be replayed", sorted(points), exc)
        return
    book.committed(points)
    stats.commits += 1


def _check_assignment(consumer: Any, known: set[TP], buffers: Iterable[RowBuffer], book: OffsetBook,
                      stats: StreamStats, watermark: Watermark) -> tuple[set[TP], bool]:
    """The consumer's assignment now, and whether partitions were added; drops what was revoked."""
    get = getattr(consumer, "assignment", None)
    if get is None:
        return known, False
    now: set[TP] = get()
    watermark.assigned = now
    revoked = known - now
    if revoked:
        for buf in buffers:
            stats.dropped_on_revoke += buf.drop_partitions(revoked)
        book.forget(revoked)
        watermark.forget(revoked)
    return now, bool(now - known)
