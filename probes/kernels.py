"""Which compiled kernels (``probes/csrc/*.c``, built by setup.py) this process uses.

Every kernel has a pure-Python/numpy twin that stays the reference implementation: the tests run both
and compare them. ``HOPSCOPE_NATIVE=0`` in the environment turns every kernel off (the reference path
runs); a kernel that was not built (no compiler at install time) is reported once in the log and the
reference path runs instead.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

log = logging.getLogger(__name__)
_cache: dict[str, ModuleType | None] = {}


def enabled() -> bool:
    """False when ``HOPSCOPE_NATIVE=0`` (or ``off``/``false``/``no``) asks for the reference paths."""
    return os.environ.get("HOPSCOPE_NATIVE", "1").strip().lower() not in ("0", "off", "false", "no")


def load(name: str) -> ModuleType | None:
    """The kernel module ``hopscope.probes.<name>`` (e.g. ``"_meter"``), or None when off or not built."""
    if not enabled():
        return None
    if name not in _cache:
        try:
            _cache[name] = importlib.import_module(f"hopscope.probes.{name}")
        except ImportError as exc:
            log.warning("compiled kernel %s not available (%s): using the reference path", name, exc)
            _cache[name] = None
    return _cache[name]
