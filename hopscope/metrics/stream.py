"""Metrics of the Kafka consumers: ``hopscope correlate`` (``StreamPipeline``) and ``hopscope ingest``.

Consumer lag per topic and partition (``KafkaRecordConsumer.lag``: what the fetcher last saw, read
without a network round trip), the consumers' counters, the correlator's ``StreamStats`` and the
event-time watermark of each stage, and the ingestor's ``IngestStats``. Everything is read when
Prometheus scrapes; the watermarks are recorded by ``WatermarkClock`` as each stage uses one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from hopscope.metrics.capture import publisher_families

if TYPE_CHECKING:
    from hopscope.pipeline import Ingestor
    from hopscope.transport.kafka import KafkaRecordConsumer

#: Watermarks at or beyond this mean "everything was written" (the stream's FOREVER) or "hold
#: everything" (-FOREVER): no delay to report.
_NO_WATERMARK = 1 << 62


class ConsumerCollector(Collector):
    """Lag and counters of Kafka consumers, labelled by consumer group (and topic, partition)."""

    def __init__(self, consumers: Iterable[KafkaRecordConsumer]) -> None:
        self.consumers = list(consumers)

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily("hopscope_kafka_consumer_lag_messages",
                                "messages between the consumer's position and the partition's high watermark",
                                labels=["group", "topic", "partition"])  # fmt: skip
        messages = CounterMetricFamily("hopscope_kafka_messages_consumed", "Kafka messages consumed", labels=["group"])
        records = CounterMetricFamily("hopscope_kafka_records_consumed", "records in the consumed messages",
                                      labels=["group"])  # fmt: skip
        bad = CounterMetricFamily("hopscope_kafka_bad_messages", "messages that did not decode (dead-lettered)",
                                  labels=["group"])  # fmt: skip
        for consumer in self.consumers:
            for (topic, partition), behind in sorted(consumer.lag().items()):
                lag.add_metric([consumer.group, topic, str(partition)], behind)
            messages.add_metric([consumer.group], consumer.stats.messages_in)
            records.add_metric([consumer.group], consumer.stats.records_in)
            bad.add_metric([consumer.group], consumer.stats.bad_messages)
        yield from (lag, messages, records, bad)


class WatermarkClock:
    """The last event-time watermark each correlator stage worked with, and when.

    ``watch`` wraps a stage's public method that takes the watermark as its first argument (the
    relay's ``release``, the stitcher's ``stitch_pass``) on that object, so the stage code stays as it is.
    """

    def __init__(self) -> None:
        self.last_ns: dict[str, int] = {}

    def watch(self, stage: str, owner: Any, method: str) -> None:
        inner: Callable[..., Any] = getattr(owner, method)

        def recorded(watermark_ns: int, *args: Any, **kwargs: Any) -> Any:
            self.last_ns[stage] = int(watermark_ns)
            return inner(watermark_ns, *args, **kwargs)

        setattr(owner, method, recorded)

    def delays_s(self, now_ns: int | None = None) -> dict[str, float]:
        """Per stage: wall time minus the last watermark (0 once the input ran dry and all was written)."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        out: dict[str, float] = {}
        for stage, mark in dict(self.last_ns).items():
            if mark <= -_NO_WATERMARK:
                continue
            out[stage] = 0.0 if mark >= _NO_WATERMARK else max(0.0, (now_ns - mark) / 1e9)
        return out


#: StreamStats counters exported as hopscope_correlate_<name>_total: (StreamStats field, help).
STREAM_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("relay_records_in", "relay_records_in", "records the relay (stage 1) consumed"),
    ("relay_records_out", "relay_records_out", "records the relay published to stage 2"),
    ("relay_late_records", "relay_late_records", "records older than the relay's watermark when read"),
    ("relay_forced", "relay_forced_records", "records the relay released early (buffer bound)"),
    ("records_in", "records_in", "records the stitcher (stage 2) consumed"),
    ("records_stitched", "records_stitched", "records stitched into written traces"),
    ("traces_out", "traces_written", "traces written to the store"),
    ("spans_out", "spans_written", "spans written to the store"),
    ("late_records", "late_records", "records older than the stitcher's watermark when read"),
    ("duplicates", "duplicate_records", "records dropped as duplicates"),
    ("replayed_skipped", "replayed_records_skipped", "replayed records already in a stored trace"),
    ("forced_traces", "forced_traces", "traces written before they were complete (buffer bound)"),
    ("unstitched_dropped", "unstitched_records", "records no trace took"),
    ("retired_flows", "retired_flows", "flow records written without a trace"),
    ("dropped_on_revoke", "records_dropped_on_revoke", "held records of partitions a rebalance took away"),
    ("passes", "stitch_passes", "stitch passes"),
    ("commits", "commits", "offset commits"),
    ("commit_failures", "commit_failures", "offset commits a rebalance refused"),
)


class StreamCollector(Collector):
    """``hopscope correlate``: ``StreamStats``, records held, watermark delay per stage, the relay's
    Kafka publisher and the store's retries."""

    def __init__(self, pipeline: Any, clock: WatermarkClock) -> None:
        self.pipeline = pipeline  # correlate.stream.StreamPipeline
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        stats = self.pipeline.stats
        for field, name, text in STREAM_COUNTERS:
            yield CounterMetricFamily(f"hopscope_correlate_{name}", text, value=getattr(stats, field))
        yield CounterMetricFamily("hopscope_store_insert_retries", "store inserts tried again after the store failed",
                                  value=stats.store_retries)  # fmt: skip
        held = GaugeMetricFamily("hopscope_correlate_records_held", "records a stage holds", labels=["stage"])
        held.add_metric(["relay"], self.pipeline.relay.held())
        held.add_metric(["stitch"], self.pipeline.stitcher.held())
        yield held
        delay = GaugeMetricFamily("hopscope_correlate_watermark_delay_seconds",
                                  "wall time minus the event-time watermark of the stage's last pass",
                                  labels=["stage"])  # fmt: skip
        for stage, seconds in sorted(self.clock.delays_s().items()):
            delay.add_metric([stage], seconds)
        yield delay
        yield from publisher_families(self.pipeline.publisher.stats)


class IngestCollector(Collector):
    """``hopscope ingest``: the ingestor's deliveries, commits and store retries."""

    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor

    def collect(self) -> Iterator[Metric]:
        stats = self.ingestor.stats
        yield CounterMetricFamily("hopscope_ingest_messages", "Kafka messages stored", value=stats.deliveries)
        yield CounterMetricFamily("hopscope_ingest_commits", "offset commits", value=stats.commits)
        yield CounterMetricFamily("hopscope_store_insert_retries", "store inserts tried again after the store failed",
                                  value=stats.store_retries)  # fmt: skip
