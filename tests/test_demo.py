"""The README's main command: `hopscope demo` on the embedded default, as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_stitches_the_samples_and_reads_them_back(tmp_path: Path) -> None:
    env = {**os.environ, "HOPSCOPE_VAR": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "hopscope", "demo"], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert re.search(r"^\d+ traces \(\d+ requests", out, re.M), out
    # The slowest request crossed the NAT (addresses change, the link is by sequence number) and
    # the envoy sidecar (a new connection on loopback).
    hop = re.compile(r"^\s*\d+\s+\S+\s+(pod|nat|node|hypervisor|switch|proxy)\b")
    hop_lines = [line for line in out.splitlines() if hop.match(line)]
    assert len(hop_lines) >= 7, out
    assert any("l7:req_tcp_seq" in line for line in hop_lines)
    assert any("proxy:" in line for line in hop_lines)
    assert f"chdb://{tmp_path}" in out
    stored = re.search(r"stored: (\d+) flows, (\d+) requests, (\d+) spans, (\d+) traces", out)
    assert stored and all(int(n) > 0 for n in stored.groups()), out
