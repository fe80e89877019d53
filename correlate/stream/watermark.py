"""The event-time watermark of a stage, and the relays' watermark markers."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from hopscope.correlate.stream.settings import (
    FOREVER,
    I64,
    IDLE_POLLS,
    TP,
)
from hopscope.records import Batch, RequestRecord


class Watermark:
    """Event-time watermark over the partitions a stage reads: the least, over partitions that are
    not idle, of the newest record time seen there, minus the lateness (a consumer reads partitions
    unevenly, so one partition's newest says nothing of another's). A partition is idle when it got
    no input for ``idle_s`` and ``IDLE_POLLS`` polls and has nothing left to fetch. FOREVER once every
    partition is: the input ran dry.

    The lateness adapts between ``min_lateness_us`` and ``lateness_us`` (a fixed ``lateness_us``
    when ``min_lateness_us`` is None or not below it): the partition's newest record minus each record
    read after it is its lag, and the lateness in use is the largest lag of the last ``window_s`` plus
    ``min_lateness_us``, capped at ``lateness_us``. Input as disordered as probes publishing every
    second gets a lateness above a second; input published as it happens gets the minimum. For the
    first ``window_s`` after the first record, and whenever a lag beyond the cap was seen lately, the
    cap holds (a stream's disorder is known only once watched)."""

    def __init__(self, lateness_us: int, idle_s: float, max_future_us: int, min_lateness_us: int | None = None,
                 window_s: float = 10.0) -> None:
        #: the largest lateness (the cap of the adaptive one)
        self.lateness_ns = lateness_us * 1000
        self.min_lateness_ns = self.lateness_ns if min_lateness_us is None else min(min_lateness_us * 1000,
                                                                                   self.lateness_ns)
        self.window_s = window_s
        #: the wall clock of idleness, relays' silence and the adaptive lateness (monotonic seconds)
        self.clock: Callable[[], float] = time.monotonic
        self._first_input: float | None = None
        #: (wall time, largest lag of one message) over the window, worst kept
        self._lags: deque[tuple[float, int]] = deque()
        self.idle_s = idle_s
        self.max_future_ns = max_future_us * 1000
        self.newest_ns = 0  # over all partitions
        self.last_input = time.monotonic()
        self._newest: dict[TP, int] = {}
        self._last: dict[TP, float] = {}
        #: partitions with records not yet polled (never idle); set after each poll by the stage
        self.lagging: set[TP] = set()
        self.polls = 0
        self._input_poll = 0
        self._last_poll: dict[TP, int] = {}
        #: wall time of the first poll after a partition's (the stage's) last input: quiet time counts
        #: from there, so polls resumed after a long pause elsewhere do not find partitions idle at once
        self._quiet: dict[TP, float] = {}
        self._stage_quiet = self.last_input
        #: partitions the stage reads (where relays' marks are expected; empty: unknown)
        self.assigned: set[TP] = set()
        #: (partition, relay) -> (promised watermark, wall time and poll when read)
        self._marks: dict[tuple[TP, str], tuple[int, float, int]] = {}
        self.expiry_s = 2 * idle_s
        #: relays known to be running whatever their silence (``_marked``)
        self.alive: set[str] = set()

    def polled(self, lagging: set[TP]) -> None:
        """A poll of the stage happened; ``lagging``: partitions with records not yet polled."""
        self.polls += 1
        self.lagging = lagging
        now = self.clock()
        before = self.polls - 1
        for tp, p in self._last_poll.items():
            if p == before:
                self._quiet[tp] = now  # the first poll after its last input
        if self._input_poll == before:
            self._stage_quiet = now

    def saw(self, times: I64, tp: TP) -> None:
        now = self.last_input = time.monotonic()
        self._last[tp] = now
        self._last_poll[tp] = self._input_poll = self.polls
        if len(times):
            newest = min(int(times.max()), time.time_ns() + self.max_future_ns)
            before = self._newest.get(tp)
            at = self.clock()
            if self._first_input is None:
                self._first_input = at
            if before is not None and self.min_lateness_ns < self.lateness_ns:
                lag = before - int(times.min())
                if lag > 0:
                    while self._lags and self._lags[-1][1] <= lag:
                        self._lags.pop()  # a larger lag seen later outlives it: only maxima are kept
                    self._lags.append((at, lag))
            self._newest[tp] = max(before or 0, newest)
            self.newest_ns = max(self.newest_ns, newest)

    def forget(self, tps: set[TP]) -> None:
        for tp in tps:
            self._newest.pop(tp, None)
            self._last.pop(tp, None)
            self._last_poll.pop(tp, None)
            self._quiet.pop(tp, None)
        for key in [k for k in self._marks if k[0] in tps]:
            del self._marks[key]

    def mark(self, tp: TP, relay: str, watermark_ns: int) -> None:
        """A relay's promise, read on partition ``tp``: it sent everything older than ``watermark_ns``."""
        self.last_input = time.monotonic()
        self._input_poll = self.polls
        self._marks[(tp, relay)] = (watermark_ns, self.clock(), self.polls)

    def _marked(self) -> int | None:
        """The least promise over the relays heard from lately and the partitions assigned (a relay
        marks every partition, each after its records there: a partition whose mark was not read yet
        holds everything back). None: no relay heard from. A relay in ``alive`` never counts as dead
        (this process's own relay, silent only while this process is busy elsewhere)."""
        now = self.clock()
        newest: dict[str, tuple[float, int]] = {}
        for (_, relay), (_, seen, poll) in self._marks.items():
            last = newest.get(relay, (0.0, 0))
            newest[relay] = (max(last[0], seen), max(last[1], poll))
        dead = {r for r, (seen, poll) in newest.items()
                if now - seen >= self.expiry_s and self.polls - poll >= IDLE_POLLS and r not in self.alive}
        for key in [k for k in self._marks if k[1] in dead]:
            del self._marks[key]  # a relay that died (or went quiet after saying "everything")
        relays = set(newest) - dead
        if not relays:
            return None
        tps = self.assigned or {tp for tp, _ in self._marks}
        return min(self._marks.get((tp, r), (-FOREVER, 0.0, 0))[0] for r in relays for tp in tps)

    def idle(self) -> bool:
        """No input for ``idle_s`` and nothing left to fetch: the input ran dry (a long pause of this
        process, waiting for the store, is not idleness)."""
        return (self.clock() - self._stage_quiet >= self.idle_s and self.polls - self._input_poll >= IDLE_POLLS
                and not self.lagging)

    def value(self) -> int:
        marked = self._marked()
        if marked is not None:  # the relays' promises, also while no input comes: an idle relay promises all
            return marked
        if self.lagging - self._newest.keys():
            return -FOREVER  # a partition with records to fetch has delivered none yet: hold everything
        now = self.clock()
        active = [n for tp, n in self._newest.items()
                  if now - self._quiet.get(tp, now) < self.idle_s or self.polls - self._last_poll[tp] < IDLE_POLLS
                  or tp in self.lagging]
        return min(active) - self.lateness() if active else FOREVER

    def lateness(self) -> int:
        """The lateness in use (ns): the cap until the input was watched for ``window_s``, then the
        largest lag of the window plus the minimum, at most the cap."""
        if self.min_lateness_ns >= self.lateness_ns:
            return self.lateness_ns
        now = self.clock()
        if self._first_input is None or now - self._first_input < self.window_s:
            return self.lateness_ns
        lags = self._lags
        while lags and now - lags[0][0] >= self.window_s:
            lags.popleft()
        worst = lags[0][1] if lags else 0
        return min(self.lateness_ns, worst + self.min_lateness_ns)


#: Capture point name of a watermark marker (a one-row request batch no probe emits): its ``host``
#: names the relay, its ``req_first_ns`` is the relay's watermark.
MARKER_POINT = "\x00hopscope.watermark"


def marker_batch(relay: str, watermark_ns: int) -> Batch:
    w = min(max(watermark_ns, 0), FOREVER)
    return Batch(RequestRecord, {"point": [MARKER_POINT], "host": [relay],
                                 "req_first_ns": np.array([w], np.uint64)}, 1)


def read_marker(batch: Batch) -> tuple[str, int] | None:
    """(relay, watermark) when ``batch`` is a watermark marker."""
    if len(batch) != 1 or batch.record_type is not RequestRecord or batch.columns["point"][0] != MARKER_POINT:
        return None
    return str(batch.columns["host"][0]), int(np.asarray(batch.columns["req_first_ns"])[0])


def partition_keys(partitions: int) -> list[bytes]:
    """A message key for each partition under Kafka's default (murmur2) partitioner."""
    from kafka.partitioner.default import murmur2

    keys: dict[int, bytes] = {}
    i = 0
    while len(keys) < partitions:
        key = b"hopscope.watermark.%d" % i
        keys.setdefault((murmur2(key) & 0x7FFFFFFF) % partitions, key)
        i += 1
    return [keys[p] for p in range(partitions)]


def _polled(consumer: Any, watermark: Watermark) -> None:
    """After a poll: which partitions still have records to fetch (consumers that cannot tell: none)."""
    lagging = getattr(consumer, "lagging", None)
    watermark.polled(lagging() if lagging is not None else set())
