"""``hopscope requests FILE``: the L7 request records (HTTP/1.x, DNS; HTTP/2 and gRPC with ``--deep``) of a
capture file, as JSON lines or a table.

The file goes through the same stages as a live probe (reader, decoder, flow meter, L7 tracker), so
``flow_id`` joins the records of ``hopscope flows`` on the same file. ``--deep`` adds the HTTP/2 and
gRPC streams tshark's dissectors find (``hopscope.probes.l7.tshark``), joined to the same flow ids.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from hopscope.records import FlowRecord, HopKind, RequestRecord

TABLE_COLUMNS = (
    ("l7_proto", 6), ("orig_h", 15), ("orig_p", 6), ("resp_h", 15), ("resp_p", 6), ("method", 7),
    ("http_host", 16), ("path", 28), ("status", 6), ("dns_qname", 28), ("dns_rcode", 5), ("latency_ms", 10),
)  # fmt: skip


def register(sub: Any) -> None:
    p = sub.add_parser(
        "requests", help="print the L7 request records (HTTP/1.x, DNS; --deep: HTTP/2, gRPC) of a capture file",
        description="Read a pcap/pcapng file through the probe's stages and print one request record per line.",
    )  # fmt: skip
    p.add_argument("file", help="pcap or pcapng file")
    p.add_argument("--point", help="capture point name (default: the file name without extension)")
    p.add_argument("--host", default="", help="host the capture point is on")
    p.add_argument("--hop-kind", default="", choices=[k.value for k in HopKind], help="kind of hop observed")
    p.add_argument("--deep", action="store_true", help="also HTTP/2 and gRPC through tshark")
    p.add_argument("--http2-port", type=int, action="append", default=[], metavar="PORT",
                   help="decode this TCP port as cleartext HTTP/2 (repeatable; default 80, 8080, 50051)")  # fmt: skip
    p.add_argument("--format", choices=("jsonl", "table"), default="jsonl")
    p.add_argument("--stats", action="store_true", help="print the L7 counters to stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    records, stats = file_requests(
        args.file, args.point or Path(args.file).stem, args.host, args.hop_kind, args.deep, args.http2_port
    )
    records.sort(key=lambda r: (r.req_first_ns, r.flow_id, r.seq_in_flow))
    if args.format == "table":
        write_table(records, sys.stdout)
    else:
        sys.stdout.writelines(json.dumps(asdict(r)) + "\n" for r in records)
    if args.stats:
        print(json.dumps(stats, sort_keys=True), file=sys.stderr)
    return 0


def file_requests(
    path: str, point: str, host: str = "", hop_kind: str = "", deep: bool = False, http2_ports: list[int] | None = None
) -> tuple[list[RequestRecord], dict[str, int]]:
    """The request records of one capture file at ``point`` and the L7 counters."""
    from hopscope.probes.analyze import iter_capture
    from hopscope.probes.l7.feed import BlockFeeder
    from hopscope.probes.l7.tracker import CapturePoint, L7Tracker

    where = CapturePoint(point, host, point, hop_kind)
    tracker = L7Tracker(where)
    feeder = BlockFeeder(tracker)
    flow_ids: dict[tuple[str, int, str, int], int] = {}
    for block, closed in iter_capture(path, {"*": point}):
        feeder.feed(block)
        for rec in closed.records():
            assert isinstance(rec, FlowRecord)
            if rec.proto == 6:
                flow_ids[(rec.orig_h, rec.orig_p, rec.resp_h, rec.resp_p)] = rec.flow_id
    tracker.flush()
    records = tracker.take_records()
    if deep:
        from hopscope.probes.l7.tshark import DEFAULT_HTTP2_PORTS, tshark_requests

        def flow_id_of(proto: int, ch: str, cp: int, sh: str, sp: int) -> int:
            return flow_ids.get((ch, cp, sh, sp)) or flow_ids.get((sh, sp, ch, cp), 0)

        ports = http2_ports or list(DEFAULT_HTTP2_PORTS)
        records += tshark_requests(path, where, http2_ports=ports, flow_id_of=flow_id_of)
    return records, tracker.stats.as_dict()


def write_table(records: list[RequestRecord], out: TextIO) -> None:
    out.write(" ".join(name.ljust(width)[:width] for name, width in TABLE_COLUMNS) + "\n")
    for r in records:
        latency = (r.resp_last_ns - r.req_first_ns) / 1e6 if r.resp_last_ns else float("nan")
        row = {**asdict(r), "latency_ms": f"{latency:.3f}"}
        out.write(" ".join(str(row[name]).ljust(width)[:width] for name, width in TABLE_COLUMNS) + "\n")
