"""The parts of hopscope's build that are code: the package list and the compiled kernels.

Everything else (metadata, dependencies, the folder of each subpackage) is in pyproject.toml.

Packages: every folder below a ``package-dir`` root of pyproject.toml is a package, with Python code
or with package data only (``api/static``, ``probes/csrc``, ``samples/lab``), so adding a subpackage
needs no list to be kept in step.

Kernels: plain CPython extensions in C (no numpy headers: columns cross as buffers). ``pip install``
builds them; an editable install puts them beside their Python modules (``probes/_meter...so``). The
pure-Python paths stay as the reference implementation and the fallback when a kernel is missing or
``HOPSCOPE_NATIVE=0``.
"""

import tomllib
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).parent
FLAGS = ["-O3", "-std=gnu11", "-fno-strict-aliasing", "-Wall", "-Wextra", "-Wno-unused-parameter"]
SKIP = {"__pycache__", "build"}


def packages() -> list[str]:
    """Each package-dir root and every folder below it (hidden, cache and build folders excepted)."""
    with open(ROOT / "pyproject.toml", "rb") as fh:
        roots: dict[str, str] = tomllib.load(fh)["tool"]["setuptools"]["package-dir"]
    found = []
    for name, folder in roots.items():
        base = ROOT / folder
        found.append(name)
        for sub in sorted(p for p in base.rglob("*") if p.is_dir()):
            rel = sub.relative_to(base).parts
            if not any(part in SKIP or part.startswith(".") or part.endswith(".egg-info") for part in rel):
                found.append(".".join((name, *rel)))
    return found


def kernel(name: str, *sources: str, depends: tuple[str, ...] = ()) -> Extension:
    return Extension(f"hopscope.probes.{name}", [f"probes/csrc/{s}" for s in sources], extra_compile_args=FLAGS,
                     depends=[f"probes/csrc/{d}" for d in depends])  # fmt: skip


setup(
    packages=packages(),
    ext_modules=[
        # flow metering, one packet at a time as probes/meter_reference.py specifies
        kernel("_meter", "meter.c", depends=("ids.h",)),
        kernel("_decode", "decode.c"),  # pcap/pcapng record walk and the decoder's fast path (probes/decode.py)
        kernel("_jsonl", "jsonl.c"),  # `hopscope flows --format jsonl` lines from record columns
        kernel("_ring", "ring.c"),  # TPACKET_V3 ring block walk for live capture (probes/live.py)
        kernel("_l7", "l7.c", depends=("ids.h",)),  # HTTP/1.x header blocks and payload hashes (probes/l7/http.py)
    ],
)
