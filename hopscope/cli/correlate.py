"""``hopscope correlate --kafka BOOTSTRAP --store URL``: the streaming correlator (correlate/stream/).

    hopscope correlate --kafka 127.0.0.1:9092 --store clickhouse://127.0.0.1:9000/hopscope
    hopscope correlate --kafka 127.0.0.1:9092 --store chdb:///var/lib/hopscope --idle-exit 10

Consumes ``PREFIX.requests`` and ``PREFIX.flows`` as consumer group ``GROUP-s1`` (the relay) and
``PREFIX.s2.requests`` / ``PREFIX.s2.flows`` as ``GROUP-s2`` (the stitcher); run several processes
with the same group to share the partitions. SIGTERM or SIGINT: write what is complete, commit, exit 0.
``--metrics-port``: Prometheus metrics (consumer lag, watermark delay, traces written, store errors and
retries, the service map's RED per edge; docs/METRICS.md).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from hopscope import metrics
from hopscope.cli import stop_on_signal
from hopscope.errors import ConfigError

if TYPE_CHECKING:
    from hopscope.correlate.stream import StreamSettings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    p.add_argument("--kafka", required=True, metavar="BOOTSTRAP", help="Kafka bootstrap, e.g. 127.0.0.1:9092")
    p.add_argument("--store", required=True, metavar="URL", help="clickhouse://host:port/db or chdb:///dir")
    p.add_argument("--group", default="hopscope-correlate",
                   help="consumer group prefix: GROUP-s1 and GROUP-s2 (default hopscope-correlate)")
    p.add_argument("--topic-prefix", default="hopscope", metavar="PREFIX",
                   help="topics are PREFIX.requests, ... (default hopscope)")
    p.add_argument("--lateness-ms", type=int, default=2000,
                   help="event time a record may arrive behind the newest and still be stitched, at most "
                   "(default 2000)")
    p.add_argument("--min-lateness-ms", type=int, default=250,
                   help="the least lateness: the one in use is the largest arrival lag of the last 10 s plus this "
                   "(default 250; equal to --lateness-ms: a fixed lateness)")
    p.add_argument("--stitch-every-ms", type=int, default=200,
                   help="wall time between two stitch passes (and relay releases) while input arrives (default 200)")
    p.add_argument("--trace-spread-ms", type=int, default=500,
                   help="largest spread of the record times of one trace (default 500)")
    p.add_argument("--relay-lateness-ms", type=int, default=1000,
                   help="stage 2 without relay watermark markers: how far relays may lag (default 1000)")
    p.add_argument("--idle-flush-ms", type=int, default=2000,
                   help="wall time without input after which held records are stitched as they are (default 2000)")
    p.add_argument("--max-buffered", type=int, default=2_000_000,
                   help="records each stage may hold; the oldest beyond are forced out (default 2000000)")
    p.add_argument("--idle-exit", type=float, metavar="SECONDS",
                   help="exit when no record arrived for SECONDS and nothing is held")
    p.add_argument("--otlp", metavar="ENDPOINT",
                   help="also send every stored trace as OpenTelemetry spans to this OTLP/HTTP endpoint, "
                   "e.g. http://127.0.0.1:4318 (one span per hop; failures are counted, not fatal)")
    p.add_argument("--inventory", help="YAML inventory or kubectl JSON: the pod or Service names --otlp gives "
                   "as service.name and the metrics' service map edges carry (default: the host; addresses)")
    metrics.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    import gc
    import threading

    from hopscope.correlate.stream import StreamPipeline
    from hopscope.store import store_from_url

    stream = _settings(args)
    store = store_from_url(args.store)
    store.ensure_schema()  # fails fast, with the address, when the store is down
    exporter = None
    sink: Any = store
    if args.otlp:  # what the store accepted also goes out as OTLP
        from hopscope.correlate.otlp import ExportingStore, exporter_of

        exporter = exporter_of(args.otlp, args.inventory)
        sink = ExportingStore(store, exporter)
    registry: Any = None
    if args.metrics_port is not None:
        registry, sink = _instrumented(args, sink)
    stop = threading.Event()
    pipeline = StreamPipeline(args.kafka, sink, group=args.group, prefix=args.topic_prefix, stream=stream)
    # The stages allocate many small objects per pass while holding their records (text columns are
    # lists of str): at the default thresholds the cyclic collector ran ~600 times per 200k records,
    # its older generations over everything held, and took about a quarter of the run's CPU. Young
    # collections every 50,000 allocations instead of 700: 4% of it.
    gc.set_threshold(50_000, 50, 1000)
    endpoint = None
    try:
        with stop_on_signal(stop.set):
            endpoint = _serve_metrics(args, registry, pipeline) if registry is not None else None
            stats = pipeline.run(stop, idle_exit_s=args.idle_exit)
    finally:
        if endpoint is not None:
            endpoint.close()
        pipeline.close()
        store.close()
    print(f"hopscope correlate: {stats.summary()}", file=sys.stderr)
    if exporter is not None:
        print(f"hopscope correlate: {exporter.stats.summary()}", file=sys.stderr)
    return 0


def _instrumented(args: argparse.Namespace, sink: Any) -> tuple[Any, Any]:
    """A registry, and the store wrapped to count inserts and the service map's RED per edge."""
    from prometheus_client import CollectorRegistry

    from hopscope.metrics.traces import InstrumentedStore, TraceMetrics
    from hopscope.topology.inventory import EMPTY, load_inventory

    registry = CollectorRegistry()
    inventory = load_inventory(args.inventory) if args.inventory else EMPTY
    return registry, InstrumentedStore(sink, registry, TraceMetrics(registry, inventory))


def _serve_metrics(args: argparse.Namespace, registry: Any, pipeline: Any) -> metrics.MetricsServer | None:
    """The pipeline's collectors (watermarks recorded as each stage passes one) and the endpoint."""
    from hopscope.metrics.stream import ConsumerCollector, StreamCollector, WatermarkClock

    clock = WatermarkClock()
    clock.watch("relay", pipeline.relay, "release")
    clock.watch("stitch", pipeline.stitcher, "stitch_pass")
    registry.register(StreamCollector(pipeline, clock))
    registry.register(ConsumerCollector([pipeline.relay.consumer.inner, pipeline.stitcher.consumer.inner]))
    return metrics.serve(args, registry)


def _settings(args: argparse.Namespace) -> StreamSettings:
    """The stream settings of the options, checked."""
    from hopscope.correlate.stream import StreamSettings

    if min(args.lateness_ms, args.min_lateness_ms, args.stitch_every_ms, args.relay_lateness_ms,
           args.trace_spread_ms, args.idle_flush_ms) < 0 or args.max_buffered < 1:
        raise ConfigError("--lateness-ms, --min-lateness-ms, --stitch-every-ms, --relay-lateness-ms, "
                          "--trace-spread-ms and --idle-flush-ms must not be negative, --max-buffered at least 1")
    return StreamSettings(
        lateness_us=args.lateness_ms * 1000, min_lateness_us=args.min_lateness_ms * 1000,
        stitch_every_s=args.stitch_every_ms / 1000, relay_lateness_us=args.relay_lateness_ms * 1000,
        trace_spread_us=args.trace_spread_ms * 1000,
        idle_flush_s=args.idle_flush_ms / 1000, max_buffer_records=args.max_buffered,
    )
