"""``hopscope serve`` as a user runs it: a subprocess on a free loopback port. Bad arguments and
failed binds are one line and a non-zero exit, and the ``serving`` line appears only once the port
is bound."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hopscope.store import store_from_url

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hopscope", "serve", *args],
        capture_output=True, text=True, timeout=timeout_s, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip


@pytest.fixture
def chdb_url(tmp_path: Path) -> Iterator[str]:
    url = f"chdb://{tmp_path / 'chdb'}"
    store = store_from_url(url)
    store.ensure_schema()
    store.close()
    yield url


@pytest.mark.parametrize(
    ("port", "message"),
    [("70000", "port must be in 1..65535, not 70000"), ("0", "port must be in 1..65535, not 0"),
     ("-1", "port must be in 1..65535"), ("http", "port must be a number")],
)  # fmt: skip
def test_bad_port_is_refused_at_parse_time(chdb_url: str, port: str, message: str) -> None:
    r = serve("--store", chdb_url, "--port", port)
    assert r.returncode == 2
    assert r.stdout == ""
    assert message in r.stderr and "Traceback" not in r.stderr


def test_port_in_use(chdb_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = serve("--store", chdb_url, "--port", str(port))
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"hopscope: error: cannot listen on 127.0.0.1:{port}: address in use"]


@pytest.mark.parametrize(
    ("host", "reason"),
    [("192.0.2.1", "address not available on this host"), ("no-such-host.invalid", "unknown host")],
)
def test_bad_listen_address(chdb_url: str, host: str, reason: str) -> None:
    port = _free_port()
    r = serve("--store", chdb_url, "--host", host, "--port", str(port), "--insecure")
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hopscope: error: cannot listen on {host}:{port}: {reason}")


def test_serving_line_names_the_bound_url_and_store(chdb_url: str) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hopscope", "serve", "--store", chdb_url, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == f"hopscope: serving {chdb_url} on http://127.0.0.1:{port}/\n"
        # the line comes after the bind: the port answers (the kernel queues the connection at once)
        r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
        assert r.status_code == 200 and r.json()["store"] == chdb_url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM)  # uvicorn shuts down, then re-raises the signal


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--max-heavy-queries", "0", "must be above 0"), ("--query-timeout", "-1", "must be above 0"),
     ("--query-timeout", "soon", "not a number")],
)  # fmt: skip
def test_bad_load_options(chdb_url: str, option: str, value: str, message: str) -> None:
    r = serve("--store", chdb_url, option, value)
    assert r.returncode == 2 and r.stdout == "" and message in r.stderr
