"""The ``hopscope`` command.

Each package contributes its subcommands through a module with a ``register(subparsers)`` function
that adds parsers and sets ``func`` (``func(args) -> int``, the exit code). Packages are imported
lazily, so a subcommand's heavy dependencies load only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from hopscope import __version__
from hopscope.errors import HopscopeError

# hopscope calls no BLAS routine, but numpy's OpenBLAS starts one spinning thread per core when numpy is
# imported (35 ms of CPU per command on 2 cores, more on big hosts). Set before any command imports numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

#: Modules that define ``register(subparsers)``; order is the order in ``hopscope --help``.
COMMAND_MODULES: tuple[str, ...] = (
    "hopscope.commands",
    "hopscope.probes.cli",
    "hopscope.probes.live_cli",
    "hopscope.correlate.cli",
    "hopscope.store.cli",
    "hopscope.api.cli",
    "hopscope.topology.cli",
    "hopscope.lab.cli",
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``command``, modules after the one registering it are not imported."""
    parser = argparse.ArgumentParser(
        prog="hopscope",
        description="Full-path network observability: per-hop flows and requests, stitched end to end.",
    )
    parser.add_argument("--version", action="version", version=f"hopscope {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that package has no commands yet
                continue
            raise
        module.register(sub)
        if command is not None and command in sub.choices:
            break
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    parser = build_parser(words[0] if words else None)  # top-level options take no values
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except HopscopeError as exc:
        print(f"hopscope: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hopscope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
