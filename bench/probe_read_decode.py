"""Read + decode CPU per 1M packets: the numpy/Python reference against the C kernel (probes/csrc/decode.c).

Times ``CaptureReader.blocks()`` (read: file -> RawBlocks) and ``Decoder.decode`` (RawBlock ->
PacketBlock) separately, each variant in a fresh process on one core (``taskset -c 0``), best of
``--repeat``. Variants: the reference (``HOPSCOPE_NATIVE=0``), the kernel reading the file into
buffers (``map_file=False``), and the kernel on a mapped file (the default). The capture is
bench/probe_speed.py's (generate it with that script first); ``--pcapng`` also converts it with
editcap (cached under var/bench/) and measures the pcapng reader.

Ends with one ``bench:`` line per kernel variant, capture format and stage (read, decode, both), in CPU
seconds per 1M packets beside the reference path's (ratio: reference over kernel, the speed-up; higher
is better).

Usage: ``python bench/probe_read_decode.py [--packets 1000000] [--repeat 3] [--pcapng]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

from _lines import bench_line

VAR = Path(os.environ.get("HOPSCOPE_VAR", Path(__file__).resolve().parents[1] / "var")) / "bench"
ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name: (HOPSCOPE_NATIVE, map_file, token in the bench lines)
    "reference (numpy/Python)": ("0", False, "reference"),
    "kernel, file read into buffers": ("1", False, "kernel_buffers"),
    "kernel, file mapped": ("1", True, "kernel_mapped"),
}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(path: str, map_file: bool) -> None:
    """Read and decode ``path`` once; print {"packets", "read_s", "decode_s"} as JSON."""
    from hopscope.probes.decode import Decoder
    from hopscope.probes.readers import open_capture

    decoder = Decoder("bench")
    blocks = open_capture(path, map_file=map_file).blocks()
    read_s = decode_s = 0.0
    packets = 0
    while True:
        start = _cpu()
        raw = next(blocks, None)
        read_s += _cpu() - start
        if raw is None:
            break
        start = _cpu()
        decoder.decode(raw)
        decode_s += _cpu() - start
        packets += raw.count
    print(json.dumps({"packets": packets, "read_s": read_s, "decode_s": decode_s}))


def measure(path: Path, native: str, map_file: bool, repeat: int) -> dict[str, float]:
    """Best (lowest read + decode) of ``repeat`` worker runs."""
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    cmd = [*pin, sys.executable, __file__, "--worker", str(path), "--map" if map_file else "--no-map"]
    env = {**os.environ, "HOPSCOPE_NATIVE": native, "PYTHONPATH": str(ROOT)}
    runs = []
    for _ in range(repeat):
        out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    best: dict[str, float] = min(runs, key=lambda r: r["read_s"] + r["decode_s"])
    return best


def report(path: Path, repeat: int) -> list[str]:
    """Print the table for ``path``; return its bench lines."""
    print(f"capture: {path} ({path.stat().st_size / 1e6:.0f} MB)")
    print(f"{'variant':34s} {'packets':>9s} {'read s/1M':>10s} {'decode s/1M':>12s} {'sum s/1M':>9s}")
    seconds: dict[str, dict[str, float]] = {}  # variant token: {stage: CPU s per 1M packets}
    for name, (native, map_file, token) in VARIANTS.items():
        r = measure(path, native, map_file, repeat)
        per = 1e6 / r["packets"]
        read, decode = r["read_s"] * per, r["decode_s"] * per
        seconds[token] = {"read": read, "decode": decode, "read_decode": read + decode}
        print(f"{name:34s} {int(r['packets']):9d} {read:10.3f} {decode:12.3f} {read + decode:9.3f}", flush=True)
    fmt = path.suffix.lstrip(".")
    reference = seconds.pop("reference")
    return [bench_line(f"probe_{stage}_{fmt}_{token}", value, "s/Mpkt", (f"{stage}_{fmt}_reference", reference[stage]),
                       reference[stage] / value if value else None)
            for token, stages in seconds.items() for stage, value in stages.items()]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pcapng", action="store_true", help="also measure a pcapng copy (editcap)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--map", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.map)
        return 0
    capture = VAR / f"probe_mix_v2_{args.packets}.pcap"
    if not capture.exists():
        print(f"{capture} is missing: run bench/probe_speed.py --packets {args.packets} --skip-peers first")
        return 1
    lines = report(capture, args.repeat)
    if args.pcapng:
        converted = capture.with_suffix(".pcapng")
        if not converted.exists():
            subprocess.run(["editcap", "-F", "pcapng", str(capture), str(converted)], check=True)
        lines += report(converted, args.repeat)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
