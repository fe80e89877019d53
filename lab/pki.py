"""The lab's mutual-TLS certificates (``--mtls``): a small CA and one certificate per sidecar.

Made with the ``openssl`` command line at ``lab up``, in the run directory: ECDSA P-256 keys, a CA
valid for two days, and leaf certificates it signs with both ``serverAuth`` and ``clientAuth`` (a
mesh's workload certificates serve both ends). A server sidecar's certificate names the web Service
(``DNS:web.default.svc.cluster.local``, what the client sidecars verify) and its pod IP; a client
sidecar's names its workload as a SPIFFE id, as a mesh's identity does
(``URI:spiffe://cluster.local/ns/default/sa/<pod>``).
"""

from __future__ import annotations

import base64
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hopscope.lab.netns import LabError

CA_NAME = "hopscope-lab-ca"
TRUST_DOMAIN = "cluster.local"
#: TLS version the lab's sidecars speak to each other: Envoy's upstream default (its clients offer
#: at most TLS 1.2), set on the others too so every cell runs the same record layer.
MTLS_VERSION = "TLSv1.2"


@dataclass(frozen=True, slots=True)
class Identity:
    """One sidecar's certificate: PEM files of the certificate, its key, and both in one (haproxy)."""

    name: str
    sans: tuple[str, ...]
    cert: Path
    key: Path
    bundle: Path


@dataclass(frozen=True, slots=True)
class Pki:
    """The CA, every sidecar's identity, and the session-ticket keys the server sidecars share (as a
    load-balanced fleet does, so a session resumes whichever server pod the Service picks): one key
    of 80 raw bytes (Envoy, nginx) and three base64-encoded, one a line (haproxy's tls-ticket-keys
    file wants at least three)."""

    ca_cert: Path
    identities: dict[str, Identity]
    ticket_key: Path
    ticket_key_b64: Path


def spiffe_id(pod: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{pod}"


def _openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
    if out.returncode != 0:
        raise LabError(f"openssl {args[0]} failed ({out.returncode}): {out.stderr.strip()[-500:]}")


def _ec_key_args(key: Path) -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key)]


def make_pki(directory: Path, leaves: dict[str, tuple[str, ...]]) -> Pki:
    """A CA and one leaf per entry of ``leaves`` (name -> subject alt names such as ``DNS:x``, ``IP:y``,
    ``URI:z``) in ``directory``; raises LabError with openssl's message when it fails."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    _openssl("req", "-x509", *_ec_key_args(ca_key), "-out", str(ca_cert), "-days", "2",
             "-subj", f"/CN={CA_NAME}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    identities: dict[str, Identity] = {}
    for name, sans in leaves.items():
        key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
        ext = directory / f"{name}.ext"
        ext.write_text(f"subjectAltName={','.join(sans)}\nextendedKeyUsage=serverAuth,clientAuth\n"
                       "keyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n")
        _openssl("req", "-new", *_ec_key_args(key), "-out", str(csr), "-subj", f"/CN={name}", cwd=directory)
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
                 "-out", str(cert), "-days", "2", "-extfile", str(ext), cwd=directory)
        bundle = directory / f"{name}.bundle.pem"
        bundle.write_text(cert.read_text() + key.read_text())
        identities[name] = Identity(name, sans, cert, key, bundle)
    tickets = [os.urandom(80) for _ in range(3)]
    ticket_key, ticket_b64 = directory / "ticket.key", directory / "ticket.key.b64"
    ticket_key.write_bytes(tickets[0])
    ticket_b64.write_text("".join(base64.b64encode(t).decode() + "\n" for t in tickets))
    return Pki(ca_cert, identities, ticket_key, ticket_b64)
