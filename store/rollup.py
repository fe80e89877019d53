"""Per-minute rollups of stitched traces: what the topology graphs of a whole window are read from.

Two tables, written by the store itself whenever traces and their spans are inserted (so the offline
path, ``hopscope ingest`` and the streaming correlator all produce them through ``Store.insert``):

- ``edges_1m`` (``EdgeMinute``): per minute the traces started in, per address chain (the client
  address at the first hop, the server address at the first hop, the last non-loopback server address
  along the path) and L7 protocol: requests, errors, and two latency histograms: the trace's duration
  and the duration at the first hop that saw the final address as the server. Entities (pods,
  Services, nodes) are not stored: the service map maps the addresses through the inventory it is
  given when it is read, so a changed inventory applies to old minutes too.
- ``links_1m`` (``LinkMinute``): per minute, per link between two capture points (the hop paths of
  ``hopscope.topology.graph.point_topology``) and link reason: traces, lost packets, traces with loss,
  lowest confidence, and histograms of the request and response link latency; a row per capture point
  (``prev_point`` empty) counts the traces that passed it, and a row with both points empty counts
  the traces.

Histograms are logarithmic buckets with a relative accuracy of ``RELATIVE_ACCURACY`` (the DDSketch
mapping: a value is read back as its bucket's representative, within 1 % of it), kept as two numeric
arrays (``Array(Int32)`` bucket keys in order, ``Array(UInt64)`` counts); merging is adding counts, so
the rows of any set of minutes merge exactly. Arrays work alike on ClickHouse 18.16 (no quantile
state worth having there: ``quantileTiming`` is whole milliseconds), chDB and a cluster; a read adds
them in the server (``sumMap``, ``hist_sum_sql``), so one row per key comes back whatever the window.
Stores made when the histograms were texts in array syntax get the array columns from
``ensure_schema`` (``hopscope store init``), which converts them in place (``text_histogram_columns``).

A trace is counted when both it and its spans have been inserted through the same store object,
whichever came first (``RollupWriter``); a trace whose spans are not among the ones it holds is
paired with the spans the store has. The writer sums its rows over inserts and writes them every few
seconds, so a minute has about one row per key and writer. A trace the store held before it was
inserted again is not counted again (replays, ``analyze --store`` run twice). A writer's running sum
of a minute, and of a ten-minute block (``resolution_s = BLOCK_S``), is a segment (a random 64-bit
id) and each write of it carries a newer ``version``: the tables are ReplacingMergeTree on (minute,
resolution, key, segment) with that version, so the newest write of each segment counts (``FINAL``).
A window reads its whole blocks from the block rows and the minutes around them from the minute
rows, in one query with those conditions in ``PREWHERE`` (``rollup_range_sql``).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import secrets
import threading
import time
from bisect import bisect_right
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from itertools import chain, pairwise
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np

from hopscope.errors import HopscopeError
from hopscope.records import Batch, ColumnType, Record, Span, Trace

log = logging.getLogger(__name__)

MINUTE_NS = 60_000_000_000
#: The second level: blocks of ten minutes, so a long window reads a tenth of the rows.
BLOCK_S = 600
BLOCK_NS = BLOCK_S * 1_000_000_000
#: Relative error of a value read back from a histogram (and of the percentiles computed from one).
RELATIVE_ACCURACY = 0.01
_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
#: Spans held for traces not inserted yet, and traces held for their spans (beyond: oldest out).
MAX_HELD_SPANS = 100_000
MAX_HELD_TRACES = 20_000
_ID_CHUNK = 1000


def _col(ctype: ColumnType, doc: str) -> Any:
    default: Any = () if ctype.is_array else "" if ctype.is_text else (0.0 if ctype is ColumnType.F32 else 0)
    return field(default=default, metadata={"type": ctype, "doc": doc})


U32, U64, F32, STR = ColumnType.U32, ColumnType.U64, ColumnType.F32, ColumnType.STR
KEYS, COUNTS = ColumnType.I32_ARRAY, ColumnType.U64_ARRAY


@dataclass(frozen=True, slots=True)
class EdgeMinute(Record):
    """The traces of one minute that crossed one address chain, aggregated (table ``edges_1m``)."""

    TABLE: ClassVar[str] = "edges_1m"

    minute_ns: int = _col(U64, "start of the minute (or of the block of resolution_s) the traces started in (ns)")
    resolution_s: int = _col(U32, "60: a minute's row; BLOCK_S: a row of the block of minutes starting at minute_ns")
    client_h: str = _col(STR, "client address at the first hop")
    first_h: str = _col(STR, "server address at the first hop")
    final_h: str = _col(STR, "last non-loopback server address along the path")
    l7_proto: str = _col(STR, "the traces' L7 protocol ('' for l4)")
    segment: int = _col(U64, "the running sum the row belongs to (random 64-bit id, one per writer and minute)")
    version: int = _col(U64, "when the writer wrote the row (ns): a segment's newest row per key counts")
    requests: int = _col(U64, "traces")
    errors: int = _col(U64, "traces with error=1")
    duration_keys: tuple[int, ...] = _col(KEYS, "histogram of the traces' duration_us: bucket keys (hist_encode)")
    duration_counts: tuple[int, ...] = _col(COUNTS, "histogram of the traces' duration_us: counts per key")
    server_keys: tuple[int, ...] = _col(
        KEYS, "histogram of the duration (us) at the first hop that saw final_h as server"
    )
    server_counts: tuple[int, ...] = _col(COUNTS, "counts per key of server_keys")


@dataclass(frozen=True, slots=True)
class LinkMinute(Record):
    """The traces of one minute that passed one capture-point link, aggregated (table ``links_1m``)."""

    TABLE: ClassVar[str] = "links_1m"

    minute_ns: int = _col(U64, "start of the minute (or of the block of resolution_s) the traces started in (ns)")
    resolution_s: int = _col(U32, "60: a minute's row; BLOCK_S: a row of the block of minutes starting at minute_ns")
    prev_point: str = _col(STR, "the link's earlier capture point ('' on a point's own row)")
    point: str = _col(STR, "the link's later capture point, or the point of its own row ('' on the total row)")
    link_reason: str = _col(STR, "why the correlator made the link ('' on point and total rows)")
    host: str = _col(STR, "host of the point (point rows)")
    hop_kind: str = _col(STR, "HopKind of the point (point rows)")
    side: str = _col(STR, "side of the point (point rows)")
    segment: int = _col(U64, "the running sum the row belongs to (random 64-bit id, one per writer and minute)")
    version: int = _col(U64, "when the writer wrote the row (ns): a segment's newest row per key counts")
    traces: int = _col(U64, "links (point rows: traces passing the point; total row: traces with spans)")
    lost_pkts: int = _col(U64, "segments lost on the link")
    loss_traces: int = _col(U64, "links that lost segments")
    min_confidence: float = _col(F32, "lowest link confidence")
    req_keys: tuple[int, ...] = _col(KEYS, "histogram of req_link_us: bucket keys (hist_encode)")
    req_counts: tuple[int, ...] = _col(COUNTS, "counts per key of req_keys")
    resp_keys: tuple[int, ...] = _col(
        KEYS, "histogram of resp_link_us of the links that saw a response: bucket keys"
    )
    resp_counts: tuple[int, ...] = _col(COUNTS, "counts per key of resp_keys")


ROLLUP_TYPES: tuple[type[Record], ...] = (EdgeMinute, LinkMinute)
#: The tables whose inserts feed the rollups.
ROLLUP_SOURCES = frozenset({"spans", "traces"})


# --- histograms ------------------------------------------------------------------------------------


def bucket_keys(values: Sequence[int] | np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Bucket key per value: 0 for 0; ``±(i + 1)`` for ``|v|`` in ``(γ^(i-1), γ^i]``."""
    v = np.asarray(values, dtype=np.float64)
    mag = np.abs(v)
    with np.errstate(divide="ignore"):
        i = np.ceil(np.log(np.maximum(mag, 1.0)) / _LOG_GAMMA)
    return np.where(mag == 0, 0, np.sign(v) * (i + 1)).astype(np.int64)


