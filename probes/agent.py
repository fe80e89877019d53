"""``hopscope agent``: one process per host that captures every interface its configuration selects.

The agent looks for capture points (``agent_discovery``: namespaces, interfaces, point names, hop
kinds) at start and every ``interfaces.rescan_s``; it starts a capture for each new point and stops the
capture of each point that went away (a pod started, a pod ended). A stopping capture drains its ring,
flushes its meter and L7 tracker and waits, bounded, until the broker acknowledged its last records.

Capture
    One ``LiveProbe`` per point, each in its own thread (its ring opened in the point's namespace), all
    publishing into one bounded buffer that one sender thread moves to Kafka (``agent_buffer``). Threads
    rather than one process per point: a point costs a thread and its ring, where a process would cost
    an interpreter with numpy and a Kafka connection (measured by bench/agent_points.py: about 55 MB and
    0.35 s of start-up CPU more per point); the price is one core for all points together (the GIL).

Health
    Every ``report_interval_s`` one log line: the points captured, Kafka's state, the buffer, and per
    point the kernel's packets and drops, the records handed over and the publish lag (age of its oldest
    batch not yet acknowledged), and with the configuration's ``packets`` on, the packets its rolling
    packet store kept and dropped (``hopscope.probes.packet_store``). ``run`` returns the same as an
    ``AgentSummary``, with the points that stopped during the run.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Final

from hopscope.errors import HopscopeError
from hopscope.probes.agent_buffer import DEFAULT_MAX_BATCHES, BatchBuffer, KafkaSender, PointSink, kafka_publisher
from hopscope.probes.agent_config import AgentConfig
from hopscope.probes.agent_discovery import PointSpec, discover_points
from hopscope.probes.l7 import L7Settings
from hopscope.probes.live import LIVE_SWEEP_S, LiveProbe, ProbeSettings, RingSettings, compile_filter
from hopscope.probes.meter import MeterConfig
from hopscope.probes.packet_store import PacketStoreSettings

log = logging.getLogger(__name__)

#: The kernel hands over a partly filled ring block after this long. Each handed-over block costs the
#: probe a fixed ~1 ms (decode, meter, L7 calls), so at 50 ms (``hopscope probe``'s) many quiet points
#: cost 20 of them a second each; records wait for the 1 s publish interval anyway. Busy points fill
#: their blocks sooner and are not slowed.
RETIRE_MS: Final = 200


class AgentProbe(LiveProbe):
    """A ``LiveProbe`` whose periodic report updates its summary without logging: the agent writes one
    line for all its points."""

    def _report(self, elapsed_s: float) -> None:
        self._update_summary()


@dataclass(slots=True)
class PointHealth:
    """One capture point, as the agent reports it."""

    point: str
    iface: str
    netns: str
    hop_kind: str
    state: str = "starting"  # starting, capturing, stopping, stopped, failed
    kernel_packets: int = 0  # frames that passed the filter (kernel count)
    kernel_drops: int = 0  # frames the kernel dropped (ring full)
    decode_skips: int = 0  # frames the decoder skipped (not IP, truncated, ...: the probe's summary says why)
    evictions: int = 0  # flows and L7 connections or DNS queries evicted from full tables
    records: int = 0  # flow and request records handed to the buffer
    records_sent: int = 0  # of those, acknowledged by the broker
    publish_lag_s: float = 0.0  # age of the point's oldest batch not yet acknowledged
    error: str = ""
    pcap_kept: int = 0  # packets written to the point's rolling packet store (config ``packets``)
    pcap_dropped: int = 0  # of those, dropped again with their segments (size or age limit) or never written
    packets: int = 0  # frames decoded


@dataclass(slots=True)
class AgentSummary:
    """What one run of the agent captured and sent."""

    elapsed_s: float = 0.0
    cpu_s: float = 0.0  # CPU time of the agent's process (user + system)
    points_started: int = 0
    points_stopped: int = 0
    capture_errors: int = 0  # captures that failed to start or ended with an error
    kafka_connected: bool = False
    kafka_outages: int = 0
    buffered_batches: int = 0  # held at the time of the summary
    batches_sent: int = 0
    records_sent: int = 0
    batches_dropped: int = 0  # beyond the buffer, or left unsent at exit
    records_dropped: int = 0
    points: list[PointHealth] = field(default_factory=list)


class PointCapture:
    """One point's probe and the thread running it."""

    def __init__(self, spec: PointSpec, probe: LiveProbe) -> None:
        self.spec = spec
        self.probe = probe
        self.error = ""
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name=f"capture {spec.point}", daemon=True)

    def stop(self) -> None:
        self.stopping = True
        self.probe.stop()

    def _run(self) -> None:
        try:
            self.probe.run()
        except HopscopeError as exc:  # the interface went away before its ring opened, say
            self.error = str(exc)
            log.warning("capture of %s ended: %s", self.spec.point, exc)

    def health(self, buffer: BatchBuffer) -> PointHealth:
        s, summary = self.spec, self.probe.summary
        if self.error:
            state = "failed"
        elif not self.thread.is_alive():
            state = "stopped" if self.thread.ident is not None else "starting"
        else:
            state = "stopping" if self.stopping else "capturing" if self.probe.started.is_set() else "starting"
        return PointHealth(
            s.point, s.iface, s.netns.name, s.hop_kind, state, summary.kernel_packets, summary.kernel_drops,
            sum(summary.decode_skips.values()), summary.meter.get("evictions", 0)
            + summary.l7.get("evicted_connections", 0) + summary.l7.get("evicted_dns_queries", 0),
            summary.flow_records + summary.request_records, buffer.stats.records_sent_by_point.get(s.point, 0),
            round(buffer.lag_s(s.point), 3), self.error, packets=summary.frames_read,
            pcap_kept=summary.packet_store.get("packets", 0),
            pcap_dropped=summary.packet_store.get("dropped_packets", 0) + summary.packet_store.get("write_errors", 0),
        )  # fmt: skip


