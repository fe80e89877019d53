"""``hopscope pcap``: the packets of one stored trace as a pcapng file (or as JSON).

    hopscope pcap 0af7651916cd43dd8448eb211c80319c --store chdb://var/demo/chdb -o trace.pcapng
    hopscope pcap TRACE_ID --point nodeB -o - | tshark -r -          # one capture point, to a pipe
    hopscope pcap TRACE_ID --packet-store /var/lib/hopscope/packets --format json

The same packets as ``GET /api/v1/traces/{id}/pcap``: per hop, the packets of its request's exchange
(request and response bytes, the ACKs between, the handshake with a connection's first request and the
teardown with its last) or the whole flow of an L4 trace; one interface per capture point, named
after it. They are found through the store's packet index (``hopscope analyze`` and ``demo`` write it)
and the rolling packet stores named by ``--packet-store`` (live probes and agents write them).
"""

from __future__ import annotations

import argparse
import json
import sys

from hopscope.cli import check_output
from hopscope.errors import ConfigError
from hopscope.store import DEFAULT_URL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description, parser.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    parser.add_argument("trace_id", metavar="TRACE_ID", help="32 hex digits")
    parser.add_argument("--store", default=DEFAULT_URL, metavar="URL", help=f"store URL (default {DEFAULT_URL})")
    parser.add_argument("--point", metavar="NAME", help="only the hops at this capture point")
    parser.add_argument("--packet-store", action="append", default=[], metavar="DIR",
                        help="a rolling packet store directory of live probes or agents (repeatable)")
    parser.add_argument("--format", choices=("pcapng", "json"), default="pcapng",
                        help="pcapng (default) or the JSON of GET /api/v1/traces/{id}/packets")
    parser.add_argument("-o", "--out", required=True, metavar="FILE", help="where to write ('-': standard output)")


def run(args: argparse.Namespace) -> int:
    from hopscope.correlate.packets import PacketSource, trace_packets
    from hopscope.probes.packet_slice import write_pcapng
    from hopscope.probes.packet_store import PacketStoreIndex
    from hopscope.store import open_for_reading

    check_output(args.out, "-o")
    sources: list[PacketSource] = [PacketStoreIndex(d) for d in args.packet_store]
    store = open_for_reading(args.store)
    try:
        found = trace_packets(store, args.trace_id.strip().lower(), args.point, sources)
    finally:
        store.close()
    try:
        out = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")  # noqa: SIM115
    except OSError as exc:
        raise ConfigError(f"-o {args.out}: cannot write it ({exc.strerror or exc})") from None
    try:
        if args.format == "json":
            out.write(json.dumps(found.as_json(), indent=1).encode() + b"\n")
            count = sum(len(p.packets) for p in found.points)
        else:
            count = write_pcapng(out, [(p.point, p.packets) for p in found.points])
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    if args.out != "-":
        points = ", ".join(f"{p.point} {len(p.packets)}" for p in found.points)
        print(f"{count} packets of trace {args.trace_id} written to {args.out} ({points})", file=sys.stderr)
    return 0
