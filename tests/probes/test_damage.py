"""Damaged captures lose nothing before the damage: crafted pcap and pcapng files with a corrupt record or
block in the middle, a huge pcap ``incl_len``, a last record cut short and garbage after a valid section,
read by the C walks and by their reference twins (``HOPSCOPE_NATIVE=0``). Every record before the damage
is yielded, one warning line names the file, the byte offset and the problem; ``strict`` makes it a
``CaptureError`` (exit status 4 on the command line) after the same records."""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

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


def damaged_files() -> dict[str, tuple[bytes, int, int, str]]:
    """name -> (file bytes, records before the damage, byte offset of the damage, problem text)."""
    good = [pcap_record(i) for i in range(40)]
    at = PCAP_HEAD + sum(map(len, good[:25]))
    huge = struct.pack("<IIII", 1, 0, 0xFFFFFFF0, 60) + frame(99)
    ng_good = [ng_epb(i) for i in range(40)]
    ng_at = len(ng_head()) + sum(map(len, ng_good[:25]))
    bad_len = struct.pack("<II", 6, 1 << 24) + ng_good[25][8:]  # block total length 16 MiB
    odd_len = struct.pack("<II", 6, 45) + ng_good[25][8:]  # not a multiple of 4
    garbage = bytes(range(0x80, 0xC0))  # after the last good block: type 0x83828180, length 0x87868584
    cut = pcap_file(good)[:-7]
    ng_cut = ng_head() + b"".join(ng_good)
    ng_cut = ng_cut[:-9]
    return {
        "pcap huge incl_len mid-file": (pcap_file([*good[:25], huge, *good[25:]]), 25, at,
                                        f"corrupt pcap record at offset {at}: captured length 4294967280"),
        "pcap garbage after the records": (pcap_file(good) + b"\xff" * 40, 40, PCAP_HEAD + sum(map(len, good)),
                                           "corrupt pcap record at offset"),
        "pcap last record cut short": (cut, 39, PCAP_HEAD + sum(map(len, good[:39])),
                                       f"last record cut short at offset {PCAP_HEAD + sum(map(len, good[:39]))}: "
                                       f"the file ends {len(good[39]) - 7} bytes into it"),
        "pcapng bad block length mid-file": (ng_head() + b"".join([*ng_good[:25], bad_len, *ng_good[26:]]), 25, ng_at,
                                             f"corrupt pcapng block at offset {ng_at}: type 0x6, length 16777216"),
        "pcapng odd block length mid-file": (ng_head() + b"".join([*ng_good[:25], odd_len, *ng_good[26:]]), 25, ng_at,
                                             f"corrupt pcapng block at offset {ng_at}: type 0x6, length 45"),
        "pcapng garbage after a valid section": (ng_head() + b"".join(ng_good) + garbage, 40,
                                                 len(ng_head()) + sum(map(len, ng_good)),
                                                 "corrupt pcapng block at offset"),
        "pcapng last block cut short": (ng_cut, 39, len(ng_head()) + sum(map(len, ng_good[:39])),
                                        "last record cut short at offset"),
    }  # fmt: skip


FILES = damaged_files()


@pytest.mark.parametrize("native", [True, False], ids=["c", "reference"])
@pytest.mark.parametrize("name", sorted(FILES))
def test_records_before_the_damage_are_kept_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str, native: bool
) -> None:
    data, kept, offset, problem = FILES[name]
    path = tmp_path / ("x.pcapng" if name.startswith("pcapng") else "x.pcap")
    path.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="hopscope.probes.readers"):
        reader, frames, error = read(path, native, monkeypatch)
    assert error == ""
    assert frames == [frame(i) for i in range(kept)]  # every record before the damage, in order
    damage = reader.stats.damage
    assert damage is not None and damage.offset == offset and damage.records_before == kept
    assert damage.bytes_after == len(data) - offset
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{path}: ") and f"offset {offset}" in warnings[0] and problem in warnings[0]
    assert f"kept the {kept} records before it" in warnings[0] and "\n" not in warnings[0]


