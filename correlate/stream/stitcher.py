"""Stage 2 (or a single stage): the windowed stitcher."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hopscope.correlate.engine import Correlator, StitchResult
from hopscope.correlate.settings import CorrelateSettings
from hopscope.correlate.stream.buffers import RowBuffer, Seen, oldest_excess
from hopscope.correlate.stream.offsets import OffsetBook, _check_assignment, commit
from hopscope.correlate.stream.records import (
    PointHashes,
    _first_times,
    conn_keys,
    event_times,
    flow_keys,
    report_ids,
    request_keys,
    take,
)
from hopscope.correlate.stream.settings import (
    _RECORD_TYPES,
    FOREVER,
    I64,
    RECORD_TABLES,
    TP,
    U64,
    Bools,
    StreamSettings,
    StreamStats,
    pass_interval,
)
from hopscope.correlate.stream.watermark import (
    Watermark,
    _polled,
    read_marker,
)
from hopscope.errors import UnavailableError
from hopscope.records import Batch, RequestRecord
from hopscope.transport.base import Delivery

log = logging.getLogger(__name__)

#: Spans read back from the store after a restart, at most.
_GUARD_LIMIT = 1_000_000


class Stopped(Exception):
    """Asked to stop while waiting for the store: nothing more is committed; a restart replays."""


def with_retry(action: Callable[[], Any], settings: StreamSettings, stats: StreamStats,
               stop: threading.Event, what: str) -> Any:
    """Run ``action`` until the store accepts it (on ``UnavailableError`` wait, double, retry)."""
    delay = settings.retry_initial_s
    while True:
        try:
            return action()
        except UnavailableError as exc:
            stats.store_retries += 1
            log.warning("store unavailable during %s (%s); retrying in %.1f s, offsets not committed",
                        what, exc, delay)
            if stop.wait(delay):
                raise Stopped(what) from exc
            delay = min(delay * 2, settings.retry_max_s)


@dataclass(slots=True)
class _Pass:
    """What one stitch pass writes, and which buffered rows leave."""

    spans: Batch
    traces: Batch
    leave: dict[str, Bools]
    l7_spans: Bools
    l4_flow_keys: U64
    carrier_keys: U64
    consumed: int = 0
    forced_traces: int = 0
    unstitched: int = 0
    retired_flows: int = 0


class StreamCorrelator:
    """Consumes record batches, stitches them in event-time windows, writes spans and traces, and
    commits offsets only after the store accepted them.

    ``consumer`` has ``poll``/``commit`` (and, for rebalances, ``assignment``); ``lateness_us`` and
    ``idle_flush_s`` override the settings' (stage 2 of the pipeline uses its relay lateness, fixed: its
    watermark comes from the relays' markers)."""

    def __init__(self, consumer: Any, store: Any, settings: CorrelateSettings | None = None,
                 stream: StreamSettings | None = None, kinds: dict[str, str] | None = None, *,
                 lateness_us: int | None = None, idle_flush_s: float | None = None,
                 stats: StreamStats | None = None) -> None:
        self.consumer = consumer
        self.store = store
        self.correlator = Correlator(settings, kinds)
        self.settings = stream or StreamSettings()
        self.stats = stats or StreamStats()
        self.book = OffsetBook()
        self.buffers = {t: RowBuffer(_RECORD_TYPES[t]) for t in RECORD_TABLES}
        s = self.settings
        self.watermark = Watermark(s.lateness_us if lateness_us is None else lateness_us,
                                   s.idle_flush_s if idle_flush_s is None else idle_flush_s, s.max_future_us,
                                   s.min_lateness_us if lateness_us is None else None, s.lateness_window_s)
        self.h = PointHashes()
        self.written_requests = Seen()  # (point, request_id) of requests in written spans
        self.written_flows = Seen()  # (point, flow_id) of flows in written L4 spans
        self.carriers = Seen()  # (point, flow_id) of flows that carried written requests
        self.l7_conns: dict[int, int] = {}  # connection keys that carried requests -> newest time
        self._assignment: set[TP] = set()
        self._guard_from: int | None = None  # spans stored since then were read back (None: not yet)
        self._last_watermark = -FOREVER
        self._stop = threading.Event()
        self._since = 0
        self._last = time.monotonic()
        self._pass_s = 0.0  # wall time the last pass took
        self._clocks: dict[str, int] = {}  # offset (ns) of each corrected clock domain, as last logged
        self._writing = 0  # records out of the buffers whose pass is being inserted

    def held(self) -> int:
        """Records this stage holds: buffered, or taken out of the buffers by the pass being inserted
        (a metrics scrape from another thread sees them held until the pass's traces are written)."""
        return sum(len(b) for b in self.buffers.values()) + self._writing

    def _note_clocks(self, res: StitchResult) -> None:
        """Log each clock domain (a host by default) whose correction appeared, went or moved by more
        than the clock jitter since the last pass, with how sure its estimate is."""
        jitter_ns = self.correlator.settings.clock_jitter_us * 1000
        now = {c.domain: c.offset_ns for c in res.clocks if c.offset_ns}
        for c in res.clocks:
            if abs(now.get(c.domain, 0) - self._clocks.get(c.domain, 0)) > jitter_ns:
                log.info("clock of %s %s (%s): offset %.0f us +-%.0f us, %s against %s over %d requests",
                         c.domain_kind, c.domain, " ".join(c.points), c.offset_ns / 1000, c.uncertainty_ns / 1000,
                         c.decision.value, c.measured_from or "-", c.evidence)
                self._clocks[c.domain] = now.get(c.domain, 0)

    def idle(self) -> bool:
        return self.watermark.idle()

    # --- input -----------------------------------------------------------------------------------

    def poll_once(self, timeout_s: float | None = None) -> int:
        timeout = self.settings.poll_timeout_s if timeout_s is None else timeout_s
        deliveries = self.consumer.poll(timeout, self.settings.max_poll_records)
        _polled(self.consumer, self.watermark)
        self._assignment, added = _check_assignment(self.consumer, self._assignment, self.buffers.values(),
                                                    self.book, self.stats, self.watermark)
        if added:
            self._guard_from = None  # replays ahead: read back what the store already has
        records = 0
        for d in deliveries:
            records += self._admit(d)
        return records

    def _admit(self, d: Delivery) -> int:
        batch = d.batch
        buf = self.buffers.get(batch.record_type.TABLE)
        marker = read_marker(batch)
        if marker is not None:
            self.watermark.mark((d.topic, d.partition), *marker)
        if buf is None or not len(batch) or marker is not None:
            self.book.add(d, 0)
            return 0
        self.stats.records_in += len(batch)
        self._guard(batch)
        rids = report_ids(batch, self.h)
        keep = self._fresh(batch, rids, buf)
        if not keep.all():
            idx = np.flatnonzero(keep)
            batch, rids = take(batch, idx), rids[idx]
        times = event_times(batch)
        self.watermark.saw(times, (d.topic, d.partition))
        self.stats.late_records += int((times < self.watermark.value()).sum())
        if batch.record_type is RequestRecord and len(batch):
            ck = conn_keys(batch)
            on = ck != 0
            conns, inv = np.unique(ck[on], return_inverse=True)  # a connection's requests at each point
            newest = np.full(len(conns), np.iinfo(np.int64).min, np.int64)
            np.maximum.at(newest, inv, times[on])
            l7 = self.l7_conns
            for k, t in zip(conns.tolist(), newest.tolist(), strict=True):
                l7[k] = max(t, l7.get(k, 0))
        buf.add(batch, times, rids, self.book.add(d, len(batch)), (d.topic, d.partition))
        self._since += len(batch)
        return len(batch)

    def _fresh(self, batch: Batch, rids: U64, buf: RowBuffer) -> Bools:
        """Not held already, not earlier in this batch, and not in a written span."""
        _, first = np.unique(rids, return_index=True)
        keep = np.zeros(len(rids), bool)
        keep[first] = True
        held = buf.ids
        keep &= np.fromiter((r not in held for r in rids.tolist()), dtype=bool, count=len(rids))
        self.stats.duplicates += int(len(rids) - keep.sum())
        if batch.record_type is RequestRecord:
            ids, done = request_keys(batch, self.h), self.written_requests.ids
        else:
            ids, done = flow_keys(batch, self.h), self.written_flows.ids
        stitched = np.fromiter((i in done for i in ids.tolist()), dtype=bool, count=len(ids)) & keep
        self.stats.replayed_skipped += int(stitched.sum())
        out: Bools = keep & ~stitched
        return out

    def _guard(self, batch: Batch) -> None:
        """After (re)gaining partitions, read back the spans stored since shortly before the oldest
        replayed record, so records of traces already written are recognised."""
        oldest = int(_first_times(batch).min())
        if self._guard_from is not None and oldest >= self._guard_from:
            return
        margin = 2 * (self.watermark.lateness_ns + self.correlator.settings.request_window_ns)
        since = max(0, oldest - margin)
        spans, traces = with_retry(lambda: (self.store.query_spans(since, FOREVER, limit=_GUARD_LIMIT),
                                            self.store.query_traces(since - margin, FOREVER, limit=_GUARD_LIMIT)),
                                   self.settings, self.stats, self._stop, "reading back stored spans")
        if len(spans) >= _GUARD_LIMIT:
            log.warning("more than %d spans stored since %d: replays beyond them are not recognised",
                        _GUARD_LIMIT, since)
        self._guard_from = since
        if not spans:
            return
        sb = Batch.from_records(type(spans[0]), spans)
        l7 = _l7_spans(sb, {t.trace_id: t.kind for t in traces})
        newest = int(np.asarray(sb.columns["request_first_ns"]).max()) + margin
        keys_req = request_keys(sb, self.h)
        keys_flow = flow_keys(sb, self.h)
        self.written_requests.add(keys_req[l7], newest)
        self.written_flows.add(keys_flow[~l7], newest)
        self.carriers.add(keys_flow[l7], newest)
        log.info("read back %d stored spans: replayed records of their traces will be skipped", len(spans))

    # --- stitching -------------------------------------------------------------------------------

    def maybe_stitch(self, stop: threading.Event | None = None, force: bool = False) -> int:
        """One stitch pass when due (``force``: now, everything held); returns the traces written."""
        if stop is not None:
            self._stop = stop
        if not self.held():
            commit(self.consumer, self.book, self.stats)  # messages that carried nothing to hold
            return 0
        if force:
            return self.stitch_pass(FOREVER)
        # A pass can complete a trace only when the watermark moved: new records alone never do.
        watermark = self.watermark.value()
        due = self.watermark.idle() or self.held() > self.settings.max_buffer_records or (
            watermark > self._last_watermark and time.monotonic() - self._last >= pass_interval(self.settings,
                                                                                               self._pass_s))
        return self.stitch_pass(watermark) if due else 0

    def stitch_pass(self, watermark_ns: int) -> int:
        """Stitch everything held; write the complete traces and what retires; commit."""
        self._since, self._last, self._last_watermark = 0, time.monotonic(), watermark_ns
        for b in self.buffers.values():
            b.settle()
        self.stats.passes += 1
        written = 0
        if self.held():
            p = self._select(watermark_ns)
            self._write(p)
            written = len(p.traces)
        commit(self.consumer, self.book, self.stats)
        self._prune()
        self._pass_s = time.monotonic() - self._last
        return written

    def _engine_flows(self, req: RowBuffer, flows: RowBuffer, fkeys: U64) -> Bools:
        """Flows the engine gets: not those of connections that carried requests, unless requests of
        the connection are held (the engine then keeps them out of L4 itself, and uses close types)."""
        ck = conn_keys(flows.batch)
        carried = np.fromiter((k in self.l7_conns for k in ck.tolist()), dtype=bool, count=len(ck))
        carried |= np.fromiter((k in self.carriers.ids for k in fkeys.tolist()), dtype=bool, count=len(ck))
        ok: Bools = ~carried | np.isin(ck, conn_keys(req.batch))
        return ok

    def _select(self, watermark_ns: int) -> _Pass:
        req, flows = self.buffers["requests"], self.buffers["flows"]
        fkeys = flow_keys(flows.batch, self.h)
        engine = self._engine_flows(req, flows, fkeys)
        eidx = np.flatnonzero(engine)
        res = self.correlator.stitch(req.batch, take(flows.batch, eidx), version_ns=time.time_ns())
        self._note_clocks(res)
        index = {t: i for i, t in enumerate(res.traces.columns["trace_id"])}
        n = len(index)
        req_tr = np.fromiter((index.get(t, -1) for t in res.request_trace), dtype=np.int64, count=len(req.time))
        flow_tr = np.full(len(flows.time), -1, np.int64)
        flow_tr[eidx] = np.fromiter((index.get(t, -1) for t in res.flow_trace), dtype=np.int64, count=len(eidx))
        forced = oldest_excess([req.time, flows.time], self.settings.max_buffer_records)
        closed = _flows_closed(fkeys, flows, watermark_ns, self.settings.flow_idle_us * 1000)
        newest = np.full(n + 1, np.iinfo(np.int64).min, np.int64)  # slot n: rows in no trace
        np.maximum.at(newest, np.where(req_tr >= 0, req_tr, n), req.time)
        np.maximum.at(newest, np.where(flow_tr >= 0, flow_tr, n), flows.time)
        open_ = np.zeros(n + 1, bool)
        np.logical_or.at(open_, np.where(flow_tr >= 0, flow_tr, n), ~closed)
        hit = np.zeros(n + 1, bool)
        np.logical_or.at(hit, np.where(req_tr >= 0, req_tr, n), forced[0])
        np.logical_or.at(hit, np.where(flow_tr >= 0, flow_tr, n), forced[1])
        spread = self.settings.trace_spread_us * 1000
        complete = FOREVER if watermark_ns == FOREVER else max(watermark_ns - spread, -FOREVER)
        emit = (((newest < complete) & ~open_) | hit)[:n]
        return self._outcome(res, emit, hit[:n], req_tr, flow_tr, fkeys, closed, forced, watermark_ns)

    def _outcome(self, res: StitchResult, emit: Bools, hit: Bools, req_tr: I64, flow_tr: I64, fkeys: U64,
                 closed: Bools, forced: list[Bools], watermark_ns: int) -> _Pass:
        req, flows = self.buffers["requests"], self.buffers["flows"]
        emit_x = np.r_[emit, False]  # index -1 (no trace) -> not emitted
        used_req = emit_x[req_tr]
        unstitched = (req_tr < 0) & ((req.time < watermark_ns) | forced[0])
        used_flow = emit_x[flow_tr]
        pending_fk = np.unique(fkeys[(flow_tr >= 0) & ~used_flow])
        used_flow |= np.isin(fkeys, fkeys[used_flow])  # every report of a flow in a written L4 trace
        held_conns = conn_keys(req.batch)[~(used_req | unstitched)]
        retire = (~used_flow & closed & ~np.isin(fkeys, pending_fk)
                  & ~np.isin(conn_keys(flows.batch), held_conns)) | (forced[1] & ~used_flow)
        trace_ids = res.traces.columns["trace_id"]
        emitted = {trace_ids[i] for i in np.flatnonzero(emit).tolist()}
        span_rows = np.fromiter((t in emitted for t in res.spans.columns["trace_id"]), dtype=bool,
                                count=len(res.spans))
        spans = take(res.spans, np.flatnonzero(span_rows))
        l7 = _l7_spans(spans, dict(zip(trace_ids, res.traces.columns["kind"], strict=True)))
        span_fk = flow_keys(spans, self.h)
        return _Pass(spans, take(res.traces, np.flatnonzero(emit)),
                     {"requests": used_req | unstitched, "flows": used_flow | retire},
                     l7_spans=l7, l4_flow_keys=span_fk[~l7], carrier_keys=span_fk[l7],
                     consumed=int(used_req.sum() + used_flow.sum()), forced_traces=int((hit & emit).sum()),
                     unstitched=int(unstitched.sum()), retired_flows=int((retire & ~used_flow).sum()))

    def _write(self, p: _Pass) -> None:
        """Raw records first, then spans, then traces (a crash in between re-stitches the same)."""
        # Out of the buffer first (a stop while the store is down commits nothing: a restart replays).
        leaving = {t: self.buffers[t].split(m) for t, m in p.leave.items()}
        self._writing = sum(len(b) for b, _, _ in leaving.values())
        try:
            for table, batch in (*((t, b) for t, (b, _, _) in leaving.items()), ("spans", p.spans),
                                 ("traces", p.traces)):
                if len(batch):
                    self._insert(table, batch)
                    self.stats.rows[table] = self.stats.rows.get(table, 0) + len(batch)
            newest = self.watermark.newest_ns
            self.written_requests.add(request_keys(p.spans, self.h)[p.l7_spans], newest)
            self.written_flows.add(p.l4_flow_keys, newest)
            self.carriers.add(p.carrier_keys, newest)
            for _, mids, _ in leaving.values():
                self.book.done(mids)
            if len(p.traces):
                starts = np.asarray(p.traces.columns["start_ns"]).astype(np.int64)
                self.stats.emit_delay_ms.extend(((time.time_ns() - starts) / 1e6).tolist())
            self.stats.traces_out += len(p.traces)
            self.stats.spans_out += len(p.spans)
            self.stats.records_stitched += p.consumed
            self.stats.forced_traces += p.forced_traces
            self.stats.unstitched_dropped += p.unstitched
            self.stats.retired_flows += p.retired_flows
        finally:
            self._writing = 0  # held no more once the pass's counts are in

    def _insert(self, table: str, batch: Batch) -> None:
        with_retry(lambda: self.store.insert(table, batch), self.settings, self.stats, self._stop,
                   f"inserting {len(batch)} {table}")

    def _prune(self) -> None:
        horizon = self.watermark.newest_ns - self.settings.dedup_horizon_us * 1000
        for seen in (self.written_requests, self.written_flows, self.carriers):
            seen.prune(horizon)
        if len(self.l7_conns) > self.settings.max_buffer_records:
            self.l7_conns = {k: t for k, t in self.l7_conns.items() if t >= horizon}

    # --- the loop ----------------------------------------------------------------------------------

    def run(self, stop: threading.Event, exit_when_idle: bool = False) -> None:
        """Poll, stitch and write until ``stop`` (then write what is complete and commit), or, with
        ``exit_when_idle``, until the input ran dry and everything was written."""
        self._stop = stop
        try:
            while not stop.is_set():
                self.poll_once()
                self.maybe_stitch(stop)
                if exit_when_idle and self.idle() and not self.held() and not self.book.commit_points():
                    return
            self.finish()
        except Stopped:
            log.warning("stopped while the store was unavailable: nothing more committed; a restart replays")

    def finish(self) -> None:
        """Write what is complete at the current watermark and commit (a clean stop). With the store
        down this gives up at the first failure (``Stopped``): nothing more is committed."""
        self.stitch_pass(self.watermark.value())


def _l7_spans(spans: Batch, kind_of: dict[str, str]) -> Bools:
    """Spans of request (L7) traces; by the request id when the trace is not at hand."""
    rid = np.asarray(spans.columns["request_id"]).tolist()
    kinds = [kind_of.get(t, "l7" if r else "l4") for t, r in zip(spans.columns["trace_id"], rid, strict=True)]
    return np.array([k == "l7" for k in kinds], dtype=bool)


def _flows_closed(fkeys: U64, flows: RowBuffer, watermark_ns: int, idle_ns: int) -> Bools:
    """Per flow row: its flow is over (a final report older than the watermark, or quiet for
    ``idle_ns``): no request on it can come any more."""
    if len(fkeys) == 0:
        return np.zeros(0, bool)
    final = np.asarray(flows.batch.columns["final"]).astype(bool)
    uniq, inv = np.unique(fkeys, return_inverse=True)
    latest = np.full(len(uniq), np.iinfo(np.int64).min, np.int64)
    np.maximum.at(latest, inv, flows.time)
    has_final = np.zeros(len(uniq), bool)
    np.logical_or.at(has_final, inv, final)
    closed: Bools = ((latest < watermark_ns) & (has_final | (latest < watermark_ns - idle_ns)))[inv]
    return closed
