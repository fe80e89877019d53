"""``hopscope analyze`` end to end: lab captures in, JSON or summary out, records and traces stored."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hopscope.cli import main

LAB = Path(__file__).resolve().parents[2] / "samples" / "lab"
MANIFEST = LAB / "manifest.json"
needs_lab = pytest.mark.skipif(not MANIFEST.is_file(), reason="no lab samples committed")


@needs_lab
def test_analyze_json_is_stored_and_follows_the_schema(tmp_path: Path) -> None:
    out = tmp_path / "traces.json"
    store_dir = tmp_path / "chdb"
    rc = main(["analyze", "--manifest", str(MANIFEST), "--format", "json", "--store", f"chdb://{store_dir}",
               "-o", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "hopscope.traces/1" and doc["traces"]
    for trace in doc["traces"]:
        assert {"trace_id", "kind", "request", "hops", "error", "min_confidence"} <= trace.keys()
        assert [h["hop_index"] for h in trace["hops"]] == list(range(len(trace["hops"])))
        for hop in trace["hops"]:
            assert {"point", "request_first_ns", "response_first_ns", "link_reason", "link_confidence"} <= hop.keys()
    from hopscope.store import store_from_url

    store = store_from_url(f"chdb://{store_dir}")
    try:
        assert store.count("traces") == len(doc["traces"])
        some = doc["traces"][len(doc["traces"]) // 2]
        trace, spans = store.get_trace(some["trace_id"])
        assert trace is not None and [s.point for s in spans] == [h["point"] for h in some["hops"]]
    finally:
        store.close()


@needs_lab
def test_analyze_summary_names_links_and_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    points = [f"--point={name}={LAB / (name + '.pcap')}" for name in ("client1-pod", "nodeA-pre-nat", "nodeB")]
    rc = main(["analyze", *points, "--hop-kind", "nodeA-pre-nat=nat", "--no-store"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "slowest" in text and "failed:" in text and "per-link latency" in text
    assert "client1-pod>nodeA-pre-nat" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["analyze"], "no captures"),
        (["analyze", "--point", "x"], "NAME=VALUE"),
        (["analyze", "--point", "x=/nonexistent.pcap"], "no file"),
        (["analyze", "--point", f"x={os.devnull}", "--hop-kind", "y=nat"], "no capture"),
        (["analyze", "--point", f"x={os.devnull}", "--hop-kind", "x=bogus"], "--hop-kind x=bogus: unknown kind"),
        (["analyze", "--manifest", "/nonexistent/manifest.json"], "cannot read it"),
        (["analyze", "--manifest", __file__], "not JSON"),
        (["analyze", "--manifest", str(LAB / "inventory.yaml")], "not JSON"),
        (["analyze", "--point", f"x={os.devnull}", "-o", "/nonexistent/out.json"],
         "-o /nonexistent/out.json: no directory"),
        (["analyze", "--point", f"x={os.devnull}", "--save-capture-set", os.path.dirname(__file__)], "is a directory"),
        (["analyze", "--point", f"x={os.devnull}", "--store", "clickhose://127.0.0.1:9000/x"], "unknown store URL"),
        (["analyze", "--point", f"x={os.devnull}", "--otlp", "127.0.0.1:4318"], "--otlp expects"),
        (["analyze", "--point", f"x={os.devnull}", "--otlp", "http://127.0.0.1:4318",
          "--inventory", "/nonexistent.yaml"], "inventory /nonexistent.yaml"),
    ],
)
def test_analyze_rejects_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad arguments are exit status 2 and one line on stderr naming the problem, never a traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


@needs_lab
def test_analyze_draws_a_progress_bar_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["analyze", str(LAB / "client1-pod.pcap"), str(LAB / "nodeB.pcap"), "--no-store", "--progress", "on"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "100.0%" in err and "MB/s" in err
