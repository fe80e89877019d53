"""Streaming correlation over Kafka (``hopscope correlate --kafka``): windows, two stages, at least once.

**Windows** (``StreamCorrelator``). Records are buffered; each pass runs the offline engine
(``Correlator.stitch``) on everything buffered. A record's time is its latest timestamp
(``resp_last_ns``, a flow's ``end_ns``): the probe cannot have reported it earlier. A trace is
*complete* when its newest record is ``trace_spread_us`` older than the watermark (the records of
one trace lie within that spread, so those still to come are older than the watermark: already
sent); an L4 trace also needs each of its flows reported final, or quiet for ``flow_idle_us``, so a
connection that may still carry requests never becomes an L4 trace. Complete traces are written,
their records leave the buffer, the rest waits. The watermark is event time: per partition, the
newest record time read there (capped at ``max_future_us`` past the wall clock); the stage's
watermark is the least over partitions that are not idle, minus ``lateness_us`` (a consumer reads
partitions unevenly: one partition's newest says nothing of another's; a partition with records
still to fetch and none read holds everything back). A partition, or the whole stage, is idle after
``idle_flush_s`` and ``IDLE_POLLS`` polls without input and with nothing left to fetch (position =
high watermark), so a long pass or a store outage is never taken for the end of the input; an idle
stage writes everything.

**Two stages** (``StreamPipeline``, what ``hopscope correlate`` runs). The probes key every record by
its NAT-invariant key (the client ISN), so all observations of one TCP connection reach one
partition; but a sidecar proxy's two legs are two connections, on two partitions.

- Stage 1, the ``Relay`` (group ``<group>-s1`` on ``<prefix>.requests|flows``) holds records until
  its watermark passed them, then gives each connection (correlation key) its *rendezvous host*: the
  host of the observation nearest the server (smallest residence ``resp_first - req_first``, which
  needs no clock correction; the latest request time when a hop saw no response; for connections
  without requests the smallest ``rtt_server_us``, else the latest start). The decision is cached per
  connection, so every request of a keep-alive connection follows the first. Records go on unchanged
  to ``<prefix>.s2.requests|flows`` keyed by that host (Kafka's murmur2 partitioner: one host, one
  partition, in every process), in event-time slices; then the relay writes a *watermark marker* to
  every stage-2 partition (a one-row request batch, point ``MARKER_POINT``, host = the relay's
  name, ``req_first_ns`` = its watermark: "everything older was sent, before this marker"), flushes
  (acks=all) and only then commits its input.
- Stage 2 is a ``StreamCorrelator`` (group ``<group>-s2``) on the stage-2 topics whose watermark is
  the least marker over the relays heard from and the partitions it reads: exact, however the relays
  of several processes lag each other (a relay silent for twice the idle time is dropped: it died,
  or said "everything"). Both legs of a server-side proxy end on the proxy's host: they meet.
  Proxies chained across hosts (an egress sidecar on the client's host, a sidecar on the server's):
  the client app's leg stays on its host while the egress sidecar's upstream leg goes to the server's
  host, so the relay keys stage 2 by *host group* (``HostGroups``): a connection that leaves a host
  where it has seen proxy records joins that host to its rendezvous host, and every record goes to
  its rendezvous host's group (the least host name in it). All legs of the chain meet there and are
  linked as offline, through the NAT-invariant hops of the middle leg.

Why markers: a stage-2 watermark taken from the record times stage 2 has read would, under load, pass
records a slower relay (or an unread partition) has still to deliver, and write partial traces.
Markers are the usual cure for a shuffle (watermarks flow with the data); ``relay_lateness_us``
remains only for input without markers.

**Delivery.** Stage 2 writes the raw requests and flows that leave its buffer, then the spans, then
the traces, and only then commits, per partition, up to the oldest message with a record still
buffered. Spans and traces carry deterministic ids on ReplacingMergeTree tables (requests and flows
too: their sort keys are the record's own ids), so writing again changes nothing. What a plain replay
would get wrong is a *partial* trace: after a crash (or a rebalance) the records of a trace already
written can come back in part (a message holding some of them was committed, another not; a relay
republishes what it released but had not committed). So a record is dropped when it is already in a
stored span: those this process wrote are remembered (``dedup_horizon_us`` of event time); after
(re)gaining partitions, the spans stored since shortly before the first replayed record are read
once from the store. Duplicates within the buffer are dropped too (the engine would take a record
seen twice at one hop for two requests). Partitions taken away by a rebalance are dropped from the
buffers (their new owner replays them). The consumers' group session is ``SESSION_TIMEOUT_MS``, so a
correlator killed with -9 hands its partitions over within seconds.

**Bounds.** Beyond ``max_buffer_records`` per stage the oldest records are forced out (stage 1
releases them with the best decision so far; stage 2 writes their traces as they are). Nothing leaves
silently: duplicates, replays, late records, forced traces, unmatchable records and retired flows are
counted in ``StreamStats``.

**Limitations.** Host groups trade partitions for whole chains: every host a chain of proxies touches
shares one stage-2 partition (a mesh with egress sidecars on every pod is one group). Each relay learns
its groups from the records it holds: a chain whose first connection is released before the relay
saw a proxy record of the client's host, or whose legs several relays decide before each saw such a
connection, can be split while the group forms; a group that grows later moves the hosts' records to
its new representative from then on. All traffic to one server host goes through
one stage-2 partition (a refinement: key by host and method, which every proxy matcher requires to
agree, once flows can follow every request of their connection). A record later than the
lateness, or a trace spreading wider than ``trace_spread_us`` (a hop that never saw a long request's
response), can make a trace of its own. Proxy links by timing (``proxy:nested``, no shared id) pick
among candidates by the most common turnaround of what is buffered, so near a window's edge they can
pair differently from the offline engine. A request written before its flow's reset report arrived
misses the reset mark the offline engine gives it. After a restart, flows of connections whose
requests were written before the crash, seen at points without request records, can become L4
traces. Interleaving both stages in one loop keeps them on one core; a thread per stage would gain
little under the GIL.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from hopscope.codec import encode_batch
from hopscope.correlate.engine import Correlator, StitchResult
from hopscope.correlate.settings import CorrelateSettings
from hopscope.errors import ConfigError, UnavailableError
from hopscope.ids import mix64_array, parts_hash64
from hopscope.records import Batch, FlowRecord, HopKind, Record, RequestRecord
from hopscope.transport.base import DEFAULT_TOPIC_PREFIX, Delivery, correlation_keys, topic_of

log = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
Bools = npt.NDArray[np.bool_]
TP = tuple[str, int]
FOREVER = np.iinfo(np.int64).max
RECORD_TABLES: tuple[str, ...] = ("requests", "flows")
_RECORD_TYPES: dict[str, type[Record]] = {"requests": RequestRecord, "flows": FlowRecord}
_GUARD_LIMIT = 1_000_000
#: A partition (or a stage) is idle only after this many polls without input, however long they
#: took: a process that paused (stitching, waiting for the store) has not seen its input run dry.
IDLE_POLLS = 3
#: Kafka group session of the correlator's consumers (the broker's minimum): how long a group waits
#: for a member that died without leaving before it hands the member's partitions to the others.
SESSION_TIMEOUT_MS = 6000  # spans read back from the store after a restart, at most


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Windows, bounds and retries of the streaming correlator (event time in µs, wall time in s)."""

    #: How far behind the newest record a record may arrive and still join its trace (stage 1 and a
    #: single-stage correlator).
    lateness_us: int = 2_000_000
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
    #: Wall time between two stitch passes (or relay releases) while input keeps arriving.
    stitch_every_s: float = 0.5
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


