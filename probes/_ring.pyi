"""Type stub of the C kernel hopscope.probes._ring (probes/csrc/ring.c)."""

from collections.abc import Sequence

from typing_extensions import Buffer

def gather(
    ring: Buffer,
    block_bytes: int,
    blocks: Sequence[int],
    out: Buffer,
    offset: Buffer,
    ts_ns: Buffer,
    caplen: Buffer,
    origlen: Buffer,
    cooked: bool,
    /,
) -> tuple[int, int]: ...
