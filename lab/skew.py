"""Per-host clock skew applied to a lab run's captures, after the fact.

The lab's namespaces share one kernel clock, so a lab run never has skewed clocks of its own. To
test clock estimation against a known answer, ``apply`` shifts the timestamps of every capture of a
host by that host's offset (a host whose clock runs ``offset_ns`` ahead stamps ``true + offset_ns``)
and records the applied offsets in the output manifest as ``clock_skew_ns`` (host -> ns, added to
any skew the input already had). Every packet keeps its bytes; only the timestamp fields change:

- pcap: the record header's seconds and fraction (µs or ns, by the file's magic, either byte order);
- pcapng: the timestamp of every Enhanced Packet Block and obsolete Packet Block, in the units of its
  interface (``if_tsresol``); Simple Packet Blocks carry no timestamp.

The ground truth (what the traffic generator sent and when) stays on the lab's true clock.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from hopscope.errors import CaptureError, ConfigError

NS_PER_S: Final = 1_000_000_000
#: pcap magic (as read little-endian) -> (byte order, timestamp fraction units per second)
_PCAP_MAGIC: Final[dict[int, tuple[str, int]]] = {
    0xA1B2C3D4: ("<", 1_000_000), 0xA1B23C4D: ("<", NS_PER_S),
    0xD4C3B2A1: (">", 1_000_000), 0x4D3CB2A1: (">", NS_PER_S),
}
_PCAPNG_SHB: Final = 0x0A0D0D0A
_PCAPNG_BYTE_ORDER: Final = 0x1A2B3C4D
_PCAPNG_IDB: Final = 1
_PCAPNG_PB: Final = 2  # obsolete Packet Block: interface id is 16 bits, then drops, then the timestamp
_PCAPNG_EPB: Final = 6
_IF_TSRESOL: Final = 9


def apply(manifest_dir: str | os.PathLike[str], skew_ns: Mapping[str, int],
          out_dir: str | os.PathLike[str]) -> Path:
    """Copy the run in ``manifest_dir`` to ``out_dir`` (may be the same directory) with the
    captures of each host in ``skew_ns`` shifted by its offset; returns the new manifest's path.

    Raises ``ConfigError`` for a host with no capture point and ``CaptureError`` for a capture
    that cannot be shifted (unknown format, an offset finer than its timestamps, a time before 1970)."""
    src, dst = Path(manifest_dir), Path(out_dir)
    manifest = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
    points = manifest.get("capture_points", [])
    unknown = set(skew_ns) - {cp.get("host", "") for cp in points}
    if unknown:
        raise ConfigError(f"clock skew for hosts without a capture point: {', '.join(sorted(unknown))}")
    dst.mkdir(parents=True, exist_ok=True)
    for cp in points:
        offset = int(skew_ns.get(cp.get("host", ""), 0))
        data = (src / cp["file"]).read_bytes()
        _write_atomic(dst / cp["file"], shift_capture(data, offset, cp["file"]) if offset else data)
    if src.resolve() != dst.resolve():
        captures = {cp["file"] for cp in points}
        for f in src.iterdir():
            if f.is_file() and f.name not in captures and f.name != "manifest.json":
                shutil.copy2(f, dst / f.name)
    _write_atomic(dst / "manifest.json", _with_skew(manifest, skew_ns))
    return dst / "manifest.json"


def _with_skew(manifest: dict[str, Any], skew_ns: Mapping[str, int]) -> bytes:
    total = {h: int(v) for h, v in (manifest.get("clock_skew_ns") or {}).items()}
    for host, offset in skew_ns.items():
        total[host] = total.get(host, 0) + int(offset)
    manifest["clock_skew_ns"] = {h: v for h, v in sorted(total.items()) if v}
    return (json.dumps(manifest, indent=1) + "\n").encode()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def shift_capture(data: bytes, offset_ns: int, name: str = "capture") -> bytes:
    """The capture ``data`` (pcap or pcapng) with every packet timestamp moved by ``offset_ns``."""
    if len(data) >= 4 and struct.unpack_from("<I", data)[0] == _PCAPNG_SHB:
        return shift_pcapng(data, offset_ns, name)
    return shift_pcap(data, offset_ns, name)


def _units(offset_ns: int, per_second: int, name: str) -> int:
    """``offset_ns`` in timestamp units of ``per_second``; an offset between two units is an error."""
    units, rest = divmod(offset_ns * per_second, NS_PER_S)
    if rest:
        raise CaptureError(f"{name}: offset {offset_ns} ns is not a whole number of its timestamp units "
                           f"(1/{per_second} s)")
    return units


def shift_pcap(data: bytes, offset_ns: int, name: str = "capture") -> bytes:
    """A pcap file with every record's timestamp moved by ``offset_ns``."""
    if len(data) < 24 or struct.unpack_from("<I", data)[0] not in _PCAP_MAGIC:
        raise CaptureError(f"{name}: neither pcap nor pcapng")
    order, per_second = _PCAP_MAGIC[struct.unpack_from("<I", data)[0]]
    shift = _units(offset_ns, per_second, name)
    out = bytearray(data)
    pos = 24
    while pos + 16 <= len(out):
        sec, frac, caplen = struct.unpack_from(order + "III", out, pos)
        total = sec * per_second + frac + shift
        if total < 0 or total // per_second >= 1 << 32:
            raise CaptureError(f"{name}: shifted timestamp out of range at offset {pos}")
        struct.pack_into(order + "II", out, pos, total // per_second, total % per_second)
        pos += 16 + caplen
    if pos != len(out):
        raise CaptureError(f"{name}: truncated pcap record at offset {pos}")
    return bytes(out)


def shift_pcapng(data: bytes, offset_ns: int, name: str = "capture") -> bytes:
    """A pcapng file with the timestamp of every EPB and PB moved by ``offset_ns``, in the units of
    its interface."""
    out = bytearray(data)
    order, pos = "<", 0
    resol: list[int] = []  # timestamp units per second of each interface of the section
    while pos + 12 <= len(out):
        btype = struct.unpack_from(order + "I", out, pos)[0]
        if btype == _PCAPNG_SHB:
            order = "<" if struct.unpack_from("<I", out, pos + 8)[0] == _PCAPNG_BYTE_ORDER else ">"
            resol = []
        blen = struct.unpack_from(order + "I", out, pos + 4)[0]
        if blen < 12 or blen % 4 or pos + blen > len(out):
            raise CaptureError(f"{name}: bad pcapng block length {blen} at offset {pos}")
        if btype == _PCAPNG_IDB:
            resol.append(_tsresol(bytes(out[pos + 16:pos + blen - 4]), order))
        elif btype in (_PCAPNG_EPB, _PCAPNG_PB):
            iface = (struct.unpack_from(order + "I", out, pos + 8)[0] if btype == _PCAPNG_EPB
                     else struct.unpack_from(order + "H", out, pos + 8)[0])
            if iface >= len(resol):
                raise CaptureError(f"{name}: packet of undeclared interface {iface} at offset {pos}")
            high, low = struct.unpack_from(order + "II", out, pos + 12)
            ts = (high << 32 | low) + _units(offset_ns, resol[iface], name)
            if ts < 0 or ts >= 1 << 64:
                raise CaptureError(f"{name}: shifted timestamp out of range at offset {pos}")
            struct.pack_into(order + "II", out, pos + 12, ts >> 32, ts & 0xFFFFFFFF)
        pos += blen
    if pos != len(out):
        raise CaptureError(f"{name}: truncated pcapng block at offset {pos}")
    return bytes(out)


def _tsresol(options: bytes, order: str) -> int:
    """Timestamp units per second of an interface, from its options (``if_tsresol``; default µs)."""
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack_from(order + "HH", options, pos)
        if code == 0:
            break
        if code == _IF_TSRESOL and length >= 1:
            value = options[pos + 4]
            return int(10 ** (value & 0x7F) if value < 0x80 else 2 ** (value & 0x7F))
        pos += 4 + (length + 3) // 4 * 4
    return 1_000_000


def parse_skews(values: list[str]) -> dict[str, int]:
    """``["nodeB=1500", "hv=-700.5"]`` (µs) -> ``{"nodeB": 1_500_000, "hv": -700_500}`` (ns)."""
    out: dict[str, int] = {}
    for v in values:
        host, sep, value = v.partition("=")
        try:
            out[host] = round(float(value.removesuffix("us")) * 1000)
        except ValueError:
            sep = ""
        if not sep or not host:
            raise ConfigError(f"bad clock skew {v!r}: expected HOST=MICROSECONDS, e.g. nodeB=1500")
    return out
