"""Streaming correlation: record batches from a transport in, spans and traces into the store.

``StreamCorrelator`` buffers the flow and request records it polls, and on every pass stitches the
whole buffer. A trace is *complete* when its newest record is older than the newest record seen
(the event-time watermark) by ``lateness_us``; complete traces are written to the store and their
records leave the buffer, the others wait for late and out-of-order records. Records that joined no
trace leave the buffer once they are that old too (counted). State is bounded: past
``max_buffer_records`` the oldest half of the buffer is forced out (counted). When no record arrived
for ``idle_flush_s`` the stream is taken to have ended and everything is emitted.

Delivery is at least once and writes are idempotent: span and trace ids are deterministic and the
store's tables are ReplacingMergeTrees keyed on them. Offsets are committed, per partition, only past
deliveries whose every record was written (or dropped) and only after the store accepted the writes;
while the store is unavailable the correlator waits and retries without committing. After a restart,
replayed records that already belong to a stored span are recognised (one store query over the
replayed time range) and skipped, so a trace emitted before a crash is not re-stitched from half its
records.

Limitation: proxy links join two connections whose NAT-invariant keys differ, so with several
correlators in one group the two legs may land on different processes; the second stage (a shared
lookup by request id) is not built yet: run one correlator per group for proxy-linked traces.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from hopscope.correlate.engine import Correlator, StitchResult
from hopscope.correlate.settings import CorrelateSettings
from hopscope.errors import UnavailableError
from hopscope.records import Batch, FlowRecord, RequestRecord

log = logging.getLogger(__name__)
I64 = npt.NDArray[np.int64]
_FOREVER = np.iinfo(np.int64).max


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Windowing and retry settings of the streaming correlator."""

    lateness_us: int = 5_000_000  # event-time lag after which a trace is complete
    max_buffer_records: int = 2_000_000  # state bound: beyond it the oldest records are forced out
    poll_timeout_s: float = 0.5
    max_poll_records: int = 200_000
    stitch_every_s: float = 1.0  # wall time between stitch passes
    idle_flush_s: float = 6.0  # no records for this long: emit everything (end of stream)
    retry_initial_s: float = 0.5  # store unavailable: first wait, doubled up to retry_max_s
    retry_max_s: float = 8.0


@dataclass(slots=True)
class StreamStats:
    records_in: int = 0
    replayed_skipped: int = 0
    traces_out: int = 0
    spans_out: int = 0
    unstitched_dropped: int = 0
    carrier_flows_skipped: int = 0
    forced_passes: int = 0
    store_retries: int = 0
    commits: int = 0
    #: wall time from a trace's first byte to its trace being in the store (ms), recent values
    emit_delay_ms: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "emit_delay_ms"}
        if self.emit_delay_ms:
            arr = np.asarray(self.emit_delay_ms)
            d["emit_delay_ms_p50"] = round(float(np.median(arr)), 1)
            d["emit_delay_ms_p99"] = round(float(np.percentile(arr, 99)), 1)
        return d


@dataclass(slots=True)
class _Pending:
    """One delivery: how many of its records are still buffered."""

    delivery: Any
    remaining: int


@dataclass(slots=True)
class _Rows:
    """Buffered records of one type with, per row, its delivery serial and its event time."""

    record_type: type[RequestRecord] | type[FlowRecord]
    batches: list[Batch] = field(default_factory=list)
    owners: list[I64] = field(default_factory=list)
    times: list[I64] = field(default_factory=list)

    def add(self, batch: Batch, owner: int, times: I64) -> None:
        self.batches.append(batch)
        self.owners.append(np.full(len(batch), owner, np.int64))
        self.times.append(times)

    def merged(self) -> tuple[Batch, I64, I64]:
        if not self.batches:
            return Batch(self.record_type, {}, 0), np.zeros(0, np.int64), np.zeros(0, np.int64)
        if len(self.batches) > 1:
            self.batches = [Batch.concat(self.batches)]
            self.owners = [np.concatenate(self.owners)]
            self.times = [np.concatenate(self.times)]
        return self.batches[0], self.owners[0], self.times[0]

    def keep(self, mask: npt.NDArray[np.bool_]) -> None:
        batch, owners, times = self.merged()
        idx = np.flatnonzero(mask)
        self.batches, self.owners, self.times = [batch.take(idx)], [owners[idx]], [times[idx]]

    def __len__(self) -> int:
        return sum(len(b) for b in self.batches)


def event_times(batch: Batch) -> I64:
    """The newest time each record speaks of (its event time for the watermark)."""
    cols = batch.columns
    names: tuple[str, ...] = ("start_ns", "end_ns")
    if batch.record_type is RequestRecord:
        names = ("req_first_ns", "req_last_ns", "resp_first_ns", "resp_last_ns")
    newest: I64 = np.max(np.stack([np.asarray(cols[n]).astype(np.int64) for n in names]), axis=0)
    return newest


