"""``hopscope serve`` with tokens and TLS, and ``hopscope token``, run as a user runs them: an open API
on a non-loopback address is refused before binding; HTTPS with a self-signed certificate made here,
verified by the client; the token printed once and never written."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hopscope.records import Batch, Span, Trace
from hopscope.store import store_from_url
from tests.api.test_serve import ROOT, _free_port, serve
from tests.topology.paths import lab_trace


def hopscope(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hopscope", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)  # fmt: skip


@pytest.fixture
def chdb_url(tmp_path: Path) -> Iterator[str]:
    """A chDB store holding one trace."""
    url = f"chdb://{tmp_path / 'chdb'}"
    store = store_from_url(url)
    store.ensure_schema()
    trace, spans = lab_trace(1)
    store.insert("traces", Batch.from_records(Trace, [trace]))
    store.insert("spans", Batch.from_records(Span, spans))
    store.close()
    yield url


def add(token_file: Path, name: str, *options: str) -> str:
    r = hopscope("token", "add", "--token-file", str(token_file), "--name", name, *options)
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"hopscope: token {name!r} added to {token_file}; it is shown only now\n"
    return r.stdout.strip()


def test_token_command(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens.json"
    ui = add(token_file, "ui", "--scope", "traces:read")
    ops = add(token_file, "ops", "--scope", "traces:read", "--scope", "pcap:read", "--tenant", "acme")
    assert ui.startswith("hst_") and ui != ops
    text = token_file.read_text()
    assert ui not in text and ops not in text
    listed = hopscope("token", "list", "--token-file", str(token_file))
    assert listed.stdout == "ui\ttraces:read\t-\nops\tpcap:read,traces:read\tacme\n"
    again = hopscope("token", "add", "--token-file", str(token_file), "--name", "ui", "--scope", "admin")
    assert again.returncode == 2 and again.stdout == "" and "named 'ui' already" in again.stderr
    bad = hopscope("token", "add", "--token-file", str(token_file), "--name", "x", "--scope", "traces:write")
    assert bad.returncode == 2 and "invalid choice: 'traces:write'" in bad.stderr
    assert hopscope("token", "remove", "--token-file", str(token_file), "--name", "ui").returncode == 0
    assert hopscope("token", "list", "--token-file", str(token_file)).stdout == "ops\tpcap:read,traces:read\tacme\n"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "obs.example"])
def test_open_api_off_loopback_is_refused_before_binding(chdb_url: str, host: str) -> None:
    with socket.socket() as taken:  # the port is in use: a bind would fail with another message
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        r = serve("--store", chdb_url, "--host", host, "--port", port)
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr.splitlines() == [
            f"hopscope: error: refusing to serve {host} without --token-file: anyone who reaches it could read "
            "every trace (give --token-file, listen on 127.0.0.1, or accept that with --insecure)"
        ]
        insecure = serve("--store", chdb_url, "--host", "127.0.0.1", "--port", port, "--insecure")
        assert insecure.stderr.splitlines() == [f"hopscope: error: cannot listen on 127.0.0.1:{port}: address in use"]


@pytest.mark.parametrize(
    ("options", "message"),
    [(["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
     (["--tls-cert", "missing.pem", "--tls-key", "missing.pem"], "cannot load --tls-cert missing.pem"),
     (["--tenant-store", "acme=chdb:///x"], "--tenant-store needs --token-file"),
     (["--tenant-store", "acme"], "expected TENANT=URL"),
     (["--tenant-store", "a/b=chdb:///x"], "tenant 'a/b' must be 1-64 letters")],
)  # fmt: skip
def test_bad_security_options(chdb_url: str, options: list[str], message: str) -> None:
    r = serve("--store", chdb_url, *options)
    assert r.returncode == 2 and r.stdout == "" and message in r.stderr, r.stderr


def test_a_tenant_without_a_store_is_refused(chdb_url: str, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens.json"
    add(token_file, "acme", "--scope", "traces:read", "--tenant", "acme")
    r = serve("--store", chdb_url, "--token-file", str(token_file))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"hopscope: error: {token_file} names tenants without a store: acme (give --tenant-store TENANT=URL)"
    ]


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, made with the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls_with_tokens(chdb_url: str, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    token_file = tmp_path / "tokens.json"
    token = add(token_file, "ui", "--scope", "traces:read")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hopscope", "serve", "--store", chdb_url, "--port", str(_free_port()), "--token-file",
         str(token_file), "--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"hopscope: serving {chdb_url} on https://127.0.0.1:"), line
        base = line.split(" on ")[1].strip().rstrip("/")
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), timeout=30) as client:
            r = client.get(f"{base}/api/v1/traces", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and r.json()["count"] == 1
            assert client.get(f"{base}/api/v1/traces").status_code == 401
        with pytest.raises(httpx.ConnectError), httpx.Client(timeout=30) as unverified:
            unverified.get(f"{base}/healthz")  # the system's CAs do not know the certificate
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert "authentication failed: client 127.0.0.1, GET /api/v1/traces: no bearer token" in stderr
    assert token not in stderr
