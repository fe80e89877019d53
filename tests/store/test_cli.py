"""``hopscope store init|status|ddl|reset`` on chDB in the tests' temporary directory."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from hopscope.cli import main


def test_store_commands(chdb_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"chdb://{chdb_dir}?database=cli_{uuid.uuid4().hex[:8]}"
    assert main(["store", "init", "--store", url]) == 0
    assert "tables flows, requests, spans, traces, packet_index, edges_1m, links_1m ready" in capsys.readouterr().out
    assert main(["store", "status", "--store", url]) == 0
    status = capsys.readouterr().out
    for table in ("flows", "requests", "spans", "traces", "packet_index"):
        assert f"  {table}" in status
    assert main(["store", "ddl", "--store", url]) == 0
    assert "ENGINE = ReplacingMergeTree(`version`)" in capsys.readouterr().out
    assert main(["store", "reset", "--store", url]) == 0
    assert "dropped" in capsys.readouterr().out


def test_store_command_server_down(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["store", "status", "--store", f"clickhouse://127.0.0.1:{port}/x"]) == 3
    assert f"127.0.0.1:{port} is unreachable" in capsys.readouterr().err
