"""API tokens and the token file: what ``hopscope token`` writes and ``hopscope serve --token-file`` reads.

A token is ``hst_`` followed by 43 URL-safe base64 characters: 256 bits from ``secrets``. It is shown
once, when it is made; the file keeps only a hash of it, so a copy of the file lets nobody call the API.

**Why SHA-256 and not scrypt or PBKDF2.** Key stretching exists to slow down guessing of secrets people
chose, which have few bits. A token here is 256 random bits: no dictionary holds it and no amount of
guessing reaches it, so a slow hash would protect nothing more, and it would cost its full price (tens
of milliseconds of CPU) on every API request, which verifies the token again. Each entry still has its
own 16-byte salt (the hash is ``SHA-256(salt || token)``), so two entries never share a digest and no
precomputed table applies to any file. Verification hashes the presented token with every entry's salt
and compares with ``hmac.compare_digest``, visiting all entries whatever matched: neither the time nor
the order of the comparisons depends on which entry, if any, it is.

The file is JSON, written whole to a temporary file and renamed over the old one, mode 0600::

    {"version": 1, "tokens": [{"name": "ui", "scopes": ["traces:read"], "tenant": null,
                               "salt": "<32 hex>", "sha256": "<64 hex>"}]}

Scopes (``SCOPES``): ``traces:read`` reads traces, flows, requests and topology; ``pcap:read`` will
read packet captures; ``metrics:read`` reads the server's Prometheus metrics (``/metrics``: what a
Prometheus scrape needs, nothing more); ``admin`` grants every scope. ``tenant`` names the store the
token reads (the ``--tenant-store`` of ``hopscope serve``); none reads the server's ``--store``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hopscope.errors import ConfigError

TRACES_READ = "traces:read"
PCAP_READ = "pcap:read"
METRICS_READ = "metrics:read"
ADMIN = "admin"
#: Every scope a token may hold; ``admin`` implies the others.
SCOPES: tuple[str, ...] = (TRACES_READ, PCAP_READ, METRICS_READ, ADMIN)

TOKEN_PREFIX = "hst_"
TOKEN_BYTES = 32  # 256 bits
SALT_BYTES = 16
FILE_VERSION = 1
#: Token and tenant names: letters, digits, ``_.-``, at most 64.
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One token as the file keeps it: never the token itself."""

    name: str  # unique in the file; in logs and ``hopscope token list``
    scopes: frozenset[str]  # from SCOPES
    tenant: str | None  # the tenant whose store the token reads; None: the server's --store
    salt: bytes  # SALT_BYTES random bytes, this entry's own
    digest: bytes  # SHA-256(salt || token)

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes


def new_token() -> str:
    """A fresh token: the prefix and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str, salt: bytes) -> bytes:
    return hashlib.sha256(salt + token.encode()).digest()


def check_name(kind: str, name: str) -> str:
    if not NAME.fullmatch(name):
        raise ConfigError(f"{kind} {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    return name


def make_entry(token: str, name: str, scopes: list[str], tenant: str | None) -> TokenEntry:
    """The entry of ``token``, with a new salt; names and scopes checked."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ConfigError(f"scopes must be some of {', '.join(SCOPES)}, not {', '.join(unknown) or 'none'}")
    salt = secrets.token_bytes(SALT_BYTES)
    tenant = check_name("tenant", tenant) if tenant is not None else None
    return TokenEntry(check_name("token name", name), frozenset(scopes), tenant, salt, token_digest(token, salt))


def load_tokens(path: str | Path) -> tuple[TokenEntry, ...]:
    """The entries of a token file; a missing or malformed file is ``ConfigError`` naming it."""
    try:
        document = json.loads(Path(path).read_text())
        if document.get("version") != FILE_VERSION:
            raise ConfigError(f"token file {path}: version {document.get('version')!r}, expected {FILE_VERSION}")
        entries = tuple(_entry(row) for row in document["tokens"])
    except FileNotFoundError:
        raise ConfigError(f"token file {path} does not exist (create it with: hopscope token add)") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"token file {path} is not a hopscope token file: {exc}") from None
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ConfigError(f"token file {path} names a token twice")
    return entries


def _entry(row: dict[str, Any]) -> TokenEntry:
    scopes = frozenset(str(s) for s in row["scopes"])
    if not scopes <= set(SCOPES):
        raise ValueError(f"unknown scopes {sorted(scopes - set(SCOPES))}")
    tenant = row.get("tenant")
    salt, digest = bytes.fromhex(row["salt"]), bytes.fromhex(row["sha256"])
    if len(digest) != hashlib.sha256().digest_size or len(salt) != SALT_BYTES:
        raise ValueError(f"entry {row['name']!r}: salt or digest of the wrong length")
    return TokenEntry(check_name("token name", str(row["name"])), scopes,
                      None if tenant is None else check_name("tenant", str(tenant)), salt, digest)  # fmt: skip


def save_tokens(path: str | Path, entries: tuple[TokenEntry, ...]) -> None:
    """Write the file whole, mode 0600, replacing the old one in one rename."""
    rows = [
        {"name": e.name, "scopes": sorted(e.scopes), "tenant": e.tenant, "salt": e.salt.hex(), "sha256": e.digest.hex()}
        for e in entries
    ]
    target = Path(path)
    try:
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    except OSError as exc:
        raise ConfigError(f"cannot write token file {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"version": FILE_VERSION, "tokens": rows}, fh, indent=1)
            fh.write("\n")
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise


def add_token(path: str | Path, name: str, scopes: list[str], tenant: str | None = None) -> str:
    """Add a new token named ``name`` to the file (created if missing); return the token, in clear."""
    entries = load_tokens(path) if Path(path).exists() else ()
    if any(e.name == name for e in entries):
        raise ConfigError(f"token file {path} has a token named {name!r} already (remove it first)")
    token = new_token()
    save_tokens(path, (*entries, make_entry(token, name, scopes, tenant)))
    return token


def remove_token(path: str | Path, name: str) -> None:
    entries = load_tokens(path)
    if not any(e.name == name for e in entries):
        raise ConfigError(f"token file {path} has no token named {name!r}")
    save_tokens(path, tuple(e for e in entries if e.name != name))


class TokenVerifier:
    """Finds the entry of a presented token."""

    def __init__(self, entries: tuple[TokenEntry, ...]) -> None:
        self.entries = entries

    @property
    def tenants(self) -> set[str]:
        return {e.tenant for e in self.entries if e.tenant is not None}

    def verify(self, token: str) -> TokenEntry | None:
        """The entry ``token`` belongs to, or None. Every entry is compared, in constant time each."""
        found = None
        for entry in self.entries:
            if hmac.compare_digest(token_digest(token, entry.salt), entry.digest):
                found = entry
        return found
