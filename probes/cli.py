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

import numpy as np

from hopscope.errors import ConfigError
from hopscope.records import Batch, FlowRecord, HopKind, _as_list

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
    parser.add_argument("--host", default="", help="host the capture was taken on (FlowRecord.host)")
    parser.add_argument(
        "--hop-kind", default="", choices=[k.value for k in HopKind], help="kind of hop of the capture point"
    )
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


ZEEK_KEYS: tuple[str, ...] = (
    "ts", "uid", "orig_h", "orig_p", "resp_h", "resp_p", "proto", "duration", "orig_pkts", "resp_pkts",
    "orig_bytes", "resp_bytes", "orig_ip_bytes", "resp_ip_bytes", "conn_state", "history", "community_id",
)  # fmt: skip
#: Text columns whose values never need JSON escaping (addresses, codes, base64).
_SAFE_TEXT = frozenset(("orig_h", "resp_h", "conn_state", "history", "community_id", "close_type", "proto"))


def row_keys() -> list[str]:
    """Output keys in order: Zeek's conn.log names first, then the other FlowRecord fields."""
    return [*ZEEK_KEYS, *(c.name for c in FlowRecord.columns() if c.name not in ZEEK_KEYS)]


def _text(name: str, values: list[str]) -> list[str]:
    """JSON string literals of a text column (safe columns are quoted by the line template instead)."""
    if name in _SAFE_TEXT:
        return values
    cache = {v: json.dumps(v) for v in set(values)}
    return [cache[v] for v in values]


def batch_columns(batch: Batch) -> dict[str, list[Any]]:
    """Output columns of a FlowRecord batch (Zeek names added), values ready for ``%`` formatting with
    the specs of ``_spec`` (``uid`` as an int, safe text columns unquoted)."""
    cols = {name: _as_list(data) for name, data in batch.columns.items()}
    start = np.asarray(batch.columns["start_ns"], np.int64)
    out: dict[str, list[Any]] = {
        "ts": (start / 1e9).tolist(),
        "uid": cols["flow_id"],
        "proto": [PROTO_NAMES.get(v, str(v)) for v in cols["proto"]],
        "duration": ((np.asarray(batch.columns["end_ns"], np.int64) - start) / 1e9).tolist(),
    }
    for col in FlowRecord.columns():
        if col.name in out:
            continue
        values = cols[col.name]
        out[col.name] = _text(col.name, values) if col.type.is_text else values
    return out


def _spec(key: str, text_keys: set[str]) -> str:
    if key in ("ts", "duration"):
        return "%.6f"
    if key == "uid":
        return '"%016x"'
    if key in _SAFE_TEXT:
        return '"%s"'
    return "%s" if key in text_keys else "%d"


def jsonl_lines(batch: Batch) -> list[str]:
    """One JSON object per record (``conn_row`` order), built column-wise.

    A column whose value is the same in every record of the batch (the capture point, host, VLAN,
    most counters of short flows) is written into the line template once instead of per record.
    """
    if not len(batch):
        return []
    keys = row_keys()
    cols = batch_columns(batch)
    text_keys = {c.name for c in FlowRecord.columns() if c.type.is_text}
    parts, varying = [], []
    for k in keys:
        spec, values = _spec(k, text_keys), cols[k]
        if values.count(values[0]) == len(values):
            parts.append(f'"{k}":' + (spec % (values[0],)).replace("%", "%%"))
        else:
            parts.append(f'"{k}":{spec}')
            varying.append(values)
    template = "{" + ",".join(parts) + "}\n"
    if not varying:
        return [template % ()] * len(batch)
    return [template % row for row in zip(*varying, strict=True)]


def conn_row(batch: Batch, i: int) -> dict[str, Any]:
    """Record ``i`` of a FlowRecord batch as a conn.log-style dict (for the table and for tests)."""
    return dict(json.loads(jsonl_lines(batch.slice(i, i + 1))[0]))


def write_table(rows: Iterable[dict[str, Any]], out: TextIO) -> None:
    out.write(" ".join(name.ljust(width)[:width] for name, width in TABLE_COLUMNS) + "\n")
    for row in rows:
        out.write(" ".join(str(row[name]).ljust(width) for name, width in TABLE_COLUMNS) + "\n")


def run(args: argparse.Namespace) -> int:
    from hopscope.probes.analyze import CaptureAnalyzer

    analyzer = CaptureAnalyzer(args.file, parse_points(args.point), host=args.host, hop_kind=args.hop_kind)
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
    for _block, batch in analyzer.run():
        if not len(batch):
            continue
        if not args.interim:
            final = np.flatnonzero(batch.columns["final"])
            if len(final) < len(batch):  # take() copies the text columns element by element
                batch = batch.take(final)
        if args.format == "jsonl":
            for start in range(0, len(batch), 4096):  # bounded memory for big flushes
                out.writelines(jsonl_lines(batch.slice(start, start + 4096)))
        else:
            table_rows.extend(json.loads(line) for line in jsonl_lines(batch))
    if args.format == "table":
        write_table(table_rows, out)