@pytest.mark.parametrize("native", [True, False], ids=["c", "reference"])
@pytest.mark.parametrize("name", sorted(FILES))
def test_strict_makes_the_damage_an_error_after_the_same_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, native: bool
) -> None:
    data, kept, offset, problem = FILES[name]
    path = tmp_path / ("x.pcapng" if name.startswith("pcapng") else "x.pcap")
    path.write_bytes(data)
    _, frames, error = read(path, native, monkeypatch, strict=True)
    assert frames == [frame(i) for i in range(kept)]
    assert error.startswith(f"{path}: ") and problem in error and f"offset {offset}" in error


@pytest.mark.parametrize("native", [True, False], ids=["c", "reference"])
def test_damage_after_many_chunks_keeps_every_earlier_chunk_and_its_own_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    """The damage lies in the fifth 64 KiB chunk: the four before it and its records before it all come out."""
    good = [pcap_record(i) for i in range(3000)]
    path = tmp_path / "long.pcap"
    path.write_bytes(pcap_file([*good[:2900], pcap_record(0, b"")[:8] + struct.pack("<II", 1 << 30, 60), *good[2900:]]))
    reader, frames, error = read(path, native, monkeypatch)
    assert error == "" and frames == [frame(i) for i in range(2900)]
    assert reader.stats.damage is not None and reader.stats.damage.offset == PCAP_HEAD + sum(map(len, good[:2900]))


def test_a_whole_file_reads_without_damage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ok.pcap"
    path.write_bytes(pcap_file([pcap_record(i) for i in range(10)]))
    reader, frames, error = read(path, True, monkeypatch, strict=True)
    assert error == "" and len(frames) == 10 and reader.stats.damage is None


# --- on the command line ---------------------------------------------------------------------------


def hopscope(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOPSCOPE_NATIVE": "1"}
    return subprocess.run([sys.executable, "-m", "hopscope", *args], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip


def test_flows_prints_the_flows_before_the_damage_and_warns(tmp_path: Path) -> None:
    data, kept, offset, _ = FILES["pcap huge incl_len mid-file"]
    path = tmp_path / "mid.pcap"
    path.write_bytes(data)
    out = hopscope("flows", str(path))
    assert out.returncode == 0, out.stderr
    flows = [json.loads(line) for line in out.stdout.splitlines()]
    assert sum(f["orig_pkts"] for f in flows) == kept  # one UDP flow per frame, all before the damage
    warning = [line for line in out.stderr.splitlines() if "WARNING hopscope.probes.readers" in line]
    assert len(warning) == 1 and f"{path}: corrupt pcap record at offset {offset}" in warning[0]
    strict = hopscope("flows", "--strict", str(path))
    assert strict.returncode == 4
    assert sum(json.loads(line)["orig_pkts"] for line in strict.stdout.splitlines()) == kept
    assert f"hopscope: error: {path}: corrupt pcap record at offset {offset}" in strict.stderr


def test_analyze_reads_the_other_points_past_a_damaged_one(tmp_path: Path) -> None:
    good, damaged, unreadable = tmp_path / "a.pcap", tmp_path / "b.pcapng", tmp_path / "c.pcap"
    good.write_bytes(pcap_file([pcap_record(i) for i in range(30)]))
    data, _, offset, _ = FILES["pcapng bad block length mid-file"]
    damaged.write_bytes(data)
    unreadable.write_bytes(b"not a capture at all")
    out = hopscope("analyze", "--no-store", "--format", "json", str(good), str(damaged), str(unreadable))
    assert out.returncode == 0, out.stderr
    assert f"{damaged}: corrupt pcapng block at offset {offset}" in out.stderr
    assert f"point c left out: {unreadable}: not a pcap or pcapng file" in out.stderr
    strict = hopscope("analyze", "--no-store", "--strict", str(good), str(damaged))
    assert strict.returncode == 4 and f"{damaged}: corrupt pcapng block at offset {offset}" in strict.stderr
