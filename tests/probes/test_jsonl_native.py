"""The ``_jsonl`` kernel (probes/csrc/jsonl.c) against its reference twin ``jsonl_lines``: the same
bytes for batches of the lab captures, crafted captures and hypothesis-generated batches (extreme
integers, hostile text in every text column); every line is valid JSON that gives the values back.
"""

from __future__ import annotations

import json
import math
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hopscope.cli import main
from hopscope.probes.analyze import analyze_capture
from hopscope.probes.output import JsonLines, jsonl_lines, row_keys
from hopscope.records import Batch, FlowRecord
from tests.probes.crafting import with_ip_checksum

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "samples" / "lab").glob("*.pcap"))
HOSTILE = ['"', "\\", "\x00", "\x1f", "\x7f", "\x80", "\u2028", "\ud800", "\udfff", "\U0001f600", "%s", "%%", "é"]
TEXT = st.text(st.characters(blacklist_categories=()), max_size=6) | st.sampled_from(HOSTILE)


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch) -> JsonLines:
    monkeypatch.setenv("HOPSCOPE_NATIVE", "1")
    lines = JsonLines()
    if lines.kernel is None:
        pytest.skip("the _jsonl kernel is not built (python setup.py build_ext --inplace)")
    return lines


def reference(batch: Batch) -> bytes:
    return "".join(jsonl_lines(batch)).encode()


def assert_round_trip(out: bytes, batch: Batch) -> None:
    """Every line is JSON whose values are the batch's (text exactly, numbers as written)."""
    rows = [json.loads(line) for line in out.decode("ascii").splitlines()]
    assert len(rows) == len(batch)
    for i, row in enumerate(rows):
        assert list(row) == row_keys()
        for col in FlowRecord.columns():
            if col.name in ("proto", "flow_id") or col.name not in row:
                continue
            assert row[col.name] == batch.columns[col.name][i], col.name
        assert row["uid"] == f"{int(batch.columns['flow_id'][i]):016x}"
        assert row["ts"] == round(float(np.int64(batch.columns["start_ns"][i].astype(np.int64)) / 1e9), 6)


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_lab_captures_byte_identical(native: JsonLines, path: Path) -> None:
    flows = analyze_capture(path).flows
    assert len(flows) > 0
    out = native.format(flows)
    assert out == reference(flows)
    assert_round_trip(out, flows)
    for start in range(0, len(flows), 7):  # small batches: other columns become constant
        part = flows.slice(start, start + 7)
        assert native.format(part) == reference(part)


def flow_batch(columns: dict[str, Any], n: int) -> Batch:
    return Batch(FlowRecord, columns, n)


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    """FlowRecord batches: each column random or constant; integers often at their type's limits."""
    n = draw(st.integers(1, 12))
    columns: dict[str, Any] = {}
    for col in FlowRecord.columns():
        if col.type.is_text:
            values = st.sampled_from(["10.0.0.1", "SF", "ShADadFf", "1:abc+/="]) | TEXT
        else:
            info = np.iinfo(np.dtype(col.type.dtype))
            values = st.sampled_from([0, 1, int(info.max), int(info.min)]) | st.integers(int(info.min), int(info.max))
        constant = draw(st.booleans())
        column = [draw(values)] * n if constant else draw(st.lists(values, min_size=n, max_size=n))
        columns[col.name] = column if col.type.is_text else np.array(column, dtype=col.type.dtype)
    return flow_batch(columns, n)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=batches())
def test_generated_batches_byte_identical_and_valid_json(native: JsonLines, batch: Batch) -> None:
    out = native.format(batch)
    assert out == reference(batch)
    assert_round_trip(out, batch)


@pytest.mark.parametrize("name", ["orig_h", "resp_h", "conn_state", "history", "community_id", "close_type", "service"])
@pytest.mark.parametrize("value", ['a"b', "a\\b", "\n", "\x00", "\x7f", "é", "\U0001f600", "\ud800"])
def test_hostile_text_in_columns_the_template_quotes(native: JsonLines, name: str, value: str) -> None:
    """Columns the meter fills with addresses and codes stay valid JSON whatever they hold."""
    batch = flow_batch({name: [value, "x"], "flow_id": np.array([1, 2], np.uint64)}, 2)
    out = native.format(batch)
    assert out == reference(batch)
    assert [json.loads(line)[name] for line in out.decode("ascii").splitlines()] == [value, "x"]


F6_VALUES = [
    0.0, -0.0, 1e-9, -1e-9, 0.5e-6, 1.5e-6, 2.5e-6, 0.0078125, 0.0234375, 1.0000005, 1700000000.1320681,
    2.0**52, 2.0**52 + 1, 2.0**53, 1.8e13, 1.9e13, 999999999999999.9, 1e15, 1e16, 1e300, -1e300, 5e-324,
    float("inf"), float("-inf"), float("nan"), -float("nan"), 9223372036.854776, -9223372036.854776,
]  # fmt: skip


def py_f6(values: list[float]) -> list[bytes]:
    return [("%.6f" % x).encode() for x in values]  # noqa: UP031 - the reference's own formatting


def float6(native: JsonLines, values: list[float]) -> list[bytes]:
    assert native.kernel is not None
    out = bytearray()
    size = native.kernel.format_rows(len(values), [(b"", native.kernel.FLOAT6, np.array(values))], out)
    return bytes(out[:size]).split(b"}\n")[:-1]


