"""Flow and request records as text: JSON lines and fixed-width tables.

Flow keys follow Zeek's conn.log where Zeek has the field (``ts``, ``uid``, ``orig_h``, ``orig_p``,
``resp_h``, ``resp_p``, ``proto``, ``service``, ``duration``, ``orig_pkts`` ... ``conn_state``,
``history``, ``community_id``); every other ``FlowRecord`` field follows under its own name. Flow JSON lines come
from the ``_jsonl`` kernel (probes/csrc/jsonl.c) when it is built, else from ``jsonl_lines``, its
reference twin; both give the same bytes. Request records print as ``dataclasses.asdict`` JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

import numpy as np
import numpy.typing as npt

from hopscope.probes.kernels import load as load_kernel
from hopscope.records import Batch, ColumnType, FlowRecord, RequestRecord, _as_list

if TYPE_CHECKING:
    from hopscope.probes.meter_native import NativeMeter, RawFlows

PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}
FLOW_TABLE_COLUMNS = (
    ("point", 14), ("orig_h", 15), ("orig_p", 6), ("resp_h", 15), ("resp_p", 6), ("proto", 5),
    ("service", 8), ("orig_pkts", 9), ("resp_pkts", 9), ("orig_bytes", 10), ("resp_bytes", 10), ("conn_state", 6),
    ("history", 12), ("close_type", 15), ("rtt_server_us", 8), ("rtt_client_us", 8),
)  # fmt: skip
REQUEST_TABLE_COLUMNS = (
    ("l7_proto", 6), ("orig_h", 15), ("orig_p", 6), ("resp_h", 15), ("resp_p", 6), ("method", 7),
    ("http_host", 16), ("path", 28), ("status", 6), ("dns_qname", 28), ("dns_rcode", 5), ("latency_ms", 10),
)  # fmt: skip
#: Records per write of ``write_flow_jsonl``: bounds the output buffer for big end-of-capture flushes.
JSONL_CHUNK_RECORDS = 4096

ZEEK_KEYS: tuple[str, ...] = (
    "ts", "uid", "orig_h", "orig_p", "resp_h", "resp_p", "proto", "service", "duration", "orig_pkts",
    "resp_pkts", "orig_bytes", "resp_bytes", "orig_ip_bytes", "resp_ip_bytes", "conn_state", "history", "community_id",
)  # fmt: skip
#: Text columns whose values need no JSON escaping (addresses, codes, base64, service names) when
#: hopscope made them: quoted by the line template, after one check over the whole column (``_plain``).
_SAFE_TEXT = frozenset(
    ("orig_h", "resp_h", "conn_state", "history", "community_id", "close_type", "proto", "service")
)


def row_keys() -> list[str]:
    """Output keys in order: Zeek's conn.log names first, then the other FlowRecord fields."""
    return [*ZEEK_KEYS, *(c.name for c in FlowRecord.columns() if c.name not in ZEEK_KEYS)]


def _plain(values: list[str]) -> bool:
    """True when every value is printable ASCII without ``"`` or ``\\``: JSON needs no escape in it."""
    joined = "".join(values)
    return joined.isascii() and joined.isprintable() and '"' not in joined and "\\" not in joined


def _text(name: str, values: list[str]) -> list[str]:
    """JSON string literals of a text column; for safe columns (quoted by the line template) the
    literals without their quotes, and the values themselves when they need no escape (the usual case)."""
    import json  # imported where used: the kernel's JSON lines path of `hopscope flows` needs none

    if name in _SAFE_TEXT:
        if _plain(values):
            return values
        cache = {v: json.dumps(v)[1:-1] for v in set(values)}
    else:
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