def bucket_value(key: int) -> float:
    """The representative of a bucket: within ``RELATIVE_ACCURACY`` of every value in it."""
    if key == 0:
        return 0.0
    value = 2 * _GAMMA ** (abs(key) - 1) / (_GAMMA + 1)
    return value if key > 0 else -value


def hist_lists(hist: Mapping[int, int]) -> tuple[list[int], list[int]]:
    """A histogram (bucket key -> count) as the two arrays it is stored as: the bucket keys in order,
    and the count of each (``([], [])`` when empty)."""
    keys = sorted(k for k, c in hist.items() if c)
    return keys, [hist[k] for k in keys]


def hist_encode(values: Sequence[int]) -> tuple[list[int], list[int]]:
    """``hist_lists`` of the histogram of some values."""
    return hist_lists(Counter(bucket_keys(values).tolist()) if len(values) else Counter())


def _bucket_key(value: int) -> int:
    """``bucket_keys`` of one value."""
    if value == 0:
        return 0
    key = math.ceil(math.log(max(abs(value), 1)) / _LOG_GAMMA) + 1
    return key if value > 0 else -key


def hist_merge(into: Counter[int], keys: Sequence[int], counts: Sequence[int]) -> None:
    """Add an encoded histogram's counts to ``into``."""
    for key, count in zip(keys, counts, strict=True):
        into[key] += count


def hist_percentiles(hist: Mapping[int, int], qs: Sequence[int]) -> dict[str, int | None]:
    """``{"p50": ..}`` as numpy's linear interpolation between ranks would give on the values, each
    value read as its bucket's representative (so within ``RELATIVE_ACCURACY`` of the exact figure
    for values of one sign); None when empty."""
    keys = sorted(k for k, c in hist.items() if c > 0)
    return _sorted_percentiles(keys, [hist[k] for k in keys], qs)


def _sorted_percentiles(keys: Sequence[int], counts: Sequence[int], qs: Sequence[int]) -> dict[str, int | None]:
    """``hist_percentiles`` of a histogram given as its keys in order and their (positive) counts."""
    n = sum(counts)
    if n == 0:
        return {f"p{q}": None for q in qs}
    cumulative = np.cumsum(counts).tolist()

    def at(rank: int) -> float:
        return bucket_value(keys[bisect_right(cumulative, rank)])

    out: dict[str, int | None] = {}
    for q in qs:
        rank = q / 100 * (n - 1)
        low = math.floor(rank)
        value = at(low)
        if rank > low:
            value += (at(low + 1) - value) * (rank - low)
        out[f"p{q}"] = round(value)
    return out


def group_percentiles(
    summed: Sequence[Any], groups: Sequence[int], n_groups: int, qs: Sequence[int]
) -> list[dict[str, int | None]]:
    """``hist_percentiles`` of ``n_groups`` histograms, each the sum of the ``hist_sum_sql`` values
    ``summed[i]`` whose ``groups[i]`` is its index: the entries of all of them added in one sort
    (a service map edge adds the histograms of many address chains, a link those of its reasons)."""
    hists = Hists.from_pairs(summed)
    keys, counts, entry_row = hists.take(np.arange(len(summed)))
    return flat_percentiles(keys, counts, np.asarray(groups, dtype=np.int64)[entry_row], n_groups, qs)


