"""The agent's way to Kafka: a bounded buffer of record batches and one sender thread that survives outages.

Every capture point of the agent publishes into one ``BatchBuffer`` through its own ``PointSink``; the
capture threads never wait for the broker. The ``KafkaSender`` thread takes batches from the buffer,
sends them through a ``KafkaPublisher`` and removes them only once the broker acknowledged them
(``flush``). When the broker cannot be reached, or does not acknowledge, the batches go back to the
front of the buffer, the publisher is dropped and the sender tries to connect again every
``retry_s``: publishing resumes by itself when the broker returns. Delivery is at least once: after an
outage in the middle of a send, batches the broker had already taken are sent again.

The buffer holds at most ``max_batches`` batches (``DEFAULT_MAX_BATCHES``: a probe publishes about one
flow and one request batch per second per point, so 1024 batches hold several minutes of a few busy
points). Beyond it the oldest batch waiting is dropped and counted (``batches_dropped``,
``records_dropped``): the newest records are worth more to someone looking at the network now. A
broker that went away is noticed when a send is not acknowledged within kafka-python's request
timeout (30 s); one that refuses connections at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from hopscope.errors import UnavailableError
from hopscope.records import Batch

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCHES: Final = 1024
SEND_MAX_BATCHES: Final = 64  # batches sent per flush (one acknowledgement wait)


class Publisher(Protocol):
    """What the sender needs of a publisher (``hopscope.transport.kafka.KafkaPublisher``)."""

    def publish(self, batch: Batch) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class _Entry:
    point: str
    batch: Batch
    queued_s: float  # time.monotonic() when it entered the buffer


@dataclass(slots=True)
class BufferStats:
    """What went through the buffer; nothing leaves it uncounted."""

    batches_in: int = 0
    records_in: int = 0
    batches_sent: int = 0  # acknowledged by the broker
    records_sent: int = 0
    batches_dropped: int = 0  # pushed out by newer batches when full, or left at exit
    records_dropped: int = 0
    records_sent_by_point: dict[str, int] = field(default_factory=dict)


class BatchBuffer:
    """Record batches waiting for the broker, oldest first, at most ``max_batches`` of them."""

    def __init__(self, max_batches: int = DEFAULT_MAX_BATCHES) -> None:
        if max_batches < 1:
            raise ValueError("the batch buffer needs room for one batch at least")
        self.max_batches = max_batches
        self.stats = BufferStats()
        self.broker_up = False  # set by the sender: while False, nobody waits for acknowledgements
        self._waiting: deque[_Entry] = deque()
        self._in_flight: list[_Entry] = []  # taken by the sender, not yet acknowledged
        self._changed = threading.Condition()

    def put(self, point: str, batch: Batch) -> None:
        with self._changed:
            self.stats.batches_in += 1
            self.stats.records_in += len(batch)
            self._waiting.append(_Entry(point, batch, time.monotonic()))
            self._trim()
            self._changed.notify_all()

    def _trim(self) -> None:
        while self._waiting and len(self._waiting) + len(self._in_flight) > self.max_batches:
            self._drop(self._waiting.popleft())

    def _drop(self, entry: _Entry) -> None:
        self.stats.batches_dropped += 1
        self.stats.records_dropped += len(entry.batch)

    def take(self, limit: int, timeout_s: float) -> list[_Entry]:
        """Up to ``limit`` of the oldest batches (waiting up to ``timeout_s`` for one), now in flight."""
        with self._changed:
            if not self._waiting:
                self._changed.wait(timeout_s)
            taken = [self._waiting.popleft() for _ in range(min(limit, len(self._waiting)))]
            self._in_flight.extend(taken)
            return taken

    def sent_counts(self) -> tuple[int, dict[str, int]]:
        """Records the broker acknowledged, in all and by point, read together (another thread's
        acknowledgement lands in both or in neither)."""
        with self._changed:
            return self.stats.records_sent, dict(self.stats.records_sent_by_point)

    def sent(self, entries: list[_Entry]) -> None:
        """The broker acknowledged ``entries`` (those ``drop_all`` counted meanwhile stay counted as dropped)."""
        with self._changed:
            for entry in entries:
                if entry not in self._in_flight:
                    continue
                self._in_flight.remove(entry)
                self.stats.batches_sent += 1
                self.stats.records_sent += len(entry.batch)
                by_point = self.stats.records_sent_by_point
                by_point[entry.point] = by_point.get(entry.point, 0) + len(entry.batch)
            self._changed.notify_all()

    def failed(self, entries: list[_Entry]) -> None:
        """``entries`` were not acknowledged: back to the front, to be sent again."""
        with self._changed:
            entries = [e for e in entries if e in self._in_flight]
            for entry in entries:
                self._in_flight.remove(entry)
            self._waiting.extendleft(reversed(entries))
            self._trim()

    def drop_all(self) -> int:
        """Count every batch still held as dropped (at exit, the broker unreachable); return how many."""
        with self._changed:
            left = [*self._in_flight, *self._waiting]
            for entry in left:
                self._drop(entry)
            self._in_flight.clear()
            self._waiting.clear()
            self._changed.notify_all()
            return len(left)

    def set_broker_up(self, up: bool) -> None:
        with self._changed:
            self.broker_up = up
            self._changed.notify_all()

    def held(self, point: str | None = None) -> int:
        """Batches waiting or in flight (of ``point``; of every point when None)."""
        with self._changed:
            return sum(1 for e in (*self._in_flight, *self._waiting) if point is None or e.point == point)

    def lag_s(self, point: str) -> float:
        """Age of the oldest batch of ``point`` not yet acknowledged (0: none held)."""
        with self._changed:
            ages = [e.queued_s for e in (*self._in_flight, *self._waiting) if e.point == point]
        return time.monotonic() - min(ages) if ages else 0.0

    def wait_sent(self, point: str, timeout_s: float) -> bool:
        """Wait until no batch of ``point`` is held (sent or dropped); False after ``timeout_s``, or at
        once while the broker is down (the batches stay in the buffer)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while any(e.point == point for e in (*self._in_flight, *self._waiting)):
                left = deadline - time.monotonic()
                if left <= 0 or not self.broker_up:
                    return False
                self._changed.wait(left)
            return True