# --- record identity and time --------------------------------------------------------------------


def take(batch: Batch, rows: Any) -> Batch:
    """``Batch.take`` with text columns gathered by ``itemgetter`` (several times faster than the
    list comprehension of ``Batch.take``, which stitching calls on every buffered row each pass)."""
    idx = np.asarray(rows, dtype=np.intp)
    n = len(idx)
    get = itemgetter(*idx.tolist()) if n > 1 else None
    cols: dict[str, Any] = {}
    for name, data in batch.columns.items():
        if not isinstance(data, list):
            cols[name] = data[idx]
        elif get is not None:
            cols[name] = list(get(data))
        else:
            cols[name] = [data[int(i)] for i in idx]
    return Batch(batch.record_type, cols, n)


def _u64(data: Any) -> U64:
    return np.asarray(data).astype(np.uint64)


class PointHashes:
    """64-bit hash of (point, id) pairs; the point's hash is cached (there are few points)."""

    def __init__(self) -> None:
        self._cache: dict[str, int] = {}

    def key(self, points: list[str], ids: Any) -> U64:
        cache = self._cache
        for p in set(points) - cache.keys():
            cache[p] = parts_hash64("point", p)
        ph = np.fromiter((cache[p] for p in points), dtype=np.uint64, count=len(points))
        return mix64_array(ph ^ mix64_array(_u64(ids)))


