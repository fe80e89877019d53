"""What the correlator writes, as metrics: the store's inserts, and the service map's RED per edge.

``InstrumentedStore`` wraps a store: rows inserted, failed inserts and insert durations per table. With
``TraceMetrics`` it also holds each pass's spans until the ``traces`` insert that follows them (the
streaming correlator writes a pass's spans, then its traces) and turns the accepted traces into:

- the service map's RED metrics per edge, the edges and durations exactly as ``topology.graph``'s
  service map draws them (``entity_hops``: client entity -> Service -> pod, with the inventory's
  names): ``hopscope_service_requests_total``, ``hopscope_service_request_errors_total`` and the
  ``hopscope_service_request_duration_seconds`` histogram, labelled ``client``, ``client_kind``,
  ``server``, ``server_kind`` (the entities' labels and kinds: pod, service, node, ip) and
  ``protocol`` (the trace's L7 protocol, ``tcp`` for L4 traces). Grafana panels and alert rules on
  request rate, error ratio and latency per edge need no ClickHouse query;
- ``hopscope_correlate_trace_emit_delay_seconds``: wall time from a trace's first byte to its insert.

A label value is an entity of the inventory or an address, so the series grow with the edges of the
service map (pods by Service, or addresses without an inventory).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from hopscope.records import Batch, Span
from hopscope.topology.graph import entity_hops, hop_order
from hopscope.topology.inventory import EMPTY, Entity, Inventory

EDGE_LABELS = ["client", "client_kind", "server", "server_kind", "protocol"]
#: Request durations, 250 µs to 30 s.
DURATION_BUCKETS_S = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                      10.0, 30.0)  # fmt: skip
#: Publish-to-store delay of a trace: the stream's lateness and trace spread put it at seconds.
EMIT_BUCKETS_S = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0)


class _SpanView(NamedTuple):
    """The fields of a ``Span`` that ``entity_hops`` and ``hop_order`` read (a ``Span`` costs ~40)."""

    hop_index: int
    request_first_ns: int
    span_id: str
    orig_h: str
    resp_h: str
    response_last_ns: int


class _TraceView(NamedTuple):
    """The fields of a ``Trace`` that ``entity_hops`` and the metrics read."""

    trace_id: str
    client_h: str
    server_h: str
    duration_us: int
    start_ns: int
    error: int
    l7_proto: str


@dataclass(slots=True)
class _Histogram:
    """Bucket counts (the last: above every bound), sum and count of one series."""

    bounds: npt.NDArray[np.float64]
    buckets: npt.NDArray[np.int64] = field(init=False)
    total_s: float = 0.0

    def __post_init__(self) -> None:
        self.buckets = np.zeros(len(self.bounds) + 1, np.int64)

    def add(self, seconds: npt.NDArray[np.float64]) -> None:
        self.buckets += np.bincount(np.searchsorted(self.bounds, seconds, side="left"), minlength=len(self.buckets))
        self.total_s += float(seconds.sum())

    def family_buckets(self) -> list[tuple[str, float]]:
        cumulative = np.cumsum(self.buckets).tolist()
        return [(repr(float(b)), c) for b, c in zip(self.bounds.tolist(), cumulative, strict=False)] + [
            ("+Inf", cumulative[-1])]


@dataclass(slots=True)
class _Edge:
    requests: int = 0
    errors: int = 0
    duration: _Histogram = field(default_factory=lambda: _Histogram(np.asarray(DURATION_BUCKETS_S)))


class _CachedInventory:
    """``Inventory.entity_of`` once per address (it parses the address on every call)."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.known: dict[str, Entity] = {}

    def entity_of(self, addr: str) -> Entity:
        entity = self.known.get(addr)
        if entity is None:
            entity = self.known[addr] = self.inventory.entity_of(addr)
        return entity


