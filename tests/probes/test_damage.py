"""Damaged captures lose nothing before the damage: crafted pcap and pcapng files with a corrupt record or
block in the middle, a huge pcap ``incl_len``, a last record cut short, garbage between blocks and after
a valid section, read by the C walks and by their reference twins (``HOPSCOPE_NATIVE=0``). Every record
before the damage is yielded, reading resumes at the next plausible record (what was skipped is counted),
one warning line names the file, the byte offset and the problem; ``strict`` makes it a ``CaptureError``
(exit status 4 on the command line) after the records before it."""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from hopscope.errors import CaptureError
from hopscope.probes.readers import CaptureReader, open_capture
from tests.probes.crafting import with_ip_checksum

PCAP_HEAD = 24


def frame(i: int) -> bytes:
    """A distinct Ethernet/IPv4/UDP frame per ``i`` (10.0.0.1:i -> 10.0.0.2:53, 8 payload bytes)."""
    payload = struct.pack(">Q", i)
    udp = struct.pack(">HHHH", 1024 + i % 60000, 53, 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))  # fmt: skip
    ip = with_ip_checksum(ip)
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + udp


def pcap_record(i: int, data: bytes | None = None) -> bytes:
    data = frame(i) if data is None else data
    return struct.pack("<IIII", 1_700_000_000 + i, i, len(data), len(data)) + data


def pcap_file(records: list[bytes]) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + b"".join(records)


def ng_block(btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def ng_head() -> bytes:
    shb = ng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    return shb + ng_block(1, struct.pack("<HHI", 1, 0, 0))


def ng_epb(i: int) -> bytes:
    data = frame(i)
    ts = (1_700_000_000 + i) * 1_000_000
    return ng_block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data)


def read(path: Path, native: bool, monkeypatch: pytest.MonkeyPatch, strict: bool = False,
         chunk_bytes: int = 1 << 16) -> tuple[CaptureReader, list[bytes], str]:  # fmt: skip
    """Frames read (up to the error, if any) and the error text."""
    monkeypatch.setenv("HOPSCOPE_NATIVE", "1" if native else "0")
    reader = open_capture(path, chunk_bytes, strict=strict)
    assert (reader._kernel is not None) == native
    frames: list[bytes] = []
    error = ""
    try:
        for block in reader.blocks():
            frames += [block.frame(i) for i in range(block.count)]
    except CaptureError as exc:
        error = str(exc)
    return reader, frames, error


class Case(NamedTuple):
    data: bytes
    frames: list[int]  # the frames read, in order (frame(i) for i in frames)
    before: int  # records before the (first) damage
    offset: int  # byte offset of the (first) damage
    problem: str  # in its message
    resumed_at: int = -1  # where reading went on after it (-1: it did not)


def damaged_files() -> dict[str, Case]:
    good = [pcap_record(i) for i in range(40)]
    at = PCAP_HEAD + sum(map(len, good[:25]))
    huge = struct.pack("<IIII", 1_700_000_025, 0, 0xFFFFFFF0, 60) + frame(99)
    ng_good = [ng_epb(i) for i in range(40)]
    ng_at = len(ng_head()) + sum(map(len, ng_good[:25]))
    bad_len = struct.pack("<II", 6, 1 << 24) + ng_good[25][8:]  # block total length 16 MiB
    odd_len = struct.pack("<II", 6, 45) + ng_good[25][8:]  # not a multiple of 4
    garbage = bytes(range(0x80, 0xC1))  # 65 bytes: type 0x83828180, length 0x87868584, and off alignment
    cut = pcap_file(good)[:-7]
    ng_cut = (ng_head() + b"".join(ng_good))[:-9]
    ng_mid = len(ng_head()) + sum(map(len, ng_good[:20]))
    all_ = list(range(40))
    return {
        "pcap huge incl_len mid-file": Case(pcap_file([*good[:25], huge, *good[25:]]), all_, 25, at,
                                            f"corrupt pcap record at offset {at}: captured length 4294967280",
                                            at + len(huge)),
        "pcap garbage after the records": Case(pcap_file(good) + b"\xff" * 40, all_, 40,
                                               PCAP_HEAD + sum(map(len, good)), "corrupt pcap record at offset"),
        "pcap last record cut short": Case(cut, all_[:39], 39, PCAP_HEAD + sum(map(len, good[:39])),
                                           f"last record cut short at offset {PCAP_HEAD + sum(map(len, good[:39]))}: "
                                           f"the file ends {len(good[39]) - 7} bytes into it"),
        "pcapng bad block length mid-file": Case(ng_head() + b"".join([*ng_good[:25], bad_len, *ng_good[26:]]),
                                                 [*all_[:25], *all_[26:]], 25, ng_at,
                                                 f"corrupt pcapng block at offset {ng_at}: type 0x6, length 16777216",
                                                 ng_at + len(ng_good[25])),
        "pcapng odd block length mid-file": Case(ng_head() + b"".join([*ng_good[:25], odd_len, *ng_good[26:]]),
                                                 [*all_[:25], *all_[26:]], 25, ng_at,
                                                 f"corrupt pcapng block at offset {ng_at}: type 0x6, length 45",
                                                 ng_at + len(ng_good[25])),
        "pcapng garbage between blocks": Case(ng_head() + b"".join(ng_good[:20]) + garbage + b"".join(ng_good[20:]),
                                              all_, 20, ng_mid, f"corrupt pcapng block at offset {ng_mid}",
                                              ng_mid + len(garbage)),
        "pcapng garbage after a valid section": Case(ng_head() + b"".join(ng_good) + garbage, all_, 40,
                                                     len(ng_head()) + sum(map(len, ng_good)),
                                                     "corrupt pcapng block at offset"),
        "pcapng last block cut short": Case(ng_cut, all_[:39], 39, len(ng_head()) + sum(map(len, ng_good[:39])),
                                            "last record cut short at offset"),
    }  # fmt: skip


