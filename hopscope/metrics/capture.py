"""Metrics of the capture commands: ``hopscope probe`` (one ``LiveProbe``) and ``hopscope agent``.

Both expose the same ``hopscope_capture_*`` families, labelled by capture point. The probe's are read
live at every scrape (the kernel's ring counters through ``PacketRing.read_kernel_stats``, which any
thread may call); the agent's come from its health report (``Agent.points``), refreshed every
``report_interval_s`` of its configuration. Kafka publishing: the probe's ``KafkaPublisher`` counters
(``hopscope_kafka_*``), the agent's buffer and sender (``hopscope_agent_*``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from hopscope.probes.agent import Agent
    from hopscope.probes.live import LiveProbe
    from hopscope.transport.base import TransportStats

POINT = ["point"]


def publisher_families(stats: TransportStats) -> Iterator[Metric]:
    """What a Kafka publisher sent and what the broker never acknowledged."""
    yield CounterMetricFamily("hopscope_kafka_messages_published", "Kafka messages sent", value=stats.messages_out)
    yield CounterMetricFamily("hopscope_kafka_records_published", "records sent in Kafka messages",
                              value=stats.records_out)  # fmt: skip
    yield CounterMetricFamily("hopscope_kafka_publish_errors", "Kafka messages the broker did not acknowledge",
                              value=stats.messages_failed)  # fmt: skip


class CaptureFamilies:
    """The ``hopscope_capture_*`` families, filled point by point."""

    def __init__(self) -> None:
        self.kernel_packets = CounterMetricFamily(
            "hopscope_capture_kernel_packets", "frames that passed the capture filter (kernel count)", labels=POINT)
        self.kernel_drops = CounterMetricFamily(
            "hopscope_capture_kernel_drops", "frames the kernel dropped because the ring was full", labels=POINT)
        self.packets = CounterMetricFamily("hopscope_capture_packets", "frames decoded", labels=POINT)
        self.skips = CounterMetricFamily(
            "hopscope_capture_decode_skips", "frames the decoder skipped (not IP, truncated, ...)", labels=POINT)
        self.records = CounterMetricFamily(
            "hopscope_capture_records", "flow and request records handed on for publishing", labels=POINT)

    def add(self, point: str, kernel_packets: int, kernel_drops: int, packets: int, skips: int,
            records: int) -> None:  # fmt: skip
        for family, value in ((self.kernel_packets, kernel_packets), (self.kernel_drops, kernel_drops),
                              (self.packets, packets), (self.skips, skips), (self.records, records)):  # fmt: skip
            family.add_metric([point], value)

    def __iter__(self) -> Iterator[Metric]:
        return iter((self.kernel_packets, self.kernel_drops, self.packets, self.skips, self.records))


class ProbeCollector(Collector):
    """``hopscope probe``: one point's ring, decoder and published records, and its Kafka publisher."""

    def __init__(self, probe: LiveProbe, publishers: Iterable[TransportStats] = ()) -> None:
        self.probe = probe
        self.publishers = list(publishers)

    def collect(self) -> Iterator[Metric]:
        probe = self.probe
        ring = probe.ring.read_kernel_stats()
        summary = probe.summary
        families = CaptureFamilies()
        families.add(probe.settings.point, ring.packets, ring.drops, ring.frames_read,
                     sum(dict(probe.decoder.skips).values()), summary.flow_records + summary.request_records)
        yield from families
        records = CounterMetricFamily("hopscope_capture_records_published", "records published, by table",
                                      labels=["point", "table"])  # fmt: skip
        records.add_metric([probe.settings.point, "flows"], summary.flow_records)
        records.add_metric([probe.settings.point, "requests"], summary.request_records)
        yield records
        for stats in self.publishers:
            yield from publisher_families(stats)


class AgentCollector(Collector):
    """``hopscope agent``: every point from its health report, the buffer and the Kafka sender."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        points = agent.points()
        # the acknowledged records in all and per point from one reading: they add up at every scrape
        sent_total, sent_by_point = agent.buffer.sent_counts()
        families = CaptureFamilies()
        lag = GaugeMetricFamily("hopscope_capture_publish_lag_seconds",
                                "age of the point's oldest batch not yet acknowledged by Kafka", labels=POINT)
        sent = CounterMetricFamily("hopscope_capture_records_sent", "records of the point Kafka acknowledged",
                                   labels=POINT)
        up = GaugeMetricFamily("hopscope_capture_up", "1 while the point is captured", labels=POINT)
        for p in points:
            families.add(p.point, p.kernel_packets, p.kernel_drops, p.packets, p.decode_skips, p.records)
            lag.add_metric([p.point], p.publish_lag_s)
            sent.add_metric([p.point], sent_by_point.get(p.point, 0))
            up.add_metric([p.point], 1.0 if p.state == "capturing" else 0.0)
        yield from (*families, lag, sent, up)
        yield from self._buffer(sent_total)

    def _buffer(self, records_sent: int) -> Iterator[Metric]:
        buffer, state = self.agent.buffer, self.agent.sender.state
        stats = buffer.stats
        yield GaugeMetricFamily("hopscope_agent_kafka_up", "1 while the agent's Kafka sender is connected",
                                value=1.0 if state.connected else 0.0)  # fmt: skip
        yield CounterMetricFamily("hopscope_agent_kafka_outages", "times the broker went away", value=state.outages)
        yield GaugeMetricFamily("hopscope_agent_buffer_batches", "record batches held for Kafka", value=buffer.held())
        yield GaugeMetricFamily("hopscope_agent_buffer_capacity_batches", "record batches the buffer holds at most",
                                value=buffer.max_batches)  # fmt: skip
        yield CounterMetricFamily("hopscope_agent_records_sent", "records Kafka acknowledged", value=records_sent)
        yield CounterMetricFamily("hopscope_agent_buffer_dropped_batches",
                                  "batches dropped: the buffer was full, or left unsent at exit",
                                  value=stats.batches_dropped)  # fmt: skip
        yield CounterMetricFamily("hopscope_agent_buffer_dropped_records", "records in the dropped batches",
                                  value=stats.records_dropped)  # fmt: skip
