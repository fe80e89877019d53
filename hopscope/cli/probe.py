"""``hopscope probe``: capture live on one interface and publish flow and request records.

    hopscope probe --iface IF --point NAME [--netns NS] [--kafka BOOTSTRAP [--topic-prefix PREFIX]]
                   [--out FILE] [--filter BPF] [--host H] [--hop-kind KIND] [--no-l7] [--no-tls] [--seconds N]
                   [--ring-mb N] [--max-flows N] [--max-connections N] [--report-interval S]
                   [--packet-store DIR [--packet-store-mb N] [--packet-store-age S]]
                   [--metrics-port PORT [--metrics-host HOST]]

Runs until SIGINT or SIGTERM (then flushes what it holds, prints a summary and exits 0). Records go to
Kafka (``--kafka``, the topics of ``hopscope.transport``), or to ``--out`` (``.jsonl``: one JSON record
per line; any other name: length-prefixed codec batches), or both.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

from hopscope import metrics
from hopscope.cli import add_alias, stop_on_signal
from hopscope.errors import ConfigError
from hopscope.records import HopKind

if TYPE_CHECKING:
    from hopscope.probes.live import LiveProbe, ProbeSettings, RecordSink
    from hopscope.probes.packet_store import PacketStoreSettings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    p.add_argument("--iface", required=True,
                   help="interface to capture on; 'any': every interface, one point per interface (POINT:IFNAME)")
    p.add_argument("--point", required=True, help="capture point name (unique per host and interface)")
    p.add_argument("--netns", help="network namespace (ip netns name) the interface is in")
    p.add_argument("--kafka", metavar="BOOTSTRAP", help="publish to this Kafka bootstrap server")
    prefix = p.add_argument("--topic-prefix", default="hopscope", metavar="PREFIX",
                            help="Kafka topics are PREFIX.flows and PREFIX.requests (default: hopscope)")
    add_alias(p, prefix, "--topic")
    p.add_argument("--out", metavar="FILE", help="write records to FILE (.jsonl: JSON lines)")
    p.add_argument("--filter", default="", metavar="BPF", help="tcpdump filter expression")
    p.add_argument("--host", help="host name recorded with the capture point (default: this host)")
    p.add_argument("--hop-kind", default="", choices=[k.value for k in HopKind], help="kind of hop observed")
    p.add_argument("--fanout", type=int, metavar="GROUP",
                   help="PACKET_FANOUT group (0-65535): probes with the same group share the traffic by flow")
    p.add_argument("--no-l7", action="store_true", help="meter flows only, no HTTP/DNS parsing")
    p.add_argument("--checksums", action="store_true",
                   help="validate IPv4/TCP/UDP/ICMP checksums as Zeek does (a bad one: C in the flow's history, the "
                   "packet not counted). Off by default: on the sending host, outgoing packets carry checksums the "
                   "NIC fills in later (offload), which would all fail"),
    p.add_argument("--seconds", type=float, help="stop after this many seconds (default: until signalled)")
    p.add_argument("--report-interval", type=float, default=10.0, help="seconds between status log lines")
    p.add_argument("--ring-mb", type=int, default=128,
                   help="capture ring size in MiB (1 MiB blocks; 128 holds ~0.2 s of 800k packets/s of 600-byte "
                   "frames, longer than the meter's sweep)")
    p.add_argument("--max-flows", type=int, default=1_000_000, help="flow table limit (then: counted evictions)")
    p.add_argument("--max-connections", type=int, default=65_536, help="HTTP/DNS-over-TCP connections tracked")
    p.add_argument("--no-tls", action="store_true",
                   help="do not parse TLS connections into TLS exchange records (they cost the L7 stage about what "
                   "HTTP does; off, such a connection gets flow records only)")
    p.add_argument("--packet-store", metavar="DIR", help="keep the packets in a rolling packet store here, indexed "
                   "by flow, for hopscope pcap and serve --packet-store (default: not kept)")
    p.add_argument("--packet-store-mb", type=int, default=1024, metavar="N",
                   help="the packet store's size limit per point, MiB; beyond, the oldest segments are dropped")
    p.add_argument("--packet-store-age", type=int, default=3600, metavar="SECONDS",
                   help="segments whose last packet is older are dropped (default 3600)")
    metrics.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from hopscope.probes.live import FanoutSink, LiveProbe

    if not args.kafka and not args.out:
        raise ConfigError("say where records go: --kafka BOOTSTRAP and/or --out FILE")
    sinks = _sinks(args)
    sink = FanoutSink(sinks)
    probe = LiveProbe(_settings(args), sink)
    endpoint = _metrics(args, probe, sinks)

    try:
        with stop_on_signal(probe.stop):
            summary = probe.run(args.seconds)
    finally:
        sink.close()
        if endpoint is not None:
            endpoint.close()
    print(json.dumps({"probe": args.point, **asdict(summary)}, sort_keys=True), file=sys.stderr)
    return 0


def _metrics(args: argparse.Namespace, probe: LiveProbe, sinks: list[RecordSink]) -> metrics.MetricsServer | None:
    """The ``--metrics-port`` endpoint: the probe's counters and its Kafka publisher's."""
    if args.metrics_port is None:
        return None
    from prometheus_client import CollectorRegistry

    from hopscope.metrics.capture import ProbeCollector
    from hopscope.transport.base import TransportStats

    registry = CollectorRegistry()
    publishers = [s.stats for s in sinks if isinstance(getattr(s, "stats", None), TransportStats)]  # type: ignore[attr-defined]
    registry.register(ProbeCollector(probe, publishers))
    return metrics.serve(args, registry)


def _sinks(args: argparse.Namespace) -> list[RecordSink]:
    from hopscope.probes.live import FileSink

    sinks: list[RecordSink] = []
    if args.kafka:
        from hopscope.transport.kafka import KafkaPublisher, ensure_topics

        ensure_topics(args.kafka, prefix=args.topic_prefix)
        sinks.append(KafkaPublisher(args.kafka, prefix=args.topic_prefix))
    if args.out:
        sinks.append(FileSink(args.out))
    return sinks


def _settings(args: argparse.Namespace) -> ProbeSettings:
    from hopscope.probes.l7 import L7Settings
    from hopscope.probes.live import LIVE_SWEEP_S, ProbeSettings, RingSettings
    from hopscope.probes.meter import MeterConfig

    return ProbeSettings(
        iface=args.iface, point=args.point, netns=args.netns, bpf=args.filter, hop_kind=args.hop_kind,
        l7=not args.no_l7, checksums=args.checksums, fanout=args.fanout, report_interval_s=args.report_interval,
        ring=RingSettings(block_count=max(2, args.ring_mb)),
        meter=MeterConfig(max_flows=args.max_flows, sweep_every_s=LIVE_SWEEP_S),
        l7_settings=L7Settings(
            max_connections=args.max_connections, detect_tls=not args.no_tls), packet_store=_packet_store(args),
        **({"host": args.host} if args.host else {}),
    )  # fmt: skip


def _packet_store(args: argparse.Namespace) -> PacketStoreSettings | None:
    from hopscope.probes.packet_store import PacketStoreSettings

    if not args.packet_store:
        return None
    max_bytes = args.packet_store_mb << 20
    return PacketStoreSettings(args.packet_store, max_bytes=max_bytes, max_age_s=float(args.packet_store_age),
                               segment_bytes=min(64 << 20, max_bytes))  # fmt: skip