def request_keys(batch: Batch, h: PointHashes) -> U64:
    """A request record's identity: (point, request_id)."""
    return h.key(batch.columns["point"], batch.columns["request_id"])  # type: ignore[arg-type]


def flow_keys(batch: Batch, h: PointHashes) -> U64:
    """A flow's identity at its point: (point, flow_id); its interim reports share it."""
    return h.key(batch.columns["point"], batch.columns["flow_id"])  # type: ignore[arg-type]


def report_ids(batch: Batch, h: PointHashes) -> U64:
    """One record's identity: a request at a point, or one report (end_ns) of a flow at a point."""
    if batch.record_type is RequestRecord:
        return request_keys(batch, h)
    return mix64_array(flow_keys(batch, h) ^ _u64(batch.columns["end_ns"]))


def conn_keys(batch: Batch) -> U64:
    """(syn_seq, synack_seq) of the connection that carried each record (0 when no SYN was seen)."""
    syn, ack = _u64(batch.columns["syn_seq"]), _u64(batch.columns["synack_seq"])
    return np.where(syn != 0, (syn << np.uint64(32)) | ack, np.uint64(0))


def event_times(batch: Batch) -> I64:
    """The latest timestamp of each record (ns): its event time for the watermark."""
    cols = batch.columns
    names: tuple[str, ...] = ("start_ns", "end_ns")
    if batch.record_type is RequestRecord:
        names = ("req_first_ns", "req_last_ns", "resp_first_ns", "resp_last_ns")
    out = np.asarray(cols[names[0]]).astype(np.int64)
    for n in names[1:]:
        out = np.maximum(out, np.asarray(cols[n]).astype(np.int64))
    return out


def _first_times(batch: Batch) -> I64:
    name = "req_first_ns" if batch.record_type is RequestRecord else "start_ns"
    return np.asarray(batch.columns[name]).astype(np.int64)


# --- offsets, buffers, watermarks --------------------------------------------------------------


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


class Watermark:
    """Event-time watermark over the partitions a stage reads: the least, over partitions that are
    not idle, of the newest record time seen there, minus the lateness (a consumer reads partitions
    unevenly, so one partition's newest says nothing of another's). A partition is idle when it got
    no input for ``idle_s`` and ``IDLE_POLLS`` polls and has nothing left to fetch. FOREVER once every
    partition is: the input ran dry."""

    def __init__(self, lateness_us: int, idle_s: float, max_future_us: int) -> None:
        self.lateness_ns = lateness_us * 1000
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
        #: partitions the stage reads (where relays' marks are expected; empty: unknown)
        self.assigned: set[TP] = set()
        #: (partition, relay) -> (promised watermark, wall time and poll when read)
        self._marks: dict[tuple[TP, str], tuple[int, float, int]] = {}
        self.expiry_s = 2 * idle_s

    def polled(self, lagging: set[TP]) -> None:
        """A poll of the stage happened; ``lagging``: partitions with records not yet polled."""
        self.polls += 1
        self.lagging = lagging

    def saw(self, times: I64, tp: TP) -> None:
        now = self.last_input = time.monotonic()
        self._last[tp] = now
        self._last_poll[tp] = self._input_poll = self.polls
        if len(times):
            newest = min(int(times.max()), time.time_ns() + self.max_future_ns)
            self._newest[tp] = max(self._newest.get(tp, 0), newest)
            self.newest_ns = max(self.newest_ns, newest)

    def forget(self, tps: set[TP]) -> None:
        for tp in tps:
            self._newest.pop(tp, None)
            self._last.pop(tp, None)
            self._last_poll.pop(tp, None)
        for key in [k for k in self._marks if k[0] in tps]:
            del self._marks[key]

    def mark(self, tp: TP, relay: str, watermark_ns: int) -> None:
        """A relay's promise, read on partition ``tp``: it sent everything older than ``watermark_ns``."""
        self.last_input = time.monotonic()
        self._input_poll = self.polls
        self._marks[(tp, relay)] = (watermark_ns, self.last_input, self.polls)

    def _marked(self) -> int | None:
        """The least promise over the relays heard from lately and the partitions assigned (a relay
        marks every partition, each after its records there: a partition whose mark was not read yet
        holds everything back). None: no relay heard from."""
        now = time.monotonic()
        newest: dict[str, tuple[float, int]] = {}
        for (_, relay), (_, seen, poll) in self._marks.items():
            last = newest.get(relay, (0.0, 0))
            newest[relay] = (max(last[0], seen), max(last[1], poll))
        dead = {r for r, (seen, poll) in newest.items()
                if now - seen >= self.expiry_s and self.polls - poll >= IDLE_POLLS}
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
        return (time.monotonic() - self.last_input >= self.idle_s and self.polls - self._input_poll >= IDLE_POLLS
                and not self.lagging)

    def value(self) -> int:
        marked = self._marked()
        if marked is not None and not self.idle():
            return marked
        if self.lagging - self._newest.keys():
            return -FOREVER  # a partition with records to fetch has delivered none yet: hold everything
        now = time.monotonic()
        active = [n for tp, n in self._newest.items()
                  if now - self._last[tp] < self.idle_s or self.polls - self._last_poll[tp] < IDLE_POLLS
                  or tp in self.lagging]
        return min(active) - self.lateness_ns if active else FOREVER


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


