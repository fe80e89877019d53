"""Packet index and packet store: what keeping the packets costs, and how fast one flow comes back.

On bench/probe_speed.py's capture (generated once under var/bench/ if missing), each figure beside a
peer run in this script:

- **index overhead**: CPU seconds per 1M packets to read, decode and meter the capture with the
  packet index built as the blocks go by (what ``hopscope analyze`` does) and without it (ratio:
  with over without; lower is better).
- **flow slice**: milliseconds to get one flow's packets (a connection of the capture with a few dozen
  packets) through the index, read back, decoded and written as pcapng, against ``tshark -r capture -Y
  <the flow's 4-tuple> -w out``, which must read the whole file (ratio: tshark over the index; higher
  is better).
- **packet store**: packets per second written into a rolling packet store (pcap segments, SQLite
  index by flow) from the decoded blocks, against ``tcpdump -r capture -w out`` copying the file
  (ratio: the store over tcpdump; higher is better).

Usage: ``python bench/pcap_index.py [--packets 200000] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _lines import bench_line

VAR = Path(os.environ.get("HOPSCOPE_VAR", Path(__file__).resolve().parents[1] / "var")) / "bench"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def meter_cpu(path: Path, with_index: bool) -> tuple[float, int, object]:
    """CPU seconds to read, decode and meter ``path`` (and index it); packets; the indexer."""
    from hopscope.probes.analyze import CaptureAnalyzer
    from hopscope.probes.packet_index import PacketIndexer

    index = PacketIndexer(path, point="bench") if with_index else None
    start = _cpu()
    analyzer = CaptureAnalyzer(path, {"*": "bench"}, index=index)
    for _ in analyzer.run():
        pass
    records = index.records() if index is not None else None
    return _cpu() - start, analyzer.reader.stats.frames, records


def slice_ms(rows: list, repeat: int) -> tuple[float, str]:
    """Best wall ms to read one flow's packets through the index and write them as pcapng; its filter."""
    from hopscope.probes.packet_index import read_frames, unpack_frames
    from hopscope.probes.packet_slice import Endpoints, flow_packets, write_pcapng
    from hopscope.probes.readers import RawBlock  # noqa: F401  (loaded before timing)

    row = next(r for r in rows if 30 <= r.pkts <= 200)
    first = read_frames(row.file, unpack_frames(row.frames)[:1])
    hop = _endpoints(first[0], row.linktype)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        packets = flow_packets([row], Endpoints(*hop))
        write_pcapng(io.BytesIO(), [("bench", packets)])
        best = min(best, time.perf_counter() - start)
    assert len(packets) == row.pkts, (len(packets), row.pkts)
    proto = "tcp" if packets[0].flags else "udp"
    ends = f"ip.addr == {hop[0]} && ip.addr == {hop[2]}"
    return best * 1000, f"{ends} && {proto}.port == {hop[1]} && {proto}.port == {hop[3]}"


def _endpoints(frame: bytes, linktype: int) -> tuple[str, int, str, int]:
    import numpy as np

    from hopscope.probes.decode import Decoder
    from hopscope.probes.readers import PAD_BYTES, Interface, RawBlock

    buf = np.frombuffer(frame + bytes(PAD_BYTES), np.uint8)
    raw = RawBlock(buf, np.zeros(1, np.int64), np.array([len(frame)], np.uint32), np.array([len(frame)], np.uint32),
                   np.zeros(1, np.int64), np.zeros(1, np.uint16), (Interface(0, linktype, 0),))  # fmt: skip
    block = Decoder().decode(raw)
    return block.src_str(0), int(block.sport[0]), block.dst_str(0), int(block.dport[0])


def store_rate(path: Path) -> tuple[float, int]:
    """Packets per wall second written into a packet store from the decoded, metered blocks (the
    decoding and metering are not timed)."""
    from hopscope.probes.analyze import CaptureAnalyzer
    from hopscope.probes.packet_store import PacketStore, PacketStoreSettings

    with tempfile.TemporaryDirectory() as directory:
        store = PacketStore(PacketStoreSettings(directory, max_bytes=1 << 40))
        analyzer = CaptureAnalyzer(path, {"*": "bench"})
        spent = 0.0
        for raw in analyzer.reader.blocks():
            block = analyzer.decoder.decode(raw)
            analyzer.meter.process_batch(block)
            start = time.perf_counter()
            store.add(raw, block, analyzer.decoder.row_frames)
            spent += time.perf_counter() - start
        start = time.perf_counter()
        store.close()
        spent += time.perf_counter() - start
        return store.stats().packets / spent, store.stats().packets


def peer_wall(cmd: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    capture = VAR / f"probe_mix_v2_{args.packets}.pcap"
    if not capture.exists():
        sys.path.insert(0, str(Path(__file__).parent))
        from probe_speed import generate

        VAR.mkdir(parents=True, exist_ok=True)
        generate(capture, args.packets)
    print(f"capture: {capture} ({capture.stat().st_size / 1e6:.0f} MB)")

    runs = {flag: min((meter_cpu(capture, flag) for _ in range(args.repeat)), key=lambda r: r[0])
            for flag in (False, True)}  # fmt: skip
    (plain_s, packets, _), (indexed_s, _, rows) = runs[False], runs[True]
    per_m = 1e6 / packets
    print(f"read+decode+meter: {plain_s * per_m:.2f} CPU s/1M packets without the index, "
          f"{indexed_s * per_m:.2f} with it")  # fmt: skip

    ms, display_filter = slice_ms(rows, args.repeat)  # type: ignore[arg-type]
    lines = [
        bench_line("pcap_index_cpu", indexed_s * per_m, "cpu_s_per_1M_packets", ("no_index", plain_s * per_m),
                   indexed_s / plain_s),  # ratio: with over without, lower is better
    ]  # fmt: skip
    print(f"one flow through the index, decoded and written as pcapng: {ms:.1f} ms")
    if shutil.which("tshark"):
        with tempfile.TemporaryDirectory() as tmp:
            peer = peer_wall(["tshark", "-n", "-r", str(capture), "-Y", display_filter, "-w", f"{tmp}/out.pcapng"],
                             args.repeat) * 1000  # fmt: skip
        print(f"tshark -Y '{display_filter}' -w: {peer:.0f} ms")
        lines.append(bench_line("pcap_flow_slice", ms, "ms", ("tshark_display_filter", peer), peer / ms))
    rate, stored = store_rate(capture)
    print(f"packet store: {stored} packets at {rate:,.0f} packets/s")
    if shutil.which("tcpdump"):
        with tempfile.TemporaryDirectory() as tmp:
            wall = peer_wall(["tcpdump", "-r", str(capture), "-w", f"{tmp}/out.pcap"], args.repeat)
        print(f"tcpdump -r -w: {packets / wall:,.0f} packets/s")
        lines.append(bench_line("packet_store_write", rate, "packets_per_s", ("tcpdump_copy", packets / wall),
                                rate / (packets / wall)))  # fmt: skip
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
