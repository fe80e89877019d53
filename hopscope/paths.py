"""Where hopscope finds its shipped data and keeps its runtime state."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

#: The folder above the ``hopscope`` package: the checkout, when running from one.
_CHECKOUT = Path(__file__).parent.parent


def lab_samples() -> Path:
    """The folder of the shipped lab captures (``manifest.json``, a pcap per point, ``inventory.yaml``):
    ``samples/lab`` of the checkout, or the installed package's copy."""
    return Path(str(resources.files("hopscope.samples") / "lab"))


def var_dir() -> Path:
    """``$HOPSCOPE_VAR``; else ``var/`` of the checkout when running from one; else
    ``~/.local/state/hopscope`` for an installed package."""
    explicit = os.environ.get("HOPSCOPE_VAR")
    if explicit:
        return Path(explicit)
    if (_CHECKOUT / "pyproject.toml").is_file():
        return _CHECKOUT / "var"
    return Path.home() / ".local" / "state" / "hopscope"
