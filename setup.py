"""Compiled kernels of hopscope.probes (everything else is configured in pyproject.toml).

Each kernel is a plain CPython extension in C (no numpy headers: columns cross as buffers), built by
``pip install -e .`` and, for Python run from the checkout, in place by ``deploy/setup.sh``
(``python setup.py build_ext --inplace``). The pure-Python/numpy paths stay as the reference
implementation and the fallback when a kernel is missing or ``HOPSCOPE_NATIVE=0``.
"""

from setuptools import Extension, setup

FLAGS = ["-O3", "-std=gnu11", "-fno-strict-aliasing", "-Wall", "-Wextra", "-Wno-unused-parameter"]


def kernel(name: str, *sources: str, depends: tuple[str, ...] = ()) -> Extension:
    return Extension(f"hopscope.probes.{name}", [f"probes/csrc/{s}" for s in sources], extra_compile_args=FLAGS,
                     depends=[f"probes/csrc/{d}" for d in depends])  # fmt: skip


setup(
    ext_modules=[
        # flow metering: flow table, TCP state machine, records (probes/meter.py)
        kernel("_meter", "meter.c", depends=("hashes.h",)),
        kernel("_decode", "decode.c"),  # pcap/pcapng record walk and the decoder's fast path (probes/decode.py)
        kernel("_jsonl", "jsonl.c"),  # `hopscope flows --format jsonl` lines from record columns
        kernel("_ring", "ring.c"),  # TPACKET_V3 ring block walk for live capture (probes/live.py)
    ],
)
