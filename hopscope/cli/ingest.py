"""``hopscope ingest --kafka BOOTSTRAP --store URL``: consume record batches from Kafka into a store.

Consumes as a consumer group; offsets are committed only after the store accepted the rows (at least
once). SIGTERM or SIGINT: stop, commit what was stored, print the counts, exit 0. ``--metrics-port``:
Prometheus metrics (consumer lag, rows stored, store errors and retries; docs/METRICS.md).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hopscope import metrics


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.add_argument("--kafka", required=True, metavar="BOOTSTRAP", help="Kafka bootstrap, e.g. 127.0.0.1:9092")
    p.add_argument("--store", required=True, metavar="URL", help="clickhouse://host:port/db or chdb:///dir")
    p.add_argument("--group", default="hopscope-ingest", help="consumer group (default hopscope-ingest)")
    p.add_argument("--topic-prefix", default="hopscope", metavar="PREFIX",
                   help="topics are PREFIX.flows, ... (default hopscope)")
    p.add_argument("--tables", default="flows,requests", help="record tables to consume (default flows,requests)")
    p.add_argument("--idle-exit", type=float, metavar="SECONDS",
                   help="exit after SECONDS with no records (counted from the first partitions the group gives)")
    metrics.add_arguments(p)


def tables_of(value: str) -> list[str]:
    """``--tables`` as a list of transport tables; a ``ConfigError`` for an unknown one or none."""
    from hopscope.errors import ConfigError
    from hopscope.transport.base import TABLES

    tables = [t.strip() for t in value.split(",") if t.strip()]
    unknown = sorted(set(tables) - set(TABLES))
    if unknown or not tables:
        raise ConfigError(f"--tables takes some of {', '.join(TABLES)}; not {', '.join(unknown) or 'nothing'}")
    return tables


def run(args: argparse.Namespace) -> int:
    import signal

    from hopscope.pipeline import Ingestor
    from hopscope.store import store_from_url
    from hopscope.transport.kafka import KafkaRecordConsumer, ensure_topics

    tables = tables_of(args.tables)
    store = store_from_url(args.store)
    store.ensure_schema()  # fails fast, with the address, when the store is down
    ensure_topics(args.kafka, prefix=args.topic_prefix)
    consumer = KafkaRecordConsumer(args.kafka, args.group, tables=tables, prefix=args.topic_prefix)
    registry: Any = None
    sink: Any = store
    if args.metrics_port is not None:
        from prometheus_client import CollectorRegistry

        from hopscope.metrics.traces import InstrumentedStore

        registry = CollectorRegistry()
        sink = InstrumentedStore(store, registry)
    ingestor = Ingestor(consumer, sink)
    endpoint = None
    signal.signal(signal.SIGTERM, lambda *_: ingestor.stop())
    try:
        if registry is not None:
            from hopscope.metrics.stream import ConsumerCollector, IngestCollector

            registry.register(ConsumerCollector([consumer]))
            registry.register(IngestCollector(ingestor))
            endpoint = metrics.serve(args, registry)
        stats = ingestor.run(idle_exit_s=args.idle_exit)
    except KeyboardInterrupt:
        stats = ingestor.stats
    finally:
        if endpoint is not None:
            endpoint.close()
        consumer.close()
        store.close()
    print(f"hopscope ingest: {stats.summary(consumer.stats.bad_messages)}", file=sys.stderr)
    return 0