class PointSink:
    """One capture point's ``RecordSink``: batches go into the shared buffer; ``flush`` waits (bounded)
    until they were acknowledged, so a point that stops hands its last records over."""

    def __init__(self, buffer: BatchBuffer, point: str, flush_timeout_s: float) -> None:
        self.buffer = buffer
        self.point = point
        self.flush_timeout_s = flush_timeout_s

    def publish(self, batch: Batch) -> None:
        if len(batch):
            self.buffer.put(self.point, batch)

    def flush(self) -> None:
        if not self.buffer.wait_sent(self.point, self.flush_timeout_s) and self.buffer.broker_up:
            log.warning("point %s: %d batches not acknowledged after %.0f s; they stay in the buffer",
                        self.point, self.buffer.held(self.point), self.flush_timeout_s)  # fmt: skip

    def close(self) -> None:
        """Nothing to close: the buffer and the sender belong to the agent."""


def kafka_publisher(bootstrap: str, prefix: str) -> Publisher:
    """A connected ``KafkaPublisher`` whose topics exist; ``UnavailableError`` when the broker is not there."""
    from hopscope.transport.kafka import KafkaPublisher, ensure_topics

    ensure_topics(bootstrap, prefix=prefix)
    return KafkaPublisher(bootstrap, prefix=prefix)


@dataclass(slots=True)
class SenderState:
    connected: bool = False
    outages: int = 0  # times the broker became unreachable (or was at start)
    last_error: str = ""


class KafkaSender:
    """The thread that moves batches from the buffer to the broker, reconnecting after outages."""

    def __init__(self, buffer: BatchBuffer, connect: Callable[[], Publisher], retry_s: float = 2.0) -> None:
        self.buffer = buffer
        self.connect = connect
        self.retry_s = retry_s
        self.state = SenderState()
        self._publisher: Publisher | None = None
        self._closing = threading.Event()
        self._deadline = float("inf")  # monotonic time after which the sender gives up at close
        self._thread = threading.Thread(target=self._loop, name="hopscope-agent-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float) -> int:
        """Send what is held for up to ``timeout_s``, then stop; return the batches dropped at exit."""
        self._deadline = time.monotonic() + timeout_s
        self._closing.set()
        self._thread.join(timeout_s + 15)  # a publisher's own close waits up to 10 s
        return self.buffer.drop_all()

    def _done(self) -> bool:
        return self._closing.is_set() and (not self.buffer.held() or time.monotonic() >= self._deadline)

    def _loop(self) -> None:
        while not self._done():
            if self._publisher is None and not self._reconnect():
                if self._closing.is_set():  # at exit, one more try only
                    break
                self._closing.wait(min(self.retry_s, max(0.0, self._deadline - time.monotonic())))
                continue
            entries = self.buffer.take(SEND_MAX_BATCHES, timeout_s=0.2)
            if entries:
                self._send(entries)
        if self._publisher is not None:
            self._publisher.close()

    def _reconnect(self) -> bool:
        from kafka.errors import KafkaError

        try:
            self._publisher = self.connect()
        except (UnavailableError, KafkaError, OSError) as exc:
            self._outage(exc)
            return False
        self.state.connected = True
        self.buffer.set_broker_up(True)
        log.warning("agent: publishing to Kafka (%d batches waiting)", self.buffer.held())
        return True

    def _send(self, entries: list[_Entry]) -> None:
        from kafka.errors import KafkaError

        assert self._publisher is not None
        try:
            for entry in entries:
                self._publisher.publish(entry.batch)
            self._publisher.flush()
        except (UnavailableError, KafkaError, OSError) as exc:
            self.buffer.failed(entries)
            publisher, self._publisher = self._publisher, None
            self._outage(exc)
            publisher.close()
            return
        self.buffer.sent(entries)

    def _outage(self, exc: BaseException) -> None:
        if self.state.connected or not self.state.outages:
            self.state.outages += 1
            log.warning("agent: Kafka unavailable, buffering up to %d batches: %s", self.buffer.max_batches, exc)
        self.state.connected = False
        self.buffer.set_broker_up(False)
        self.state.last_error = str(exc)
