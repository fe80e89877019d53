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

import time
from collections import defaultdict
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from hopscope.records import Batch, Span, Trace
from hopscope.topology.graph import entity_hops, hop_order
from hopscope.topology.inventory import EMPTY, Inventory

EDGE_LABELS = ["client", "client_kind", "server", "server_kind", "protocol"]
#: Request durations, 250 µs to 30 s.
DURATION_BUCKETS_S = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                      10.0, 30.0)  # fmt: skip
#: Publish-to-store delay of a trace: the stream's lateness and trace spread put it at seconds.
EMIT_BUCKETS_S = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0)


class TraceMetrics:
    """The service map's RED per edge and the emit delay, from the traces (with their spans) written."""

    def __init__(self, registry: CollectorRegistry, inventory: Inventory = EMPTY) -> None:
        self.inventory = inventory
        self.requests = Counter("hopscope_service_requests", "requests (traces) that crossed the service map edge",
                                EDGE_LABELS, registry=registry)  # fmt: skip
        self.errors = Counter("hopscope_service_request_errors", "of those, failed (5xx, RST, no response, DNS error)",
                              EDGE_LABELS, registry=registry)  # fmt: skip
        self.duration = Histogram(
            "hopscope_service_request_duration_seconds",
            "request duration at the edge's client side (the trace's; Service -> pod: at the first hop seeing the pod)",
            EDGE_LABELS, buckets=DURATION_BUCKETS_S, registry=registry,
        )  # fmt: skip
        self.emit_delay = Histogram("hopscope_correlate_trace_emit_delay_seconds",
                                    "wall time from a trace's first byte to its insert into the store",
                                    buckets=EMIT_BUCKETS_S, registry=registry)  # fmt: skip

    def observe(self, traces: Batch, spans: Batch, now_ns: int | None = None) -> None:
        """Count the edges each trace of ``traces`` crosses (its spans are among ``spans``)."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        by_trace: dict[str, list[Span]] = defaultdict(list)
        for span in spans.records():
            assert isinstance(span, Span)
            by_trace[span.trace_id].append(span)
        for trace in traces.records():
            assert isinstance(trace, Trace)
            self.emit_delay.observe(max(0.0, (now_ns - trace.start_ns) / 1e9))
            protocol = trace.l7_proto or "tcp"
            for client, server, duration_us in entity_hops(trace, hop_order(by_trace.get(trace.trace_id, ())),
                                                           self.inventory):  # fmt: skip
                labels = (client.label, client.kind, server.label, server.kind, protocol)
                self.requests.labels(*labels).inc()
                if trace.error:
                    self.errors.labels(*labels).inc()
                self.duration.labels(*labels).observe(duration_us / 1e6)


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
