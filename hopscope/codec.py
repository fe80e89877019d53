"""Compact binary encoding of a batch of records: one Kafka message carries many records.

kafka-python moves some tens of thousands of messages per second, so records travel in batches,
as columns. A message is::

    header   magic b"HSRB" | schema_version u16 | kind u8 | flags u8 | count u32 | ncols u16
    body     ncols x ( name_len u8 | name | type u8 | payload_len u32 | payload )
             (the body is zlib-compressed when flags & FLAG_ZLIB)

A number column's payload is its little-endian array; a text column's payload is ``count`` u32 byte
lengths followed by the UTF-8 bytes, concatenated. Columns are named, so a reader fills columns the
writer did not know with defaults and skips columns it does not know itself: adding a field needs no
new schema version. A message whose magic, version, kind or layout is wrong raises ``DecodeError``.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

import numpy as np

from hopscope.errors import DecodeError
from hopscope.records import RECORD_BY_KIND, SCHEMA_VERSION, Batch, ColumnData, ColumnType

MAGIC: Final = b"HSRB"
FLAG_ZLIB: Final = 0x01

_HEADER = struct.Struct("<4sHBBIH")
_COLUMN = struct.Struct("<BI")
_TYPE_CODES: Final[dict[ColumnType, int]] = {t: i for i, t in enumerate(ColumnType)}
_CODE_TYPES: Final[dict[int, ColumnType]] = {i: t for t, i in _TYPE_CODES.items()}


def encode_batch(batch: Batch, *, compress: bool = False) -> bytes:
    """Encode ``batch`` as one message."""
    count = len(batch)
    cols = batch.record_type.columns()
    parts: list[bytes] = []
    for col in cols:
        name = col.name.encode()
        payload = _encode_column(col.type, batch.columns[col.name], count)
        parts += [bytes([len(name)]), name, _COLUMN.pack(_TYPE_CODES[col.type], len(payload)), payload]
    body = b"".join(parts)
    flags = 0
    if compress:
        body = zlib.compress(body, 1)
        flags |= FLAG_ZLIB
    header = _HEADER.pack(MAGIC, SCHEMA_VERSION, batch.record_type.KIND, flags, count, len(cols))
    return header + body


def _encode_column(ctype: ColumnType, data: ColumnData, count: int) -> bytes:
    if ctype.is_array:
        raise ValueError(f"{ctype.clickhouse} columns are the store's own, not carried on the wire")
    if not ctype.is_text:
        return np.ascontiguousarray(data, dtype=ctype.dtype).tobytes()
    joined = "".join(data)
    blob = joined.encode("utf-8", "surrogateescape")
    if len(blob) == len(joined):  # all ASCII (the common case): byte lengths are str lengths
        lengths = np.fromiter(map(len, data), dtype="<u4", count=count)
        return lengths.tobytes() + blob
    encoded = [s.encode("utf-8", "surrogateescape") for s in data]
    lengths = np.fromiter(map(len, encoded), dtype="<u4", count=count)
    return lengths.tobytes() + b"".join(encoded)


def decode_batch(message: bytes) -> Batch:
    """Decode one message; raises ``DecodeError`` naming what is wrong."""
    if len(message) < _HEADER.size:
        raise DecodeError(f"record batch truncated: {len(message)} bytes, header needs {_HEADER.size}")
    magic, version, kind, flags, count, ncols = _HEADER.unpack_from(message)
    if magic != MAGIC:
        raise DecodeError(f"not a hopscope record batch (magic {magic!r})")
    if version != SCHEMA_VERSION:
        raise DecodeError(f"record batch has schema version {version}; this hopscope reads {SCHEMA_VERSION}")
    record_type = RECORD_BY_KIND.get(kind)
    if record_type is None:
        raise DecodeError(f"record batch has unknown record kind {kind}")
    body = memoryview(message)[_HEADER.size :]
    if flags & FLAG_ZLIB:
        try:
            body = memoryview(zlib.decompress(body))
        except zlib.error as exc:
            raise DecodeError(f"record batch body does not decompress: {exc}") from exc
    known = {c.name: c.type for c in record_type.columns()}
    columns: dict[str, ColumnData] = {}
    pos = 0
    for _ in range(ncols):
        name, ctype, payload, pos = _read_column(body, pos)
        if known.get(name) is None:
            continue  # a field this reader does not know: skipped by design
        if known[name] is not ctype:
            raise DecodeError(f"column {name} is {ctype.clickhouse}, expected {known[name].clickhouse}")
        columns[name] = _decode_column(ctype, payload, count, name)
    if pos != len(body):
        raise DecodeError(f"record batch has {len(body) - pos} trailing bytes")
    for col in record_type.columns():  # a field the writer did not know: its default
        if col.name not in columns:
            columns[col.name] = [""] * count if col.type.is_text else np.zeros(count, col.type.dtype)
    return Batch.wrap(record_type, columns, count)


def _read_column(body: memoryview, pos: int) -> tuple[str, ColumnType, memoryview, int]:
    try:
        name_len = body[pos]
        name = bytes(body[pos + 1 : pos + 1 + name_len]).decode()
        pos += 1 + name_len
        code, length = _COLUMN.unpack_from(body, pos)
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise DecodeError(f"record batch column header truncated at byte {pos}") from exc
    pos += _COLUMN.size
    ctype = _CODE_TYPES.get(code)
    if ctype is None:
        raise DecodeError(f"column {name} has unknown type code {code}")
    if pos + length > len(body):
        raise DecodeError(f"column {name} truncated: needs {length} bytes at {pos}, body has {len(body)}")
    return name, ctype, body[pos : pos + length], pos + length


def _decode_column(ctype: ColumnType, payload: memoryview, count: int, name: str) -> ColumnData:
    if not ctype.is_text:
        arr = np.frombuffer(payload, dtype=ctype.dtype)
        if len(arr) != count or arr.nbytes != len(payload):
            raise DecodeError(f"column {name} holds {len(payload)} bytes, not {count} values")
        return arr
    if len(payload) < 4 * count:
        raise DecodeError(f"text column {name} truncated")
    lengths = np.frombuffer(payload[: 4 * count], dtype="<u4")
    ends = np.cumsum(lengths, dtype=np.int64) + 4 * count
    if count and ends[-1] != len(payload):
        raise DecodeError(f"text column {name}: lengths sum to {int(ends[-1])}, payload is {len(payload)}")
    raw = bytes(payload[4 * count :])
    if not count:
        return []
    first = int(lengths[0])
    # one value throughout (a probe's point, host, ...): decoded once
    if len(raw) == first * count and (lengths == first).all() and raw[:first] * count == raw:
        return [raw[:first].decode("utf-8", "surrogateescape")] * count
    if 0 not in raw:  # a NUL after each value, decoded at once and split: no slice per value in Python
        ends -= 4 * count
        joined = np.insert(np.frombuffer(raw, np.uint8), ends, 0).tobytes()
        values = joined.decode("utf-8", "surrogateescape").split("\x00")
        values.pop()
        return values
    ends -= 4 * count
    starts = (ends - lengths).tolist()
    text = raw.decode("utf-8", "surrogateescape")
    source: str | bytes = text if len(text) == len(raw) else raw  # ASCII: slice the str at once
    if isinstance(source, str):
        return [source[s:e] for s, e in zip(starts, ends.tolist(), strict=True)]
    return [raw[s:e].decode("utf-8", "surrogateescape") for s, e in zip(starts, ends.tolist(), strict=True)]