def _row_keys(batch: Batch) -> list[tuple[str, int]]:
    cols = batch.columns
    ids = cols["request_id"] if batch.record_type is RequestRecord else cols["flow_id"]
    return list(zip(cols["point"], np.asarray(ids).tolist(), strict=True))


class StreamCorrelator:
    """Consumes record batches, stitches them in event-time windows, writes spans and traces."""

    def __init__(self, consumer: Any, store: Any, settings: CorrelateSettings | None = None,
                 stream: StreamSettings | None = None, kinds: dict[str, str] | None = None) -> None:
        self.consumer = consumer
        self.store = store
        self.correlator = Correlator(settings, kinds)
        self.settings = stream or StreamSettings()
        self.stats = StreamStats()
        self._rows = {"requests": _Rows(RequestRecord), "flows": _Rows(FlowRecord)}
        self._pending: dict[int, _Pending] = {}
        self._order: dict[tuple[str, int], deque[int]] = {}
        self._serial = 0
        self._watermark_ns = 0
        self._idle_since: float | None = None
        self._last_pass = 0.0
        #: per table, (point, request_id or flow_id) of records already in stored spans (restart)
        self._emitted_keys: dict[str, set[tuple[str, int]]] | None = None
        #: (point, flow_id) of flows that carried requests already written: their flow records (which
        #: arrive late, when the connection ends) must not become L4 traces. Bounded, oldest out first.
        self._carriers: dict[tuple[str, int], None] = {}

    # --- input -----------------------------------------------------------------------------------

    def poll_once(self) -> int:
        deliveries = self.consumer.poll(self.settings.poll_timeout_s, self.settings.max_poll_records)
        records = 0
        for d in deliveries:
            records += self._ingest(d)
        if deliveries:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = time.monotonic()
        return records

    def idle(self) -> bool:
        """Polls have come back empty for ``idle_flush_s``: the input ran dry."""
        return self._idle_since is not None and time.monotonic() - self._idle_since >= self.settings.idle_flush_s

    def _ingest(self, delivery: Any) -> int:
        batch: Batch = delivery.batch
        serial = self._serial
        self._serial += 1
        self._order.setdefault((delivery.topic, delivery.partition), deque()).append(serial)
        table = batch.record_type.TABLE
        if table not in self._rows or len(batch) == 0:
            self._pending[serial] = _Pending(delivery, 0)
            return 0
        times = event_times(batch)
        if self._emitted_keys is None:
            self._emitted_keys = self._load_emitted(int(times.min()))
        emitted = self._emitted_keys.get(table) if self._emitted_keys else None
        if emitted:
            fresh = np.array([k not in emitted for k in _row_keys(batch)], dtype=bool)
            self.stats.replayed_skipped += int((~fresh).sum())
            batch, times = batch.take(np.flatnonzero(fresh)), times[fresh]
        if table == "flows" and self._carriers:
            fresh = np.array([k not in self._carriers for k in _row_keys(batch)], dtype=bool)
            self.stats.carrier_flows_skipped += int((~fresh).sum())
            batch, times = batch.take(np.flatnonzero(fresh)), times[fresh]
        self._pending[serial] = _Pending(delivery, len(batch))
        if len(batch):
            self._rows[table].add(batch, serial, times)
            self._watermark_ns = max(self._watermark_ns, int(times.max()))
        self.stats.records_in += len(batch)
        return len(batch)

    def _load_emitted(self, since_ns: int) -> dict[str, set[tuple[str, int]]]:
        """Keys of the records behind spans already stored from ``since_ns`` on (restart after a crash)."""
        margin = (self.settings.lateness_us + self.correlator.settings.network_delay_us) * 1000 * 2
        spans = self._with_retry(lambda: self.store.query_spans(max(0, since_ns - margin), _FOREVER,
                                                                limit=1_000_000))
        keys: dict[str, set[tuple[str, int]]] = {
            "requests": {(s.point, s.request_id) for s in spans or [] if s.request_id},
            "flows": {(s.point, s.flow_id) for s in spans or [] if not s.request_id},
        }
        self._remember_carriers([(s.point, s.flow_id) for s in spans or [] if s.request_id])
        if spans:
            log.info("restart: %d records already stitched into stored spans will be skipped", len(spans))
        return keys

    # --- stitching ---------------------------------------------------------------------------------

    def maybe_stitch(self, stop: threading.Event, force: bool = False) -> int:
        """One stitch pass when due; returns the traces written."""
        now = time.monotonic()
        idle = self.idle()
        buffered = sum(len(r) for r in self._rows.values())
        if not buffered:
            return 0
        if not force and not idle and now - self._last_pass < self.settings.stitch_every_s \
                and buffered < self.settings.max_buffer_records:
            return 0
        self._last_pass = now
        cutoff = self._watermark_ns - self.settings.lateness_us * 1000
        if force or idle:
            cutoff = _FOREVER
        elif buffered >= self.settings.max_buffer_records:
            self.stats.forced_passes += 1
            _, _, times = self._rows["requests"].merged()
            cutoff = int(np.median(times)) if len(times) else cutoff
        return self._emit(cutoff, stop)

    def _emit(self, cutoff_ns: int, stop: threading.Event) -> int:
        req, req_owner, req_t = self._rows["requests"].merged()
        flw, flw_owner, flw_t = self._rows["flows"].merged()
        result = self.correlator.stitch(req, flw, version_ns=time.time_ns())
        done = self._complete_traces(result, req_t, flw_t, cutoff_ns)
        if not done:
            return 0
        span_rows = np.array([t in done for t in result.spans.columns["trace_id"]], dtype=bool)
        trace_rows = np.array([t in done for t in result.traces.columns["trace_id"]], dtype=bool)
        spans, traces = result.spans.take(np.flatnonzero(span_rows)), result.traces.take(np.flatnonzero(trace_rows))
        if self._with_retry(lambda: self._write(spans, traces), stop) is None:
            return 0  # stopped while the store was down: nothing consumed, nothing committed
        wall = time.time_ns()
        self.stats.emit_delay_ms.extend(((wall - np.asarray(traces.columns["start_ns"]).astype(np.int64)) / 1e6)
                                        .tolist())
        self.stats.traces_out += len(traces)
        self.stats.spans_out += len(spans)
        span_cols = spans.columns
        self._remember_carriers([
            (p, f) for p, f, r in zip(span_cols["point"], np.asarray(span_cols["flow_id"]).tolist(),
                                      np.asarray(span_cols["request_id"]).tolist(), strict=True) if r])
        for name, trace_of, times, owners in (("requests", result.request_trace, req_t, req_owner),
                                              ("flows", result.flow_trace, flw_t, flw_owner)):
            gone = np.array([t in done for t in trace_of], dtype=bool) if len(trace_of) else np.zeros(0, bool)
            if name == "flows" and len(trace_of):
                carried = np.array([k in self._carriers for k in _row_keys(flw)], dtype=bool)
                self.stats.carrier_flows_skipped += int((carried & ~gone).sum())
                gone |= carried
            unstitched = np.array([not t for t in trace_of], dtype=bool) & (times < cutoff_ns) \
                if len(trace_of) else gone
            self.stats.unstitched_dropped += int(unstitched.sum())
            for serial, n in zip(*np.unique(owners[gone | unstitched], return_counts=True), strict=True):
                self._pending[int(serial)].remaining -= int(n)
            self._rows[name].keep(~(gone | unstitched))
        self._commit()
        return len(traces)

    def _remember_carriers(self, keys: list[tuple[str, int]]) -> None:
        for key in keys:
            self._carriers[key] = None
        excess = len(self._carriers) - self.settings.max_buffer_records
        if excess > 0:
            for key in list(itertools.islice(self._carriers, excess)):
                del self._carriers[key]

    def _complete_traces(self, result: StitchResult, req_t: I64, flw_t: I64, cutoff_ns: int) -> set[str]:
        newest: dict[str, int] = {}
        for trace_of, times in ((result.request_trace, req_t), (result.flow_trace, flw_t)):
            for t, ev in zip(trace_of, times.tolist(), strict=True):
                if t and ev > newest.get(t, -1):
                    newest[t] = ev
        return {t for t, ev in newest.items() if ev < cutoff_ns}

    def _write(self, spans: Batch, traces: Batch) -> bool:
        if len(spans):
            self.store.insert("spans", spans)
        if len(traces):
            self.store.insert("traces", traces)
        return True

    def _with_retry(self, action: Any, stop: threading.Event | None = None) -> Any:
        """Run ``action`` until the store accepts it; None when ``stop`` was set while waiting."""
        delay = self.settings.retry_initial_s
        while True:
            try:
                return action()
            except UnavailableError as exc:
                self.stats.store_retries += 1
                log.warning("store unavailable (%s); retrying in %.1f s, offsets not committed", exc, delay)
                if stop is not None and stop.wait(delay):
                    return None
                if stop is None:
                    time.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)

    def _commit(self) -> None:
        """Commit, per partition, the prefix of deliveries with nothing left in the buffer."""
        ready = []
        for queue in self._order.values():
            while queue and self._pending[queue[0]].remaining <= 0:
                ready.append(self._pending.pop(queue.popleft()).delivery)
        if ready:
            self.consumer.commit(ready)
            self.stats.commits += 1

    # --- the loop ----------------------------------------------------------------------------------

    def run(self, stop: threading.Event, exit_when_idle: bool = False) -> None:
        """Poll, stitch and write until ``stop`` is set (or, with ``exit_when_idle``, the input ran dry
        and everything was emitted)."""
        while not stop.is_set():
            self.poll_once()
            self.maybe_stitch(stop)
            if not any(len(r) for r in self._rows.values()):
                self._commit()  # deliveries that carried nothing to buffer
                if exit_when_idle and self.idle():
                    return
