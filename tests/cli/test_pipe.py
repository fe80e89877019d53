"""``hopscope ... | head``: a reader that leaves early ends the command quietly (exit 141, as for a
tool the SIGPIPE signal ended), with nothing on stderr: no traceback, no "Exception ignored".

Output written in one big write (``flows --format jsonl``) may instead end with status 0: when the
reader leaves during a write that has moved some bytes, the write returns their count, no error."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from hopscope.cli import EXIT_BROKEN_PIPE, reader_gone

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # microsecond pcap, Ethernet
ETHERNET = bytes.fromhex("020000000002" "020000000001" "0800")


def _ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack("!10H", header))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def udp_frame(sport: int) -> bytes:
    """Ethernet/IPv4/UDP from 10.0.0.1:sport to 10.0.0.53:53 with 4 bytes of payload (no UDP checksum)."""
    payload = b"ping"
    udp = struct.pack("!HHHH", sport, 53, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), sport, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 53]))  # fmt: skip
    ip = ip[:10] + struct.pack("!H", _ipv4_checksum(ip)) + ip[12:]
    return ETHERNET + ip + udp


def many_flows_pcap(path: Path, flows: int = 1500) -> Path:
    """One UDP packet per flow: ``hopscope flows`` prints far more than a pipe buffer (64 KiB) holds,
    so the reader leaving after one line breaks the pipe while the command still writes."""
    with path.open("wb") as fh:
        fh.write(PCAP_HEADER)
        for n in range(flows):
            frame = udp_frame(20_000 + n)
            fh.write(struct.pack("<IIII", 1_700_000_000, n, len(frame), len(frame)) + frame)
    return path


@pytest.mark.parametrize(("fmt", "statuses"), [("jsonl", {0, EXIT_BROKEN_PIPE}), ("table", {EXIT_BROKEN_PIPE})])
def test_flows_into_head_ends_quietly(tmp_path: Path, fmt: str, statuses: set[int]) -> None:
    pcap = many_flows_pcap(tmp_path / "many.pcap")
    command = [sys.executable, "-m", "hopscope", "flows", str(pcap), "--format", fmt]
    hopscope = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-1"], stdin=hopscope.stdout, stdout=subprocess.PIPE)
    assert hopscope.stdout is not None and hopscope.stderr is not None
    hopscope.stdout.close()  # head holds the only reading end
    first, _ = head.communicate(timeout=120)
    err = hopscope.stderr.read()
    assert hopscope.wait(timeout=120) in statuses, err
    assert err == b""
    if fmt == "jsonl":
        assert json.loads(first)["proto"] == "udp"
    else:
        assert first.split()[:2] == [b"point", b"orig_h"]


def test_all_of_it_when_the_reader_stays(tmp_path: Path) -> None:
    pcap = many_flows_pcap(tmp_path / "many.pcap")
    r = subprocess.run([sys.executable, "-m", "hopscope", "flows", str(pcap)], capture_output=True, timeout=120)
    assert r.returncode == 0 and r.stderr == b""
    assert len(r.stdout.splitlines()) == 1500


def test_reader_gone_only_for_a_pipe_without_reader(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        assert not reader_gone(write_end)
        os.close(read_end)
        assert reader_gone(write_end)
    finally:
        os.close(write_end)
    with (tmp_path / "f").open("wb") as fh:
        assert not reader_gone(fh.fileno())
    a, b = socket.socketpair()
    with a, b:
        assert not reader_gone(a.fileno())


def test_a_full_disk_is_one_line(tmp_path: Path) -> None:
    """Standard output on /dev/full (every write: no space left): exit 1 and one line on stderr, no
    traceback and no "Exception ignored" from the interpreter's last flush."""
    pcap = many_flows_pcap(tmp_path / "many.pcap")
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, "-m", "hopscope", "flows", str(pcap)], stdout=full, stderr=subprocess.PIPE,
                           timeout=120)
    assert r.returncode == 1
    assert r.stderr.decode() == "hopscope: error: cannot write: No space left on device\n"