FILES = damaged_files()


@pytest.mark.parametrize("native", [True, False], ids=["c", "reference"])
@pytest.mark.parametrize("name", sorted(FILES))
def test_records_around_the_damage_are_kept_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str, native: bool
) -> None:
    case = FILES[name]
    path = tmp_path / ("x.pcapng" if name.startswith("pcapng") else "x.pcap")
    path.write_bytes(case.data)
    with caplog.at_level(logging.WARNING, logger="hopscope.probes.readers"):
        reader, frames, error = read(path, native, monkeypatch)
    assert error == ""
    assert frames == [frame(i) for i in case.frames]  # every record before the damage (and after, if resumed)
    (damage,) = reader.stats.damages
    assert damage == reader.stats.damage and damage.offset == case.offset and damage.records_before == case.before
    assert damage.resumed_at == case.resumed_at
    end = len(case.data) if case.resumed_at < 0 else case.resumed_at
    assert damage.bytes_after == end - case.offset
    assert reader.stats.skipped_bytes == max(case.resumed_at - case.offset, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{path}: ") and f"offset {case.offset}" in warnings[0]
    assert case.problem in warnings[0]
    assert f"kept the {case.before} records before it" in warnings[0] and "\n" not in warnings[0]
    if case.resumed_at >= 0:
        assert f"skipped {case.resumed_at - case.offset} bytes to the next plausible record at offset " \
               f"{case.resumed_at} and read on" in warnings[0]  # fmt: skip


@pytest.mark.parametrize("native", [True, False], ids=["c", "reference"])
@pytest.mark.parametrize("name", sorted(FILES))
def test_strict_makes_the_damage_an_error_after_the_records_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, native: bool
) -> None:
    case = FILES[name]
    path = tmp_path / ("x.pcapng" if name.startswith("pcapng") else "x.pcap")
    path.write_bytes(case.data)
    _, frames, error = read(path, native, monkeypatch, strict=True)
    assert frames == [frame(i) for i in case.frames[: case.before]]  # strict reads nothing past the damage
    assert error.startswith(f"{path}: ") and case.problem in error and f"offset {case.offset}" in error


@pytest.mark.parametrize("native", [True, False], ids=["c", "reference"])
def test_damage_after_many_chunks_keeps_every_earlier_chunk_and_reads_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    """Two damaged headers, the first in the fifth 64 KiB chunk: every good record comes out."""
    good = [pcap_record(i) for i in range(3000)]
    bad = struct.pack("<IIII", 1_700_000_000, 0, 1 << 30, 60)
    path = tmp_path / "long.pcap"
    path.write_bytes(pcap_file([*good[:2900], bad, *good[2900:2950], bad, *good[2950:]]))
    reader, frames, error = read(path, native, monkeypatch)
    assert error == "" and frames == [frame(i) for i in range(3000)]
    first = PCAP_HEAD + sum(map(len, good[:2900]))
    second = first + 16 + sum(map(len, good[2900:2950]))
    assert [(d.offset, d.records_before, d.resumed_at) for d in reader.stats.damages] == [
        (first, 2900, first + 16), (second, 2950, second + 16)]
    assert reader.stats.skipped_bytes == 32


# --- on the command line ---------------------------------------------------------------------------


def hopscope(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOPSCOPE_NATIVE": "1"}
    return subprocess.run([sys.executable, "-m", "hopscope", *args], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip


def test_flows_prints_the_flows_before_the_damage_and_warns(tmp_path: Path) -> None:
    case = FILES["pcap huge incl_len mid-file"]
    path = tmp_path / "mid.pcap"
    path.write_bytes(case.data)
    offset, kept = case.offset, case.before
    out = hopscope("flows", str(path))
    assert out.returncode == 0, out.stderr
    flows = [json.loads(line) for line in out.stdout.splitlines()]
    assert sum(f["orig_pkts"] for f in flows) == len(case.frames)  # one UDP flow per frame, before and after
    warning = [line for line in out.stderr.splitlines() if "WARNING hopscope.probes.readers" in line]
    assert len(warning) == 1 and f"{path}: corrupt pcap record at offset {offset}" in warning[0]
    strict = hopscope("flows", "--strict", str(path))
    assert strict.returncode == 4
    assert sum(json.loads(line)["orig_pkts"] for line in strict.stdout.splitlines()) == kept
    assert f"hopscope: error: {path}: corrupt pcap record at offset {offset}" in strict.stderr


def test_analyze_reads_the_other_points_past_a_damaged_one(tmp_path: Path) -> None:
    good, damaged, unreadable = tmp_path / "a.pcap", tmp_path / "b.pcapng", tmp_path / "c.pcap"
    good.write_bytes(pcap_file([pcap_record(i) for i in range(30)]))
    case = FILES["pcapng bad block length mid-file"]
    damaged.write_bytes(case.data)
    offset = case.offset
    unreadable.write_bytes(b"not a capture at all")
    out = hopscope("analyze", "--no-store", "--format", "json", str(good), str(damaged), str(unreadable))
    assert out.returncode == 0, out.stderr
    assert f"{damaged}: corrupt pcapng block at offset {offset}" in out.stderr
    assert f"point c left out: {unreadable}: not a pcap or pcapng file" in out.stderr
    strict = hopscope("analyze", "--no-store", "--strict", str(good), str(damaged))
    assert strict.returncode == 4 and f"{damaged}: corrupt pcapng block at offset {offset}" in strict.stderr
