"""Where hopscope keeps its runtime state (embedded store, demo output, lab runs)."""

from __future__ import annotations

import os
from pathlib import Path

#: The checkout this package runs from (modules are linked from it by the editable install).
REPO_ROOT = Path(__file__).resolve().parent.parent


def var_dir() -> Path:
    """``$HOPSCOPE_VAR``; else ``var/`` of the checkout when running from one; else
    ``~/.local/state/hopscope`` for an installed package."""
    explicit = os.environ.get("HOPSCOPE_VAR")
    if explicit:
        return Path(explicit)
    if (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT / "var"
    return Path.home() / ".local" / "state" / "hopscope"
