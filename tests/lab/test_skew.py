"""lab/skew.py: per-host clock skew applied to a run's captures (no root: the committed samples).

The captures are read back with scapy, never with hopscope's own reader."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import PcapNgWriter, RawPcapNgReader, RawPcapReader

from hopscope.errors import CaptureError, ConfigError
from hopscope.lab import skew

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "lab"
SKEW_NS = {"nodeB": 1_500_000, "server1": -700_000}


def _packets(path: Path) -> list[tuple[bytes, int]]:
    """(bytes, timestamp ns) of every packet of a pcap with ns timestamps, read by scapy."""
    return [(data, meta.sec * 1_000_000_000 + meta.usec) for data, meta in RawPcapReader(str(path))]


def test_apply_shifts_every_capture_of_a_host_and_nothing_else(tmp_path: Path) -> None:
    manifest_path = skew.apply(SAMPLES, SKEW_NS, tmp_path)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["clock_skew_ns"] == SKEW_NS
    for cp in manifest["capture_points"]:
        before, after = _packets(SAMPLES / cp["file"]), _packets(tmp_path / cp["file"])
        assert [b for b, _ in before] == [b for b, _ in after], cp["name"]
        shift = SKEW_NS.get(cp["host"], 0)
        assert {t1 - t0 for (_, t0), (_, t1) in zip(before, after, strict=True)} == {shift}, cp["name"]
        assert (SAMPLES / cp["file"]).read_bytes()[:24] == (tmp_path / cp["file"]).read_bytes()[:24]
    assert (tmp_path / "inventory.yaml").read_bytes() == (SAMPLES / "inventory.yaml").read_bytes()


def test_apply_in_place_adds_to_the_recorded_skew(tmp_path: Path) -> None:
    skew.apply(SAMPLES, {"nodeB": 1_000_000}, tmp_path)
    skew.apply(tmp_path, {"nodeB": 500_000, "hv": -2_000}, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["clock_skew_ns"] == {"hv": -2_000, "nodeB": 1_500_000}
    t0, t1 = _packets(SAMPLES / "nodeB.pcap")[0][1], _packets(tmp_path / "nodeB.pcap")[0][1]
    assert t1 - t0 == 1_500_000


def test_unknown_host_and_sub_unit_offsets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nosuch"):
        skew.apply(SAMPLES, {"nosuch": 1000}, tmp_path)
    usec = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + struct.pack("<IIII", 10, 5, 0, 0)
    with pytest.raises(CaptureError, match="whole number"):
        skew.shift_capture(usec, 1500)
    assert struct.unpack_from("<II", skew.shift_capture(usec, 2_000_000), 24) == (10, 2_005)  # µs


def test_pcapng_packets_move_in_their_interface_units(tmp_path: Path) -> None:
    path = tmp_path / "two.pcapng"
    frames = [Ether() / IP(dst="10.0.0.2") / TCP(dport=80, flags="S"), Ether() / IP(dst="10.0.0.3") / TCP()]
    with PcapNgWriter(str(path)) as w:
        for i, f in enumerate(frames):
            f.time = 1_700_000_000 + i * 0.25
            w.write(f)
    data = path.read_bytes()
    shifted = skew.shift_capture(data, -1_500_000)
    assert len(shifted) == len(data)
    before = list(RawPcapNgReader(str(path)))
    out = tmp_path / "shifted.pcapng"
    out.write_bytes(shifted)
    after = list(RawPcapNgReader(str(out)))
    assert [b for b, _ in before] == [b for b, _ in after]

    def ts(meta: object) -> int:
        return (meta.tshigh << 32 | meta.tslow) * 1_000_000_000 // meta.tsresol  # type: ignore[attr-defined]

    assert [ts(m1) - ts(m0) for (_, m0), (_, m1) in zip(before, after, strict=True)] == [-1_500_000] * 2


def test_parse_skews() -> None:
    assert skew.parse_skews(["nodeB=1500", "hv=-700.5us"]) == {"nodeB": 1_500_000, "hv": -700_500}
    with pytest.raises(ConfigError):
        skew.parse_skews(["nodeB"])
