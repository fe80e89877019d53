"""A plain progress bar on stderr (no dependency): bytes of capture read, by point."""

from __future__ import annotations

import sys
import time

AUTO_MIN_BYTES = 20_000_000


class Progress:
    """``advance(n)`` after reading n bytes; drawn at most 10 times a second, only if enabled."""

    def __init__(self, total_bytes: int, mode: str = "auto") -> None:
        self.total = max(1, total_bytes)
        self.done = 0
        self.label = ""
        self.enabled = mode == "on" or (mode == "auto" and total_bytes >= AUTO_MIN_BYTES and sys.stderr.isatty())
        self._drawn = 0.0
        self._start = time.monotonic()

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        if self.enabled and time.monotonic() - self._drawn >= 0.1:
            self._draw()

    def _draw(self) -> None:
        self._drawn = time.monotonic()
        frac = min(1.0, self.done / self.total)
        width = 30
        filled = int(frac * width)
        rate = self.done / max(1e-6, self._drawn - self._start) / 1e6
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {frac:5.1%} {rate:6.1f} MB/s {self.label:<20}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self.done = self.total
            self._draw()
            sys.stderr.write("\n")