# --- consumers, commits, retries ----------------------------------------------------------------


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


# --- stage 1: the relay ---------------------------------------------------------------------------


def _group_all(keys: U64, flag: Bools) -> Bools:
    """Per row: ``flag`` holds on every row with the same key."""
    uniq, inv = np.unique(keys, return_inverse=True)
    ok = np.ones(len(uniq), bool)
    np.logical_and.at(ok, inv, flag)
    out: Bools = ok[inv]
    return out


def rendezvous_hosts(requests: Batch, flows: Batch) -> dict[int, str]:
    """Rendezvous host per correlation key: the host of the connection's observation nearest the
    server. Requests decide when the connection has any, flows otherwise."""
    return connection_ends(requests, flows)[0]


def connection_ends(requests: Batch, flows: Batch) -> tuple[dict[int, str], dict[int, str]]:
    """Per correlation key, the host of the connection's observation nearest the server (its
    rendezvous host) and that of the one nearest the client (where it left: a proxy's upstream leg
    leaves the proxy's host). Requests decide when the connection has any, flows otherwise."""
    keys, prio, score, hosts = [], [], [], []
    if len(requests):
        rc = requests.columns
        t_req = np.asarray(rc["req_first_ns"]).astype(np.int64)
        t_resp = np.asarray(rc["resp_first_ns"]).astype(np.int64)
        k = correlation_keys(requests)
        full = _group_all(k, t_resp > 0)  # every hop saw the response: residence, clock-free
        keys.append(k)
        prio.append(np.zeros(len(k), np.int64))
        score.append(np.where(full, t_resp - t_req, -t_req))
        hosts += list(rc["host"])
    if len(flows):
        fc = flows.columns
        rtt = np.asarray(fc["rtt_server_us"]).astype(np.int64)
        k = correlation_keys(flows)
        full = _group_all(k, rtt > 0)
        keys.append(k)
        prio.append(np.ones(len(k), np.int64))
        score.append(np.where(full, rtt, -np.asarray(fc["start_ns"]).astype(np.int64)))
        hosts += list(fc["host"])
    if not keys:
        return {}, {}
    all_keys, all_prio, all_score = np.concatenate(keys), np.concatenate(prio), np.concatenate(score)
    ends = []
    for sign in (1, -1):  # the smallest score (nearest the server), then the largest (nearest the client)
        order = np.lexsort((sign * all_score, all_prio, all_keys))
        ks = all_keys[order]
        first = order[np.r_[True, ks[1:] != ks[:-1]]]
        ends.append({int(k): str(hosts[i]) for k, i in zip(all_keys[first].tolist(), first.tolist(), strict=True)})
    return ends[0], ends[1]