def flat_percentiles(
    keys: np.ndarray[Any, Any], counts: np.ndarray[Any, Any], groups: np.ndarray[Any, Any], n_groups: int,
    qs: Sequence[int],
) -> list[dict[str, int | None]]:  # fmt: skip
    """``hist_percentiles`` of ``n_groups`` histograms given as entries (bucket key, count, group),
    all computed at once: the entries added per group and key in one sort, then each percentile's
    two ranks found by one search over the cumulative counts (the same floating-point steps as
    ``hist_percentiles``, so the same figures)."""
    none: dict[str, int | None] = {f"p{q}": None for q in qs}
    if not len(keys):
        return [dict(none) for _ in range(n_groups)]
    keys, counts = keys.astype(np.int64, copy=False), counts.astype(np.int64, copy=False)
    low = int(keys.min())
    span = int(keys.max()) - low + 1
    codes = groups.astype(np.int64, copy=False) * span + (keys - low)
    order = np.argsort(codes, kind="stable")
    codes, counts = codes[order], counts[order]
    starts = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1])))
    sums, codes = np.add.reduceat(counts, starts), codes[starts]
    kept = sums > 0
    sums, codes = sums[kept], codes[kept]
    bounds = np.searchsorted(codes // span, np.arange(n_groups + 1))
    cumulative = np.cumsum(sums)
    base = np.concatenate(([0], cumulative))[bounds[:-1]]  # counts before each group's entries
    n = np.concatenate(([0], cumulative))[bounds[1:]] - base
    present = n > 0
    values_of = np.array([bucket_value(k) for k in range(low, low + span)])  # bucket_value's own floats
    bucket = codes % span

    def at(rank: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The bucket value of the entry holding each group's 0-based ``rank``."""
        i = np.searchsorted(cumulative, base + rank, side="right")
        picked: np.ndarray[Any, Any] = values_of[bucket[np.minimum(i, len(bucket) - 1)]]
        return picked

    found: dict[str, list[Any]] = {}
    nm1 = (n - 1).astype(np.float64)
    for q in qs:
        rank = q / 100 * nm1
        lower = np.floor(rank)
        value = at(lower.astype(np.int64))
        frac = rank - lower
        upper = at(np.minimum(lower.astype(np.int64) + 1, np.maximum(n - 1, 0)))
        value = np.where(frac > 0, value + (upper - value) * frac, value)
        found[f"p{q}"] = np.rint(value).astype(np.int64).tolist()
    present_list = present.tolist()
    return [{k: v[g] for k, v in found.items()} if present_list[g] else dict(none) for g in range(n_groups)]


@dataclass(frozen=True, slots=True)
class Hists:
    """The histograms of some rows as flat arrays: row ``i``'s bucket keys and counts are
    ``keys[bounds[i]:bounds[i + 1]]`` and the same slice of ``counts``."""

    keys: np.ndarray[Any, Any]
    counts: np.ndarray[Any, Any]
    bounds: np.ndarray[Any, Any]

    def __len__(self) -> int:
        return len(self.bounds) - 1

    @classmethod
    def from_pairs(cls, summed: Sequence[Any]) -> Hists:
        """From ``hist_sum_sql`` values as Python objects: (keys, counts) tuples, or structs
        ({"1": keys, "2": counts})."""
        parts = [_summed_parts(v) for v in summed]
        lengths = np.fromiter((len(k) for k, _ in parts), dtype=np.int64, count=len(parts))
        total = int(lengths.sum())
        keys = np.fromiter(chain.from_iterable(k for k, _ in parts), dtype=np.int64, count=total)
        counts = np.fromiter(chain.from_iterable(c for _, c in parts), dtype=np.int64, count=total)
        return cls(keys, counts, np.concatenate(([0], np.cumsum(lengths))))

    @classmethod
    def from_arrow(cls, column: Any) -> Hists:
        """From an Arrow column of ``hist_sum_sql`` values (a struct of two lists, chDB's answer):
        the lists' values and offsets as they are, no Python object per entry."""
        struct = column.combine_chunks() if hasattr(column, "combine_chunks") else column
        keys, counts = struct.flatten()  # the two lists, sliced as the struct is
        offsets = np.asarray(keys.offsets, dtype=np.int64)
        if not np.array_equal(offsets, np.asarray(counts.offsets, dtype=np.int64)):
            raise ValueError("histogram keys and counts of different lengths")
        first, last = int(offsets[0]), int(offsets[-1])
        return cls(
            np.asarray(keys.values, dtype=np.int64)[first:last],
            np.asarray(counts.values, dtype=np.int64)[first:last],
            offsets - first,
        )

    def take(self, rows: np.ndarray[Any, Any]) -> tuple[Array, Array, Array]:
        """The entries of ``rows`` (in that order): keys, counts, and the position in ``rows`` of each."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.bounds[rows + 1] - self.bounds[rows]
        total = int(lengths.sum())
        ends = np.cumsum(lengths)
        index = np.repeat(self.bounds[rows] - (ends - lengths), lengths) + np.arange(total)
        return self.keys[index], self.counts[index], np.repeat(np.arange(len(rows)), lengths)


# --- rows from traces ------------------------------------------------------------------------------


class SpanRow(NamedTuple):
    """The fields of a ``Span`` the rollups read."""

    trace_id: str
    span_id: str
    parent_span_id: str
    hop_index: int
    point: str
    host: str
    hop_kind: str
    side: str
    orig_h: str
    resp_h: str
    request_first_ns: int
    response_first_ns: int
    response_last_ns: int
    req_link_us: int
    resp_link_us: int
    link_reason: str
    link_confidence: float
    lost_pkts: int


class TraceRow(NamedTuple):
    """The fields of a ``Trace`` the rollups read."""

    trace_id: str
    start_ns: int
    duration_us: int
    error: int
    l7_proto: str
    client_h: str
    server_h: str


R = TypeVar("R", SpanRow, TraceRow)
Array = np.ndarray[Any, Any]
Columns = dict[str, Array]


def batch_rows(row_type: type[R], batch: Batch) -> list[R]:
    """The rows of a batch of spans or traces, column by column (no record objects)."""
    columns = [batch.columns[name] for name in row_type._fields]
    lists = [c.tolist() if isinstance(c, np.ndarray) else list(c) for c in columns]
    return list(map(row_type._make, zip(*lists, strict=True)))


def record_row(row_type: type[R], record: Span | Trace) -> R:
    return row_type._make(getattr(record, name) for name in row_type._fields)


def _column(values: Any, ctype: ColumnType) -> np.ndarray[Any, Any]:
    """A column as the summaries read it: text as an object array, times and counts as int64."""
    if ctype.is_text:
        if isinstance(values, np.ndarray) and values.dtype == object:
            return values
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    return np.asarray(values, dtype=np.float64 if ctype is ColumnType.F32 else np.int64)


#: The record column types of the fields the rollups read.
_TYPES: dict[type[Any], dict[str, ColumnType]] = {
    row: {c.name: c.type for c in record.columns() if c.name in row._fields}
    for row, record in ((SpanRow, Span), (TraceRow, Trace))
}


def _span_columns(batch: Batch) -> Columns:
    types = _TYPES[SpanRow]
    return {n: _column(batch.columns[n], types[n]) for n in SpanRow._fields}


def _row_columns(row_type: type[R], rows: Sequence[R]) -> Columns:
    """Columns of some rows (``SpanRow`` or ``TraceRow``)."""
    types = _TYPES[row_type]
    lists: Iterable[Sequence[Any]] = zip(*rows, strict=True) if rows else ([] for _ in row_type._fields)
    return {n: _column(v, types[n]) for n, v in zip(row_type._fields, lists, strict=True)}


@functools.lru_cache(maxsize=1 << 16)
def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def _codes(values: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(code of each value, the distinct values): equal values, equal codes."""
    import pandas as pd  # here: the CLI's start does not pay for it

    codes, uniques = pd.factorize(values)
    return codes.astype(np.int64, copy=False), np.asarray(uniques, dtype=object)


def _combine(*codes: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """One code per row for the tuple of several codes (dense: 0 .. distinct tuples - 1)."""
    out = codes[0]
    for more in codes[1:]:
        out = out * (int(more.max(initial=0)) + 1) + more
        out = np.unique(out, return_inverse=True)[1].reshape(-1)
    return out


def _bucket_keys_exact(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``_bucket_key`` of each value (the values near a bucket boundary are computed one by one, so
    the vectorised logarithm can never put one in the neighbouring bucket)."""
    v = np.asarray(values, dtype=np.int64)
    mag = np.abs(v).astype(np.float64)
    x = np.log(np.maximum(mag, 1.0)) / _LOG_GAMMA
    keys = np.where(v == 0, 0, np.sign(v) * (np.ceil(x) + 1)).astype(np.int64)
    near = np.flatnonzero(np.abs(x - np.rint(x)) < 1e-6)
    for i in near.tolist():
        keys[i] = _bucket_key(int(v[i]))
    return keys


class Summaries(NamedTuple):
    """What the rollups take from some traces and their spans, as columns, computed once for every
    resolution. Per trace: start, edge (client, first and final address, l7_proto; ``edge`` False
    without a client address), error, the bucket keys of the duration and of the server-side
    duration, and whether it has spans. Per capture point of a trace (each point once, attributes of
    its first span in hop order): ``p_*``. Per link between two points of a trace: ``l_*``."""

    start_ns: np.ndarray[Any, Any]
    edge: np.ndarray[Any, Any]
    client: np.ndarray[Any, Any]
    first: np.ndarray[Any, Any]
    final: np.ndarray[Any, Any]
    l7_proto: np.ndarray[Any, Any]
    error: np.ndarray[Any, Any]
    duration_key: np.ndarray[Any, Any]
    server_key: np.ndarray[Any, Any]
    has_spans: np.ndarray[Any, Any]
    p_trace: np.ndarray[Any, Any]
    p_point: np.ndarray[Any, Any]
    p_host: np.ndarray[Any, Any]
    p_kind: np.ndarray[Any, Any]
    p_side: np.ndarray[Any, Any]
    l_trace: np.ndarray[Any, Any]
    l_prev: np.ndarray[Any, Any]
    l_point: np.ndarray[Any, Any]
    l_reason: np.ndarray[Any, Any]
    l_req_key: np.ndarray[Any, Any]
    l_resp_key: np.ndarray[Any, Any]
    l_has_resp: np.ndarray[Any, Any]
    l_lost: np.ndarray[Any, Any]
    l_confidence: np.ndarray[Any, Any]


def _hop_order(spans: Columns, tix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Positions of the spans by trace, then hop order (hop index, request time, span id); a span id
    twice in one trace counts once (its last row)."""
    sid_codes, _ = _codes(spans["span_id"])
    pair = tix * (int(sid_codes.max(initial=0)) + 1) + sid_codes
    if len(np.unique(pair)) < len(pair):  # a span written twice: its last row
        _, last_rev = np.unique(pair[::-1], return_index=True)
        keep = np.sort(len(pair) - 1 - last_rev)
    else:
        keep = np.arange(len(pair))
    hop, req = spans["hop_index"][keep], spans["request_first_ns"][keep]
    order = keep[np.lexsort((req, hop, tix[keep]))]
    t, h, r = tix[order], spans["hop_index"][order], spans["request_first_ns"][order]
    tie = (t[1:] == t[:-1]) & (h[1:] == h[:-1]) & (r[1:] == r[:-1])
    if tie.any():  # same hop and time: by span id, as the reference order has it
        ids = spans["span_id"]
        starts = np.flatnonzero(np.diff(np.concatenate(([False], tie, [False])).astype(np.int8)) == 1)
        for a in starts.tolist():
            b = a + 1
            while b < len(tie) and tie[b]:
                b += 1
            run = order[a : b + 1]
            order[a : b + 1] = sorted(run.tolist(), key=lambda i: ids[i])
    return order


def summarize_columns(traces: Columns, spans: Columns, span_trace: np.ndarray[Any, Any]) -> Summaries:
    """The summaries of some traces (columns of ``TraceRow`` fields) with their spans (columns of
    ``SpanRow`` fields; ``span_trace``: the index of each span's trace), all at once."""
    n = len(traces["trace_id"])
    tix = np.asarray(span_trace, dtype=np.int64)
    order = _hop_order(spans, tix) if len(tix) else np.zeros(0, dtype=np.int64)
    s = {k: v[order] for k, v in spans.items()}
    t = tix[order]
    m = len(t)
    pos = np.arange(m)
    new_trace = np.ones(m, dtype=bool)
    new_trace[1:] = t[1:] != t[:-1]
    starts = np.flatnonzero(new_trace)
    seg = np.cumsum(new_trace) - 1  # the trace segment of each span
    traced = t[starts]  # the traces with spans, one per segment

    # address chain: client and first server at the first hop, final = last non-loopback server
    resp_codes, resp_uniques = _codes(s["resp_h"])
    usable = np.fromiter((bool(a) and not _is_loopback(a) for a in resp_uniques), dtype=bool,
                         count=len(resp_uniques))  # fmt: skip
    cand = usable[resp_codes] if m else np.zeros(0, dtype=bool)
    last_cand = np.maximum.reduceat(np.where(cand, pos, -1), starts) if m else np.zeros(0, dtype=np.int64)
    final_pos = np.where(last_cand >= 0, last_cand, starts)
    client = traces["client_h"].copy()
    first = traces["server_h"].copy()
    final = traces["server_h"].copy()
    client[traced], first[traced], final[traced] = s["orig_h"][starts], s["resp_h"][starts], s["resp_h"][final_pos]
    server_us = traces["duration_us"].copy()
    if m:
        rf, rl = s["request_first_ns"], s["response_last_ns"]
        at_final = (resp_codes == resp_codes[final_pos][seg]) & (rl > rf)
        first_at = np.minimum.reduceat(np.where(at_final, pos, m), starts)
        found = first_at < m
        server_us[traced[found]] = (rl[first_at[found]] - rf[first_at[found]]) // 1000
    has_spans = np.zeros(n, dtype=bool)
    has_spans[traced] = True
    edge = client != ""

    # each point of a trace once, with its first span's attributes
    point_codes, _ = _codes(s["point"])
    _, p_first = np.unique(t * (int(point_codes.max(initial=0)) + 1) + point_codes, return_index=True)
    p_first = np.sort(p_first)

    # links: (parent or previous span, span) of one trace at different points
    parent = np.where(new_trace, -1, pos - 1)
    par, sid = s["parent_span_id"], s["span_id"]
    named = par != ""
    same_prev = np.zeros(m, dtype=bool)
    same_prev[1:] = (par[1:] == sid[:-1]) & ~new_trace[1:]
    unresolved = named & ~same_prev  # a parent named, not the previous span: looked up
    if unresolved.any():
        look = np.isin(t, np.unique(t[unresolved]))
        index = dict(zip(zip(t[look].tolist(), sid[look].tolist(), strict=True), pos[look].tolist(), strict=True))
        for i in np.flatnonzero(unresolved).tolist():
            parent[i] = index.get((int(t[i]), par[i]), parent[i])
    linked = (parent >= 0) & (parent != pos)
    linked[linked] = point_codes[parent[linked]] != point_codes[linked]
    li = np.flatnonzero(linked)
    pi = parent[li]

    return Summaries(
        start_ns=traces["start_ns"], edge=edge, client=client, first=first, final=final,
        l7_proto=traces["l7_proto"], error=(traces["error"] != 0).astype(np.int64),
        duration_key=_bucket_keys_exact(traces["duration_us"]), server_key=_bucket_keys_exact(server_us),
        has_spans=has_spans,
        p_trace=t[p_first], p_point=s["point"][p_first], p_host=s["host"][p_first],
        p_kind=s["hop_kind"][p_first], p_side=s["side"][p_first],
        l_trace=t[li], l_prev=s["point"][pi], l_point=s["point"][li], l_reason=s["link_reason"][li],
        l_req_key=_bucket_keys_exact(s["req_link_us"][li]), l_resp_key=_bucket_keys_exact(s["resp_link_us"][li]),
        l_has_resp=s["response_first_ns"][li] != 0, l_lost=s["lost_pkts"][li],
        l_confidence=s["link_confidence"][li],
    )  # fmt: skip


def summarize_pairs(pairs: Iterable[Pair]) -> Summaries:
    """``summarize_columns`` of traces, each with its spans as rows."""
    traces: list[TraceRow] = []
    rows: list[SpanRow] = []
    tix: list[int] = []
    for i, (trace, spans) in enumerate(pairs):
        traces.append(trace)
        rows.extend(spans)
        tix.extend([i] * len(spans))
    return summarize_columns(_row_columns(TraceRow, traces), _row_columns(SpanRow, rows),
                             np.asarray(tix, dtype=np.int64))  # fmt: skip


Pair = tuple[TraceRow, Sequence[SpanRow]]


@dataclass(slots=True)
class _Acc:
    """One row being summed: counts, and histograms as bucket key -> count."""

    count: int = 0
    errors: int = 0
    lost_pkts: int = 0
    loss_traces: int = 0
    min_confidence: float = 1.0
    first: Counter[int] = field(default_factory=Counter)
    second: Counter[int] = field(default_factory=Counter)
    attrs: tuple[str, str, str] = ("", "", "")


def _groups(*codes: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(first row of each group, group of each row) of the rows grouped by several codes."""
    combined = _combine(*codes) if len(codes[0]) else np.zeros(0, dtype=np.int64)
    _, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def _add_hist(accs: Sequence[_Acc], second: bool, group: np.ndarray[Any, Any], keys: np.ndarray[Any, Any]) -> None:
    """Add a bucket key per row to the histogram of the row's group."""
    if not len(keys):
        return
    low = int(keys.min())
    span = int(keys.max()) - low + 1
    pairs, counts = np.unique(group * span + (keys - low), return_counts=True)
    hists = [a.second if second else a.first for a in accs]
    for g, key, count in zip((pairs // span).tolist(), (pairs % span + low).tolist(), counts.tolist(), strict=True):
        hist = hists[g]
        hist[key] = hist.get(key, 0) + count  # not +=: a new key would call Counter.__missing__


class Accumulator:
    """Rollup rows being summed: traces added in any number of calls become one row per minute and
    key. Each minute's rows belong to a segment (a random 64-bit id): ``batches`` gives the running
    sums so far under their segment, and a later write of the same segment (a higher ``version``)
    replaces the earlier one in the table."""

    def __init__(self, resolution_ns: int = MINUTE_NS) -> None:
        self.resolution_ns = resolution_ns
        self.edges: dict[tuple[int, str, str, str, str], _Acc] = {}
        self.links: dict[tuple[int, str, str, str], _Acc] = {}
        self.segments: dict[int, int] = {}  # minute (block) -> segment id

    def __len__(self) -> int:
        return len(self.edges) + len(self.links)

    def add(self, pairs: Iterable[Pair]) -> None:
        """Add traces, each with all its spans."""
        self.add_summaries(summarize_pairs(pairs))

    def add_summaries(self, t: Summaries) -> None:
        """Add traces already summarized (``summarize_columns``: one summary serves every resolution):
        grouped by minute and key with numpy, then each group added to its row."""
        res = self.resolution_ns
        minutes = t.start_ns // res * res
        for minute in np.unique(minutes).tolist():
            if minute not in self.segments:
                self.segments[minute] = secrets.randbits(64)
        minute_codes = np.unique(minutes, return_inverse=True)[1].reshape(-1)
        self._add_edges(t, minutes, minute_codes)
        self._add_links(t, minutes, minute_codes)

    def _add_edges(self, t: Summaries, minutes: np.ndarray[Any, Any], minute_codes: np.ndarray[Any, Any]) -> None:
        rows = np.flatnonzero(t.edge)
        if not len(rows):
            return
        texts = (t.client[rows], t.first[rows], t.final[rows], t.l7_proto[rows])
        first, group = _groups(minute_codes[rows], *(_codes(c)[0] for c in texts))
        counts = np.bincount(group).tolist()
        errors = np.bincount(group, weights=t.error[rows]).astype(np.int64).tolist()
        accs = []
        for g, i in enumerate(first.tolist()):
            key = (int(minutes[rows[i]]), *(str(c[i]) for c in texts))
            acc = self.edges.get(key)  # type: ignore[arg-type]
            if acc is None:
                acc = self.edges[key] = _Acc()  # type: ignore[index]
            acc.count += counts[g]
            acc.errors += errors[g]
            accs.append(acc)
        _add_hist(accs, False, group, t.duration_key[rows])
        _add_hist(accs, True, group, t.server_key[rows])

    def _link(self, key: tuple[int, str, str, str], count: int) -> _Acc:
        acc = self.links.get(key)
        if acc is None:
            acc = self.links[key] = _Acc()
        acc.count += count
        return acc

    def _add_links(self, t: Summaries, minutes: np.ndarray[Any, Any], minute_codes: np.ndarray[Any, Any]) -> None:
        traced = np.flatnonzero(t.has_spans)
        if not len(traced):
            return
        # the traces with spans, per minute
        first, group = _groups(minute_codes[traced])
        for g, count in enumerate(np.bincount(group).tolist()):
            self._link((int(minutes[traced[first[g]]]), "", "", ""), count)
        # each point, per minute: its attributes those of the last trace added that passed it
        first, group = _groups(minute_codes[t.p_trace], _codes(t.p_point)[0])
        last = np.full(len(first), -1, dtype=np.int64)
        np.maximum.at(last, group, np.arange(len(group)))
        for g, count in enumerate(np.bincount(group).tolist()):
            i, j = int(first[g]), int(last[g])
            acc = self._link((int(minutes[t.p_trace[i]]), "", str(t.p_point[i]), ""), count)
            acc.attrs = (str(t.p_host[j]), str(t.p_kind[j]), str(t.p_side[j]))
        # each link, per minute
        if not len(t.l_trace):
            return
        lm = minute_codes[t.l_trace]
        first, group = _groups(lm, _codes(t.l_prev)[0], _codes(t.l_point)[0], _codes(t.l_reason)[0])
        counts = np.bincount(group).tolist()
        lost = np.bincount(group, weights=t.l_lost).astype(np.int64).tolist()
        loss = np.bincount(group, weights=(t.l_lost != 0).astype(np.float64)).astype(np.int64).tolist()
        conf = np.full(len(first), np.inf)
        np.minimum.at(conf, group, t.l_confidence)
        accs = []
        for g, i in enumerate(first.tolist()):
            key = (int(minutes[t.l_trace[i]]), str(t.l_prev[i]), str(t.l_point[i]), str(t.l_reason[i]))
            acc = self._link(key, counts[g])
            acc.lost_pkts += lost[g]
            acc.loss_traces += loss[g]
            lowest = float(conf[g])
            if lowest < acc.min_confidence:
                acc.min_confidence = lowest
            accs.append(acc)
        _add_hist(accs, False, group, t.l_req_key)
        resp = np.flatnonzero(t.l_has_resp)
        _add_hist(accs, True, group[resp], t.l_resp_key[resp])

    def batches(self, version: int) -> tuple[Batch, Batch]:
        """The ``edges_1m`` and ``links_1m`` rows of everything added, written as ``version``."""
        common = (self.segments, self.resolution_ns // 1_000_000_000, version)
        return _edge_batch(self.edges, *common), _link_batch(self.links, *common)

    def evict(self, before_ns: int) -> None:
        """Forget the minutes before ``before_ns`` (a trace of one coming later starts a new segment)."""
        self.edges = {k: v for k, v in self.edges.items() if k[0] >= before_ns}
        self.links = {k: v for k, v in self.links.items() if k[0] >= before_ns}
        self.segments = {m: seg for m, seg in self.segments.items() if m >= before_ns}


def rollup_batches(pairs: Iterable[Pair], version: int = 1) -> tuple[Batch, Batch]:
    """The ``edges_1m`` and ``links_1m`` rows of these traces (each with all its spans)."""
    acc = Accumulator()
    acc.add(pairs)
    return acc.batches(version)


def _hist_columns(prefix: str, hists: Sequence[Counter[int]]) -> dict[str, list[list[int]]]:
    encoded = [hist_lists(h) for h in hists]
    return {f"{prefix}_keys": [k for k, _ in encoded], f"{prefix}_counts": [c for _, c in encoded]}


def _edge_batch(
    edges: Mapping[tuple[int, str, str, str, str], _Acc], segments: Mapping[int, int], resolution_s: int, version: int
) -> Batch:
    keys, accs = list(edges), list(edges.values())
    columns: dict[str, Any] = {
        "minute_ns": [k[0] for k in keys], "client_h": [k[1] for k in keys], "first_h": [k[2] for k in keys],
        "final_h": [k[3] for k in keys], "l7_proto": [k[4] for k in keys], "segment": [segments[k[0]] for k in keys],
        "version": [version] * len(keys), "requests": [a.count for a in accs], "errors": [a.errors for a in accs],
        "resolution_s": [resolution_s] * len(keys),
    }  # fmt: skip
    columns.update(_hist_columns("duration", [a.first for a in accs]))
    columns.update(_hist_columns("server", [a.second for a in accs]))
    return Batch(EdgeMinute, columns, len(keys))


def _link_batch(
    links: Mapping[tuple[int, str, str, str], _Acc], segments: Mapping[int, int], resolution_s: int, version: int
) -> Batch:
    keys, accs = list(links), list(links.values())
    columns: dict[str, Any] = {
        "minute_ns": [k[0] for k in keys], "prev_point": [k[1] for k in keys], "point": [k[2] for k in keys],
        "link_reason": [k[3] for k in keys], "host": [a.attrs[0] for a in accs], "hop_kind": [a.attrs[1] for a in accs],
        "side": [a.attrs[2] for a in accs], "segment": [segments[k[0]] for k in keys], "version": [version] * len(keys),
        "traces": [a.count for a in accs], "lost_pkts": [a.lost_pkts for a in accs],
        "resolution_s": [resolution_s] * len(keys),
        "loss_traces": [a.loss_traces for a in accs], "min_confidence": [a.min_confidence for a in accs],
    }  # fmt: skip
    columns.update(_hist_columns("req", [a.first for a in accs]))
    columns.update(_hist_columns("resp", [a.second for a in accs]))
    return Batch(LinkMinute, columns, len(keys))


# --- pairing traces with their spans as they are inserted ------------------------------------------


class _Chunk:
    """Spans held as columns, the rows of each trace together (a piece: ``(chunk, start, stop)``).
    ``live``: how many of its rows belong to traces still held."""

    __slots__ = ("columns", "live", "size")

    def __init__(self, columns: Columns, size: int) -> None:
        self.columns, self.size, self.live = columns, size, 0


_Piece = tuple[_Chunk, int, int]
_Ready = tuple[TraceRow, Sequence[_Piece]]
#: Held chunks may keep this many rows (beyond four times the held spans) before the held spans are
#: copied into one chunk of their own.
_COMPACT_ROWS = MAX_HELD_SPANS


def _chunk_pieces(columns: Columns) -> tuple[_Chunk, list[str], list[int]]:
    """Spans as a chunk grouped by trace: the chunk, its trace ids (in the order they first came) and
    the bounds of each one's rows."""
    codes, ids = _codes(columns["trace_id"])
    order = np.argsort(codes, kind="stable")
    if len(order) and (np.diff(order) != 1).any():
        columns = {n: v[order] for n, v in columns.items()}
    bounds = np.searchsorted(codes[order], np.arange(len(ids) + 1)).tolist()
    return _Chunk(columns, len(order)), ids.tolist(), bounds


def _gather_pieces(pieces: Sequence[_Piece]) -> tuple[Columns, np.ndarray[Any, Any]]:
    """The rows of some pieces as one set of columns (grouped by chunk), and where each piece starts."""
    by_chunk: dict[int, tuple[_Chunk, list[int]]] = {}
    for k, (chunk, _, _) in enumerate(pieces):
        by_chunk.setdefault(id(chunk), (chunk, []))[1].append(k)
    starts = np.zeros(len(pieces), dtype=np.int64)
    parts: list[Columns] = []
    offset = 0
    for chunk, ks in by_chunk.values():
        a = np.fromiter((pieces[k][1] for k in ks), dtype=np.int64, count=len(ks))
        lengths = np.fromiter((pieces[k][2] for k in ks), dtype=np.int64, count=len(ks)) - a
        ends = np.cumsum(lengths)
        total = int(ends[-1])
        starts[ks] = offset + ends - lengths
        rows = np.repeat(a - (ends - lengths), lengths) + np.arange(total)
        parts.append({n: v[rows] for n, v in chunk.columns.items()})
        offset += total
    if len(parts) == 1:
        return parts[0], starts
    if not parts:
        return _row_columns(SpanRow, []), starts
    return {n: np.concatenate([p[n] for p in parts]) for n in SpanRow._fields}, starts


def _summarize_ready(ready: Sequence[_Ready]) -> Summaries:
    traces = _row_columns(TraceRow, [t for t, _ in ready])
    pieces: list[_Piece] = []
    owner: list[int] = []
    for i, (_, held) in enumerate(ready):
        pieces.extend(held)
        owner.extend([i] * len(held))
    spans, starts = _gather_pieces(pieces)
    lengths = np.fromiter((b - a for _, a, b in pieces), dtype=np.int64, count=len(pieces))
    by_start = np.argsort(starts, kind="stable")
    span_trace = np.repeat(np.asarray(owner, dtype=np.int64)[by_start], lengths[by_start])
    return summarize_columns(traces, spans, span_trace)


class RollupWriter:
    """Pairs each inserted trace with its inserted spans, whichever comes first, and keeps running
    sums of the rollup rows of the complete pairs per minute (``Accumulator``). Every ``FLUSH_S`` it
    writes the sums of the minutes still open; each write replaces the previous one of the same
    minute (same segment, higher version), so a minute holds about one row per key and writer however
    many passes wrote it. Minutes more than ``OPEN_MINUTES`` before the newest are closed after a
    write; a trace of a closed minute starts a new segment.

    ``insert`` writes a batch into a table; ``lookup_spans`` returns the stored spans of some trace
    ids (spans written before this writer existed, or by another process); ``lookup_traces`` which of
    some trace ids the store holds already. A trace the store held before it was inserted again (a
    replay, ``analyze --store`` run twice) is not counted again, however the writes are grouped; a
    writer that stops between storing traces and writing their rows (at most ``FLUSH_S`` of them)
    leaves those traces out of the rollups.

    Spans are held as the columns of their batch (``_Chunk``), and the traces that are complete
    after an insert are summarized and added together, with numpy (``summarize_columns``,
    ``Accumulator.add_summaries``): no Python object per span."""

    FLUSH_S = 5.0
    OPEN_MINUTES = 2
    MAX_OPEN_ROWS = 200_000

    def __init__(
        self,
        insert: Callable[[str, Batch], int],
        lookup_spans: Callable[[Sequence[str]], Sequence[Span]],
        lookup_traces: Callable[[Sequence[str]], set[str]] = lambda ids: set(),
    ) -> None:
        self._insert = insert
        self._lookup_spans = lookup_spans
        self._lookup_traces = lookup_traces
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._spans: OrderedDict[str, list[_Piece]] = OrderedDict()
        self._held_spans = 0
        self._chunk_rows = 0  # rows of the chunks that held spans are in
        self._traces: OrderedDict[str, TraceRow] = OrderedDict()
        self._open = (Accumulator(MINUTE_NS), Accumulator(BLOCK_NS))
        self._dirty_since: float | None = None
        self._version = 0
        self._timer: threading.Timer | None = None

    def known_traces(self, batch: Batch) -> set[str]:
        """Which traces of a batch about to be inserted the store holds already."""
        ids = list(dict.fromkeys(batch.columns["trace_id"]))
        known: set[str] = set()
        for i in range(0, len(ids), _ID_CHUNK):
            known |= self._lookup_traces(ids[i : i + _ID_CHUNK])
        return known

    def written(self, table: str, batch: Batch, known: AbstractSet[str] = frozenset()) -> None:
        """Called after ``batch`` went into ``table`` (spans and traces; others are ignored); ``known``:
        the traces the store held before (``known_traces``), not counted again."""
        if table == "spans":
            ready = self._spans_written(batch)
        elif table == "traces":
            ready = self._traces_written(batch, known)
        else:
            return
        if ready:
            self._write(ready)

    def write(self, pairs: Sequence[Pair]) -> None:
        """Add complete traces, each with its spans, to the open minutes (as ``_write``)."""
        rows = [s for _, spans in pairs for s in spans]
        chunk = _Chunk(_row_columns(SpanRow, rows), len(rows))
        ready: list[_Ready] = []
        at = 0
        for trace, spans in pairs:
            ready.append((trace, [(chunk, at, at + len(spans))] if spans else []))
            at += len(spans)
        self._write(ready)

    def _write(self, ready: Sequence[_Ready]) -> None:
        """Add complete traces to the open minutes; written from here once the oldest addition has
        waited ``FLUSH_S`` (a failed write raises to the inserting caller and is tried again at the
        next), else by a timer when no insert comes."""
        with self._lock:
            summaries = _summarize_ready(ready)
            for acc in self._open:
                acc.add_summaries(summaries)
            now = time.monotonic()
            if self._dirty_since is None:
                self._dirty_since = now
            due = now - self._dirty_since >= self.FLUSH_S or len(self._open[0]) >= self.MAX_OPEN_ROWS
            if not due and self._timer is None:
                self._timer = threading.Timer(self.FLUSH_S, self._flush_idle)
                self._timer.daemon = True
                self._timer.start()
        if due:
            self.flush()

    def _flush_idle(self) -> None:
        try:
            self.flush()
        except HopscopeError as exc:  # still open: the next insert, read or close tries again
            log.warning("rollup rows not written yet: %s", exc)

    def flush(self, close_all: bool = False) -> None:
        """Write the running sums of the open minutes now, then close the old ones (all of them with
        ``close_all``)."""
        with self._flush_lock:
            with self._lock:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                if self._dirty_since is None:
                    if close_all:
                        self._open = (Accumulator(MINUTE_NS), Accumulator(BLOCK_NS))
                    return
                self._version = max(time.time_ns(), self._version + 1)
                parts = [acc.batches(self._version) for acc in self._open]
                self._dirty_since = None
            try:
                for edges, links in parts:
                    for table, rows in ((EdgeMinute.TABLE, edges), (LinkMinute.TABLE, links)):
                        if len(rows):
                            self._insert(table, rows)
            except BaseException:
                with self._lock:
                    self._dirty_since = self._dirty_since or 0.0  # due at once next time
                raise
            with self._lock:
                self._close_minutes(close_all)

    def _close_minutes(self, close_all: bool) -> None:
        """Forget the minutes (blocks) no trace is expected for any more; all of them with ``close_all``
        or past ``MAX_OPEN_ROWS``."""
        minutes, blocks = self._open
        newest = max(minutes.segments, default=0)
        if close_all or len(minutes) >= self.MAX_OPEN_ROWS:
            self._open = (Accumulator(MINUTE_NS), Accumulator(BLOCK_NS))
            return
        oldest_open = newest - self.OPEN_MINUTES * MINUTE_NS
        minutes.evict(oldest_open)
        blocks.evict(oldest_open // BLOCK_NS * BLOCK_NS)

    def discard(self) -> None:
        """Forget everything pending, writing nothing (the tables were dropped)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._open = (Accumulator(MINUTE_NS), Accumulator(BLOCK_NS))
            self._spans.clear()
            self._held_spans = 0
            self._chunk_rows = 0
            self._traces.clear()
            self._dirty_since = None

    def close(self) -> None:
        """Count the traces still waiting for spans from their own fields, and write everything."""
        with self._lock:
            alone: list[Pair] = [(t, []) for t in self._traces.values()]
            self._traces.clear()
            if alone:
                summaries = summarize_pairs(alone)
                for acc in self._open:
                    acc.add_summaries(summaries)
                self._dirty_since = self._dirty_since or time.monotonic()
        self.flush(close_all=True)

    def _spans_written(self, batch: Batch) -> list[_Ready]:
        chunk, ids, bounds = _chunk_pieces(_span_columns(batch))
        ready: list[_Ready] = []
        with self._lock:
            for k, trace_id in enumerate(ids):
                piece = (chunk, bounds[k], bounds[k + 1])
                trace = self._traces.pop(trace_id, None)
                if trace is not None:
                    ready.append((trace, [piece]))
                else:
                    self._spans.setdefault(trace_id, []).append(piece)
                    chunk.live += piece[2] - piece[1]
            if chunk.live:
                self._held_spans += chunk.live
                self._chunk_rows += chunk.size
            while self._held_spans > MAX_HELD_SPANS:  # spans whose trace never came (spans-only writers)
                _, dropped = self._spans.popitem(last=False)
                self._release(dropped)
            self._compact()
        return ready

    def _traces_written(self, batch: Batch, known: AbstractSet[str]) -> list[_Ready]:
        ready: list[_Ready] = []
        missing: list[TraceRow] = []
        with self._lock:
            for t in batch_rows(TraceRow, batch):
                pieces = self._spans.pop(t.trace_id, None)
                if pieces is not None:
                    self._release(pieces)
                if t.trace_id in known:
                    continue
                if pieces is None:
                    missing.append(t)
                else:
                    ready.append((t, pieces))
            self._compact()
        if missing:
            rows: list[SpanRow] = []
            ids = [t.trace_id for t in missing]
            for i in range(0, len(ids), _ID_CHUNK):
                rows.extend(record_row(SpanRow, s) for s in self._lookup_spans(ids[i : i + _ID_CHUNK]))
            chunk, found, bounds = _chunk_pieces(_row_columns(SpanRow, rows))
            stored = {trace_id: (chunk, bounds[k], bounds[k + 1]) for k, trace_id in enumerate(found)}
            with self._lock:
                for t in missing:
                    piece = stored.get(t.trace_id)
                    if piece is not None:
                        ready.append((t, [piece]))
                    else:
                        self._traces[t.trace_id] = t
                while len(self._traces) > MAX_HELD_TRACES:  # traces without spans: counted from their own fields
                    _, alone = self._traces.popitem(last=False)
                    ready.append((alone, []))
        return ready

    def _release(self, pieces: Sequence[_Piece]) -> None:
        """Spans no longer held (their trace came, or they were dropped)."""
        for chunk, start, stop in pieces:
            self._held_spans -= stop - start
            chunk.live -= stop - start
            if chunk.live == 0:
                self._chunk_rows -= chunk.size

    def _compact(self) -> None:
        """Copy the held spans into a chunk of their own once the chunks they are in hold many more
        rows than they do (the rest of a chunk's rows went with their traces)."""
        if self._chunk_rows <= 4 * self._held_spans + _COMPACT_ROWS:
            return
        owners = [(trace_id, piece) for trace_id, pieces in self._spans.items() for piece in pieces]
        columns, starts = _gather_pieces([piece for _, piece in owners])
        chunk = _Chunk(columns, self._held_spans)
        chunk.live = self._held_spans
        spans: OrderedDict[str, list[_Piece]] = OrderedDict((trace_id, []) for trace_id in self._spans)
        for (trace_id, (_, a, b)), start in zip(owners, starts.tolist(), strict=True):
            spans[trace_id].append((chunk, start, start + b - a))
        self._spans = spans
        self._chunk_rows = chunk.size if chunk.live else 0


# --- reading ---------------------------------------------------------------------------------------

def hist_sum_sql(prefix: str) -> str:
    """SQL adding the histograms ``<prefix>_keys``/``<prefix>_counts`` of a group: ``sumMap`` of the
    two arrays (a tuple of the keys and their counts; ClickHouse 18.16 and chDB alike)."""
    return f"sumMap({quote_column(f'{prefix}_keys')}, {quote_column(f'{prefix}_counts')})"


def text_histogram_columns(record_type: type[Record], types: Mapping[str, str]) -> list[str]:
    """The histogram columns a table of ``record_type`` still holds as text (``types``: the table's
    column name -> ClickHouse type): a store made before the histograms were arrays. Each converts
    in place (``ALTER TABLE .. MODIFY COLUMN``: its texts are in array syntax, so the server's cast
    reads them exactly)."""
    return [c.name for c in record_type.columns() if c.type.is_array and types.get(c.name) == "String"]


def quote_column(name: str) -> str:
    if not name.isidentifier():
        raise ValueError(f"not a column name: {name!r}")
    return f"`{name}`"


def _summed_parts(summed: Any) -> tuple[Sequence[int], Sequence[int]]:
    """The (keys, counts) of a ``hist_sum_sql`` value: a tuple from the server, a struct ({"1": keys,
    "2": counts}) from chDB's Arrow answer."""
    return (summed["1"], summed["2"]) if isinstance(summed, dict) else summed


def hist_parts(summed: Any) -> tuple[list[int], list[int]]:
    """The (keys, counts) of a ``hist_sum_sql`` value, as lists."""
    keys, counts = _summed_parts(summed)
    return list(keys), list(counts)


def hist_counts(summed: Any) -> Counter[int]:
    """The histogram of a ``hist_sum_sql`` value."""
    keys, counts = hist_parts(summed)
    return Counter(dict(zip(keys, counts, strict=True)))


#: Per rollup table: the key columns its rows are grouped by when read, and the aggregates with the
#: kind of their values (``RollupRows``).
_READ: Mapping[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    EdgeMinute.TABLE: (
        ("client_h", "first_h", "final_h", "l7_proto"),
        (("sum(requests)", "int"), ("sum(errors)", "int"), (hist_sum_sql("duration"), "hist"),
         (hist_sum_sql("server"), "hist"), ("min(minute_ns)", "int"), ("max(minute_ns)", "int")),
    ),
    LinkMinute.TABLE: (
        ("prev_point", "point", "link_reason"),
        (("any(host)", "text"), ("any(hop_kind)", "text"), ("any(side)", "text"), ("sum(traces)", "int"),
         ("sum(lost_pkts)", "int"), ("sum(loss_traces)", "int"), ("min(min_confidence)", "float"),
         (hist_sum_sql("req"), "hist"), (hist_sum_sql("resp"), "hist"), ("min(minute_ns)", "int"),
         ("max(minute_ns)", "int")),
    ),
}  # fmt: skip


def minutes_sql(table: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(key columns, aggregate expressions) a read of ``table`` groups by and computes; the last two
    are the first and the last minute of the group's rows."""
    keys, aggregates = _READ[table]
    return keys, tuple(sql for sql, _ in aggregates)


def minutes_kinds(table: str) -> tuple[str, ...]:
    """The kind of each column a read of ``table`` returns (``RollupRows``)."""
    keys, aggregates = _READ[table]
    return ("text",) * len(keys) + tuple(kind for _, kind in aggregates)


class RollupRows:
    """The answer of a rollup read (``Store.rollup_minutes``), a row per key, as columns in the order
    of ``minutes_sql``: text as lists of str, counts as int64 arrays, floats as arrays, histograms as
    ``Hists`` (flat arrays: the graphs add them with numpy, no Python object per entry)."""

    __slots__ = ("columns", "length")

    def __init__(self, columns: Sequence[Any], length: int) -> None:
        self.columns, self.length = list(columns), length

    def __len__(self) -> int:
        return self.length

    @classmethod
    def from_columns(cls, raw: Sequence[Any] | None, kinds: Sequence[str]) -> RollupRows:
        """From a select's columns: Python sequences (the server's rows transposed) or Arrow arrays
        (chDB's answer, read without a Python object per value); None: no rows."""
        if raw is None:
            raw = [[] for _ in kinds]
        columns: list[Any] = []
        for values, kind in zip(raw, kinds, strict=True):
            arrow = hasattr(values, "to_numpy")
            if kind == "hist":
                columns.append(Hists.from_arrow(values) if arrow else Hists.from_pairs(values))
            elif kind == "text":
                columns.append(values.to_pylist() if arrow else list(values))
            else:
                dtype = np.int64 if kind == "int" else None
                array = values.to_numpy() if arrow else np.asarray(values, dtype=dtype or np.float64)
                columns.append(array.astype(dtype, copy=False) if dtype else array)
        return cls(columns, len(columns[0]) if columns else 0)

    def rows(self) -> list[tuple[Any, ...]]:
        """The rows as tuples (histograms as (keys, counts) lists): for tests and small answers."""
        out: list[list[Any]] = []
        for column in self.columns:
            if isinstance(column, Hists):
                b = column.bounds.tolist()
                keys, counts = column.keys.tolist(), column.counts.tolist()
                out.append([(keys[x:y], counts[x:y]) for x, y in pairwise(b)])
            else:
                out.append(column.tolist() if isinstance(column, np.ndarray) else column)
        return list(zip(*out, strict=True))


def rollup_range_sql(
    spec: Any, resolution_s: int, blocks: tuple[int, int] | None, bind: Callable[[Any, object], str]
) -> str:
    """The resolution condition of a rollup read: the rows of ``resolution_s``, or with ``blocks``
    (first, last) the ``BLOCK_S`` rows of [first, last) and the minute rows outside it. The caller
    puts it in ``PREWHERE`` beside the time range: the minute and the resolution are key columns, so a
    key's rows pass or fail together (``FINAL`` stays right), and the histogram texts are read only
    in the granules with rows of the window (the ten-minute blocks share their first minute's
    granules with that minute's rows; reading every column there was most of the cost)."""
    resolution = quote_column("resolution_s")
    if blocks is None:
        return f"{resolution} = {bind(spec.column('resolution_s'), resolution_s)}"
    minute, col = quote_column("minute_ns"), spec.column("minute_ns")
    first, last = bind(col, blocks[0]), bind(col, blocks[1])
    block, one = bind(spec.column("resolution_s"), BLOCK_S), bind(spec.column("resolution_s"), 60)
    return (
        f"(({resolution} = {block} AND {minute} >= {first} AND {minute} < {last})"
        f" OR ({resolution} = {one} AND ({minute} < {first} OR {minute} >= {last})))"
    )


def snap_window(start_ns: int, end_ns: int) -> tuple[int, int]:
    """The whole minutes covering [start_ns, end_ns): start rounded down, end rounded up."""
    start = start_ns // MINUTE_NS * MINUTE_NS
    end = end_ns if end_ns >= 2**63 - MINUTE_NS else -(-end_ns // MINUTE_NS) * MINUTE_NS
    return start, end


def backfill(store: Any, chunk: int = 5_000) -> int:
    """Count the traces a store held before it had rollups into them (``hopscope store init`` on an
    older store): only when both rollup tables are empty and there are traces, so nothing is counted
    twice. Reads the traces in start order, ``chunk`` at a time with their spans; returns how many."""
    if store.count(EdgeMinute.TABLE) or store.count(LinkMinute.TABLE) or not store.count("traces"):
        return 0
    writer: RollupWriter = store.rollups
    done = 0
    start: int | None = 0
    while start is not None:
        traces = store.query_traces(start, 2**63 - 1, None, chunk)
        if len(traces) < chunk:
            start = None  # the last chunk
        else:  # the traces of the chunk's last instant come with the next one
            last = traces[-1].start_ns
            head = [t for t in traces if t.start_ns < last]
            traces, start = (head, last) if head else (traces, last + 1)
        spans: dict[str, list[SpanRow]] = {}
        ids = [t.trace_id for t in traces]
        for i in range(0, len(ids), _ID_CHUNK):
            for s in store._stored_spans(ids[i : i + _ID_CHUNK]):
                spans.setdefault(s.trace_id, []).append(record_row(SpanRow, s))
        writer.write([(record_row(TraceRow, t), spans.get(t.trace_id, [])) for t in traces])
        done += len(traces)
    writer.flush(close_all=True)
    return done