class JsonLines:
    """JSON lines of FlowRecord batches as bytes: the ``_jsonl`` kernel (probes/csrc/jsonl.c) when it
    is built and on, else ``jsonl_lines``, its reference twin (byte-identical output).

    As in ``jsonl_lines``, a column equal in every record of a batch is formatted once (by the kernel)
    and joined to the key text around it; the kernel writes into one reused output buffer.
    """

    def __init__(self) -> None:
        self.kernel = load_kernel("_jsonl")
        if any(c.type is ColumnType.F32 for c in FlowRecord.columns()):  # "%d" of a float: not in C
            self.kernel = None
        self.keys = row_keys()
        self.text_keys = {c.name for c in FlowRecord.columns() if c.type.is_text}
        self.prefixes = [(("{" if i == 0 else ",") + f'"{k}":').encode() for i, k in enumerate(self.keys)]
        self.buffer = bytearray()
        names = (PROTO_NAMES.get(v, str(v)) for v in range(256))  # plain: quoted as the template does
        self.proto_table = tuple(f'"{name}"'.encode() for name in names)

    def format(self, batch: Batch) -> bytes:
        """All records of ``batch``, one JSON object per line (``row_keys`` order)."""
        if self.kernel is None:
            return "".join(jsonl_lines(batch)).encode()
        with self._view(batch) as view:
            return bytes(view)

    def write(self, batch: Batch, out: BinaryIO) -> None:
        """``format(batch)`` written to ``out`` without a copy."""
        if self.kernel is None:
            out.write(self.format(batch))
            return
        with self._view(batch) as view:
            out.write(view)

    def _view(self, batch: Batch) -> memoryview:
        return self._format(len(batch), self._columns(batch.columns))

    def _format(self, n: int, columns: list[tuple[int, Any]]) -> memoryview:
        """``n`` lines of the columns ``_columns`` gave, in the reused buffer."""
        assert self.kernel is not None
        size = self.kernel.format_rows(n, self._fields(columns), self.buffer) if n else 0
        return memoryview(self.buffer)[:size]

    def _fields(self, columns: list[tuple[int, Any]]) -> list[tuple[bytes, int, Any]]:
        """(prefix, kind, column) for the kernel; constant columns folded into the next prefix."""
        k = self.kernel
        assert k is not None
        fields: list[tuple[bytes, int, Any]] = []
        literal = b""
        for prefix, (kind, data) in zip(self.prefixes, columns, strict=True):
            if kind != k.SPANS and _constant(data):
                first = data[:1] if kind != k.TABLE else (data[0][:1], data[1])
                literal += prefix + self._render_one(kind, first)
            else:
                fields.append((literal + prefix, kind, data))
                literal = b""
        fields.append((literal, k.LITERAL, None))
        return fields

    def _columns(self, cols: Mapping[str, Any], texts: Mapping[str, tuple[int, Any]] | None = None
                 ) -> list[tuple[int, Any]]:  # fmt: skip
        """(kind, column) per output key from a batch's columns; ``texts``: the text columns' (kind,
        column) when they are not lists of str."""
        k = self.kernel
        assert k is not None
        start = np.asarray(cols["start_ns"], np.int64)
        derived: dict[str, tuple[int, Any]] = {
            "ts": (k.FLOAT6, start / 1e9),
            "uid": (k.HEX16, _native(cols["flow_id"])),
            "proto": (k.TABLE, (_native(cols["proto"]), self.proto_table)),
            "duration": (k.FLOAT6, (np.asarray(cols["end_ns"], np.int64) - start) / 1e9),
        }
        out = []
        for key in self.keys:
            if key in derived:
                out.append(derived[key])
            elif key in self.text_keys:
                out.append((k.TEXT, cols[key]) if texts is None else texts[key])
            else:
                out.append((k.INT, _native(cols[key])))
        return out

    def _render_one(self, kind: int, column: Any) -> bytes:
        """One value as the kernel writes it (one row, empty prefix, without the closing ``}\\n``)."""
        assert self.kernel is not None
        scratch = bytearray()
        size = self.kernel.format_rows(1, [(b"", kind, column)], scratch)
        return bytes(scratch[: size - 2])


