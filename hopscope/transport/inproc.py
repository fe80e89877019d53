"""The in-process transport of the embedded default: a bounded queue between stages of one process."""

from __future__ import annotations

import queue
import threading

from hopscope.records import Batch
from hopscope.transport.base import TOPICS, Delivery, TransportStats


class InProcessTransport:
    """Publisher and consumer in one object. ``publish`` blocks when ``max_batches`` are queued
    (back-pressure instead of unbounded memory); offsets count batches per table."""

    def __init__(self, max_batches: int = 1024) -> None:
        self._queue: queue.Queue[Delivery] = queue.Queue(maxsize=max_batches)
        self._offsets: dict[str, int] = {}
        self._lock = threading.Lock()
        self.committed: dict[str, int] = {}
        self.stats = TransportStats()

    def publish(self, batch: Batch) -> None:
        if not len(batch):
            return
        topic = TOPICS[batch.record_type.TABLE]
        with self._lock:
            offset = self._offsets.get(topic, 0)
            self._offsets[topic] = offset + 1
        self._queue.put(Delivery(batch, topic, 0, offset))
        self.stats.messages_out += 1
        self.stats.records_out += len(batch)

    def flush(self) -> None:
        """Nothing is buffered beyond the queue itself."""

    def poll(self, timeout_s: float = 1.0, max_records: int = 100_000) -> list[Delivery]:
        out: list[Delivery] = []
        records = 0
        try:
            item = self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get_nowait()
            while True:
                out.append(item)
                records += len(item.batch)
                if records >= max_records:
                    break
                item = self._queue.get_nowait()
        except queue.Empty:
            pass
        self.stats.messages_in += len(out)
        self.stats.records_in += records
        return out

    def commit(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            self.committed[d.topic] = max(self.committed.get(d.topic, -1), d.offset)

    def close(self) -> None:
        """Nothing to release."""
