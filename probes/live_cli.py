"""``hopscope probe``: capture live on one interface and publish flow and request records.

    hopscope probe --iface IF --point NAME [--netns NS] [--kafka BOOTSTRAP [--topic PREFIX]] [--out FILE]
                   [--filter BPF] [--host H] [--hop-kind KIND] [--no-l7] [--seconds N] [--ring-mb N]
                   [--max-flows N] [--max-connections N] [--report-interval S]

Runs until SIGINT or SIGTERM (then flushes what it holds, prints a summary and exits 0). Records go to
Kafka (``--kafka``, the topics of ``hopscope.transport``), or to ``--out`` (``.jsonl``: one JSON record
per line; any other name: length-prefixed codec batches), or both.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import asdict
from types import FrameType

from hopscope.errors import ConfigError
from hopscope.records import Batch, HopKind


class _Fanout:
    """Publishes to several sinks."""

    def __init__(self, sinks: list[object]) -> None:
        self.sinks = sinks

    def publish(self, batch: Batch) -> None:
        for sink in self.sinks:
            sink.publish(batch)  # type: ignore[attr-defined]

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()  # type: ignore[attr-defined]

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()  # type: ignore[attr-defined]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from hopscope.probes.l7 import cli as l7_cli

    l7_cli.register(sub)  # ``hopscope requests FILE``: the same L7 stage on a capture file
    p = sub.add_parser("probe", help="capture live on an interface and publish flow/request records")
    p.add_argument(
        "--iface",
        required=True,
        help="interface to capture on; 'any': every interface, one point per interface (POINT:IFNAME)",
    )
    p.add_argument("--point", required=True, help="capture point name (unique per host and interface)")
    p.add_argument("--netns", help="network namespace (ip netns name) the interface is in")
    p.add_argument("--kafka", metavar="BOOTSTRAP", help="publish to this Kafka bootstrap server")
    p.add_argument(
        "--topic",
        default="hopscope",
        metavar="PREFIX",
        help="Kafka topic prefix: records go to PREFIX.flows and PREFIX.requests (default: hopscope)",
    )
    p.add_argument("--out", metavar="FILE", help="write records to FILE (.jsonl: JSON lines)")
    p.add_argument("--filter", default="", metavar="BPF", help="tcpdump filter expression")
    p.add_argument("--host", help="host name recorded with the capture point (default: this host)")
    p.add_argument("--hop-kind", default="", choices=[k.value for k in HopKind], help="kind of hop observed")
    p.add_argument(
        "--fanout",
        type=int,
        metavar="GROUP",
        help="PACKET_FANOUT group (0-65535): probes with the same group share the traffic by flow",
    )
    p.add_argument("--no-l7", action="store_true", help="meter flows only, no HTTP/DNS parsing")
    p.add_argument("--seconds", type=float, help="stop after this many seconds (default: until signalled)")
    p.add_argument("--report-interval", type=float, default=10.0, help="seconds between status log lines")
    p.add_argument(
        "--ring-mb",
        type=int,
        default=128,
        help="capture ring size in MiB (1 MiB blocks; 128 holds ~0.2 s of 800k packets/s of 600-byte frames, "
        "longer than the meter's once-a-second sweep)",
    )
    p.add_argument("--max-flows", type=int, default=1_000_000, help="flow table limit (then: counted evictions)")
    p.add_argument("--max-connections", type=int, default=65_536, help="HTTP/DNS-over-TCP connections tracked")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hopscope.probes.l7 import L7Settings
    from hopscope.probes.live import LIVE_SWEEP_S, FileSink, LiveProbe, ProbeSettings, RingSettings
    from hopscope.probes.meter import MeterConfig

    if not args.kafka and not args.out:
        raise ConfigError("say where records go: --kafka BOOTSTRAP and/or --out FILE")
    sinks: list[object] = []
    if args.kafka:
        from hopscope.transport.kafka import KafkaPublisher, ensure_topics

        ensure_topics(args.kafka, prefix=args.topic)
        sinks.append(KafkaPublisher(args.kafka, prefix=args.topic))
    if args.out:
        sinks.append(FileSink(args.out))
    settings = ProbeSettings(
        iface=args.iface,
        point=args.point,
        netns=args.netns,
        bpf=args.filter,
        hop_kind=args.hop_kind,
        l7=not args.no_l7,
        fanout=args.fanout,
        report_interval_s=args.report_interval,
        ring=RingSettings(block_count=max(2, args.ring_mb)),
        meter=MeterConfig(max_flows=args.max_flows, sweep_every_s=LIVE_SWEEP_S),
        l7_settings=L7Settings(max_connections=args.max_connections),
        **({"host": args.host} if args.host else {}),
    )
    sink = _Fanout(sinks)
    probe = LiveProbe(settings, sink)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        probe.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = probe.run(args.seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sink.close()
    print(json.dumps({"probe": args.point, **asdict(summary)}, sort_keys=True), file=sys.stderr)
    return 0
