"""The ``hopscope`` command.

``COMMANDS`` is the one table of subcommands: name, module and one-line help. ``hopscope --help``
lists it without importing any command module; ``hopscope NAME ...`` imports only NAME's module
(``hopscope.cli.NAME``), so each command pays only for its own dependencies at start-up.

A command module defines ``add_arguments(parser)`` (its options; it may set the parser's description)
and ``run(args) -> int`` (the exit status). Options naming one thing have one spelling across
commands (``--store URL``, ``--kafka BOOTSTRAP``, ``--topic-prefix PREFIX``, ``--group``, ``--point``,
``--host``, ``--hop-kind``, ``--format``, ``--out``, ``--idle-exit SECONDS``); older spellings stay as
hidden aliases (``add_alias``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType, ModuleType

from hopscope import __version__
from hopscope.errors import HopscopeError

# hopscope calls no BLAS routine, but numpy's OpenBLAS starts one spinning thread per core when numpy is
# imported (35 ms of CPU per command on 2 cores, more on big hosts). Set before any command imports numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

#: Exit status after the reader of standard output went away (``hopscope ... | head``): 128 + SIGPIPE,
#: what a shell reports for a tool that the signal ended.
EXIT_BROKEN_PIPE = 141
EXIT_INTERRUPTED = 130


@dataclass(frozen=True, slots=True)
class Command:
    """One ``hopscope`` subcommand."""

    name: str
    module: str  # defines add_arguments(parser) and run(args) -> int
    help: str  # one line, for ``hopscope --help``


#: Every subcommand, in ``hopscope --help`` order.
COMMANDS: tuple[Command, ...] = (
    Command("demo", "hopscope.cli.demo", "the main job on the embedded default: stitch the lab samples, "
            "store and summarise"),
    Command("flows", "hopscope.cli.flows", "print the L4 flow records of a capture file"),
    Command("requests", "hopscope.cli.requests", "print the L7 request records (HTTP/1.x, DNS; --deep: HTTP/2, "
            "gRPC) of a capture file"),
    Command("probe", "hopscope.cli.probe", "capture live on an interface and publish flow/request records"),
    Command("agent", "hopscope.cli.agent", "capture every interface of this host its config selects, into Kafka"),
    Command("analyze", "hopscope.cli.analyze", "stitch captures from several points into per-request traces"),
    Command("replay", "hopscope.cli.replay", "publish the records of capture files to Kafka as live probes would"),
    Command("correlate", "hopscope.cli.correlate", "stitch records from Kafka into traces, streaming, into a store"),
    Command("ingest", "hopscope.cli.ingest", "consume flow and request records from Kafka into a store"),
    Command("store", "hopscope.cli.store", "create and inspect the store (ClickHouse server or chDB)"),
    Command("serve", "hopscope.cli.serve", "serve the REST API and the trace lookup UI"),
    Command("token", "hopscope.cli.token", "add, list or remove the API tokens of a token file (serve --token-file)"),
    Command("pcap", "hopscope.cli.pcap", "write the packets of one stored trace (each hop's request exchange) "
            "as pcapng"),
    Command("topology", "hopscope.cli.topology", "print the service map and the capture-point (path) topology "
            "of stored traces"),
    Command("lab", "hopscope.cli.lab", "the multi-hop namespaces lab (root): up, traffic, down, run, samples"),
)
BY_NAME = {c.name: c for c in COMMANDS}


def load(command: Command) -> ModuleType:
    """The module of ``command``."""
    return importlib.import_module(command.module)


def add_alias(parser: argparse.ArgumentParser, action: argparse.Action, *old: str) -> None:
    """Accept the option strings ``old`` as hidden spellings of ``action`` (an option added with
    ``store`` or ``append``): same dest, type and choices; ``--help`` shows only the current name."""
    if not isinstance(action, argparse._StoreAction | argparse._AppendAction):
        raise TypeError(f"{parser.prog}: only store and append options take aliases, not {action.option_strings}")
    alias = parser.add_argument(
        *old, dest=action.dest, action=type(action), nargs=action.nargs, choices=action.choices,
        metavar=action.metavar, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
    )  # fmt: skip
    alias.type = action.type


def check_output(path: str | None, option: str) -> None:
    """Raise ``ConfigError`` (one line naming ``option``) when a command could not write ``path``:
    checked before the work, so a mistyped directory costs no analysis. ``None`` and ``-`` (standard
    output) pass."""
    from hopscope.errors import ConfigError

    if not path or path == "-":
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"{option} {path}: is a directory")
    if not os.path.isdir(folder):
        raise ConfigError(f"{option} {path}: no directory {folder}")
    if not os.access(folder if not os.path.exists(path) else path, os.W_OK):
        raise ConfigError(f"{option} {path}: not writable")


@contextlib.contextmanager
def stop_on_signal(stop: Callable[[], object]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``stop`` while the block runs (a long-running command then winds down
    and summarises); the previous handlers are back after it, however it ends."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def build_parser(command: str | None = None, alone: bool = False) -> argparse.ArgumentParser:
    """The ``hopscope`` parser: every subcommand with its help line; only ``command``'s options
    (and module) are loaded. ``alone``: ``command``'s subparser only (it parses that command's words
    as the full parser does; the other fourteen cost a few ms of start-up)."""
    parser = argparse.ArgumentParser(
        prog="hopscope",
        description="Full-path network observability: per-hop flows and requests, stitched end to end.",
    )
    parser.add_argument("--version", action="version", version=f"hopscope {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for c in COMMANDS if not (alone and command in BY_NAME) else (BY_NAME[command],):
        command_parser = sub.add_parser(c.name, help=c.help, description=c.help)
        if c.name == command:
            load(c).add_arguments(command_parser)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """A parser of one command's options alone (``hopscope NAME`` without the top level)."""
    command = BY_NAME[name]
    parser = argparse.ArgumentParser(prog=f"hopscope {name}", description=command.help)
    load(command).add_arguments(parser)
    return parser


def command_word(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv``: its first word that is not an option (the top-level options
    take no values)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hopscope`` with ``argv`` (default: the process's arguments); return the exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    command = command_word(words)
    top_help = command is not None and any(w in ("-h", "--help") for w in words[: words.index(command)])
    parser = build_parser(command, alone=not top_help)
    args = parser.parse_args(words)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    return run(BY_NAME[args.command], args)


def run(command: Command, args: argparse.Namespace) -> int:
    """Run a parsed command: typed errors become one line on stderr and their exit status, so does a
    full disk (exit 1); a reader of standard output that went away ends the command quietly."""
    try:
        status = int(load(command).run(args))
        sys.stdout.flush()  # here, so that a closed pipe is seen while it can still be handled
        return status
    except BrokenPipeError:
        if not reader_gone(1):  # a broken pipe of a store or broker connection is a failure
            raise
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except HopscopeError as exc:
        print(f"hopscope: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):  # a full disk is no bug; anything else may be
            raise
        _discard_stdout()
        print(f"hopscope: error: cannot write: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hopscope: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def reader_gone(fd: int) -> bool:
    """True when ``fd`` is the writing end of a pipe whose reading end is closed (poll says POLLERR)."""
    import select

    poller = select.poll()
    try:
        poller.register(fd, select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def _discard_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so that the interpreter's final flush of what is still
    buffered does not fail again ("Exception ignored ... BrokenPipeError")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
    finally:
        os.close(devnull)