class RawJsonLines(JsonLines):
    """``JsonLines`` of the compiled meter's records as it emitted them (``meter_native.RawFlows``):
    the same bytes as for their FlowRecord batch, without a Python object per record. Integer columns
    come from the record matrix (``meter_common.record_numbers``: the batch's dtypes), the five text
    values are spans of the meter's text buffer (kernel kind SPANS), point, interface, tunnel, host,
    hop kind, states and services are indices into tables of their JSON text (kind TABLE). Records
    that do not fit that form (a UDP tunnel's outer flows, whose service names the tunnel; more than
    256 names or service combinations) are written through their batch instead.
    """

    def __init__(self, meter: NativeMeter) -> None:
        super().__init__()
        self.meter = meter

    def write_raw(self, raw: RawFlows, codes: npt.NDArray[np.uint64] | None, out: BinaryIO,
                  interim: bool = False) -> None:  # fmt: skip
        """The records of ``raw`` (only the final ones unless ``interim``) as JSON lines on ``out``;
        ``codes``: their service codes (``ServiceDetector.codes``), None for none."""
        from hopscope.probes.meter_common import CLOSE_TYPES, CONN_STATES, RECORD_FIELDS, TEXT_FIELDS, record_numbers
        from hopscope.probes.service import service_names, set_services

        k = self.kernel
        assert k is not None
        if raw.n == 0:
            return
        names = self.meter.names
        if codes is None:
            services, service = [""], np.zeros(raw.n, np.uint8)
        else:
            distinct, inverse = np.unique(codes, return_inverse=True)
            services, service = service_names(distinct), np.asarray(inverse).reshape(-1).astype(np.uint8)
        if raw.column("encap").any() or max(len(services), len(names.point_names), len(names.tunnel_names)) > 256:
            batch = self.meter.batch(raw)
            if codes is not None:
                set_services(batch, codes)
            batch = batch if interim else final_only(batch)
            for start in range(0, len(batch), JSONL_CHUNK_RECORDS):
                self.write(batch.slice(start, start + JSONL_CHUNK_RECORDS), out)
            return
        width = len(TEXT_FIELDS)
        nuls = np.flatnonzero(np.frombuffer(raw.text, np.uint8) == 0)  # each value ends at one
        if len(nuls) != width * raw.n:
            raise RuntimeError(f"the meter's text buffer holds {len(nuls)} values for {raw.n} records")
        after = np.empty_like(nuls)
        after[0], after[1:] = 0, nuls[:-1] + 1
        starts, ends, words = after.reshape(raw.n, width), nuls.reshape(raw.n, width), raw.words
        if not interim:
            final = raw.column("final") != 0
            if not final.all():
                keep = np.flatnonzero(final)
                words, starts, ends, service = words[keep], starts[keep], ends[keep], service[keep]
        tables = {
            "point": self._table(names.point_names), "iface": self._table(names.point_ifaces),
            "tunnel": self._table(names.tunnel_names), "host": self._table([self.meter.host]),
            "hop_kind": self._table([self.meter.hop_kind]), "conn_state": self._table(CONN_STATES),
            "close_type": self._table(CLOSE_TYPES), "service": self._table(services),
        }  # fmt: skip
        for first in range(0, len(words), JSONL_CHUNK_RECORDS):
            rows = slice(first, first + JSONL_CHUNK_RECORDS)
            w = words[rows]
            ints = {name: w[:, j] for j, name in enumerate(RECORD_FIELDS)}
            index = {
                "point": ints["point"], "iface": ints["point"], "tunnel": ints["tunnel"], "host": None,
                "hop_kind": None, "conn_state": ints["conn_state"], "close_type": ints["close_type"],
                "service": service[rows],
            }  # fmt: skip
            texts: dict[str, tuple[int, Any]] = {
                name: (k.TABLE, (np.zeros(len(w), np.uint8) if at is None else at.astype(np.uint8), tables[name]))
                for name, at in index.items()
            }
            for j, name in enumerate(TEXT_FIELDS):
                texts[name] = (k.SPANS, (raw.text, np.ascontiguousarray(starts[rows, j]),
                                         np.ascontiguousarray(ends[rows, j])))  # fmt: skip
            with self._format(len(w), self._columns(record_numbers(ints), texts)) as view:
                out.write(view)

    def _table(self, values: Sequence[str]) -> tuple[bytes, ...]:
        """The JSON text of each of at most 256 values, padded to 256 entries (a TABLE column's table)."""
        assert self.kernel is not None
        rendered = [self._render_one(self.kernel.TEXT, [v]) for v in values]
        return (*rendered, *([b""] * (256 - len(rendered))))