class HostGroups:
    """Hosts joined by proxied connections, so that every leg of a proxy chain meets in one stage-2
    partition (a stage-2 key is a group's representative: the least host name in it).

    A proxy's two legs end (downstream leg) and start (upstream leg) on the proxy's host. Each leg
    goes to its rendezvous host (the end nearest the server): a server-side sidecar's legs meet there
    as they are. A client-side (egress) sidecar's upstream leg leaves its host for another one, while
    the leg into it (the client app's, on the pod's loopback) stays on its host; so a connection that
    leaves a host with proxy points joins that host's group to its rendezvous host's. Chains across
    hosts then link as the offline engine links them, through the NAT-invariant hops of the middle leg.
    The price: every host a chain touches shares one partition (a mesh with egress sidecars on every
    pod becomes one group)."""

    def __init__(self) -> None:
        self.up: dict[str, str] = {}
        #: hosts where a record was seen at a hop of kind ``proxy``
        self.proxy_hosts: set[str] = set()

    def saw(self, batch: Batch) -> None:
        """Note the hosts of the batch's records seen at proxy hops."""
        proxy = HopKind.PROXY.value
        self.proxy_hosts.update(h for h, k in zip(batch.columns["host"], batch.columns["hop_kind"], strict=True)
                                if k == proxy)

    def find(self, host: str) -> str:
        root = host
        while self.up.get(root, root) != root:
            root = self.up[root]
        while host != root:  # path compression
            host, self.up[host] = self.up[host], root
        return root

    def join(self, client_end: str, server_end: str) -> None:
        """A connection left ``client_end`` for ``server_end``: one group if it left a proxy's host."""
        if client_end == server_end or client_end not in self.proxy_hosts:
            return
        a, b = sorted((self.find(client_end), self.find(server_end)))
        if a != b:
            self.up[b] = a


