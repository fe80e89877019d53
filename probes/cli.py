"""``hopscope flows FILE``: L4 flow records of a capture file, as JSON lines or a table.

Keys follow Zeek's conn.log where Zeek has the field (``ts``, ``uid``, ``orig_h``, ``orig_p``,
``resp_h``, ``resp_p``, ``proto``, ``duration``, ``orig_pkts`` ... ``conn_state``, ``history``,
``community_id``); every other ``FlowRecord`` field follows under its own name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from hopscope.errors import ConfigError
from hopscope.records import FlowRecord

PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}
TABLE_COLUMNS = (
    ("point", 14), ("orig_h", 15), ("orig_p", 6), ("resp_h", 15), ("resp_p", 6), ("proto", 5),
    ("orig_pkts", 9), ("resp_pkts", 9), ("orig_bytes", 10), ("resp_bytes", 10), ("conn_state", 6),
    ("history", 12), ("close_type", 15), ("rtt_server_us", 8), ("rtt_client_us", 8),
)  # fmt: skip


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "flows", help="print the L4 flow records of a capture file",
        description="Read a pcap/pcapng file, decode and meter it, print one flow record per line.",
    )  # fmt: skip
    parser.add_argument("file", help="pcap or pcapng file")
    parser.add_argument(
        "--point", action="append", default=[], metavar="[IFACE=]NAME",
        help="capture point name, or IFACE=NAME to map an interface (pcapng if_name, SLL2 ifN); repeatable",
    )  # fmt: skip
    parser.add_argument("--format", choices=("jsonl", "table"), default="jsonl")
    parser.add_argument("--interim", action="store_true", help="also print interim (final=0) records")
    parser.add_argument("--stats", action="store_true", help="print reader/decoder/meter counters to stderr")
    parser.set_defaults(func=run)


def parse_points(values: Iterable[str]) -> dict[str, str]:
    """``["eth0=a", "b"]`` -> ``{"eth0": "a", "*": "b"}``; a bare name names every interface."""
    points: dict[str, str] = {}
    for value in values:
        iface, sep, name = value.partition("=")
        if not sep:
            iface, name = "*", value
        if not iface or not name:
            raise ConfigError(f"--point {value!r}: expected NAME or IFACE=NAME")
        points[iface] = name
    return points


def conn_row(rec: FlowRecord) -> dict[str, Any]:
    """A flow record as a Zeek conn.log-style dict (Zeek names first, then hopscope's fields)."""
    row: dict[str, Any] = {
        "ts": rec.start_ns / 1e9,
        "uid": f"{rec.flow_id:016x}",
        "orig_h": rec.orig_h,
        "orig_p": rec.orig_p,
        "resp_h": rec.resp_h,
        "resp_p": rec.resp_p,
        "proto": PROTO_NAMES.get(rec.proto, str(rec.proto)),
        "duration": (rec.end_ns - rec.start_ns) / 1e9,
    }
    for name in ("orig_pkts", "resp_pkts", "orig_bytes", "resp_bytes", "orig_ip_bytes", "resp_ip_bytes",
                 "conn_state", "history", "community_id"):  # fmt: skip
        row[name] = getattr(rec, name)
    for col in FlowRecord.columns():
        row.setdefault(col.name, getattr(rec, col.name))
    return row


def write_table(rows: Iterable[dict[str, Any]], out: TextIO) -> None:
    out.write(" ".join(name.ljust(width)[:width] for name, width in TABLE_COLUMNS) + "\n")
    for row in rows:
        out.write(" ".join(str(row[name]).ljust(width) for name, width in TABLE_COLUMNS) + "\n")


def run(args: argparse.Namespace) -> int:
    from hopscope.probes.analyze import CaptureAnalyzer

    analyzer = CaptureAnalyzer(args.file, parse_points(args.point))
    try:
        _print(analyzer, args, sys.stdout)
    except BrokenPipeError:  # `hopscope flows x.pcap | head`: the reader left, not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stdout must stay open until exit
    if args.stats:
        json.dump(analyzer.stats(), sys.stderr, indent=1)
        sys.stderr.write("\n")
    return 0


def _print(analyzer: Any, args: argparse.Namespace, out: TextIO) -> None:
    table_rows: list[dict[str, Any]] = []
    for _block, records in analyzer.run():
        for rec in records:
            if not rec.final and not args.interim:
                continue
            row = conn_row(rec)
            if args.format == "jsonl":
                out.write(json.dumps(row, separators=(",", ":")) + "\n")
            else:
                table_rows.append(row)
    if args.format == "table":
        write_table(table_rows, out)
