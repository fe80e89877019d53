"""``hopscope replay``: publish the records of capture files to Kafka as live probes would.

    hopscope replay --kafka 127.0.0.1:9092 --manifest samples/lab/manifest.json --speed max
    hopscope replay --kafka 127.0.0.1:9092 --point client=c.pcap --point node=n.pcap --hop-kind node=nat

Each point's capture is read as ``hopscope analyze`` reads it; its flow and request records go to
PREFIX.flows and PREFIX.requests, keyed by their correlation key, one batch per point every second of
capture time (as a probe publishes), paced by capture time (``--speed 1``: real time, ``10``: ten
times faster, ``max``: as fast as the broker takes). A ``hopscope correlate`` on the same topics
stitches them as ``hopscope analyze`` does. The summary line goes to stderr once every record was
acknowledged; a broker that is down or goes away ends the run with an error naming what was
acknowledged.
"""

from __future__ import annotations

import argparse
import sys

from hopscope.cli import add_alias
from hopscope.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    p.add_argument("files", nargs="*", help="capture files; the point is the file name without extension")
    p.add_argument("--kafka", required=True, metavar="BOOTSTRAP", help="Kafka bootstrap, e.g. 127.0.0.1:9092")
    p.add_argument("--topic-prefix", default="hopscope", metavar="PREFIX",
                   help="topics are PREFIX.flows and PREFIX.requests (default: hopscope)")
    p.add_argument("--point", action="append", default=[], metavar="NAME=FILE", help="a capture point's file")
    kind = p.add_argument("--hop-kind", action="append", default=[], metavar="NAME=KIND",
                          help="hop kind of a point: pod, node, nat, hypervisor, switch, gateway, proxy")
    add_alias(p, kind, "--kind")
    p.add_argument("--host", action="append", default=[], metavar="NAME=HOST",
                   help="host (clock and proxy host) of a point; default: the point name")
    p.add_argument("--manifest", help="a lab manifest.json: its capture points, kinds, hosts and files")
    p.add_argument("--speed", default="1", metavar="1|10|max", type=speed,
                   help="capture time per wall time: 1 real time (default), 10 ten times faster, max no pauses")
    p.add_argument("--publish-interval-ms", type=int, default=1000, metavar="MS",
                   help="capture time between two publications of a point (default 1000: the live probe's)")


def speed(text: str) -> float | None:
    """``--speed``: a positive factor, or ``max`` (``None``: no pacing)."""
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number or 'max', got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from hopscope.cli.analyze import pairs
    from hopscope.correlate.offline import plan_points, read_points
    from hopscope.probes.replay import AckedPublisher, ReplaySettings, replay, schedule
    from hopscope.transport.kafka import ensure_topics

    plan = plan_points(args.files, pairs(args.point, "--point"), pairs(args.hop_kind, "--hop-kind"),
                       pairs(args.host, "--host"), args.manifest)
    settings = ReplaySettings(speed=args.speed, publish_interval_s=args.publish_interval_ms / 1000)
    ensure_topics(args.kafka, prefix=args.topic_prefix)  # fails fast, with the address, when the broker is down
    flows, requests = read_points(plan)
    timeline = schedule(flows, requests, settings)
    if not timeline.ticks:
        raise ConfigError("the captures hold no flow or request records: nothing to replay")
    publisher = AckedPublisher(args.kafka, args.topic_prefix)
    try:
        summary = replay(timeline, publisher, settings, messages=lambda: publisher.messages)
    finally:
        publisher.close()
    print(f"hopscope replay: {summary.line()} to {args.topic_prefix}.flows and {args.topic_prefix}.requests",
          file=sys.stderr)
    return 0
