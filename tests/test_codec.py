"""The batch codec: round trips of every field, and clear refusals of bad messages."""

from __future__ import annotations

import struct

import pytest

from hopscope.codec import MAGIC, decode_batch, encode_batch
from hopscope.errors import DecodeError
from hopscope.records import RECORD_TYPES, SCHEMA_VERSION, Batch, FlowRecord, Record
from tests.test_records import sample


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("record_type", RECORD_TYPES)
def test_round_trip_every_field(record_type: type[Record], compress: bool) -> None:
    records = [sample(record_type, i) for i in range(50)] + [record_type()]
    message = encode_batch(Batch.from_records(record_type, records), compress=compress)
    decoded = decode_batch(message)
    assert decoded.record_type is record_type
    assert list(decoded.records()) == records


def test_empty_batch() -> None:
    decoded = decode_batch(encode_batch(Batch.from_records(FlowRecord, [])))
    assert len(decoded) == 0


def test_header_carries_version_and_kind() -> None:
    message = encode_batch(Batch.from_records(FlowRecord, [FlowRecord()]))
    magic, version, kind = struct.unpack_from("<4sHB", message)
    assert (magic, version, kind) == (MAGIC, SCHEMA_VERSION, FlowRecord.KIND)


def _with_header(message: bytes, fmt: str, offset: int, value: int) -> bytes:
    out = bytearray(message)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


GOOD = encode_batch(Batch.from_records(FlowRecord, [sample(FlowRecord, 1), sample(FlowRecord, 2)]))


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"", "truncated"),
        (b"XXXX" + GOOD[4:], "not a hopscope record batch"),
        (_with_header(GOOD, "<H", 4, SCHEMA_VERSION + 1), f"schema version {SCHEMA_VERSION + 1}"),
        (_with_header(GOOD, "<B", 6, 99), "unknown record kind 99"),
        (GOOD[:-3], "truncated|lengths sum"),
        (GOOD + b"\0", "trailing bytes"),
        (_with_header(GOOD, "<B", 7, 1), "does not decompress"),
        (_with_header(GOOD, "<I", 8, 3), "not 3 values|truncated|lengths sum"),
    ],
)
def test_bad_messages_raise_decode_error(message: bytes, error: str) -> None:
    with pytest.raises(DecodeError, match=error):
        decode_batch(message)


def test_unknown_column_is_skipped_and_missing_column_defaulted() -> None:
    # Rename one column on the wire: the reader skips the unknown name and defaults the known one.
    renamed = GOOD.replace(b"\x09syn_ip_id", b"\x09syn_zz_id", 1)
    assert renamed != GOOD
    (first, _) = decode_batch(renamed).records()
    assert isinstance(first, FlowRecord)
    assert first.syn_ip_id == 0
    assert first.syn_seq == sample(FlowRecord, 1).syn_seq  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "values",
    [
        ["web-0"] * 5,  # one value throughout: decoded once
        [""] * 4,
        ["ab", "", "abab"],  # the bytes repeat "ab", the values differ
        ["a", "bb", "", "é", "日本", "x"],  # values joined with NUL and split
        ["a\x00b", "c", "\x00"],  # a NUL inside a value: sliced one by one
        ["\udcff", "ok", "\udcfe\udcff"],  # bytes that are not UTF-8 (surrogate escapes) round-trip
    ],
)
def test_text_columns_round_trip_whatever_their_values(values: list[str]) -> None:
    batch = Batch(FlowRecord, {"point": values, "history": list(reversed(values))}, len(values))
    decoded = decode_batch(encode_batch(batch))
    assert decoded.columns["point"] == values
    assert decoded.columns["history"] == list(reversed(values))
    assert decoded.columns["iface"] == [""] * len(values)
