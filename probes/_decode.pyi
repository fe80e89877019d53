"""Type stub of the compiled kernel probes/csrc/decode.c (capture record walk, decoder fast path)."""

from typing import Any

def walk_pcap(
    buf: Any, n: int, pos: int, first: int, big_endian: bool, ns_per_unit: int, max_record: int,
    offset: Any, caplen: Any, origlen: Any, ts_ns: Any,
) -> tuple[int, int, int, int, int]:  # fmt: skip
    """The complete pcap records of ``buf[pos:n]`` into the columns from row ``first`` on:
    (count, end, caplen sum, bad record position or -1, its caplen)."""

def walk_pcapng(
    buf: Any, n: int, pos: int, big_endian: bool, max_block: int, starts: Any, btypes: Any, first: int
) -> tuple[int, int, bool]:
    """Packet blocks from ``pos``, stored from index ``first``: (count, stop position, stopped at another block)."""

def decode_fast(
    buf: Any, offset: Any, caplen: Any, iface: Any, linktypes: Any, columns: tuple[Any, ...], counts: Any
) -> int:
    """Fill the fast-path columns of every row; returns the number of rows flagged for the slow path."""

def pcapng_frames(
    buf: Any, starts: Any, btypes: Any, bases: Any, bigs: Any, snaplens: Any,
    offset: Any, caplen: Any, origlen: Any, iface: Any, raw_ts: Any,
) -> tuple[int, int]:  # fmt: skip
    """Columns of the packet blocks at ``starts``: (first frame naming an undeclared interface, first frame
    longer than its block), -1 when none."""
