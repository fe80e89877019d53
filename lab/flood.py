"""The lab's packet flood: build and run ``lab/flood.c`` (replays a pcap's frames on an interface, in C).

``build_flood()`` compiles the generator with gcc into ``var/bin/flood`` (again only when the source is
newer; deploy/setup.sh builds it too); ``run_flood()`` runs it in a network namespace on one CPU and
returns what it sent. The generator sends with sendmmsg on a packet socket with the qdisc bypassed,
paced to a rate or flat out, replaying the capture in cycles that renumber the IPv4 addresses (every
cycle is new connections); see flood.c's header.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hopscope.errors import ConfigError
from hopscope.paths import var_dir

SOURCE = Path(__file__).resolve().parent / "flood.c"
CFLAGS = ("-O2", "-std=gnu11", "-Wall", "-Wextra")


@dataclass(frozen=True, slots=True)
class FloodResult:
    """What one run of the generator did."""

    sent: int  # frames sent
    seconds: float  # wall time of the send loop
    frames: int  # frames loaded from the capture (one cycle)
    cycles: int  # complete replays of the capture after the first
    errors: int  # failed send calls

    @property
    def pps(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def build_flood(out_dir: Path | None = None) -> Path:
    """Compile flood.c into ``out_dir`` (default var/bin) unless the binary is newer than the source."""
    binary = (out_dir or var_dir() / "bin") / "flood"
    if not binary.exists() or binary.stat().st_mtime < SOURCE.stat().st_mtime:
        binary.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["gcc", *CFLAGS, "-o", str(binary), str(SOURCE)], capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"cannot build the flood generator from {SOURCE}:\n{done.stderr}")
    return binary


def prioritized(nice: str, cmd: list[str]) -> list[str]:
    """``cmd`` in a session of its own whose scheduler autogroup runs at ``nice`` (with autogroups on,
    a plain ``nice`` only weighs a process against its own session's; this weighs it against the
    machine's other sessions). Root needed for a negative value."""
    script = 'echo "$0" > /proc/self/autogroup 2>/dev/null; exec nice -n "$0" "$@"'
    return ["setsid", "sh", "-c", script, nice, *cmd]


def run_flood(
    iface: str,
    capture: Path,
    *,
    pps: int = 0,
    seconds: float = 5.0,
    netns: str | None = None,
    cpu: str | None = None,
    max_frames: int | None = None,
    tag: int = 0,
    priority: str = "",
    binary: Path | None = None,
) -> FloodResult:
    """Replay ``capture`` on ``iface`` (in ``netns``, pinned to ``cpu``) at ``pps`` (0: flat out).

    ``tag`` (1-255) moves the addresses to a space of their own (generators side by side); ``priority``
    ``"idle"`` runs the generator as SCHED_IDLE (it only gets what the CPU's other tasks leave), a number
    runs it at that nice level in an autogroup of its own (``prioritized``).
    """
    cmd = [str(binary or build_flood()), iface, str(capture), "--pps", str(pps), "--seconds", str(seconds)]
    if max_frames is not None:
        cmd += ["--max-frames", str(max_frames)]
    if tag:
        cmd += ["--tag", str(tag)]
    if priority == "idle":
        cmd = ["chrt", "--idle", "0", *cmd]
    elif priority:
        cmd = prioritized(priority, cmd)
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"flood failed ({done.returncode}): {done.stderr.strip()}")
    return FloodResult(**json.loads(done.stdout.strip().splitlines()[-1]))
