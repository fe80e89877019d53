"""Core subcommands: ``hopscope ingest`` (Kafka -> store) and ``hopscope demo`` (the main job on
the embedded default)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "samples" / "lab"


def register(sub: Any) -> None:
    ingest = sub.add_parser(
        "ingest",
        help="consume flow and request records from Kafka into a store",
        description="Consume record batches from Kafka as a consumer group and insert them into a store; "
        "offsets are committed only after the store accepted the rows (at least once).",
    )
    ingest.add_argument("--kafka", required=True, metavar="BOOTSTRAP", help="Kafka bootstrap, e.g. 127.0.0.1:9092")
    ingest.add_argument("--store", required=True, metavar="URL", help="clickhouse://host:port/db or chdb://dir")
    ingest.add_argument("--group", default="hopscope-ingest", help="consumer group (default hopscope-ingest)")
    ingest.add_argument("--topic-prefix", default="hopscope", help="topics are PREFIX.flows, ... (default hopscope)")
    ingest.add_argument(
        "--tables", default="flows,requests", help="record tables to consume (default flows,requests)"
    )
    ingest.add_argument("--idle-exit", type=float, metavar="SECONDS", help="exit after SECONDS with no records")
    ingest.set_defaults(func=run_ingest)


def run_ingest(args: argparse.Namespace) -> int:
    from hopscope.errors import ConfigError
    from hopscope.pipeline import Ingestor
    from hopscope.store import store_from_url
    from hopscope.transport.base import TABLES
    from hopscope.transport.kafka import KafkaRecordConsumer, ensure_topics

    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    unknown = sorted(set(tables) - set(TABLES))
    if unknown or not tables:
        raise ConfigError(f"--tables takes some of {', '.join(TABLES)}; not {', '.join(unknown) or 'nothing'}")
    store = store_from_url(args.store)
    store.ensure_schema()  # fails fast, with the address, when the store is down
    ensure_topics(args.kafka, prefix=args.topic_prefix)
    consumer = KafkaRecordConsumer(args.kafka, args.group, tables=tables, prefix=args.topic_prefix)
    ingestor = Ingestor(consumer, store)
    signal.signal(signal.SIGTERM, lambda *_: ingestor.stop())
    try:
        stats = ingestor.run(idle_exit_s=args.idle_exit)
    except KeyboardInterrupt:
        stats = ingestor.stats
    finally:
        consumer.close()
        store.close()
    rows = ", ".join(f"{n} {t}" for t, n in sorted(stats.rows.items())) or "no rows"
    print(
        f"hopscope ingest: {rows} stored from {stats.deliveries} messages; "
        f"{consumer.stats.bad_messages} bad messages dead-lettered; {stats.store_retries} store retries",
        file=sys.stderr,
    )
    return 0
