"""The mTLS lab pieces without root: the CA and certificates openssl makes, the sidecar configs filled
with them and checked by the sidecars' own config checkers, the option parsed and refused alone."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hopscope.cli import command_parser
from hopscope.errors import ConfigError
from hopscope.lab import mtls, services
from hopscope.lab.lab import Lab
from hopscope.lab.pki import Pki, make_pki, spiffe_id
from hopscope.lab.topology import SERVER_IPS, WEB_CLUSTER_IP

SERVERS = ("server1", "server2")
CLIENTS = ("client1", "client2")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return make_pki(tmp_path_factory.mktemp("pki"), {**mtls.server_leaves(SERVERS, SERVER_IPS),
                                                     **mtls.client_leaves(CLIENTS)})


def openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True, timeout=30).stdout


def test_every_certificate_is_signed_by_the_ca_for_both_ends(pki: Pki) -> None:
    assert sorted(pki.identities) == ["client1-egress", "client2-egress", "server1", "server2"]
    for ident in pki.identities.values():
        assert "OK" in openssl("verify", "-CAfile", str(pki.ca_cert), "-purpose", "sslserver", str(ident.cert))
        assert "OK" in openssl("verify", "-CAfile", str(pki.ca_cert), "-purpose", "sslclient", str(ident.cert))
    server = openssl("x509", "-in", str(pki.identities["server1"].cert), "-noout", "-ext", "subjectAltName")
    assert "DNS:web.default.svc.cluster.local" in server and f"IP Address:{SERVER_IPS['server1']}" in server
    client = openssl("x509", "-in", str(pki.identities["client2-egress"].cert), "-noout", "-ext", "subjectAltName")
    assert f"URI:{spiffe_id('client2')}" in client
    assert len(pki.ticket_key.read_bytes()) == 80


def test_a_certificate_from_another_ca_does_not_verify(pki: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path, {"intruder": ("DNS:web.default.svc.cluster.local",)})
    out = subprocess.run(["openssl", "verify", "-CAfile", str(pki.ca_cert), str(other.identities["intruder"].cert)],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode != 0


def test_openssl_failure_is_one_clear_error(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    with pytest.raises(Exception, match="openssl x509 failed"):
        make_pki(tmp_path, {"bad": ("NOTATYPE:x",)})


@pytest.mark.parametrize("kind", services.SIDECARS)
def test_server_sidecar_config_with_mtls_passes_its_own_check(pki: Pki, kind: str, tmp_path: Path) -> None:
    binary = services.find_sidecar(kind)
    if binary is None:
        pytest.skip(f"{kind} is not installed")
    tls = mtls.server_placeholders(kind, pki, "server1")
    if kind == "envoy":
        text = services.envoy_config("127.0.0.1", "server1", tmp_path / "access.log", tls=tls)
        assert "require_client_certificate" in text and "DownstreamTlsContext" in text
    else:
        text = services.sidecar_config(kind, "127.0.0.1", "server1", tmp_path, tls=tls)
        assert str(pki.ca_cert) in text and "x-hs-tls-peer" in text
    assert "${" not in text
    check(kind, binary, text, tmp_path)


@pytest.mark.parametrize("kind", ["envoy", "haproxy"])
def test_client_sidecar_config_with_mtls_passes_its_own_check(pki: Pki, kind: str, tmp_path: Path) -> None:
    binary = services.find_sidecar(kind)
    if binary is None:
        pytest.skip(f"{kind} is not installed")
    tls = mtls.egress_placeholders(kind, pki, "client1")
    text = services.egress_config(kind, "client1", WEB_CLUSTER_IP, 80, tls=tls)
    ident = pki.identities["client1-egress"]
    assert str(ident.cert if kind == "envoy" else ident.bundle) in text
    assert mtls.SERVICE_NAME in text and "${" not in text
    check(kind, binary, text, tmp_path)


def check(kind: str, binary: str, text: str, tmp_path: Path) -> None:
    """The sidecar's own config check: envoy --mode validate, nginx -t, haproxy -c."""
    cfg = tmp_path / f"{kind}.{'yaml' if kind == 'envoy' else 'conf'}"
    cfg.write_text(text)
    argv = {"envoy": [binary, "--mode", "validate", "-c", str(cfg)],
            "nginx": [binary, "-t", "-c", str(cfg)],
            "haproxy": [binary, "-c", "-f", str(cfg)]}[kind]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]


def test_plaintext_configs_have_no_tls() -> None:
    assert "transport_socket" not in services.egress_config("envoy", "client1", WEB_CLUSTER_IP, 80)
    assert " ssl" not in services.egress_config("haproxy", "client1", WEB_CLUSTER_IP, 80)


def test_mtls_without_a_client_sidecar_is_refused() -> None:
    with pytest.raises(ConfigError, match="--mtls needs a client sidecar"):
        Lab(mtls=True)
    assert Lab(client_sidecar="haproxy", mtls=True).mtls


@pytest.mark.parametrize("action", ["up", "run", "check"])
def test_mtls_option_parses(action: str) -> None:
    extra = ["--out", "x"] if action == "run" else []
    parser = command_parser("lab")
    args = parser.parse_args([action, "--client-sidecar", "envoy", "--mtls", *extra])
    assert args.mtls and args.client_sidecar == "envoy"
    assert not parser.parse_args([action, *extra]).mtls
