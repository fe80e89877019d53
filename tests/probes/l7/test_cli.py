"""``hopscope requests FILE``: the L7 stage on a capture file, from the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hopscope.cli import main
from tests.probes.l7.test_tshark import h2c_capture

LAB = Path(__file__).resolve().parents[3] / "samples" / "lab"


def test_requests_of_a_lab_capture_as_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    pcap = LAB / "client1-pod.pcap"
    if not pcap.exists():
        pytest.skip(f"{pcap} is absent")
    assert main(["requests", str(pcap), "--point", "c1", "--hop-kind", "pod", "--stats"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert {r["l7_proto"] for r in rows} == {"http", "dns"}
    assert all(r["point"] == "c1" and r["hop_kind"] == "pod" for r in rows)
    assert [r["req_first_ns"] for r in rows] == sorted(r["req_first_ns"] for r in rows)
    assert json.loads(err)["http_requests"] == sum(r["l7_proto"] == "http" for r in rows)


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark (Debian package) not installed")
def test_deep_adds_http2_streams_joined_to_the_flow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h2c_capture(tmp_path / "h2c.pcap")
    assert main(["requests", str(tmp_path / "h2c.pcap"), "--deep"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["l7_proto"], r["path"], r["status"]) for r in rows] == [
        ("http2", "/h2/a", 404),
        ("grpc", "/pkg.Svc/Call", 200),
    ]
    assert main(["flows", str(tmp_path / "h2c.pcap")]) == 0
    (flow,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["flow_id"] for r in rows} == {int(flow["uid"], 16)}