class TraceMetrics(Collector):
    """The service map's RED per edge and the emit delay, from the traces (with their spans) written.

    A collector of its own rather than ``Counter``/``Histogram`` objects: a batch is aggregated per edge
    first (durations binned with numpy), then added under a lock the scrape takes too."""

    def __init__(self, registry: CollectorRegistry, inventory: Inventory = EMPTY) -> None:
        self.inventory = _CachedInventory(inventory)
        self._edges: dict[tuple[str, ...], _Edge] = {}
        self._emit = _Histogram(np.asarray(EMIT_BUCKETS_S))
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, traces: Batch, spans: Batch, now_ns: int | None = None) -> None:
        """Count the edges each trace of ``traces`` crosses (its spans are among ``spans``)."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        by_trace: dict[str, list[_SpanView]] = defaultdict(list)
        sc = spans.columns
        for trace_id, *rest in zip(sc["trace_id"], sc["hop_index"], sc["request_first_ns"], sc["span_id"],
                                   sc["orig_h"], sc["resp_h"], sc["response_last_ns"], strict=True):  # fmt: skip
            by_trace[trace_id].append(_SpanView(*rest))
        tc = traces.columns
        views = [_TraceView(*row) for row in zip(tc["trace_id"], tc["client_h"], tc["server_h"], tc["duration_us"],
                                                 tc["start_ns"], tc["error"], tc["l7_proto"], strict=True)]  # fmt: skip
        batch: dict[tuple[str, ...], tuple[list[int], int]] = {}
        for t in views:
            hops = entity_hops(t, hop_order(by_trace.get(t.trace_id, ())), self.inventory)  # type: ignore[arg-type]
            for client, server, duration_us in hops:
                key = (client.label, client.kind, server.label, server.kind, t.l7_proto or "tcp")
                durations, errors = batch.get(key, ([], 0))
                durations.append(duration_us)
                batch[key] = (durations, errors + bool(t.error))
        starts = np.fromiter((t.start_ns for t in views), np.int64, len(views))
        self._add(batch, np.maximum(0, now_ns - starts) / 1e9)

    def _add(self, batch: dict[tuple[str, ...], tuple[list[int], int]], emit_s: npt.NDArray[np.float64]) -> None:
        with self._lock:
            for key, (durations, errors) in batch.items():
                edge = self._edges.get(key) or self._edges.setdefault(key, _Edge())
                edge.requests += len(durations)
                edge.errors += errors
                edge.duration.add(np.asarray(durations, np.float64) / 1e6)
            self._emit.add(emit_s)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("hopscope_service_requests", "requests (traces) that crossed the service "
                                       "map edge", labels=EDGE_LABELS)  # fmt: skip
        errors = CounterMetricFamily("hopscope_service_request_errors", "of those, failed (5xx, RST, no response, "
                                     "DNS error)", labels=EDGE_LABELS)  # fmt: skip
        duration = HistogramMetricFamily(
            "hopscope_service_request_duration_seconds",
            "request duration at the edge's client side (the trace's; Service -> pod: at the first hop seeing the pod)",
            labels=EDGE_LABELS,
        )  # fmt: skip
        emit = HistogramMetricFamily("hopscope_correlate_trace_emit_delay_seconds",
                                     "wall time from a trace's first byte to its insert into the store")  # fmt: skip
        with self._lock:
            for key, edge in sorted(self._edges.items()):
                labels = list(key)
                requests.add_metric(labels, edge.requests)
                errors.add_metric(labels, edge.errors)
                duration.add_metric(labels, edge.duration.family_buckets(), edge.duration.total_s)
            emit.add_metric([], self._emit.family_buckets(), self._emit.total_s)
        yield from (requests, errors, duration, emit)


class InstrumentedStore:
    """A store whose inserts are counted and timed per table; with ``traces``, the traces it accepted
    (and the spans written before them) feed ``TraceMetrics``. Everything else is the wrapped store's."""

    def __init__(self, store: Any, registry: CollectorRegistry, traces: TraceMetrics | None = None) -> None:
        self._store = store
        self.traces = traces
        self._spans: list[Batch] = []
        self.rows = Counter("hopscope_store_rows_inserted", "rows the store accepted", ["table"], registry=registry)
        self.failures = Counter("hopscope_store_insert_errors", "inserts the store refused or failed (each try)",
                                ["table"], registry=registry)  # fmt: skip
        self.duration = Histogram("hopscope_store_insert_duration_seconds", "time of an accepted insert",
                                  ["table"], registry=registry)  # fmt: skip

    def insert(self, table: str, batch: Batch) -> Any:
        started = time.perf_counter()
        try:
            result = self._store.insert(table, batch)
        except Exception:
            self.failures.labels(table).inc()
            raise
        self.duration.labels(table).observe(time.perf_counter() - started)
        self.rows.labels(table).inc(len(batch))
        if self.traces is not None:
            if table == "spans":
                self._spans.append(batch)
            elif table == "traces":
                spans, self._spans = self._spans, []
                self.traces.observe(batch, Batch.concat(spans) if spans else Batch(Span, {}, 0))
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
