"""``hopscope flows FILE``: the L4 flow records of a capture file, as JSON lines or a table.

Keys follow Zeek's conn.log where Zeek has the field (``hopscope.probes.output``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from hopscope.errors import ConfigError
from hopscope.records import Batch, HopKind

if TYPE_CHECKING:
    from hopscope.probes.analyze import CaptureAnalyzer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Read a pcap/pcapng file, decode and meter it, print one flow record per line."
    parser.add_argument("file", help="pcap or pcapng file")
    parser.add_argument(
        "--point", action="append", default=[], metavar="[IFACE=]NAME",
        help="capture point name, or IFACE=NAME to map an interface (pcapng if_name, SLL2 ifN); repeatable",
    )  # fmt: skip
    parser.add_argument("--format", choices=("jsonl", "table"), default="jsonl")
    parser.add_argument("--host", default="", help="host the capture was taken on (FlowRecord.host)")
    parser.add_argument(
        "--hop-kind", default="", choices=[k.value for k in HopKind], help="kind of hop of the capture point"
    )
    parser.add_argument("--interim", action="store_true", help="also print interim (final=0) records")
    parser.add_argument("-C", "--ignore-checksums", action="store_true",
                        help="do not validate checksums (Zeek's -C). By default IPv4/TCP/UDP/ICMP checksums are "
                        "validated as Zeek does: a bad one adds C to the flow's history and the packet is not "
                        "counted. Use this for a capture taken on the sending host, whose outgoing packets carry "
                        "checksums the NIC fills in later (offload)"),
    parser.add_argument("--stats", action="store_true", help="print reader/decoder/meter counters to stderr")
    parser.add_argument("--strict", action="store_true",
                        help="a damaged capture (corrupt record, file cut short) is an error (exit 4) instead of a "
                        "warning; either way the records before the damage are kept")


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


def run(args: argparse.Namespace) -> int:
    from hopscope.probes.analyze import CaptureAnalyzer
    from hopscope.probes.output import RawJsonLines, write_flow_jsonl, write_flow_table

    analyzer = CaptureAnalyzer(args.file, parse_points(args.point), host=args.host, hop_kind=args.hop_kind,
                               strict=args.strict, checksums=not args.ignore_checksums)  # fmt: skip
    if args.format == "jsonl" and analyzer.meter.native is not None:
        lines = RawJsonLines(analyzer.meter.native)
        if lines.kernel is not None:  # the compiled meter and JSON lines kernel: no Python object per record
            sys.stdout.flush()  # JSON lines go to the binary layer, in one write per 4096 records
            for raw, codes in analyzer.run_raw():
                lines.write_raw(raw, codes, sys.stdout.buffer, args.interim)
            sys.stdout.buffer.flush()
            _stats(analyzer, args.stats)
            return 0
    batches = _batches(analyzer.run(), args.interim)
    if args.format == "jsonl":
        sys.stdout.flush()  # JSON lines go to the binary layer, in one write per 4096 records
        write_flow_jsonl(batches, sys.stdout.buffer)
    else:
        write_flow_table(batches, sys.stdout)
    _stats(analyzer, args.stats)
    return 0


def _stats(analyzer: CaptureAnalyzer, show: bool) -> None:
    """The reader, decoder and meter counters on stderr (``--stats``)."""
    if show:
        import json

        json.dump(analyzer.stats(), sys.stderr, indent=1)
        sys.stderr.write("\n")


def _batches(blocks: Iterable[tuple[object, Batch]], interim: bool) -> Iterator[Batch]:
    """The non-empty record batches to print: final records only unless ``interim``."""
    from hopscope.probes.output import final_only

    for _block, batch in blocks:
        if len(batch):
            yield batch if interim else final_only(batch)
