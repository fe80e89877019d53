"""Start-up of the hopscope command: CPU and wall time of ``hopscope --help``, ``hopscope flows --help``
and ``hopscope flows`` on a 200-packet capture, beside the bare interpreter and nfpcapd on that capture.

``hopscope --help`` imports no command module and ``hopscope NAME`` only its own (hopscope/cli), so
these figures are the fixed cost of each command before it reads a packet. Each command also reports
how many modules it imports (``python -X importtime``). Best of ``--repeat`` runs, pinned to CPU 0,
with bytecode caches written (``PYTHONDONTWRITEBYTECODE`` unset), as an installed package has them.

Usage: ``python bench/cli_startup.py [--repeat 21]``
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lines import bench_line
from probe_speed import VAR, generate  # the 200-packet capture probe_speed times start-up with

#: The environment of every run: bytecode caches written and used, as an installed package has them.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def best_of(cmd: list[str], repeat: int) -> tuple[float, float] | None:
    """Best (CPU, wall) seconds of ``repeat`` runs of ``cmd`` on CPU 0; None when the tool is missing."""
    if shutil.which(cmd[0]) is None:
        return None
    best_cpu = best_wall = float("inf")
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                       env=ENV)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best_cpu = min(best_cpu, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        best_wall = min(best_wall, wall)
    return best_cpu, best_wall


def modules_imported(args: list[str]) -> int:
    """Modules a ``python -m hopscope ARGS`` run imports."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "hopscope", *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, check=True, env=ENV)  # fmt: skip
    return sum(1 for line in proc.stderr.splitlines() if line.startswith("import time:") and "|" in line) - 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args(argv)
    VAR.mkdir(parents=True, exist_ok=True)
    tiny = VAR / "probe_mix_v2_200.pcap"
    if not tiny.exists():
        generate(tiny, 200)
    exe = str(Path(sys.executable).with_name("hopscope"))
    python = best_of([sys.executable, "-c", "pass"], args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        nfpcapd = best_of(["nfpcapd", "-r", str(tiny), "-w", tmp], args.repeat)
    commands = {"help": ["--help"], "flows_help": ["flows", "--help"], "flows_200_packets": ["flows", str(tiny)]}
    for name, words in commands.items():
        got = best_of([exe, *words], args.repeat)
        assert got is not None
        cpu, wall = got
        if name == "flows_200_packets" and nfpcapd:
            # ratio: hopscope's CPU over nfpcapd's (lower is better)
            print(bench_line(f"startup_{name}_cpu", cpu, "s", ("nfpcapd", nfpcapd[0]), cpu / nfpcapd[0]))
        else:
            print(bench_line(f"startup_{name}_cpu", cpu, "s", ("python_bare", python[0]) if python else None))
        print(bench_line(f"startup_{name}_wall", wall, "s"))
        print(bench_line(f"startup_{name}_modules", modules_imported(words), "modules"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
