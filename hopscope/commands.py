"""Core subcommands: ``hopscope ingest`` (Kafka -> store) and ``hopscope demo`` (the main job on
the embedded default)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from hopscope.paths import lab_samples, var_dir

log = logging.getLogger(__name__)

SAMPLES = lab_samples()


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

    demo = sub.add_parser(
        "demo",
        help="the main job on the embedded default: stitch the lab samples, store and summarise",
        description="Analyse the committed lab captures (samples/lab: 12 capture points from client pod "
        "through NAT, hypervisor, switch mirror and envoy to the app), stitch every request end to end, "
        "store flows, requests, spans and traces in an embedded chDB store, and print the summary and "
        "the slowest request hop by hop.",
    )
    demo.add_argument("--manifest", type=Path, default=SAMPLES / "manifest.json", help="a lab manifest.json")
    demo.add_argument("--store-dir", type=Path, help="chDB directory (default: var/demo/chdb, emptied first)")
    demo.set_defaults(func=run_demo)


def run_ingest(args: argparse.Namespace) -> int:
    import signal

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


def run_demo(args: argparse.Namespace) -> int:
    import shutil

    from hopscope.correlate.cli import register as register_analyze
    from hopscope.errors import ConfigError
    from hopscope.store import store_from_url

    if not args.manifest.is_file():
        raise ConfigError(f"no lab manifest at {args.manifest}: run from a clone of hopscope or pass --manifest")
    store_dir: Path = args.store_dir or var_dir() / "demo" / "chdb"
    if args.store_dir is None and store_dir.exists():
        shutil.rmtree(store_dir)  # the demo's own store: start clean so repeated runs show the same
    store_dir.mkdir(parents=True, exist_ok=True)
    url = f"chdb://{store_dir.resolve()}"
    parser = argparse.ArgumentParser(prog="hopscope")
    register_analyze(parser.add_subparsers())
    analyze_args = parser.parse_args(["analyze", "--manifest", str(args.manifest), "--store", url])
    print(f"== hopscope analyze --manifest {args.manifest} --store {url}\n")
    rc = int(analyze_args.func(analyze_args))
    if rc:
        return rc
    store = store_from_url(url)
    try:
        _print_slowest(store)
        counts = {t: store.count(t) for t in ("flows", "requests", "spans", "traces")}
    finally:
        store.close()
    print("\nstored: " + ", ".join(f"{n} {t}" for t, n in counts.items()) + f" in {url}")
    print(f"browse them: .venv/bin/hopscope serve --store {url}   (then open http://127.0.0.1:8080/)")
    return 0


def _print_slowest(store: Any) -> None:
    traces = store.query_traces(0, 2**63 - 1, {"kind": "l7"}, limit=100_000)
    if not traces:
        print("\nno request traces were stitched")
        return
    slowest = max(traces, key=lambda t: t.duration_us)
    _, spans = store.get_trace(slowest.trace_id)
    print(f"\n== the slowest request, hop by hop (trace {slowest.trace_id}, read back from the store)")
    print(f"{slowest.method} {slowest.http_host}{slowest.path} -> {slowest.status}, {slowest.duration_us} us, "
          f"x-request-id {slowest.x_request_id or '-'}")
    print(f"{'#':>2}  {'point':<16}{'kind':<11}{'seen as':<42}{'req link':>10}{'resp link':>10}  linked by")
    for s in spans:
        seen = f"{s.orig_h}:{s.orig_p} > {s.resp_h}:{s.resp_p}"
        print(f"{s.hop_index:>2}  {s.point:<16}{s.hop_kind:<11}{seen:<42}{s.req_link_us:>8}us{s.resp_link_us:>8}us"
              f"  {s.link_reason} ({s.link_confidence:.2f})")
