"""Moving record batches from a transport into a store, at least once.

``Ingestor`` polls a consumer, groups what it got by table, inserts each table's rows in one batch,
and commits the consumer's offsets only after every insert was accepted. When the store is down it
keeps the polled deliveries, waits with capped exponential backoff and tries the same insert again;
nothing is committed meanwhile, so a crash at any point replays from the last commit (the store's
ReplacingMergeTree tables and deterministic ids make the replay idempotent for spans and traces).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hopscope.errors import UnavailableError
from hopscope.records import Batch
from hopscope.store import Store
from hopscope.transport import Consumer, Delivery

log = logging.getLogger(__name__)


@dataclass(slots=True)
class IngestStats:
    """What the ingestor did; ``store_retries`` counts inserts tried again after the store failed."""

    polls: int = 0
    deliveries: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    commits: int = 0
    store_retries: int = 0

    def summary(self, bad_messages: int = 0) -> str:
        """One line for the end of a ``hopscope ingest`` run; ``bad_messages``: those the consumer
        dead-lettered (its own count)."""
        rows = ", ".join(f"{n} {t}" for t, n in sorted(self.rows.items())) or "no rows"
        return (f"{rows} stored from {self.deliveries} messages; {bad_messages} bad messages dead-lettered; "
                f"{self.store_retries} store retries")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff for a store that is down: ``first_s`` doubling up to ``max_s``; give up after
    ``give_up_s`` (``None``: never; the process waits for the store for as long as it takes)."""

    first_s: float = 0.5
    max_s: float = 10.0
    give_up_s: float | None = None


class Ingestor:
    """Consumer -> store, committing offsets only after the store accepted the rows."""

    def __init__(
        self,
        consumer: Consumer,
        store: Store,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.consumer = consumer
        self.store = store
        self.retry = retry or RetryPolicy()
        self.stats = IngestStats()
        self._sleep = sleep
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self, idle_exit_s: float | None = None) -> IngestStats:
        """Ingest until ``stop()`` (or, with ``idle_exit_s``, until nothing arrived for that long since
        the consumer's first partitions: joining a group can take seconds on a busy host, and a member
        with none yet has read nothing, not everything)."""
        idle_since = time.monotonic()
        assignment: Callable[[], set[tuple[str, int]]] | None = getattr(self.consumer, "assignment", None)
        joined = assignment is None  # a group member's partitions; other consumers have none to wait for
        while not self._stop.is_set():
            got = self.step()
            joining = not joined
            if assignment is not None and joining:
                joined = bool(assignment())
            if got or joining:  # idle from the poll after the one that found the first partitions
                idle_since = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                break
        return self.stats

    def step(self, timeout_s: float = 0.5) -> int:
        """One poll, insert and commit; returns the number of deliveries handled."""
        deliveries = self.consumer.poll(timeout_s=timeout_s)
        self.stats.polls += 1
        if not deliveries:
            return 0
        self._insert_with_retry(deliveries)
        self.consumer.commit(deliveries)
        self.stats.commits += 1
        self.stats.deliveries += len(deliveries)
        return len(deliveries)

    def _insert_with_retry(self, deliveries: list[Delivery]) -> None:
        by_table: dict[str, list[Batch]] = {}
        for d in deliveries:
            by_table.setdefault(d.batch.record_type.TABLE, []).append(d.batch)
        pending = {table: Batch.concat(batches) for table, batches in by_table.items()}
        delay = self.retry.first_s
        started = time.monotonic()
        while pending:
            table, batch = next(iter(pending.items()))
            try:
                self.store.insert(table, batch)
            except UnavailableError as exc:
                waited = time.monotonic() - started
                if self.retry.give_up_s is not None and waited >= self.retry.give_up_s:
                    raise
                self.stats.store_retries += 1
                log.warning("store down, %d %s rows held, retrying in %.1f s: %s", len(batch), table, delay, exc)
                self._sleep(delay)
                if self._stop.is_set():
                    raise
                delay = min(delay * 2, self.retry.max_s)
                continue
            self.stats.rows[table] = self.stats.rows.get(table, 0) + len(batch)
            del pending[table]
