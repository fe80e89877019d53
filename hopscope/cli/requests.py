"""``hopscope requests FILE``: the L7 request records (HTTP/1.x, DNS; HTTP/2 and gRPC with ``--deep``)
of a capture file, as JSON lines or a table; ``flow_id`` joins ``hopscope flows`` on the same file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hopscope.records import HopKind


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Read a pcap/pcapng file through the probe's stages and print one request record per line."
    parser.add_argument("file", help="pcap or pcapng file")
    parser.add_argument("--point", help="capture point name (default: the file name without extension)")
    parser.add_argument("--host", default="", help="host the capture point is on")
    parser.add_argument("--hop-kind", default="", choices=[k.value for k in HopKind], help="kind of hop observed")
    parser.add_argument("--deep", action="store_true", help="also HTTP/2 and gRPC through tshark")
    parser.add_argument(
        "--http2-port", type=int, action="append", default=[], metavar="PORT",
        help="decode this TCP port as cleartext HTTP/2 (repeatable; default 80, 8080, 50051)",
    )  # fmt: skip
    parser.add_argument("--format", choices=("jsonl", "table"), default="jsonl")
    parser.add_argument("--stats", action="store_true", help="print the L7 counters to stderr")
    parser.add_argument("--strict", action="store_true",
                        help="a damaged capture (corrupt record, file cut short) is an error (exit 4) instead of a "
                        "warning; either way the records before the damage are kept")


def run(args: argparse.Namespace) -> int:
    from hopscope.probes.l7.capture import capture_requests
    from hopscope.probes.output import write_request_jsonl, write_request_table

    point = args.point or Path(args.file).stem
    records, stats = capture_requests(args.file, point, args.host, args.hop_kind, args.deep, args.http2_port,
                                      args.strict)  # fmt: skip
    records.sort(key=lambda r: (r.req_first_ns, r.flow_id, r.seq_in_flow))
    if args.format == "table":
        write_request_table(records, sys.stdout)
    else:
        write_request_jsonl(records, sys.stdout)
    if args.stats:
        import json

        print(json.dumps(stats, sort_keys=True), file=sys.stderr)
    return 0
