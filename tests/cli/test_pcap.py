"""``hopscope pcap``: a stored trace's packets as pcapng or JSON, found through the store's packet index
or, for a store without one, through a rolling packet store (what live probes and agents keep)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hopscope.cli import main
from hopscope.correlate.offline import Analysis, analyze_points, plan_points, store_tables
from hopscope.paths import lab_samples
from hopscope.probes.analyze import CaptureAnalyzer
from hopscope.probes.packet_store import PacketStore, PacketStoreSettings
from hopscope.probes.readers import open_capture
from hopscope.records import Trace

MANIFEST = str(lab_samples() / "manifest.json")


@pytest.fixture(scope="module")
def analysis() -> Analysis:
    return analyze_points(plan_points(manifest=MANIFEST), manifest=MANIFEST)


def _trace(analysis: Analysis) -> Trace:
    traces: list[Trace] = [t for t in analysis.result.traces.records() if t.l7_proto == "http"]  # type: ignore[misc]
    return max(traces, key=lambda t: t.hop_count)


def _store(tmp_path: Path, analysis: Analysis, with_index: bool) -> str:
    url = f"chdb://{tmp_path}/chdb"
    tables = analysis.tables()
    if not with_index:
        del tables["packet_index"]
    store_tables(url, tables)
    return url


def test_the_command_writes_the_traces_pcapng(
    tmp_path: Path, analysis: Analysis, capsys: pytest.CaptureFixture[str]
) -> None:
    url, trace = _store(tmp_path, analysis, True), _trace(analysis)
    out = tmp_path / "trace.pcapng"
    assert main(["pcap", trace.trace_id, "--store", url, "-o", str(out)]) == 0
    reader = open_capture(out)
    count = sum(block.count for block in reader.blocks())
    assert [i.name for i in reader.interfaces] == trace.points.split(",")
    assert f"{count} packets of trace {trace.trace_id} written to {out}" in capsys.readouterr().err
    assert main(["pcap", trace.trace_id, "--store", url, "--format", "json", "-o", "-"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert sum(len(p["packets"]) for p in view["points"]) == count


def write_packet_stores(directory: Path, segment_bytes: int, host: str = "") -> None:
    """The packets of every point of the lab sample written into rolling packet stores under
    ``directory``, as a probe writes them while it meters."""
    for point in plan_points(manifest=MANIFEST):
        store = PacketStore(PacketStoreSettings(str(directory), segment_bytes=segment_bytes), host=host)
        analyzer = CaptureAnalyzer(point.file, {"*": point.name})
        for raw in analyzer.reader.blocks():
            block = analyzer.decoder.decode(raw)
            analyzer.meter.process_batch(block)
            store.add(raw, block, analyzer.decoder.row_frames)
        store.close()


def test_a_rolling_packet_store_serves_the_same_packets(tmp_path: Path, analysis: Analysis) -> None:
    """The packets of every point written into rolling stores, as a probe writes them while it meters,
    and a store without a packet index: the same pcapng as through the index."""
    directory = tmp_path / "packets"
    write_packet_stores(directory, segment_bytes=32 << 10, host="lab")
    trace = _trace(analysis)
    indexed, rolling = tmp_path / "indexed.pcapng", tmp_path / "rolling.pcapng"
    assert main(["pcap", trace.trace_id, "--store", _store(tmp_path / "a", analysis, True), "-o", str(indexed)]) == 0
    without = _store(tmp_path / "b", analysis, False)
    assert main(["pcap", trace.trace_id, "--store", without, "-o", str(rolling)]) == 1  # nothing indexed
    assert main(["pcap", trace.trace_id, "--store", without, "--packet-store", str(directory),
                 "-o", str(rolling)]) == 0  # fmt: skip
    assert rolling.read_bytes() == indexed.read_bytes()


def test_an_unknown_trace_is_one_line(tmp_path: Path, analysis: Analysis, capsys: pytest.CaptureFixture[str]) -> None:
    url = _store(tmp_path, analysis, True)
    assert main(["pcap", "e" * 32, "--store", url, "-o", str(tmp_path / "x.pcapng")]) == 1
    assert capsys.readouterr().err.strip() == f"hopscope: error: no trace {'e' * 32}"
    assert not (tmp_path / "x.pcapng").exists()


def test_an_output_that_cannot_be_written_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Checked before the store is read: no traceback, exit status 2, nothing written anywhere."""
    out = tmp_path / "no-such-dir" / "x.pcapng"
    assert main(["pcap", "e" * 32, "--store", f"chdb://{tmp_path / 'store'}", "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"hopscope: error: -o {out}: no directory {out.parent}"
    assert not out.parent.exists() and not (tmp_path / "store").exists()