def _constant(data: Any) -> bool:
    """True when every value of a column (a TABLE column: its index array) equals the first."""
    if isinstance(data, tuple):
        data = data[0]
    if isinstance(data, list):
        return data.count(data[0]) == len(data)
    return bool((data == data[0]).all())


def _native(data: Any) -> Any:
    """A numeric column as a C-contiguous array in native byte order (what the kernel reads)."""
    arr = np.ascontiguousarray(data)
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def conn_row(batch: Batch, i: int) -> dict[str, Any]:
    """Record ``i`` of a FlowRecord batch as a conn.log-style dict (for the table and for tests)."""
    import json

    return dict(json.loads(jsonl_lines(batch.slice(i, i + 1))[0]))


def final_only(batch: Batch) -> Batch:
    """The final records (``final=1``) of a FlowRecord batch; the batch itself when all are final."""
    final = np.flatnonzero(batch.columns["final"])
    if len(final) == len(batch):  # take() copies the text columns element by element
        return batch
    return batch.take(final)


def write_flow_jsonl(batches: Iterable[Batch], out: BinaryIO) -> None:
    """FlowRecord batches as JSON lines (``row_keys`` order) on a binary stream."""
    lines = JsonLines()
    for batch in batches:
        for start in range(0, len(batch), JSONL_CHUNK_RECORDS):
            lines.write(batch.slice(start, start + JSONL_CHUNK_RECORDS), out)
    out.flush()


def write_flow_table(batches: Iterable[Batch], out: TextIO) -> None:
    """FlowRecord batches as a fixed-width table (``FLOW_TABLE_COLUMNS``), one header line first."""
    import json

    rows: list[dict[str, Any]] = []
    for batch in batches:
        rows.extend(json.loads(line) for line in jsonl_lines(batch))
    _write_table(FLOW_TABLE_COLUMNS, rows, out, clip=False)


def write_request_jsonl(records: Iterable[RequestRecord], out: TextIO) -> None:
    """Request records as JSON lines, keys in ``RequestRecord`` field order."""
    import json

    out.writelines(json.dumps(asdict(r)) + "\n" for r in records)


def write_request_table(records: Iterable[RequestRecord], out: TextIO) -> None:
    """Request records as a fixed-width table (``REQUEST_TABLE_COLUMNS``); ``latency_ms`` is first
    request byte to last response byte, ``nan`` without a response."""
    rows = []
    for r in records:
        latency = (r.resp_last_ns - r.req_first_ns) / 1e6 if r.resp_last_ns else float("nan")
        rows.append({**asdict(r), "latency_ms": f"{latency:.3f}"})
    _write_table(REQUEST_TABLE_COLUMNS, rows, out, clip=True)


def _write_table(
    columns: tuple[tuple[str, int], ...], rows: Iterable[dict[str, Any]], out: TextIO, clip: bool
) -> None:
    """A header of column names cut to their widths, then one line per row; ``clip`` cuts values too
    (flow addresses are never cut: an IPv6 address outgrows its column)."""
    out.write(" ".join(name.ljust(width)[:width] for name, width in columns) + "\n")
    for row in rows:
        cells = (str(row[name]).ljust(width) for name, width in columns)
        out.write(" ".join(cell[:width] if clip else cell for cell, (_, width) in zip(cells, columns, strict=True))
                  + "\n")
