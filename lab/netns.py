"""Running commands in network namespaces, finding and removing a run's namespaces.

Every command goes through :func:`run` (``check=True``; a failure raises :class:`LabError` naming
the command and its stderr). Namespace names are ``<prefix><short>`` with prefix ``hs<6 hex>-``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence

from hopscope.errors import HopscopeError

log = logging.getLogger(__name__)

PREFIX_RE = re.compile(r"^hs[0-9a-f]{6}-$")
NETNS_RE = re.compile(r"^(hs[0-9a-f]{6}-)[a-z0-9]+$")


class LabError(HopscopeError):
    """A lab command failed (the message names the command and what it printed)."""


def new_prefix() -> str:
    """A fresh per-run prefix ``hs<6 hex>-``."""
    return f"hs{secrets.token_hex(3)}-"


def ns_cmd(netns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``netns`` (``None``: the current namespace)."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def run(
    argv: Sequence[str],
    netns: str | None = None,
    check: bool = True,
    timeout: float = 30,
    stdin: str | None = None,
) -> str:
    """Run a command (inside ``netns`` if given), return its stdout; raise LabError on failure."""
    full = ns_cmd(netns, argv)
    log.debug("run %s", " ".join(full))
    try:
        proc = subprocess.run(full, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {full[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"command timed out after {timeout} s: {' '.join(full)}") from exc
    if check and proc.returncode != 0:
        raise LabError(f"command failed ({proc.returncode}): {' '.join(full)}: {proc.stderr.strip()}")
    return proc.stdout


def ip(netns: str, *args: str) -> str:
    """``ip -n netns ARGS``."""
    return run(["ip", "-n", netns, *args])


def list_netns() -> list[str]:
    """Names of all named network namespaces."""
    out = run(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def lab_prefixes() -> list[str]:
    """Prefixes of every lab run whose namespaces still exist (crashed runs included)."""
    found = {m.group(1) for name in list_netns() if (m := NETNS_RE.match(name))}
    return sorted(found)


def netns_pids(netns: str) -> list[int]:
    """PIDs of the processes living in ``netns``."""
    out = run(["ip", "netns", "pids", netns], check=False)
    return [int(tok) for tok in out.split() if tok.isdigit()]


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie has ended: only its parent's wait is left)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_pids(pids: Sequence[int], grace_s: float = 3.0, kill_wait_s: float = 10.0) -> None:
    """SIGTERM each pid, then SIGKILL what is still alive after ``grace_s`` and wait (up to
    ``kill_wait_s``) until those have ended: a busy host can take a while to tear a big process down."""
    _signal_and_wait(pids, signal.SIGTERM, grace_s)
    _signal_and_wait([pid for pid in pids if _alive(pid)], signal.SIGKILL, kill_wait_s)


def _signal_and_wait(pids: Sequence[int], sig: signal.Signals, wait_s: float) -> None:
    """Send ``sig`` to each pid, then wait up to ``wait_s`` until none is alive."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)


def remove_prefix(prefix: str) -> list[str]:
    """Kill every process in the run's namespaces and delete them; return the names removed."""
    if not PREFIX_RE.match(prefix):
        raise LabError(f"not a lab prefix: {prefix!r} (expected hs<6 hex>-)")
    names = [n for n in list_netns() if n.startswith(prefix)]
    pids = sorted({pid for n in names for pid in netns_pids(n)})
    if pids:
        kill_pids(pids)
    for name in names:
        run(["ip", "netns", "del", name], check=False)
    remaining = [n for n in list_netns() if n.startswith(prefix)]
    if remaining:
        raise LabError(f"could not delete namespaces: {' '.join(remaining)}")
    return names


#: What ``lab up`` needs, and the Debian/PyPI package that brings each.
PREREQUISITES: tuple[tuple[str, str], ...] = (
    ("ip", "Debian package iproute2"),
    ("tc", "Debian package iproute2"),
    ("iptables", "Debian package iptables"),
    ("iptables-restore", "Debian package iptables"),
    ("ip6tables", "Debian package iptables"),
    ("ip6tables-restore", "Debian package iptables"),
    ("sysctl", "Debian package procps"),
    ("tcpdump", "Debian package tcpdump"),
    ("ethtool", "Debian package ethtool"),
)


def missing_prerequisites() -> list[str]:
    """One line per missing prerequisite (empty when all is there)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces need CAP_NET_ADMIN: run as root)")
    for exe, source in PREREQUISITES:
        if shutil.which(exe) is None:
            missing.append(f"{exe} ({source})")
    return missing
