"""Settings, counters and shared names of the streaming correlator."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from hopscope.errors import ConfigError
from hopscope.records import FlowRecord, Record, RequestRecord

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
Bools = npt.NDArray[np.bool_]
TP = tuple[str, int]
FOREVER = np.iinfo(np.int64).max
RECORD_TABLES: tuple[str, ...] = ("requests", "flows")
_RECORD_TYPES: dict[str, type[Record]] = {"requests": RequestRecord, "flows": FlowRecord}
#: A partition (or a stage) is idle only after this many polls without input, however long they
#: took: a process that paused (stitching, waiting for the store) has not seen its input run dry.
IDLE_POLLS = 3
#: Kafka group session of the correlator's consumers (the broker's minimum): how long a group waits
#: for a member that died without leaving before it hands the member's partitions to the others.
SESSION_TIMEOUT_MS = 6000



@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Windows, bounds and retries of the streaming correlator (event time in µs, wall time in s)."""

    #: How far behind the newest record a record may arrive and still join its trace (stage 1 and a
    #: single-stage correlator): the most, when the input is as disordered as that or not yet watched.
    lateness_us: int = 2_000_000
    #: The least lateness: the one in use is the largest lag (how far behind its partition's newest a
    #: record arrived) of the last ``lateness_window_s`` plus this, at most ``lateness_us``
    #: (``Watermark``). Equal to ``lateness_us``: a fixed lateness.
    min_lateness_us: int = 250_000
    #: Wall time over which arrival lags are watched (the first this long after the first record: the
    #: most lateness).
    lateness_window_s: float = 10.0
    #: Stage 2 of the pipeline, when it hears no relay watermark markers: how far relays may lag.
    relay_lateness_us: int = 1_000_000
    #: Largest spread of the record times of one trace (a record's time is its latest timestamp, so
    #: about the response's way back to the client): a trace is complete when its newest record is
    #: this much older than the watermark, so its records still to come are older than the watermark.
    trace_spread_us: int = 500_000
    #: Records a stage may hold; beyond, the oldest are forced out (counted).
    max_buffer_records: int = 2_000_000
    poll_timeout_s: float = 0.05
    #: Records asked of one poll (the transport counts 500 records a message; messages often hold more)
    max_poll_records: int = 10_000
    #: Wall time between two stitch passes (or relay releases) while input keeps arriving; at least
    #: twice what the last one took (``pass_interval``); 0: a pass at every chance.
    stitch_every_s: float = 0.2
    #: Wall time without input after which everything held is written (end of stream); stage 2 of
    #: the pipeline waits twice this, so the relays' last releases reach it first.
    idle_flush_s: float = 2.0
    #: A flow never reported final counts as closed once its last packet is this much older than
    #: the watermark.
    flow_idle_us: int = 60_000_000
    #: How long (event time) the ids of written records are remembered against duplicates.
    dedup_horizon_us: int = 120_000_000
    #: Record times further than this past the wall clock do not advance the watermark.
    max_future_us: int = 600_000_000
    #: Records per relayed Kafka message (the broker takes messages up to 8 MiB).
    relay_chunk_records: int = 10_000
    #: Store unavailable: first wait, doubling up to ``retry_max_s``.
    retry_initial_s: float = 0.5
    retry_max_s: float = 8.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ConfigError(f"stream setting {f.name} must not be negative")
        if self.max_buffer_records < 1 or self.relay_chunk_records < 1:
            raise ConfigError("stream settings max_buffer_records and relay_chunk_records must be at least 1")


@dataclass(slots=True)
class StreamStats:
    """Counters; every record that leaves a buffer is counted under one outcome."""

    records_in: int = 0
    duplicates: int = 0
    replayed_skipped: int = 0
    late_records: int = 0
    records_stitched: int = 0
    traces_out: int = 0
    spans_out: int = 0
    forced_traces: int = 0
    unstitched_dropped: int = 0
    retired_flows: int = 0
    dropped_on_revoke: int = 0
    passes: int = 0
    commits: int = 0
    commit_failures: int = 0
    store_retries: int = 0
    relay_records_in: int = 0
    relay_records_out: int = 0
    relay_messages_out: int = 0
    relay_forced: int = 0
    relay_late_records: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    #: wall time from a trace's first byte to its trace being in the store (ms), recent values
    emit_delay_ms: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))

    def summary(self) -> str:
        """One line for the end of a ``hopscope correlate`` run: where every record went."""
        return (
            f"{self.relay_records_in} records relayed, {self.records_stitched} stitched into {self.traces_out} "
            f"traces ({self.spans_out} spans); {self.duplicates} duplicates and {self.replayed_skipped} replayed "
            f"records skipped, {self.late_records} late, {self.forced_traces} forced traces, "
            f"{self.unstitched_dropped} unstitched, {self.retired_flows} flows retired; {self.store_retries} store "
            f"retries, {self.commits} commits"
        )

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "emit_delay_ms"}
        if self.emit_delay_ms:
            arr = np.asarray(self.emit_delay_ms)
            d["emit_delay_ms_p50"] = round(float(np.median(arr)), 1)
            d["emit_delay_ms_p99"] = round(float(np.percentile(arr, 99)), 1)
        return d


def pass_interval(settings: StreamSettings, last_s: float) -> float:
    """Wall time from the start of a pass (or a relay release) to the next: ``stitch_every_s``, or
    twice what the last one took, so a stage short of CPU spends at most about half its time in them
    and stitches (and inserts) more at a time instead of falling further behind. ``stitch_every_s``
    0: a pass at every chance, unpaced."""
    every = settings.stitch_every_s
    return max(every, 2.0 * last_s) if every > 0 else 0.0