class Agent:
    """Discovery, one capture per point, the buffer and its sender, and the health report."""

    def __init__(self, config: AgentConfig, *, max_batches: int = DEFAULT_MAX_BATCHES,
                 flush_timeout_s: float = 5.0, retry_s: float = 2.0) -> None:  # fmt: skip
        compile_filter(config.capture.bpf, RingSettings().snaplen)  # a bad filter fails here, once
        self.config = config
        self.flush_timeout_s = flush_timeout_s
        self.buffer = BatchBuffer(max_batches)
        self.sender = KafkaSender(
            self.buffer, lambda: kafka_publisher(config.kafka.bootstrap, config.kafka.topic_prefix), retry_s
        )
        self.captures: dict[tuple[int, int, str], PointCapture] = {}
        self.finished: list[PointHealth] = []
        self.summary = AgentSummary()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # captures and finished, read by points() from other threads

    def stop(self) -> None:
        """Ask ``run`` to finish (safe from a signal handler and from other threads)."""
        self._stop.set()

    def settings_of(self, spec: PointSpec) -> ProbeSettings:
        c = self.config.capture
        return ProbeSettings(
            iface=spec.iface, point=spec.point, host=self.config.host, hop_kind=spec.hop_kind,
            netns=spec.netns.path, bpf=c.bpf, l7=c.l7, l7_settings=L7Settings(detect_tls=c.tls),
            checksums=c.checksums,
            ring=RingSettings(block_count=max(2, c.ring_mb), retire_ms=RETIRE_MS),
            meter=MeterConfig(max_flows=c.max_flows, sweep_every_s=LIVE_SWEEP_S),
            report_interval_s=float(self.config.report_interval_s), packet_store=self.packet_store_settings(),
        )  # fmt: skip

    def packet_store_settings(self) -> PacketStoreSettings | None:
        """Each point's rolling packet store, from the configuration's ``packets`` (None: off)."""
        p = self.config.packets
        if not p.enabled:
            return None
        return PacketStoreSettings(p.dir, max_bytes=p.max_mb << 20, max_age_s=float(p.max_age_s),
                                   segment_bytes=p.segment_mb << 20)  # fmt: skip

    def rescan(self) -> None:
        """Start captures of new points, stop those of gone ones, collect those that ended."""
        found = discover_points(self.config)
        with self._lock:
            for key, capture in list(self.captures.items()):
                if key not in found:
                    capture.stop()
                if not capture.thread.is_alive() and capture.thread.ident is not None:
                    self._collect(key, capture)
            for key, spec in found.items():
                if key not in self.captures:
                    self._start(spec)

    def _start(self, spec: PointSpec) -> None:
        sink = PointSink(self.buffer, spec.point, self.flush_timeout_s)
        capture = self.captures[spec.key] = PointCapture(spec, AgentProbe(self.settings_of(spec), sink))
        capture.thread.start()
        self.summary.points_started += 1
        log.info("agent: capturing %s (%s in %s, hop kind %s)", spec.point, spec.iface, spec.netns.name,
                 spec.hop_kind or "unknown")  # fmt: skip

    def _collect(self, key: tuple[int, int, str], capture: PointCapture) -> None:
        del self.captures[key]
        self.finished.append(capture.health(self.buffer))
        self.summary.points_stopped += 1
        self.summary.capture_errors += bool(capture.error)
        log.info("agent: stopped %s%s", capture.spec.point, f" ({capture.error})" if capture.error else "")

    def points(self) -> list[PointHealth]:
        """Every point of this run: those captured now, then those that stopped."""
        with self._lock:
            return [c.health(self.buffer) for c in self.captures.values()] + list(self.finished)

    def capturing(self) -> set[str]:
        """Names of the points whose ring is open now."""
        return {p.point for p in self.points() if p.state == "capturing"}

    def run(self, max_seconds: float | None = None) -> AgentSummary:
        started, cpu_started = time.monotonic(), time.process_time()
        deadline = started + max_seconds if max_seconds else float("inf")
        if self.config.inventory.kubernetes:
            log.info("agent: inventory.kubernetes is read by the correlator's inventory, not by the agent")
        self.sender.start()
        next_scan, next_report = started, started + self.config.report_interval_s
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                now = time.monotonic()
                if now >= next_scan:
                    self.rescan()
                    next_scan = now + self.config.interfaces.rescan_s
                if now >= next_report:
                    self.report()
                    next_report = now + self.config.report_interval_s
                self._stop.wait(max(0.0, min(next_scan, next_report, deadline) - time.monotonic()))
        finally:
            self._stop_all()
            self.sender.close(self.flush_timeout_s)
        self._update_summary(started, cpu_started)
        log.warning("agent summary: %s", json.dumps(asdict(self.summary), sort_keys=True))
        return self.summary

    def _stop_all(self) -> None:
        with self._lock:
            for capture in self.captures.values():
                capture.stop()
            for capture in self.captures.values():
                capture.thread.join(self.flush_timeout_s + 10)
            for key, capture in list(self.captures.items()):
                self._collect(key, capture)

    def _update_summary(self, started: float, cpu_started: float) -> AgentSummary:
        s, stats = self.summary, self.buffer.stats
        s.elapsed_s = round(time.monotonic() - started, 3)
        s.cpu_s = round(time.process_time() - cpu_started, 3)
        s.kafka_connected, s.kafka_outages = self.sender.state.connected, self.sender.state.outages
        s.buffered_batches, s.batches_sent, s.records_sent = self.buffer.held(), stats.batches_sent, stats.records_sent
        s.batches_dropped, s.records_dropped = stats.batches_dropped, stats.records_dropped
        s.points = self.points()
        return s

    def report(self) -> None:
        """The health line: points, Kafka, buffer; per point packets, drops, skips, evictions, records, lag."""
        s, points = self.summary, self.points()
        kafka = "up" if self.sender.state.connected else f"down ({self.sender.state.last_error})"
        per_point = "; ".join(
            f"{p.point} [{p.hop_kind or '-'} {p.state}] packets {p.kernel_packets} drops {p.kernel_drops} "
            f"skips {p.decode_skips} evictions {p.evictions} records {p.records} sent {p.records_sent} "
            f"lag {p.publish_lag_s:.1f}s"
            + (f" pcap kept {p.pcap_kept} dropped {p.pcap_dropped}" if self.config.packets.enabled else "")
            for p in points if p.state != "stopped"
        )  # fmt: skip
        stats = self.buffer.stats
        log.warning(
            "agent: %d points (%d started, %d stopped), kafka %s, buffer %d/%d batches, sent %d records, "
            "dropped %d batches (%d records); %s",
            len(self.captures), s.points_started, s.points_stopped, kafka, self.buffer.held(),
            self.buffer.max_batches, stats.records_sent, stats.batches_dropped, stats.records_dropped,
            per_point or "no points",
        )  # fmt: skip