def test_float6_edge_values(native: JsonLines) -> None:
    assert float6(native, F6_VALUES) == py_f6(F6_VALUES)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**63), 2**64).map(lambda v: v / 1e9),
                min_size=1, max_size=50))  # fmt: skip
def test_float6_random_doubles(native: JsonLines, values: list[float]) -> None:
    assert float6(native, values) == py_f6(values)


def test_float6_ties_round_to_even(native: JsonLines) -> None:
    """Exact binary ties at the 7th decimal (k/128 and friends) round to the even digit, as Python."""
    values = [k / 128 for k in range(1, 2000)] + [-k / 1024 for k in range(1, 2000)]
    ties = [x for x in values if math.isclose(x * 1e7 % 10, 5)]
    assert ties  # the list does hold exact ties
    assert float6(native, values) == py_f6(values)


def test_ts_and_duration_from_extreme_times(native: JsonLines) -> None:
    top = 2**64 - 1
    times = {"start_ns": np.array([top, 0, top], np.uint64), "end_ns": np.array([0, top, top], np.uint64)}
    batch = flow_batch(times, 3)
    assert native.format(batch) == reference(batch)


def test_kernel_rejects_bad_columns(native: JsonLines) -> None:
    k, out = native.kernel, bytearray()
    assert k is not None
    with pytest.raises(ValueError, match="expected 3"):
        k.format_rows(3, [(b"", k.INT, np.zeros(2, np.uint32))], out)
    with pytest.raises(TypeError, match="format"):
        k.format_rows(2, [(b"", k.INT, np.zeros(2, np.float32))], out)
    with pytest.raises(TypeError, match="format"):
        k.format_rows(2, [(b"", k.HEX16, np.zeros(2, np.uint32))], out)
    with pytest.raises(TypeError, match="not str"):
        k.format_rows(2, [(b"", k.TEXT, ["a", b"b"])], out)
    with pytest.raises(ValueError, match="256"):
        k.format_rows(1, [(b"", k.TABLE, (np.zeros(1, np.uint8), (b"x",)))], out)
    with pytest.raises(ValueError, match="kind"):
        k.format_rows(1, [(b"", 99, None)], out)
    with pytest.raises(TypeError, match="bytearray"):
        k.format_rows(1, [], b"")
    with pytest.raises(ValueError):
        k.format_rows(-1, [], out)
    with memoryview(out), pytest.raises(BufferError):  # an exported bytearray cannot grow
        k.format_rows(1000, [(b"", k.INT, np.zeros(1000, np.uint64))], out)


def test_non_native_byte_order_columns(native: JsonLines) -> None:
    big = np.array([1, 2**40, 2**64 - 1], dtype=">u8")
    batch = flow_batch({"orig_bytes": big, "flow_id": big, "proto": np.array([6, 17, 200], np.uint8)}, 3)
    assert native.format(batch) == reference(batch)


def pcap_of_udp(path: Path, count: int) -> None:
    """``count`` one-packet UDP flows (distinct source ports) in a little pcap."""
    data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i in range(count):
        udp = struct.pack(">HHHH", 1024 + i, 53, 12, 0) + b"abcd"
        ip = with_ip_checksum(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                                          bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + udp)  # fmt: skip
        frame = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip
        data += struct.pack("<IIII", 1_700_000_000 + i, i, len(frame), len(frame)) + frame
    path.write_bytes(data)


@pytest.mark.parametrize("count", [1, 5000])  # 5000: more than one 4096-record write
def test_flows_command_same_output_native_and_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    path = tmp_path / "udp.pcap"
    pcap_of_udp(path, count)
    outputs = []
    for native in ("1", "0"):
        monkeypatch.setenv("HOPSCOPE_NATIVE", native)
        assert main(["flows", str(path), "--point", 'p "1" \\ %s', "--host", "\u00e9"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    rows = [json.loads(line) for line in outputs[0].splitlines()]
    assert len(rows) == count and {(r["point"], r["host"], r["proto"]) for r in rows} == {('p "1" \\ %s', "é", "udp")}


def test_empty_batch(native: JsonLines) -> None:
    empty = flow_batch({}, 0)
    assert native.format(empty) == reference(empty) == b""


def test_column_changed_while_the_gil_is_released_never_overruns(native: JsonLines) -> None:
    """Another thread rewriting a float column between short and 300-digit values while the kernel
    runs without the GIL: each call writes whole rows within its buffer, or raises RuntimeError when
    the values outgrew the bound (the room check), instead of writing past the buffer."""
    k = native.kernel
    assert k is not None
    column = np.zeros(200_000)
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            column[:] = 1e300
            column[:] = 0.0

    writer = threading.Thread(target=flip)
    writer.start()
    outcomes = set()
    try:
        for _ in range(20):
            out = bytearray()
            try:
                size = k.format_rows(len(column), [(b"", k.FLOAT6, column)], out)
            except RuntimeError:
                outcomes.add("error")
            else:
                rows = bytes(out[:size]).split(b"}\n")
                assert size <= len(out) and len(rows) == len(column) + 1 and rows[-1] == b""
                assert all(float(row) in (0.0, 1e300) for row in rows[:-1])
                outcomes.add("rows")
    finally:
        stop.set()
        writer.join()
    assert outcomes <= {"rows", "error"}
