"""The machine-readable line every benchmark ends with, one per figure:

    bench: <name> <value> <unit> [peer <name> <value> <unit>] [ratio <r>]

``peer`` is the peer run's name and its value in the same unit; ``ratio`` is whatever quotient the
script says makes "higher is better" clear (a comment beside each call says which).
"""

from __future__ import annotations

import math


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.3g}"


def bench_line(
    name: str, value: float, unit: str, peer: tuple[str, float] | None = None, ratio: float | None = None
) -> str:
    """``bench: NAME VALUE UNIT [peer PEER_NAME PEER_VALUE UNIT] [ratio R]``."""
    text = f"bench: {name} {_number(value)} {unit}"
    if peer is not None:
        text += f" peer {peer[0]} {_number(peer[1])} {unit}"
    if ratio is not None:
        text += f" ratio {_number(ratio)}"
    return text