class Relay:
    """Stage 1: hold records per connection, choose its rendezvous host, republish keyed by it."""

    def __init__(self, consumer: Any, publisher: Any, prefix: str, settings: StreamSettings,
                 stats: StreamStats, s2_partitions: dict[str, int] | None = None) -> None:
        self.consumer = consumer
        #: this relay's name in its watermark markers (a restarted relay is a new one)
        self.name = uuid.uuid4().hex[:12]
        self.marker_keys = {t: partition_keys(n) for t, n in (s2_partitions or {}).items()}
        self._last_mark = -1
        self.publisher = publisher
        self.prefix = prefix
        self.settings = settings
        self.stats = stats
        self.book = OffsetBook()
        self.buffers = {t: RowBuffer(_RECORD_TYPES[t]) for t in RECORD_TABLES}
        self.watermark = Watermark(settings.lateness_us, settings.idle_flush_s, settings.max_future_us)
        self.decisions: dict[int, tuple[str, int]] = {}  # correlation key -> (host, record time)
        self.groups = HostGroups()
        self._assignment: set[TP] = set()
        self._since = 0
        self._last = time.monotonic()

    def held(self) -> int:
        return sum(len(b) for b in self.buffers.values())

    def step(self, timeout_s: float | None = None) -> int:
        timeout = self.settings.poll_timeout_s if timeout_s is None else timeout_s
        deliveries = self.consumer.poll(timeout, self.settings.max_poll_records)
        _polled(self.consumer, self.watermark)
        self._assignment, _ = _check_assignment(self.consumer, self._assignment, self.buffers.values(),
                                                self.book, self.stats, self.watermark)
        for d in deliveries:
            buf = self.buffers.get(d.batch.record_type.TABLE)
            if buf is None or not len(d.batch):
                self.book.add(d, 0)
                continue
            times = event_times(d.batch)
            self.watermark.saw(times, (d.topic, d.partition))
            self.stats.relay_late_records += int((times < self.watermark.value()).sum())
            mid = self.book.add(d, len(d.batch))
            buf.add(d.batch, times, np.zeros(len(d.batch), np.uint64), mid, (d.topic, d.partition))
            self.stats.relay_records_in += len(d.batch)
            self._since += len(d.batch)
        if self._due():
            self.release(self.watermark.value())
        return len(deliveries)

    def _due(self) -> bool:
        if self._since or self.held():  # releases, and watermark markers, every stitch_every_s
            return (self.watermark.idle() or self.held() > self.settings.max_buffer_records
                    or time.monotonic() - self._last >= self.settings.stitch_every_s)
        if self._assignment and self.watermark.idle() and self._last_mark != FOREVER:
            return True  # announce that everything was sent
        return bool(self.book.commit_points())

    def release(self, watermark_ns: int) -> None:
        """Republish every record older than the watermark (and the oldest beyond the bound), commit."""
        self._since, self._last = 0, time.monotonic()
        bufs = [self.buffers[t] for t in RECORD_TABLES]
        for b in bufs:
            b.settle()
        forced = oldest_excess([b.time for b in bufs], self.settings.max_buffer_records)
        masks = [(b.time < watermark_ns) | f for b, f in zip(bufs, forced, strict=True)]
        self.stats.relay_forced += sum(int((f & (b.time >= watermark_ns)).sum()) for b, f in zip(bufs, forced,
                                                                                              strict=True))
        if any(m.any() for m in masks):
            self._decide(bufs, masks)
            out = {t: b.split(m) for t, b, m in zip(RECORD_TABLES, bufs, masks, strict=True)}
            self._publish({t: (batch, times) for t, (batch, _, times) in out.items()})
            self._mark(watermark_ns)
            self.publisher.flush()
            for _, mids, _ in out.values():
                self.book.done(mids)
        elif self._assignment:
            self._mark(watermark_ns)
            self.publisher.flush()
        commit(self.consumer, self.book, self.stats)
        self._prune()

    def _mark(self, watermark_ns: int) -> None:
        """Tell every stage-2 partition: everything older than ``watermark_ns`` was sent (after it, in
        each partition's order). A relay without partitions says nothing (it holds nothing)."""
        if not self._assignment:
            return
        value = encode_batch(marker_batch(self.name, watermark_ns))
        for table, keys in self.marker_keys.items():
            topic = topic_of(f"s2.{table}", self.prefix)
            for key in keys:
                self.publisher.publish_raw(topic, value, key=key)
        self._last_mark = watermark_ns

    def _decide(self, bufs: list[RowBuffer], masks: list[Bools]) -> None:
        """Decide connections about to be released, from all their records held."""
        keys = [correlation_keys(b.batch) for b in bufs]
        leaving = np.unique(np.concatenate([k[m] for k, m in zip(keys, masks, strict=True)]))
        new = np.array([k for k in leaving.tolist() if k not in self.decisions], dtype=np.uint64)
        if len(new) == 0:
            return
        sel = [np.flatnonzero(np.isin(k, new)) for k in keys]
        deciding = [take(b.batch, rows) for b, rows in zip(bufs, sel, strict=True)]
        for batch in deciding:  # once per connection: a proxy host is known before its legs are joined
            self.groups.saw(batch)
        hosts, client_ends = connection_ends(*deciding)
        newest = self.watermark.newest_ns
        for k, host in hosts.items():
            self.decisions[k] = (host, newest)
            self.groups.join(client_ends[k], host)

    def _publish(self, released: dict[str, tuple[Batch, I64]]) -> None:
        """Publish in event-time slices of half the stage-2 lateness (each slice: requests, then flows;
        per host), so every stage-2 partition receives records in time order to within a slice and
        its watermark never passes records still to come from this release."""
        step = max(1, self.settings.relay_lateness_us * 500)
        firsts = [int(t.min()) for b, t in released.values() if len(b)]
        if not firsts:
            return
        t0 = min(firsts)
        sends: list[tuple[int, int, str, str, Batch, I64]] = []
        for ti, (table, (batch, times)) in enumerate(released.items()):
            if not len(batch):
                continue
            own: list[str] = batch.columns["host"]  # type: ignore[assignment]
            keys = correlation_keys(batch).tolist()
            hosts = [self.groups.find(self.decisions.get(k, (h, 0))[0]) for k, h in zip(keys, own, strict=True)]
            names = sorted(set(hosts))
            index = {h: i for i, h in enumerate(names)}
            hid = np.fromiter((index[h] for h in hosts), dtype=np.int64, count=len(hosts))
            sl = (times - t0) // step
            order = np.lexsort((hid, sl))
            key = sl[order] * len(names) + hid[order]
            for rows in np.split(order, np.flatnonzero(np.diff(key)) + 1):
                sends.append((int(sl[rows[0]]), ti, table, names[hid[rows[0]]], batch, rows))
            self.stats.relay_records_out += len(batch)
        chunk = self.settings.relay_chunk_records
        for _, _, table, host, batch, rows in sorted(sends, key=lambda x: (x[0], x[1], x[3])):
            topic = topic_of(f"s2.{table}", self.prefix)
            for lo in range(0, len(rows), chunk):
                part = take(batch, rows[lo : lo + chunk])
                self.publisher.publish_raw(topic, encode_batch(part), key=host.encode())
                self.stats.relay_messages_out += 1

    def _prune(self) -> None:
        if len(self.decisions) > self.settings.max_buffer_records:
            horizon = self.watermark.newest_ns - self.settings.dedup_horizon_us * 1000
            self.decisions = {k: v for k, v in self.decisions.items() if v[1] >= horizon}


