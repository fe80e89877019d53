"""Records held by a stage, and ids remembered for a horizon of event time."""

from __future__ import annotations

from collections import deque

import numpy as np

from hopscope.correlate.stream.records import (
    take,
)
from hopscope.correlate.stream.settings import (
    I64,
    TP,
    U64,
    Bools,
)
from hopscope.records import Batch, Record


class RowBuffer:
    """Records of one table held by a stage, with per-row time, id, source message and partition."""

    def __init__(self, record_type: type[Record]) -> None:
        self.record_type = record_type
        self._parts: list[tuple[Batch, I64, U64, I64, list[TP]]] = []
        self.batch: Batch = Batch(record_type, {}, 0)
        self.time: I64 = np.zeros(0, np.int64)
        self.rid: U64 = np.zeros(0, np.uint64)
        self.mid: I64 = np.zeros(0, np.int64)
        self.tp: list[TP] = []
        self.ids: set[int] = set()

    def __len__(self) -> int:
        return len(self.batch) + sum(len(p[0]) for p in self._parts)

    def add(self, batch: Batch, times: I64, rids: U64, mid: int, tp: TP) -> None:
        if len(batch):
            self._parts.append((batch, times, rids, np.full(len(batch), mid, np.int64), [tp] * len(batch)))
            self.ids.update(rids.tolist())

    def settle(self) -> None:
        """Concatenate what arrived since the last call."""
        if not self._parts:
            return
        parts = [(self.batch, self.time, self.rid, self.mid, self.tp), *self._parts]
        self._parts = []
        self.batch = Batch.concat(p[0] for p in parts)
        self.time = np.concatenate([p[1] for p in parts])
        self.rid = np.concatenate([p[2] for p in parts])
        self.mid = np.concatenate([p[3] for p in parts])
        self.tp = [tp for p in parts for tp in p[4]]

    def split(self, leave: Bools) -> tuple[Batch, I64, I64]:
        """Remove the rows where ``leave`` holds; returns them (batch, message ids, times)."""
        go, stay = np.flatnonzero(leave), np.flatnonzero(~leave)
        out = (take(self.batch, go), self.mid[go], self.time[go])
        if len(go):
            self.ids.difference_update(self.rid[go].tolist())
            self.batch = take(self.batch, stay)
            self.time, self.rid, self.mid = self.time[stay], self.rid[stay], self.mid[stay]
            tps = self.tp
            self.tp = [tps[i] for i in stay.tolist()]
        return out

    def drop_partitions(self, tps: set[TP]) -> int:
        self.settle()
        gone = np.fromiter((tp in tps for tp in self.tp), dtype=bool, count=len(self.tp))
        self.split(gone)
        return int(gone.sum())


def oldest_excess(times: list[I64], limit: int) -> list[Bools]:
    """Masks of the oldest rows beyond ``limit`` over several buffers."""
    total = sum(len(t) for t in times)
    if total <= limit:
        return [np.zeros(len(t), bool) for t in times]
    cut = np.partition(np.concatenate(times), total - limit - 1)[total - limit - 1]
    return [t <= cut for t in times]


class Seen:
    """Ids remembered for a horizon of event time (records written, flows consumed)."""

    def __init__(self) -> None:
        self.ids: set[int] = set()
        self._chunks: deque[tuple[int, list[int]]] = deque()

    def add(self, ids: U64, newest_ns: int) -> None:
        if len(ids):
            values = ids.tolist()
            self.ids.update(values)
            self._chunks.append((newest_ns, values))

    def prune(self, before_ns: int) -> None:
        while self._chunks and self._chunks[0][0] < before_ns:
            self.ids.difference_update(self._chunks.popleft()[1])