# --- stage 2 (or a single stage): the windowed stitcher ---------------------------------------


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
    ``idle_flush_s`` override the settings' (stage 2 of the pipeline uses its relay lateness)."""

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
                                   s.idle_flush_s if idle_flush_s is None else idle_flush_s, s.max_future_us)
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
        self._clocks: dict[str, int] = {}  # offset (ns) of each corrected clock domain, as last logged

    def held(self) -> int:
        return sum(len(b) for b in self.buffers.values())

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
            for k, t in zip(conn_keys(batch).tolist(), times.tolist(), strict=True):
                if k:
                    self.l7_conns[k] = max(t, self.l7_conns.get(k, 0))
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
            watermark > self._last_watermark and time.monotonic() - self._last >= self.settings.stitch_every_s)
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
        for table, batch in (*((t, b) for t, (b, _, _) in leaving.items()), ("spans", p.spans), ("traces", p.traces)):
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


# --- both stages in one process ------------------------------------------------------------------


def ensure_relay_topics(bootstrap: str, prefix: str = DEFAULT_TOPIC_PREFIX, partitions: int = 4) -> None:
    """Create the input topics and the stage-2 topics ``<prefix>.s2.requests|flows`` if missing."""
    from hopscope.transport.kafka import ensure_topics

    ensure_topics(bootstrap, partitions=partitions, prefix=prefix)
    ensure_topics(bootstrap, partitions=partitions, prefix=prefix, tables=[f"s2.{t}" for t in RECORD_TABLES])


class StreamPipeline:
    """``hopscope correlate --kafka``: the relay and the stage-2 stitcher of one process, in one loop."""

    def __init__(self, bootstrap: str, store: Any, *, group: str = "hopscope-correlate",
                 prefix: str = DEFAULT_TOPIC_PREFIX, stream: StreamSettings | None = None,
                 settings: CorrelateSettings | None = None, kinds: dict[str, str] | None = None) -> None:
        from hopscope.transport.kafka import KafkaPublisher

        self.settings = stream or StreamSettings()
        self.stats = StreamStats()
        ensure_relay_topics(bootstrap, prefix)
        self.publisher = KafkaPublisher(bootstrap, prefix=prefix)
        s1 = GroupConsumer(bootstrap, f"{group}-s1", RECORD_TABLES, prefix)
        s2 = GroupConsumer(bootstrap, f"{group}-s2", [f"s2.{t}" for t in RECORD_TABLES], prefix)
        self.relay = Relay(s1, self.publisher, prefix, self.settings, self.stats, s2.partitions(prefix))
        self.stitcher = StreamCorrelator(s2, store, settings, self.settings, kinds,
                                         lateness_us=self.settings.relay_lateness_us,
                                         idle_flush_s=2 * self.settings.idle_flush_s, stats=self.stats)

    def held(self) -> int:
        return self.relay.held() + self.stitcher.held()

    def run(self, stop: threading.Event, idle_exit_s: float | None = None) -> StreamStats:
        """Until ``stop`` (then release and write what is complete, and commit), or, with
        ``idle_exit_s``, until no record arrived for that long and nothing is held."""
        self.stitcher._stop = stop
        idle_since = time.monotonic()
        try:
            while not stop.is_set():
                # Stage 2 first: the relay reads on only when stage 2 has fetched what it was sent
                # (one core: a relay far ahead only fills buffers).
                got = self.stitcher.poll_once()
                if not self.stitcher.watermark.lagging or not got:
                    got += self.relay.step()
                self.stitcher.maybe_stitch(stop)
                joining = not self.relay._assignment  # after a crash: until the dead member expired
                if got or self.held() or joining:
                    idle_since = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                    break
            self.relay.release(self.relay.watermark.value())
            self.stitcher.finish()
        except Stopped:
            log.warning("stopped while the store was unavailable: nothing more committed; a restart replays")
        return self.stats

    def close(self) -> None:
        from kafka.errors import KafkaError

        for closer in (self.relay.consumer.close, self.stitcher.consumer.close, self.publisher.close):
            try:
                closer()
            except (KafkaError, OSError) as exc:  # closing is best effort
                log.warning("closing: %s", exc)
